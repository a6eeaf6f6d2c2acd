//! Bounds-checked parsing of Ethernet / VLAN / IPv4 / IPv6 / TCP / UDP.
//!
//! Every access goes through [`header_at`], which checks the whole header
//! against `data_end` before handing out a pointer; checking single bytes
//! gets rewritten by LLVM into a form the verifier rejects.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use elb_common::counters::{IPPROTO_TCP, IPPROTO_UDP, ProtoCounter};

use crate::headers::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPV6_FRAGMENT, Ipv4Hdr,
    Ipv6Hdr, TcpHdr, UdpHdr, VlanHdr,
};

/// At most this many stacked VLAN tags are skipped (802.1ad QinQ).
const MAX_VLAN_TAGS: usize = 2;

/// A frame whose IP and TCP/UDP headers are all present.
pub struct L4Packet {
    pub ipv6: bool,
    pub ip_proto: u8,
    /// Offsets of the IP header and of the TCP/UDP header from the start
    /// of the frame (IPv4 options and VLAN tags make both variable).
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
}

/// An IP packet whose ports elb cannot read: an IP fragment (only the
/// first carries them), or IPv6 with extension headers. Only its addresses
/// are known.
pub struct Portless {
    pub ipv6: bool,
    pub l3_offset: usize,
}

/// What a frame turned out to be.
pub enum Parsed {
    /// IP packet with a complete TCP or UDP header.
    L4(L4Packet),
    Fragment(Portless),
    /// IPv6 whose next header is an extension header.
    Ipv6Extension(Portless),
    /// Anything else, with the counter slot it belongs to.
    Other(ProtoCounter),
}

/// IPv6 extension headers other than Fragment (RFC 8200 4, and the IANA
/// list): hop-by-hop, routing, destination options, AH, mobility, HIP,
/// shim6. Walking them is not supported, so the ports stay unknown.
const IPV6_EXTENSION_HEADERS: [u8; 7] = [0, 43, 60, 51, 135, 139, 140];

/// Pointer to a `T` at `offset` from the start of the frame, if the whole
/// `T` lies inside the frame.
#[inline(always)]
pub fn header_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = header_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other(ProtoCounter::Malformed);
    };
    // SAFETY: header_at checked that the whole header is inside the frame.
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type });
    let mut l3_offset = size_of::<EthHdr>();

    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = header_at::<VlanHdr>(ctx, l3_offset) else {
            return Parsed::Other(ProtoCounter::Malformed);
        };
        // SAFETY: bounds checked by header_at.
        ether_type = u16::from_be_bytes(unsafe { (*vlan).ether_type });
        l3_offset += size_of::<VlanHdr>();
    }

    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_offset),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_offset),
        _ => Parsed::Other(ProtoCounter::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_offset: usize) -> Parsed {
    let Some(ip) = header_at::<Ipv4Hdr>(ctx, l3_offset) else {
        return Parsed::Other(ProtoCounter::Malformed);
    };
    // SAFETY: bounds checked by header_at.
    let (version_ihl, frag_off, ip_proto) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be_bytes((*ip).frag_off),
            (*ip).protocol,
        )
    };
    let header_len = ((version_ihl & 0x0F) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < size_of::<Ipv4Hdr>() {
        return Parsed::Other(ProtoCounter::Malformed);
    }
    if frag_off & Ipv4Hdr::FRAGMENT_MASK != 0 {
        return Parsed::Fragment(Portless {
            ipv6: false,
            l3_offset,
        });
    }
    l4(ctx, false, ip_proto, l3_offset, l3_offset + header_len)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_offset: usize) -> Parsed {
    let Some(ip) = header_at::<Ipv6Hdr>(ctx, l3_offset) else {
        return Parsed::Other(ProtoCounter::Malformed);
    };
    // SAFETY: bounds checked by header_at.
    let (version, next_header) = unsafe { ((*ip).version_class_flow[0] >> 4, (*ip).next_header) };
    if version != 6 {
        return Parsed::Other(ProtoCounter::Malformed);
    }
    let portless = Portless {
        ipv6: true,
        l3_offset,
    };
    if next_header == IPPROTO_IPV6_FRAGMENT {
        return Parsed::Fragment(portless);
    }
    if IPV6_EXTENSION_HEADERS.contains(&next_header) {
        return Parsed::Ipv6Extension(portless);
    }
    l4(
        ctx,
        true,
        next_header,
        l3_offset,
        l3_offset + size_of::<Ipv6Hdr>(),
    )
}

/// Checks that the TCP or UDP header at `l4_offset` is complete.
#[inline(always)]
fn l4(ctx: &XdpContext, ipv6: bool, ip_proto: u8, l3_offset: usize, l4_offset: usize) -> Parsed {
    let tcp_flags = match ip_proto {
        IPPROTO_TCP => match header_at::<TcpHdr>(ctx, l4_offset) {
            // SAFETY: bounds checked by header_at.
            Some(tcp) if (unsafe { (*tcp).data_offset } >> 4) >= 5 => unsafe { (*tcp).flags },
            _ => return Parsed::Other(ProtoCounter::Malformed),
        },
        IPPROTO_UDP => match header_at::<UdpHdr>(ctx, l4_offset) {
            Some(_) => 0,
            None => return Parsed::Other(ProtoCounter::Malformed),
        },
        _ => return Parsed::Other(ProtoCounter::for_l4(ipv6, ip_proto)),
    };
    Parsed::L4(L4Packet {
        ipv6,
        ip_proto,
        l3_offset,
        l4_offset,
        tcp_flags,
    })
}
