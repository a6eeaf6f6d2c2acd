//! `aya::Pod` for every map type, so userspace can read and write them.
//!
//! SAFETY (for each impl): the type is `#[repr(C)]`, `Copy`, contains only
//! integers, and has no padding (checked by the layout tests).
unsafe impl aya::Pod for crate::counters::PacketCounter {}
