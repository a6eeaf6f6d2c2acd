//! elb's XDP program: classifies and counts every frame, enforces the
//! deny-list, and balances L4 services with full NAT. Everything else goes
//! to the kernel untouched.
#![no_std]
#![no_main]

#[cfg(feature = "bench")]
mod bench;
mod fib;
mod headers;
mod lb;
mod maps;
mod nat;
mod parse;
mod ports;
mod reset;
mod stats;
mod tables;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use elb_common::counters::ProtoCounter;

use crate::{maps::PROTO_STATS, parse::Parsed};

#[xdp]
pub fn elb_xdp(ctx: XdpContext) -> u32 {
    process(&ctx)
}

/// Everything `elb_xdp` does to a frame. Always inlined, so the production
/// program compiles exactly as if this were its body; the bench object
/// (feature `bench`) inlines the same code into its timing wrapper.
#[inline(always)]
fn process(ctx: &XdpContext) -> u32 {
    match parse::parse(ctx) {
        Parsed::L4(packet) => {
            count(ctx, ProtoCounter::for_l4(packet.ipv6, packet.ip_proto));
            lb::handle(ctx, &packet)
        }
        Parsed::Fragment(fragment) => {
            count(ctx, ProtoCounter::IpFragment);
            lb::handle_portless(ctx, &fragment)
        }
        Parsed::Ipv6Extension(packet) => {
            count(ctx, ProtoCounter::Ipv6Other);
            lb::handle_portless(ctx, &packet)
        }
        Parsed::Other(slot) => {
            count(ctx, slot);
            xdp_action::XDP_PASS
        }
    }
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
