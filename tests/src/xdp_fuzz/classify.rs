//! What a frame is, read from the wire formats (RFC 791, 8200, 9293, 768,
//! IEEE 802.1Q/ad) by code of its own, not the XDP program's: where its
//! IP and TCP/UDP headers are, its addresses and ports. The checker
//! decides from this what the program may do with the frame.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use elb_common::counters::{IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_LEN: usize = 14;
/// elb reads up to two stacked tags (802.1Q, 802.1ad); a frame with more
/// is not IP as far as elb goes, and must pass.
pub const MAX_TAGS: usize = 2;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88A8;
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers elb does not walk (hop-by-hop, routing,
/// destination options, AH, mobility, HIP, shim6).
pub const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 60, 51, 135, 139, 140];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    pub v6: bool,
    pub offset: usize,
    /// IPv4: IHL × 4; IPv6: 40.
    pub header_len: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    /// An IPv4 fragment (MF or an offset) or an IPv6 fragment header.
    pub fragment: bool,
    /// IPv6 with an extension header other than Fragment.
    pub extension: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4 {
    pub offset: usize,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte; None for UDP.
    pub tcp_flags: Option<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub ip: Option<Ip>,
    /// Present when the ports are readable: an IP packet that is no
    /// fragment and has no IPv6 extension header, with a whole TCP header
    /// (data offset ≥ 5) or UDP header.
    pub l4: Option<L4>,
}

impl Frame {
    pub fn src(&self) -> Option<SocketAddr> {
        let (ip, l4) = (self.ip.as_ref()?, self.l4.as_ref()?);
        Some(SocketAddr::new(ip.src, l4.src_port))
    }

    pub fn dst(&self) -> Option<SocketAddr> {
        let (ip, l4) = (self.ip.as_ref()?, self.l4.as_ref()?);
        Some(SocketAddr::new(ip.dst, l4.dst_port))
    }

    /// Fragment or IPv6 extension header: an IP packet whose ports cannot
    /// be read.
    pub fn portless(&self) -> bool {
        self.ip
            .as_ref()
            .is_some_and(|ip| ip.fragment || ip.extension)
    }
}

fn u16_at(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

pub fn classify(frame: &[u8]) -> Frame {
    let Some(mut ether_type) = u16_at(frame, 12) else {
        return Frame::default();
    };
    let mut offset = ETH_LEN;
    for _ in 0..MAX_TAGS {
        if ether_type != TPID_8021Q && ether_type != TPID_8021AD {
            break;
        }
        let Some(next) = u16_at(frame, offset + 2) else {
            return Frame::default();
        };
        ether_type = next;
        offset += 4;
    }
    let ip = match ether_type {
        0x0800 => ipv4(frame, offset),
        0x86DD => ipv6(frame, offset),
        _ => None,
    };
    let Some(ip) = ip else {
        return Frame::default();
    };
    let l4 = if ip.fragment || ip.extension {
        None
    } else {
        l4(frame, ip.offset + ip.header_len, ip.proto)
    };
    Frame { ip: Some(ip), l4 }
}

fn ipv4(frame: &[u8], offset: usize) -> Option<Ip> {
    let h = frame.get(offset..offset + 20)?;
    let header_len = usize::from(h[0] & 0x0F) * 4;
    if h[0] >> 4 != 4 || header_len < 20 {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    Some(Ip {
        v6: false,
        offset,
        header_len,
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]).into(),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]).into(),
        proto: h[9],
        // MF or a fragment offset; DF (0x4000) alone is no fragment.
        fragment: frag & 0x3FFF != 0,
        extension: false,
    })
}

fn ipv6(frame: &[u8], offset: usize) -> Option<Ip> {
    let h = frame.get(offset..offset + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> IpAddr {
        let octets: [u8; 16] = h[at..at + 16].try_into().expect("16 bytes");
        Ipv6Addr::from(octets).into()
    };
    Some(Ip {
        v6: true,
        offset,
        header_len: 40,
        src: addr(8),
        dst: addr(24),
        proto: h[6],
        fragment: h[6] == IPV6_FRAGMENT,
        extension: IPV6_EXTENSIONS.contains(&h[6]),
    })
}

fn l4(frame: &[u8], offset: usize, proto: u8) -> Option<L4> {
    let (len, tcp) = match proto {
        IPPROTO_TCP => (20, true),
        IPPROTO_UDP => (8, false),
        _ => return None,
    };
    let h = frame.get(offset..offset + len)?;
    if tcp && h[12] >> 4 < 5 {
        return None;
    }
    Some(L4 {
        offset,
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        tcp_flags: tcp.then(|| h[13]),
    })
}
