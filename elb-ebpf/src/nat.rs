//! Rewriting a packet's addresses and ports, with incremental checksum
//! updates (RFC 1624) from the changed fields only.
use aya_ebpf::programs::XdpContext;
use elb_common::{counters::IPPROTO_TCP, csum::Delta, l4::FlowEntry};

use crate::{
    headers::{Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr},
    parse::{L4Packet, header_at},
};

/// Rewrites the packet to `flow`'s addresses and ports. False when a header
/// is no longer in bounds (cannot happen after a successful parse; the
/// verifier needs the checks anyway).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, packet: &L4Packet, flow: &FlowEntry) -> bool {
    let delta = if packet.ipv6 {
        let Some(ip) = header_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return false;
        };
        rewrite_ipv6(ip as *mut Ipv6Hdr, flow)
    } else {
        let Some(ip) = header_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return false;
        };
        rewrite_ipv4(ip as *mut Ipv4Hdr, flow)
    };
    // The TCP/UDP checksum covers the addresses (pseudo-header) and ports.
    if packet.ip_proto == IPPROTO_TCP {
        let Some(tcp) = header_at::<TcpHdr>(ctx, packet.l4_offset) else {
            return false;
        };
        let tcp = tcp as *mut TcpHdr;
        // SAFETY: as above.
        unsafe {
            let delta = delta
                .replace(&(*tcp).src_port, &flow.new_src_port)
                .replace(&(*tcp).dst_port, &flow.new_dst_port);
            (*tcp).check = delta.apply((*tcp).check);
            (*tcp).src_port = flow.new_src_port;
            (*tcp).dst_port = flow.new_dst_port;
        }
    } else {
        let Some(udp) = header_at::<UdpHdr>(ctx, packet.l4_offset) else {
            return false;
        };
        let udp = udp as *mut UdpHdr;
        // SAFETY: as above.
        unsafe {
            let delta = delta
                .replace(&(*udp).src_port, &flow.new_src_port)
                .replace(&(*udp).dst_port, &flow.new_dst_port);
            (*udp).check = delta.apply_udp((*udp).check);
            (*udp).src_port = flow.new_src_port;
            (*udp).dst_port = flow.new_dst_port;
        }
    }
    true
}

/// Not inlined: summing two 16-byte addresses needs many registers, and
/// inlined into the caller the spills overflow the 512-byte stack.
#[inline(never)]
fn rewrite_ipv6(ip: *mut Ipv6Hdr, flow: &FlowEntry) -> Delta {
    // SAFETY: the caller checked the whole header is inside the packet;
    // XDP packet data is writable.
    unsafe {
        let delta = replace_address(Delta::default(), &mut (*ip).src, &flow.new_src);
        replace_address(delta, &mut (*ip).dst, &flow.new_dst)
    }
}

/// One IPv6 address at a time, in its own frame, to bound register spills.
#[inline(never)]
fn replace_address(delta: Delta, field: &mut [u8; 16], new: &[u8; 16]) -> Delta {
    let delta = delta.replace(field, new);
    *field = *new;
    delta
}

#[inline(never)]
fn rewrite_ipv4(ip: *mut Ipv4Hdr, flow: &FlowEntry) -> Delta {
    let new_src = v4(&flow.new_src);
    let new_dst = v4(&flow.new_dst);
    // SAFETY: as in `rewrite_ipv6`.
    unsafe {
        let delta = Delta::default()
            .replace(&(*ip).src, &new_src)
            .replace(&(*ip).dst, &new_dst);
        (*ip).check = delta.apply((*ip).check);
        (*ip).src = new_src;
        (*ip).dst = new_dst;
        delta
    }
}

#[inline(always)]
fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}
