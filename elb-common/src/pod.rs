//! `aya::Pod` for every map type, so userspace can read and write them.
//!
//! SAFETY (for each impl): the type is `#[repr(C)]`, `Copy`, contains only
//! integers, and has no padding (checked by the layout tests).
unsafe impl aya::Pod for crate::counters::PacketCounter {}
unsafe impl aya::Pod for crate::l4::VipKey {}
unsafe impl aya::Pod for crate::l4::ServiceEntry {}
unsafe impl aya::Pod for crate::l4::ServerEntry {}
unsafe impl aya::Pod for crate::l4::FlowKey {}
unsafe impl aya::Pod for crate::l4::FlowEntry {}
unsafe impl aya::Pod for crate::l4::IfaceAddrs {}
unsafe impl aya::Pod for crate::l4::ServiceStats {}
unsafe impl aya::Pod for crate::l4::GlobalStats {}
unsafe impl aya::Pod for crate::nat::NatCursor {}
unsafe impl aya::Pod for crate::nat::SnatPool {}
unsafe impl aya::Pod for crate::vip_ports::VipPorts {}
