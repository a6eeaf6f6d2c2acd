//! The invariants, checked on every packet from the input frame, the
//! program's action and its output frame alone:
//!
//! - the action is XDP_PASS, XDP_DROP, XDP_TX or XDP_REDIRECT, never
//!   XDP_ABORTED;
//! - a frame passed unmodified is fine, except a VIP's packet with
//!   readable ports from an allowed source: that one is NAT'd, answered
//!   or dropped, never left to the kernel; a modified one may only be a
//!   NAT'd packet for a VIP or a known reply (the kernel forwards it when
//!   XDP has no next hop);
//! - only packets for a VIP or a known reply are forwarded (TX / REDIRECT);
//!   only packets for a VIP or a known reply, or from a deny-listed source,
//!   are dropped; a deny-listed source's packets to a VIP, to an L7 port,
//!   or without readable ports are always dropped;
//! - a NAT'd packet: same length; nothing changed but the MACs, the
//!   addresses, the ports and the checksums (so TTL / hop limit, lengths,
//!   options, tags and payload stay); a VIP's packet goes to the Maglev
//!   choice among the service's servers, from its SNAT address and a NAT
//!   port candidate of the flow; a reply goes from the VIP to exactly the
//!   client the observed binding says; the checksums change by exactly the
//!   rewrite (a right one stays right, checked again with etherparse, and
//!   a wrong one stays wrong); a UDP checksum 0 (none) stays 0 and no
//!   other becomes 0; redirected frames carry the next hop's MACs;
//! - XDP_TX is only the RST answering a client's TCP segment to a VIP
//!   (never a RST): addresses and ports swapped, MACs swapped, tags kept,
//!   no options and no payload, RFC 9293 sequence numbers, right
//!   checksums.
use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{NAT_PORT_MAX, NAT_PORT_MIN, flow_hash},
};
use elb_userspace::l4::plan::addr16;
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

use super::{
    classify::{Frame, Ip, L4, classify},
    model::{Binding, Model, ReplyKey},
    world::{L7_PORTS, Service, World, denied, neighbour},
};
use crate::xdp_fixture::XdpAction;

/// What a packet turned out to be, when it broke no invariant.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Dropped,
    /// A VIP's packet NAT'd towards a server; the binding its reply will
    /// carry. `forwarded`: XDP_REDIRECT/TX, not passed up.
    ToServer {
        key: ReplyKey,
        binding: Binding,
        forwarded: bool,
    },
    /// A known reply NAT'd back to its client.
    ToClient {
        forwarded: bool,
    },
    Reset,
}

/// What the program may do with a frame.
enum Expect<'w> {
    /// From a deny-listed source to a VIP, an L7 port, or portless.
    Drop(&'static str),
    Vip(&'w Service),
    Reply(Binding),
    /// Anything else: passed untouched.
    Pass,
}

fn expect<'w>(world: &'w World, model: &Model, frame: &Frame) -> Expect<'w> {
    let Some(ip) = &frame.ip else {
        return Expect::Pass;
    };
    let vip = frame.dst().and_then(|dst| world.service_at(dst, ip.proto));
    if denied(ip.src) {
        if frame.portless() {
            return Expect::Drop("a deny-listed source's packet without readable ports");
        }
        if vip.is_some() {
            return Expect::Drop("a deny-listed source's packet to a VIP");
        }
        if let Some(l4) = &frame.l4
            && l4.tcp_flags.is_some()
            && L7_PORTS.contains(&l4.dst_port)
        {
            return Expect::Drop("a deny-listed source's TCP packet to an L7 port");
        }
    }
    if let Some(service) = vip {
        return Expect::Vip(service);
    }
    if let (Some(src), Some(dst)) = (frame.src(), frame.dst())
        && (NAT_PORT_MIN..=NAT_PORT_MAX).contains(&dst.port())
    {
        let key = ReplyKey {
            server: src,
            nat: dst,
            proto: ip.proto,
        };
        if let Some(binding) = model.binding(&key) {
            return Expect::Reply(binding);
        }
    }
    Expect::Pass
}

