//! Next-hop lookup through the kernel FIB (`bpf_fib_lookup`).
use core::mem::size_of;

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, programs::XdpContext,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// `struct bpf_fib_lookup` with its unions flattened: IPv4 addresses sit
/// in the first 4 bytes of `src`/`dst`, which is also how `elb_common::l4`
/// stores them.
#[repr(C)]
pub struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: [u8; 2],
    dport: [u8; 2],
    tot_len: u16,
    pub ifindex: u32,
    flowinfo: u32,
    src: [u8; 16],
    dst: [u8; 16],
    vlan_proto: u16,
    vlan_tci: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

const _: () = assert!(size_of::<FibParams>() == size_of::<bpf_fib_lookup>());

/// The outcome; the next hop itself is left in the params (`ifindex`,
/// `smac`, `dmac`). Payload-free so it returns in a register: a BPF call
/// has at most 5 arguments, and a returned struct would take one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// `ifindex`, `smac` and `dmac` are the complete next hop.
    Found,
    /// The route exists but the neighbour is not resolved yet: only
    /// `ifindex` is known. The kernel must resolve it.
    NoNeighbour,
    /// No usable route (or forwarding disabled): the kernel decides.
    Unroutable,
}

/// `params` lives in the per-CPU scratch map: the BPF stack (512 bytes)
/// is too small for it next to the flow entries. Not inlined, so its
/// temporaries take stack only while it runs.
#[inline(never)]
pub fn lookup(
    ctx: &XdpContext,
    params: &mut FibParams,
    ipv6: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Lookup {
    params.family = if ipv6 { AF_INET6 } else { AF_INET };
    params.l4_protocol = 0;
    params.sport = [0; 2];
    params.dport = [0; 2];
    params.tot_len = 0;
    // SAFETY: ctx.ctx is the kernel's xdp_md for this invocation.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params.flowinfo = 0;
    params.src = *src;
    params.dst = *dst;
    params.vlan_proto = 0;
    params.vlan_tci = 0;
    // SAFETY: params is a correctly sized bpf_fib_lookup.
    let ret = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            params as *mut FibParams as *mut bpf_fib_lookup,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match ret {
        BPF_FIB_LKUP_RET_SUCCESS => Lookup::Found,
        BPF_FIB_LKUP_RET_NO_NEIGH => Lookup::NoNeighbour,
        _ => Lookup::Unroutable,
    }
}
