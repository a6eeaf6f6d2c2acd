//! elb's XDP program.
//!
//! At this stage it classifies every frame (Ethernet, VLAN, IPv4, IPv6, TCP,
//! UDP) and counts it per protocol, then hands it to the kernel unchanged.
#![no_std]
#![no_main]

mod headers;
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use elb_common::counters::{PacketCounter, ProtoCounter};

use crate::parse::Parsed;

/// Per-CPU packet and byte counts per [`ProtoCounter`] slot.
#[btf_map(name = "elb_proto_stats")]
static PROTO_STATS: PerCpuArray<PacketCounter, { ProtoCounter::COUNT }> = PerCpuArray::new();

#[xdp]
pub fn elb_xdp(ctx: XdpContext) -> u32 {
    let slot = match parse::parse(&ctx) {
        Parsed::L4(packet) => ProtoCounter::for_l4(packet.ipv6, packet.ip_proto),
        Parsed::Other(slot) => slot,
    };
    count(&ctx, slot);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(ctx: &XdpContext, slot: ProtoCounter) {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if let Some(counter) = PROTO_STATS.get_ptr_mut(slot.index()) {
        // SAFETY: the pointer is this CPU's own slot, so nothing else writes it.
        unsafe { (*counter).add(1, bytes) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the program cannot reach a panic; this is only
    // here because no_std binaries need a handler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