/// Checks one run; Err names the invariant broken.
pub fn check(
    world: &World,
    model: &Model,
    input: &[u8],
    action: XdpAction,
    output: &[u8],
) -> Result<Verdict, String> {
    let frame = classify(input);
    let expected = expect(world, model, &frame);
    if let Expect::Drop(why) = expected {
        return match action {
            XdpAction::Drop => Ok(Verdict::Dropped),
            other => Err(format!("{why} got {other:?}, not XDP_DROP")),
        };
    }
    match (action, expected) {
        (XdpAction::Aborted, _) => Err("the program returned XDP_ABORTED".into()),
        (XdpAction::Pass, Expect::Vip(_)) if output == input => {
            Err("passed a VIP's packet to the kernel untouched".into())
        }
        (XdpAction::Pass, _) if output == input => Ok(Verdict::Passed),
        (XdpAction::Drop, Expect::Vip(_) | Expect::Reply(_)) => Ok(Verdict::Dropped),
        (XdpAction::Drop, _) => Err(
            "dropped a packet that is no VIP packet, no known reply and not from a deny-listed source"
                .into(),
        ),
        (XdpAction::Pass | XdpAction::Redirect, Expect::Vip(service)) => {
            to_server(service, &frame, input, output, action == XdpAction::Redirect)
        }
        (XdpAction::Pass | XdpAction::Redirect, Expect::Reply(binding)) => {
            to_client(binding, &frame, input, output, action == XdpAction::Redirect)
        }
        (XdpAction::Tx, Expect::Vip(_)) => reset(&frame, input, output),
        (XdpAction::Pass, _) => {
            Err("passed a modified frame that is no VIP packet and no known reply".into())
        }
        (other, _) => Err(format!(
            "{other:?} of a packet that is no VIP packet and no known reply"
        )),
    }
}

fn to_server(
    service: &Service,
    frame: &Frame,
    input: &[u8],
    output: &[u8],
    redirected: bool,
) -> Result<Verdict, String> {
    let (ip, l4) = headers(frame);
    let out = rewrite_common(ip, l4, input, output, redirected)?;
    let client = frame.src().expect("a VIP packet has ports");
    let (new_src, new_dst) = (
        out.src().expect("checked by rewrite_common"),
        out.dst().expect("checked by rewrite_common"),
    );
    let hash = flow_hash(
        &addr16(client.ip()),
        &addr16(service.vip.ip()),
        client.port().to_be_bytes(),
        service.vip.port().to_be_bytes(),
        service.proto,
    );
    let choice = service.table[hash as usize % service.table.len()];
    if new_dst != choice {
        let member = service.servers.iter().any(|&(_, a)| a == new_dst);
        return Err(format!(
            "sent to {new_dst} ({}), but the Maglev choice is {choice}",
            if member {
                "one of the service's servers"
            } else {
                "NOT one of the service's servers"
            }
        ));
    }
    if new_src.ip() != service.snat_address() {
        return Err(format!(
            "NAT'd from {}, not the service's SNAT address {}",
            new_src.ip(),
            service.snat_address()
        ));
    }
    // The hashed port or any from a cursor: in the range, and never
    // another live flow's (the model's reply table checks that).
    if !(NAT_PORT_MIN..=NAT_PORT_MAX).contains(&new_src.port()) {
        return Err(format!(
            "NAT port {} is outside {NAT_PORT_MIN}-{NAT_PORT_MAX}",
            new_src.port()
        ));
    }
    Ok(Verdict::ToServer {
        key: ReplyKey {
            server: new_dst,
            nat: new_src,
            proto: ip.proto,
        },
        binding: Binding {
            vip: service.vip,
            client,
        },
        forwarded: redirected,
    })
}

