//! Packet classification counters.
//!
//! The XDP program classifies every frame it sees into exactly one
//! [`ProtoCounter`] slot; userspace sums the per-CPU copies.

/// Packets and bytes seen for one class of traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketCounter {
    /// Adds another CPU's (or frame's) counts to this one.
    #[inline(always)]
    pub fn add(&mut self, packets: u64, bytes: u64) {
        self.packets = self.packets.wrapping_add(packets);
        self.bytes = self.bytes.wrapping_add(bytes);
    }
}

/// The slot a frame is counted in. Discriminants are the array indices.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoCounter {
    Ipv4Tcp = 0,
    Ipv4Udp = 1,
    /// IPv4 carrying neither TCP nor UDP (ICMP, GRE, ...).
    Ipv4Other = 2,
    Ipv6Tcp = 3,
    Ipv6Udp = 4,
    Ipv6Other = 5,
    /// IPv4 or IPv6 fragments: only the first one carries the L4 header, so
    /// none of them is classified by L4 protocol.
    IpFragment = 6,
    /// Ethernet frames that carry neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NonIp = 7,
    /// A header at some layer is cut short or invalid (IPv4 IHL < 5, wrong IP
    /// version, TCP data offset < 5, ...).
    Malformed = 8,
}

impl ProtoCounter {
    /// Number of slots, i.e. the counter map's `max_entries`.
    pub const COUNT: usize = 9;

    pub const ALL: [ProtoCounter; Self::COUNT] = [
        Self::Ipv4Tcp,
        Self::Ipv4Udp,
        Self::Ipv4Other,
        Self::Ipv6Tcp,
        Self::Ipv6Udp,
        Self::Ipv6Other,
        Self::IpFragment,
        Self::NonIp,
        Self::Malformed,
    ];

    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name, used in logs, stats output and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4Tcp => "ipv4_tcp",
            Self::Ipv4Udp => "ipv4_udp",
            Self::Ipv4Other => "ipv4_other",
            Self::Ipv6Tcp => "ipv6_tcp",
            Self::Ipv6Udp => "ipv6_udp",
            Self::Ipv6Other => "ipv6_other",
            Self::IpFragment => "ip_fragment",
            Self::NonIp => "non_ip",
            Self::Malformed => "malformed",
        }
    }

    /// The slot for an IP packet whose L4 header is complete, given the
    /// address family and the IP protocol number.
    #[inline(always)]
    pub const fn for_l4(ipv6: bool, ip_proto: u8) -> Self {
        match (ipv6, ip_proto) {
            (false, IPPROTO_TCP) => Self::Ipv4Tcp,
            (false, IPPROTO_UDP) => Self::Ipv4Udp,
            (false, _) => Self::Ipv4Other,
            (true, IPPROTO_TCP) => Self::Ipv6Tcp,
            (true, IPPROTO_UDP) => Self::Ipv6Udp,
            (true, _) => Self::Ipv6Other,
        }
    }
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_match_their_position() {
        assert_eq!(ProtoCounter::ALL.len(), ProtoCounter::COUNT);
        for (position, slot) in ProtoCounter::ALL.iter().enumerate() {
            assert_eq!(slot.index() as usize, position, "{}", slot.name());
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = ProtoCounter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ProtoCounter::COUNT);
    }

    #[test]
    fn l4_classification_by_family_and_protocol() {
        assert_eq!(ProtoCounter::for_l4(false, 6), ProtoCounter::Ipv4Tcp);
        assert_eq!(ProtoCounter::for_l4(false, 17), ProtoCounter::Ipv4Udp);
        assert_eq!(ProtoCounter::for_l4(false, 1), ProtoCounter::Ipv4Other);
        assert_eq!(ProtoCounter::for_l4(true, 6), ProtoCounter::Ipv6Tcp);
        assert_eq!(ProtoCounter::for_l4(true, 17), ProtoCounter::Ipv6Udp);
        assert_eq!(ProtoCounter::for_l4(true, 58), ProtoCounter::Ipv6Other);
    }

    #[test]
    fn counter_layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<PacketCounter>(), 16);
        assert_eq!(core::mem::align_of::<PacketCounter>(), 8);
    }

    #[test]
    fn counter_add_wraps_instead_of_panicking() {
        let mut c = PacketCounter {
            packets: u64::MAX,
            bytes: 1,
        };
        c.add(2, 3);
        assert_eq!(
            c,
            PacketCounter {
                packets: 1,
                bytes: 4
            }
        );
    }
}
