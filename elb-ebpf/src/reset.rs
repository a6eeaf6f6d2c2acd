//! Answering a client's TCP segment on a drained flow (one whose server
//! was drained, `FLOW_DRAINED`) that does not start a connection with a
//! RST, built in place over the segment and sent back out the interface it
//! came in (`XDP_TX`).
//!
//! The RST has no payload, no TCP options and no IPv4 options: an RST
//! needs none, and the client's IPv4 options (source route, record route,
//! timestamps) describe its path towards the VIP; echoing them unreversed
//! would be wrong, and reversing a source route is not worth doing here.
//! VLAN tags stay: the RST leaves by the same link.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use elb_common::{
    counters::IPPROTO_TCP,
    csum::Sum,
    l4::FlowKey,
    tcp::{Reset, reset_for},
};

use crate::{
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr},
    parse::{L4Packet, header_at},
    stats,
};

const DROP: u32 = xdp_action::XDP_DROP;
const TTL: u8 = 64;
/// Don't fragment: a 40-byte datagram never needs it.
const IPV4_DF: [u8; 2] = [0x40, 0];
const TCP_HEADER_LEN: u16 = 20;
const IPV4_HEADER_LEN: u16 = 20;
const IPV6_HEADER_LEN: u16 = 40;
/// The ECN bits of the IPv4 TOS byte, cleared: elb's RST is no
/// ECN-capable transport. The DSCP bits stay the client's, so the RST gets
/// the same treatment on the way back as the flow's packets.
const ECN_MASK: u8 = 0x03;

/// Rewrites the frame into the RST answering it and returns `XDP_TX`;
/// `XDP_DROP` for a RST (never answered) and for a segment whose IP length
/// is shorter than its headers. `key` is the segment's 5-tuple. A BPF
/// subprogram of its own, so its stack adds to no other path's.
#[inline(never)]
pub fn answer(ctx: &XdpContext, packet: &L4Packet, key: &FlowKey) -> u32 {
    let Some(tcp) = header_at::<TcpHdr>(ctx, packet.l4_offset) else {
        return DROP;
    };
    // SAFETY: bounds checked by header_at.
    let (flags, seq, ack, tcp_len) = unsafe {
        (
            (*tcp).flags,
            u32::from_be_bytes((*tcp).seq),
            u32::from_be_bytes((*tcp).ack),
            u16::from((*tcp).data_offset >> 4) * 4,
        )
    };
    let Some(ip_payload_len) = ip_payload_len(ctx, packet) else {
        return DROP;
    };
    // The payload as the IP header says, not as the frame is long: short
    // frames carry Ethernet padding.
    let Some(data_len) = ip_payload_len.checked_sub(tcp_len) else {
        return DROP;
    };
    let Some(reset) = reset_for(flags, seq, ack, u32::from(data_len)) else {
        return DROP;
    };
    if !swap_macs(ctx) {
        return DROP;
    }
    // Header pointers are taken here and handed to the writers: given the
    // context, LLVM passes them `data` as a 32-bit value and the verifier
    // refuses the widening of a packet pointer.
    let tcp_offset = if packet.ipv6 {
        let Some(ip) = header_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return DROP;
        };
        write_ipv6(ip as *mut Ipv6Hdr, key);
        packet.l3_offset + IPV6_HEADER_LEN as usize
    } else {
        let Some(ip) = header_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return DROP;
        };
        write_ipv4(ip as *mut Ipv4Hdr, key);
        packet.l3_offset + IPV4_HEADER_LEN as usize
    };
    let Some(tcp) = header_at::<TcpHdr>(ctx, tcp_offset) else {
        return DROP;
    };
    write_tcp(tcp as *mut TcpHdr, key, &reset, packet.ipv6);
    // Cut the payload, the TCP options and (IPv4) the IP options.
    let new_len = tcp_offset + TCP_HEADER_LEN as usize;
    let delta = new_len as i64 - (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: plain helper call; only shrinks the frame, to whole headers
    // written above.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return DROP;
    }
    stats::global(|s| s.tcp_resets += 1);
    xdp_action::XDP_TX
}