fn to_client(
    binding: Binding,
    frame: &Frame,
    input: &[u8],
    output: &[u8],
    redirected: bool,
) -> Result<Verdict, String> {
    let (ip, l4) = headers(frame);
    let out = rewrite_common(ip, l4, input, output, redirected)?;
    let got = (out.src(), out.dst());
    if got != (Some(binding.vip), Some(binding.client)) {
        return Err(format!(
            "reply translated to {:?} → {:?}; its binding says {} → {}",
            got.0, got.1, binding.vip, binding.client
        ));
    }
    Ok(Verdict::ToClient {
        forwarded: redirected,
    })
}

fn headers(frame: &Frame) -> (&Ip, &L4) {
    match (&frame.ip, &frame.l4) {
        (Some(ip), Some(l4)) => (ip, l4),
        _ => unreachable!("VIP packets and replies have IP and ports"),
    }
}

/// Offsets of the checksum field of a TCP or UDP header.
fn l4_checksum_at(proto: u8, l4: usize) -> usize {
    if proto == IPPROTO_TCP {
        l4 + 16
    } else {
        l4 + 6
    }
}

/// What every NAT rewrite must keep: length, every byte but MACs (when
/// redirected), addresses, ports and checksums, the checksums' agreement
/// with the data, the next hop's MACs. Returns the output's headers.
fn rewrite_common(
    ip: &Ip,
    l4: &L4,
    input: &[u8],
    output: &[u8],
    redirected: bool,
) -> Result<Frame, String> {
    if output.len() != input.len() {
        return Err(format!(
            "NAT changed the frame's length from {} to {}",
            input.len(),
            output.len()
        ));
    }
    let mut may_change = vec![false; input.len()];
    let mut allow = |range: std::ops::Range<usize>| may_change[range].fill(true);
    if redirected {
        allow(0..12);
    }
    if ip.v6 {
        allow(ip.offset + 8..ip.offset + 40);
    } else {
        allow(ip.offset + 10..ip.offset + 12);
        allow(ip.offset + 12..ip.offset + 20);
    }
    allow(l4.offset..l4.offset + 4);
    let check_at = l4_checksum_at(ip.proto, l4.offset);
    allow(check_at..check_at + 2);
    if let Some(i) = (0..input.len()).find(|&i| input[i] != output[i] && !may_change[i]) {
        return Err(format!(
            "NAT changed byte {i} ({:02x} → {:02x}), which is no MAC, address, port or checksum",
            input[i], output[i]
        ));
    }
    let out = classify(output);
    if out.l4.is_none() {
        return Err("the NAT'd frame has no readable IP and ports".into());
    }
    checksums(ip, l4, input, output)?;
    if redirected {
        let dst = out.dst().expect("checked above").ip();
        let Some((lb_mac, next_hop)) = neighbour(dst) else {
            return Err(format!(
                "redirected towards {dst}, which has no neighbour entry"
            ));
        };
        if output[0..6] != next_hop || output[6..12] != lb_mac {
            return Err(format!(
                "redirected towards {dst} with MACs {:02x?} → {:02x?}, not {lb_mac:02x?} → {next_hop:02x?}",
                &output[6..12],
                &output[0..6]
            ));
        }
    }
    Ok(out)
}

/// RFC 1071 sum of 16-bit big-endian words over `parts` (each starting at
/// an even offset of the summed data), folded; an odd last byte is padded.
pub fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for word in part.chunks(2) {
            let hi = u64::from(word[0]) << 8;
            sum += hi | u64::from(word.get(1).copied().unwrap_or(0));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// Equal as one's complement numbers (0x0000 and 0xFFFF are both zero).
fn same_sum(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xFFFF && (a == 0 || b == 0))
}

fn pseudo_addresses(frame: &[u8], ip: &Ip) -> Vec<u8> {
    if ip.v6 {
        frame[ip.offset + 8..ip.offset + 40].to_vec()
    } else {
        frame[ip.offset + 12..ip.offset + 20].to_vec()
    }
}

