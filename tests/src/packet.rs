//! Packet builders for fixtures, built with `etherparse` so they do not
//! share code (or bugs) with the XDP program they test.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6FragmentHeader, Ipv6Header,
    PacketBuilder, VlanId,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

pub const PAYLOAD: &[u8] = b"elb fixture payload";

fn finish(builder_size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::with_capacity(builder_size);
    write(&mut frame);
    frame
}

/// IPv4 TCP SYN from the client to the LB.
pub fn tcp_v4(src_port: u16, dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(CLIENT_V4.octets(), LB_V4.octets(), 64)
        .tcp(src_port, dst_port, 1000, 64240)
        .syn();
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv4 TCP")
    })
}

pub fn udp_v4(src_port: u16, dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(CLIENT_V4.octets(), LB_V4.octets(), 64)
        .udp(src_port, dst_port);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv4 UDP")
    })
}

pub fn tcp_v6(src_port: u16, dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(CLIENT_V6.octets(), LB_V6.octets(), 64)
        .tcp(src_port, dst_port, 1000, 64240)
        .syn();
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv6 TCP")
    })
}

pub fn udp_v6(src_port: u16, dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(CLIENT_V6.octets(), LB_V6.octets(), 64)
        .udp(src_port, dst_port);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv6 UDP")
    })
}

pub fn icmp_v4_echo() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(CLIENT_V4.octets(), LB_V4.octets(), 64)
        .icmpv4_echo_request(1, 1);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid ICMP")
    })
}

pub fn icmp_v6_echo() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(CLIENT_V6.octets(), LB_V6.octets(), 64)
        .icmpv6_echo_request(1, 1);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid ICMPv6")
    })
}

/// An ARP request (EtherType 0x0806), padded to the Ethernet minimum.
pub fn arp() -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&CLIENT_V4.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&LB_V4.octets());
    frame.resize(60, 0);
    frame
}

/// IPv4 TCP behind one 802.1Q tag, or two (802.1ad outer) with `double`.
pub fn tcp_v4_vlan(double: bool) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let vlan = |id| VlanId::try_new(id).expect("valid VLAN id");
    let ip = if double {
        eth.double_vlan(vlan(100), vlan(200))
            .ipv4(CLIENT_V4.octets(), LB_V4.octets(), 64)
    } else {
        eth.single_vlan(vlan(100))
            .ipv4(CLIENT_V4.octets(), LB_V4.octets(), 64)
    };
    let b = ip.tcp(40000, 80, 1, 64240).syn();
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid VLAN TCP")
    })
}

/// IPv4 TCP with `option_words` 4-byte words of NOP options (IHL = 5 + n).
pub fn tcp_v4_with_ip_options(option_words: usize) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4.octets(), LB_V4.octets())
        .expect("valid IPv4 header");
    ip.options = Ipv4Options::try_from(&vec![1u8; option_words * 4][..]).expect("valid options");
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 1, 64240)
        .syn();
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid TCP with IP options")
    })
}

/// An IPv4 UDP fragment: the first one (`offset_units == 0`, MF set) or a
/// later one.
pub fn udp_v4_fragment(offset_units: u16, more_fragments: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, CLIENT_V4.octets(), LB_V4.octets())
        .expect("valid IPv4 header");
    ip.more_fragments = more_fragments;
    ip.fragment_offset = IpFragOffset::try_new(offset_units).expect("valid offset");
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .udp(40000, 53);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv4 fragment")
    })
}

/// IPv6 UDP behind a fragment extension header.
pub fn udp_v6_fragment() -> Vec<u8> {
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 0,
        next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: CLIENT_V6.octets(),
        destination: LB_V6.octets(),
    };
    let ext = etherparse::Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            IpNumber::UDP,
            IpFragOffset::ZERO,
            true,
            7,
        )),
        ..Default::default()
    };
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv6(ip, ext))
        .udp(40000, 53);
    finish(b.size(PAYLOAD.len()), |f| {
        b.write(f, PAYLOAD).expect("valid IPv6 fragment")
    })
}

/// Length of the headers of a fixture frame built here: everything before
/// [`PAYLOAD`]. Cutting a frame shorter than this truncates a header.
pub fn headers_len(frame: &[u8]) -> usize {
    assert!(frame.ends_with(PAYLOAD), "not a fixture frame with PAYLOAD");
    frame.len() - PAYLOAD.len()
}