/// The IP payload length the IP header gives (IPv4: total length minus the
/// header with its options); None if shorter than the IP header itself.
#[inline(always)]
fn ip_payload_len(ctx: &XdpContext, packet: &L4Packet) -> Option<u16> {
    if packet.ipv6 {
        let ip = header_at::<Ipv6Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked by header_at.
        Some(u16::from_be_bytes(unsafe { (*ip).payload_len }))
    } else {
        let ip = header_at::<Ipv4Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked by header_at.
        let total = u16::from_be_bytes(unsafe { (*ip).total_len });
        total.checked_sub((packet.l4_offset - packet.l3_offset) as u16)
    }
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> bool {
    let Some(eth) = header_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: bounds checked by header_at; XDP packet data is writable.
    unsafe { core::mem::swap(&mut (*eth).src, &mut (*eth).dst) };
    true
}

/// A fresh 20-byte IPv4 header from the VIP to the client, over the
/// client's (whose DSCP it keeps). `ip` must point at a whole header inside
/// the packet.
#[inline(never)]
fn write_ipv4(ip: *mut Ipv4Hdr, key: &FlowKey) {
    // SAFETY: the caller checked the bounds; XDP packet data is writable.
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos &= !ECN_MASK;
        (*ip).total_len = (IPV4_HEADER_LEN + TCP_HEADER_LEN).to_be_bytes();
        (*ip).id = [0; 2];
        (*ip).frag_off = IPV4_DF;
        (*ip).ttl = TTL;
        (*ip).protocol = IPPROTO_TCP;
        (*ip).check = [0; 2];
        (*ip).src = v4(&key.dst);
        (*ip).dst = v4(&key.src);
        (*ip).check = Sum::default()
            .add_field(&*(ip as *const [u8; IPV4_HEADER_LEN as usize]))
            .checksum();
    }
}

/// The IPv6 header from the VIP to the client: the client's DSCP, no ECN,
/// no flow label. `ip` as in [`write_ipv4`].
#[inline(never)]
fn write_ipv6(ip: *mut Ipv6Hdr, key: &FlowKey) {
    // SAFETY: the caller checked the bounds; XDP packet data is writable.
    unsafe {
        let vcf = (*ip).version_class_flow;
        // Version and the DSCP's upper 4 bits stay; of the second byte,
        // the DSCP's lower 2 bits stay, the ECN bits and the flow label go.
        (*ip).version_class_flow = [vcf[0], vcf[1] & 0xC0, 0, 0];
        (*ip).payload_len = TCP_HEADER_LEN.to_be_bytes();
        (*ip).next_header = IPPROTO_TCP;
        (*ip).hop_limit = TTL;
        (*ip).src = key.dst;
        (*ip).dst = key.src;
    }
}

/// The RST's TCP header, with its checksum over the pseudo-header (RFC
/// 9293 §3.1; IPv4's and IPv6's sum the same words here, as the zero bytes
/// add nothing) and the header itself. `tcp` as in [`write_ipv4`].
#[inline(never)]
fn write_tcp(tcp: *mut TcpHdr, key: &FlowKey, reset: &Reset, ipv6: bool) {
    let pseudo = if ipv6 {
        Sum::default().add_field(&key.src).add_field(&key.dst)
    } else {
        Sum::default()
            .add_field(&v4(&key.src))
            .add_field(&v4(&key.dst))
    };
    // SAFETY: the caller checked the bounds; XDP packet data is writable.
    unsafe {
        (*tcp).src_port = key.dst_port;
        (*tcp).dst_port = key.src_port;
        (*tcp).seq = reset.seq.to_be_bytes();
        (*tcp).ack = reset.ack.to_be_bytes();
        (*tcp).data_offset = 5 << 4;
        (*tcp).flags = reset.flags;
        (*tcp).window = [0; 2];
        (*tcp).check = [0; 2];
        (*tcp).urgent = [0; 2];
        (*tcp).check = pseudo
            .add_field(&[0, IPPROTO_TCP])
            .add_field(&TCP_HEADER_LEN.to_be_bytes())
            .add_field(&*(tcp as *const [u8; TCP_HEADER_LEN as usize]))
            .checksum();
    }
}

#[inline(always)]
fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}