/// The rewrite changed the checksums by exactly what it changed: the sum
/// over each checksummed range (with the pseudo-header) is the same before
/// and after, whatever the lengths say. Then, if etherparse finds the
/// input's checksums right, it must find the output's right too.
fn checksums(ip: &Ip, l4: &L4, input: &[u8], output: &[u8]) -> Result<(), String> {
    if !ip.v6 {
        let end = (ip.offset + ip.header_len).min(input.len());
        let before = ones_complement_sum(&[&input[ip.offset..end]]);
        let after = ones_complement_sum(&[&output[ip.offset..end]]);
        if !same_sum(before, after) {
            return Err(format!(
                "IPv4 header checksum not updated right: header sum {before:#06x} before, {after:#06x} after"
            ));
        }
    }
    let check_at = l4_checksum_at(ip.proto, l4.offset);
    let old_check = [input[check_at], input[check_at + 1]];
    let new_check = [output[check_at], output[check_at + 1]];
    let udp = ip.proto == IPPROTO_UDP;
    if udp && old_check == [0, 0] {
        if new_check != [0, 0] {
            return Err("a UDP checksum of 0 (none) was changed".into());
        }
    } else {
        if udp && new_check == [0, 0] {
            return Err("a UDP checksum became 0, which means none".into());
        }
        let proto = [0, ip.proto];
        let before =
            ones_complement_sum(&[&pseudo_addresses(input, ip), &proto, &input[l4.offset..]]);
        let after =
            ones_complement_sum(&[&pseudo_addresses(output, ip), &proto, &output[l4.offset..]]);
        if !same_sum(before, after) {
            return Err(format!(
                "TCP/UDP checksum not updated right: sum {before:#06x} before, {after:#06x} after"
            ));
        }
    }
    if verify_with_etherparse(input).is_ok()
        && let Err(why) = verify_with_etherparse(output)
    {
        return Err(format!(
            "the input's lengths and checksums were right, the output's are not: {why}"
        ));
    }
    Ok(())
}

/// Ok when etherparse parses the frame with consistent lengths and every
/// checksum (IPv4 header, TCP or UDP) is right; etherparse computes them
/// from scratch.
pub fn verify_with_etherparse(frame: &[u8]) -> Result<(), String> {
    let headers = PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let payload = headers.payload.slice();
    let (net, transport) = (headers.net, headers.transport);
    let (Some(net), Some(transport)) = (net, transport) else {
        return Err("no IP or no transport header".into());
    };
    match (net, transport) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Tcp(tcp)) => {
            ipv4_header_ok(&ip)?;
            let want = tcp
                .calc_checksum_ipv4(&ip, payload)
                .map_err(|e| e.to_string())?;
            sum_ok("TCP", tcp.checksum, want)
        }
        (NetHeaders::Ipv4(ip, _), TransportHeader::Udp(udp)) => {
            ipv4_header_ok(&ip)?;
            udp_length_ok(udp.length, payload)?;
            if udp.checksum == 0 {
                return Ok(());
            }
            let want = udp
                .calc_checksum_ipv4(&ip, payload)
                .map_err(|e| e.to_string())?;
            sum_ok("UDP", udp.checksum, want)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Tcp(tcp)) => {
            let want = tcp
                .calc_checksum_ipv6(&ip, payload)
                .map_err(|e| e.to_string())?;
            sum_ok("TCP", tcp.checksum, want)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Udp(udp)) => {
            udp_length_ok(udp.length, payload)?;
            let want = udp
                .calc_checksum_ipv6(&ip, payload)
                .map_err(|e| e.to_string())?;
            sum_ok("UDP", udp.checksum, want)
        }
        _ => Err("not TCP or UDP over IP".into()),
    }
}

fn ipv4_header_ok(ip: &etherparse::Ipv4Header) -> Result<(), String> {
    sum_ok("IPv4 header", ip.header_checksum, ip.calc_header_checksum())
}

fn udp_length_ok(length: u16, payload: &[u8]) -> Result<(), String> {
    if usize::from(length) != 8 + payload.len() {
        return Err(format!(
            "UDP length {length}, {} bytes present",
            8 + payload.len()
        ));
    }
    Ok(())
}

fn sum_ok(what: &str, have: u16, want: u16) -> Result<(), String> {
    if have == want {
        Ok(())
    } else {
        Err(format!(
            "{what} checksum {have:#06x}, should be {want:#06x}"
        ))
    }
}

/// XDP_TX: the RST answering a client's TCP segment on a drained flow.
fn reset(frame: &Frame, input: &[u8], output: &[u8]) -> Result<Verdict, String> {
    let (ip, l4) = headers(frame);
    let Some(flags) = l4.tcp_flags else {
        return Err("XDP_TX of a UDP packet".into());
    };
    if flags & 0x04 != 0 {
        return Err("answered a RST with XDP_TX".into());
    }
    let ip_len = if ip.v6 { 40 } else { 20 };
    let want_len = ip.offset + ip_len + 20;
    if output.len() != want_len {
        return Err(format!(
            "the RST is {} bytes, not {want_len} (headers only)",
            output.len()
        ));
    }
    if output[0..6] != input[6..12] || output[6..12] != input[0..6] {
        return Err("the RST's MACs are not the segment's, swapped".into());
    }
    if output[12..ip.offset] != input[12..ip.offset] {
        return Err("the RST's VLAN tags differ from the segment's".into());
    }
    let out = classify(output);
    let (Some(out_ip), Some(out_l4)) = (&out.ip, &out.l4) else {
        return Err("the RST has no readable IP and TCP headers".into());
    };
    if (out.src(), out.dst()) != (frame.dst(), frame.src()) || out_ip.proto != IPPROTO_TCP {
        return Err(format!(
            "the RST goes {:?} → {:?}, not back from the VIP to the client",
            out.src(),
            out.dst()
        ));
    }
    let h = &output[ip.offset..];
    if ip.v6 {
        if u16::from_be_bytes([h[4], h[5]]) != 20 || h[7] == 0 {
            return Err("the RST's IPv6 payload length is not 20 or its hop limit is 0".into());
        }
    } else if h[0] != 0x45
        || u16::from_be_bytes([h[2], h[3]]) != 40
        || h[8] == 0
        || u16::from_be_bytes([h[6], h[7]]) & 0x3FFF != 0
        || !same_sum(ones_complement_sum(&[&h[..20]]), 0xFFFF)
    {
        return Err("the RST's IPv4 header is not a 20-byte, 40-long, unfragmented header with a right checksum and a TTL".into());
    }
    let t = &output[out_l4.offset..];
    let pseudo = pseudo_addresses(output, out_ip);
    if !same_sum(
        ones_complement_sum(&[&pseudo, &[0, IPPROTO_TCP, 0, 20], &t[..20]]),
        0xFFFF,
    ) {
        return Err("the RST's TCP checksum is wrong".into());
    }
    if t[12] >> 4 != 5 {
        return Err("the RST has TCP options".into());
    }
    // RFC 9293 §3.10.7.1, from the segment's own fields.
    let seg = &input[l4.offset..];
    let seq = u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]);
    let ack = u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]);
    let declared = if ip.v6 {
        usize::from(u16::from_be_bytes([
            input[ip.offset + 4],
            input[ip.offset + 5],
        ]))
    } else {
        usize::from(u16::from_be_bytes([
            input[ip.offset + 2],
            input[ip.offset + 3],
        ]))
        .saturating_sub(ip.header_len)
    };
    let Some(data_len) = declared.checked_sub(usize::from(seg[12] >> 4) * 4) else {
        return Err("answered a segment whose IP length is shorter than its headers".into());
    };
    let (want_seq, want_ack, want_flags) = if flags & 0x10 != 0 {
        (ack, 0, 0x04)
    } else {
        let controls = u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
        let ack = seq.wrapping_add(data_len as u32).wrapping_add(controls);
        (0, ack, 0x14)
    };
    let got_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let got_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    if (got_seq, got_ack, t[13]) != (want_seq, want_ack, want_flags) {
        return Err(format!(
            "RST seq/ack/flags {got_seq}/{got_ack}/{:#04x}, RFC 9293 says {want_seq}/{want_ack}/{want_flags:#04x}",
            t[13]
        ));
    }
    Ok(Verdict::Reset)
}

/// For reports.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
