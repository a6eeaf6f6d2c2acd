//! Map types of the L4 data plane: services (VIPs), servers, Maglev tables,
//! the connection table, the deny-list and statistics.
//!
//! Addresses are 16-byte arrays in network order: IPv6 as is, IPv4 in the
//! first 4 bytes with the rest zero. Ports are network-order byte arrays, as
//! in the packet, so the XDP program copies them without swapping.

/// Address family tags used in keys.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Service ids index the per-service maps; `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 256;
/// Server ids index the server map; `0..MAX_SERVERS`.
pub const MAX_SERVERS: u32 = 4096;
/// Capacity of every per-service Maglev table (the inner maps); a service's
/// `table_size` may be any prime up to this.
pub const MAGLEV_CAPACITY: u32 = 131_071;
/// Entries of the connection table by default (`--conn-table-size`);
/// every NAT'd flow takes two (the client's direction and the reply
/// direction).
pub const MAX_FLOW_ENTRIES: u32 = 524_288;
/// Entries of the embryonic table by default (`--embryonic-table-size`):
/// flows live there from their first packet until their handshake is
/// complete ([`crate::embryo`]), two entries each.
pub const EMBRYO_ENTRIES: u32 = 65_536;
/// Smallest size either table may be given: two flows per CPU at least,
/// on any machine elb runs on, and the LRU's per-CPU free lists need room.
pub const MIN_TABLE_ENTRIES: u32 = 1_024;
/// Largest: the kernel preallocates every entry of an LRU hash.
pub const MAX_TABLE_ENTRIES: u32 = 1 << 26;
pub const MAX_ACL_ENTRIES: u32 = 65_536;
pub const MAX_INTERFACES: u32 = 256;
pub const MAX_L7_PORTS: u32 = 64;

/// Source ports full NAT allocates from, inclusive, unless userspace loads
/// the program with others (`--nat-ports`; see [`crate::nat::NatPorts`]):
/// every unprivileged port below Linux's default ephemeral range
/// (32768-60999), so NAT'd flows never take a port the node's own
/// connections could pick. Userspace checks `ip_local_port_range` against
/// the range in use at start.
pub const NAT_PORT_MIN: u16 = 1_024;
pub const NAT_PORT_MAX: u16 = 32_767;

/// Idle lifetimes of connection-table entries, in nanoseconds.
pub const TCP_IDLE_NS: u64 = 3_600 * 1_000_000_000;
/// After a FIN or RST: long enough for the close handshake to finish.
pub const TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const UDP_IDLE_NS: u64 = 30 * 1_000_000_000;
/// An embryonic TCP flow (handshake not complete): conntrack's
/// `nf_conntrack_tcp_timeout_syn_sent`. Embryonic UDP flows use
/// `UDP_IDLE_NS`.
pub const TCP_EMBRYONIC_NS: u64 = 120 * 1_000_000_000;
/// An embryonic reply entry whose client-side entry is gone (evicted by a
/// flood) and whose server has been silent this long gives up its NAT port
/// to a new flow that probes it. Without this the allocator's own lookups
/// keep such entries recently used, so a flood leaves the embryonic table
/// full of them, each holding a port for `TCP_EMBRYONIC_NS`. A handshake
/// takes about a round trip, far less; a new flow's client side is
/// inserted microseconds after its reply entry (`last_seen` is exact at
/// creation). `bench xdp` near exhaustion: with 2 s, a fast flood's
/// orphans were mostly younger, and up to 15% of SYNs were refused.
pub const EMBRYO_ORPHAN_NS: u64 = 250_000_000;
const _: () = assert!(EMBRYO_ORPHAN_NS < TCP_CLOSING_NS && EMBRYO_ORPHAN_NS < UDP_IDLE_NS);
/// Slots of `elb_l4_gen`, the generation numbers userspace bumps when what
/// a flow entry caches may have gone stale. One slot each, not one struct:
/// the deny-list writer and the route watcher bump theirs independently,
/// and a read-modify-write of a shared value could undo the other's bump.
///
/// The deny-list: bumped after every change of `elb_acl_v4`/`elb_acl_v6`.
pub const GEN_ACL: u32 = 0;
/// Routes, neighbours and links: bumped on every rtnetlink notification, so
/// cached next hops are looked up again in the FIB.
pub const GEN_ROUTE: u32 = 1;
pub const GEN_SLOTS: u32 = 2;

/// The generation after `generation`. Never 0: a flow entry's 0 means
/// "never checked", and must not match a current generation.
#[inline(always)]
pub fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}
/// `last_seen` is only rewritten when it is older than this, so the packets
/// of a busy flow do not all write to the shared entry.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// `elb_services` key: a VIP. Aligned (no padding: 20 bytes either way) so
/// that the XDP program copies its address in words, not byte by byte.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// `elb_services` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Index into `elb_maglev` and `elb_svc_stats`.
    pub id: u32,
    /// Slots of the service's Maglev table in use (a prime).
    pub table_size: u32,
    /// `SERVICE_HAS_SNAT`.
    pub flags: u32,
    pub _pad: u32,
    /// The SNAT address when `SERVICE_HAS_SNAT` is set; otherwise the
    /// egress interface's address from `elb_iface_addrs`.
    pub snat: [u8; 16],
}

pub const SERVICE_HAS_SNAT: u32 = 1;
/// With `SERVICE_HAS_SNAT`: the service has a pool of SNAT addresses, in
/// `elb_snat_pools` at its id (`snat` is the pool's first address).
pub const SERVICE_SNAT_POOL: u32 = 2;

/// `elb_servers` value, indexed by server id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerEntry {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub family: u8,
    pub _pad: u8,
}

/// `elb_flows` key: a packet's 5-tuple as it arrives. Aligned (no
/// padding: 40 bytes either way) so that the XDP program fills and copies
/// keys in words, not byte by byte or through the byte-loop `memset` /
/// `memmove` subprograms.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `elb_flows` value: how to rewrite a packet of the flow, and where it goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub new_src: [u8; 16],
    pub new_dst: [u8; 16],
    pub new_src_port: [u8; 2],
    pub new_dst_port: [u8; 2],
    pub service_id: u16,
    pub server_id: u16,
    /// `FLOW_*` bits.
    pub flags: u32,
    /// Cached next hop: valid while `route_gen` is the current
    /// [`GEN_ROUTE`] generation.
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The [`GEN_ACL`] generation at which the flow's source last passed
    /// the deny-list; 0 = never. (Was padding: entries of an older elb,
    /// adopted, hold 0 here and are checked again.)
    pub acl_gen: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet (coarsened).
    pub last_seen: u64,
    /// The [`GEN_ROUTE`] generation the next hop was looked up at; 0 =
    /// never (or the lookup gave no complete next hop).
    pub route_gen: u32,
    /// Embryonic reply entries under `FLOW_CHECK_ACK`: the sequence number
    /// of the server's SYN-ACK (network order), which the client must
    /// acknowledge for the flow to be promoted.
    pub server_isn: [u8; 4],
}

/// The entry translates replies (server → node) back to the client.
pub const FLOW_REPLY: u32 = 1;
/// A FIN or RST was seen: the entry expires after `TCP_CLOSING_NS`.
pub const FLOW_CLOSING: u32 = 2;
/// The flow's server was drained (userspace marks both entries at the end
/// of its deregistration delay). The client's next TCP segment is answered
/// with a RST, its next SYN or UDP datagram starts a new flow, the
/// server's late packets are dropped; either way XDP removes both entries.
pub const FLOW_DRAINED: u32 = 4;
/// The entry is in the embryonic table (`elb_embryos`): its flow has not
/// completed its handshake ([`crate::embryo`]).
pub const FLOW_EMBRYONIC: u32 = 8;
/// On an embryonic reply entry: the server has answered.
pub const FLOW_SEEN_REPLY: u32 = 16;
/// On an embryonic reply entry: the answer was a SYN-ACK; the client must
/// acknowledge `server_isn` for the flow to be promoted.
pub const FLOW_CHECK_ACK: u32 = 32;
/// Flags that only mean something in the embryonic table; cleared when a
/// flow is promoted.
pub const EMBRYO_FLAGS: u32 = FLOW_EMBRYONIC | FLOW_SEEN_REPLY | FLOW_CHECK_ACK;

/// `elb_iface_addrs` value, keyed by ifindex: the source addresses full NAT
/// uses for flows leaving by that interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceAddrs {
    pub v6: [u8; 16],
    pub v4: [u8; 4],
    /// `IFACE_HAS_V4` | `IFACE_HAS_V6`.
    pub flags: u32,
}

pub const IFACE_HAS_V4: u32 = 1;
pub const IFACE_HAS_V6: u32 = 2;

/// Per-service counters (`elb_svc_stats`, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl ServiceStats {
    /// Adds another CPU's counts to these.
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

/// Data-plane-wide counters (`elb_global_stats`, one slot per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Packets of a VIP or a reply that found their flow entry.
    pub flow_hits: u64,
    /// Packets to a VIP that found no (live) flow entry and picked a server
    /// (a TCP SYN without ACK, or any UDP datagram).
    pub flow_misses: u64,
    /// Packets to a VIP whose service has no server (empty table).
    pub no_server_drops: u64,
    /// NAT'd packets handed to the kernel because the FIB could not give a
    /// complete next hop (no neighbour entry yet, forwarding disabled, ...).
    pub fib_fallbacks: u64,
    /// New flows dropped because no NAT port was free on any of their
    /// SNAT addresses (per server: `elb_srv_nat_fail`).
    pub port_alloc_failures: u64,
    /// Packets dropped by the deny-list.
    pub acl_drops: u64,
    /// New flows dropped because no SNAT address was known for the egress
    /// interface.
    pub no_snat_drops: u64,
    /// Packets whose ports elb cannot read (IP fragments, IPv6 with
    /// extension headers), passed to the kernel untouched. Counted whatever
    /// their destination: without ports, elb cannot tell a service's
    /// packets from the node's own.
    pub unsupported_passes: u64,
    /// TCP segments of a drained flow (`FLOW_DRAINED`) that did not start a
    /// connection, answered with a RST from XDP. Not counted as flow hits
    /// or misses.
    pub tcp_resets: u64,
    /// Packets from a server on a drained flow, dropped: the client has
    /// been (or will be) told by a RST.
    pub drained_drops: u64,
    /// Flows moved from the embryonic table into the main one: their
    /// handshake completed ([`crate::embryo`]).
    pub promotions: u64,
}

impl GlobalStats {
    /// Adds another CPU's counts to these.
    pub fn add(&mut self, other: &Self) {
        let fields = [
            (&mut self.flow_hits, other.flow_hits),
            (&mut self.flow_misses, other.flow_misses),
            (&mut self.no_server_drops, other.no_server_drops),
            (&mut self.fib_fallbacks, other.fib_fallbacks),
            (&mut self.port_alloc_failures, other.port_alloc_failures),
            (&mut self.acl_drops, other.acl_drops),
            (&mut self.no_snat_drops, other.no_snat_drops),
            (&mut self.unsupported_passes, other.unsupported_passes),
            (&mut self.tcp_resets, other.tcp_resets),
            (&mut self.drained_drops, other.drained_drops),
            (&mut self.promotions, other.promotions),
        ];
        for (sum, value) in fields {
            *sum = sum.wrapping_add(value);
        }
    }

    /// Field names and values in declaration order, for stats output.
    pub fn fields(&self) -> [(&'static str, u64); 11] {
        [
            ("flow_hits", self.flow_hits),
            ("flow_misses", self.flow_misses),
            ("no_server_drops", self.no_server_drops),
            ("fib_fallbacks", self.fib_fallbacks),
            ("port_alloc_failures", self.port_alloc_failures),
            ("acl_drops", self.acl_drops),
            ("no_snat_drops", self.no_snat_drops),
            ("unsupported_passes", self.unsupported_passes),
            ("tcp_resets", self.tcp_resets),
            ("drained_drops", self.drained_drops),
            ("promotions", self.promotions),
        ]
    }
}

/// The hash that picks a flow's Maglev slot and its first NAT port. Both
/// data planes (XDP and the userspace fallback) use it, so they choose the
/// same server for the same flow. A murmur3-style mix of the tuple's 32-bit
/// words: cheap in BPF, and good enough spreading for slot choice.
#[inline(always)]
pub fn flow_hash(
    src: &[u8; 16],
    dst: &[u8; 16],
    src_port: [u8; 2],
    dst_port: [u8; 2],
    proto: u8,
) -> u32 {
    let mut h: u32 = 0x9747_b28c ^ u32::from(proto);
    let mut i = 0;
    while i < 4 {
        h = mix(h, word(src, i));
        h = mix(h, word(dst, i));
        i += 1;
    }
    h = mix(
        h,
        u32::from_be_bytes([src_port[0], src_port[1], dst_port[0], dst_port[1]]),
    );
    finalize(h)
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_be_bytes([
        bytes[i * 4],
        bytes[i * 4 + 1],
        bytes[i * 4 + 2],
        bytes[i * 4 + 3],
    ])
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub(crate) fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<ServiceEntry>(), 32);
        assert_eq!(size_of::<ServerEntry>(), 20);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowEntry>(), 80);
        assert_eq!(align_of::<FlowEntry>(), 8);
        assert_eq!(size_of::<IfaceAddrs>(), 24);
        assert_eq!(size_of::<ServiceStats>(), 24);
        assert_eq!(
            size_of::<GlobalStats>(),
            8 * GlobalStats::default().fields().len()
        );
    }

    #[test]
    fn generations_skip_zero_and_always_change() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u32::MAX), 1, "0 means never checked");
        for g in [0, 1, 7, u32::MAX - 1, u32::MAX] {
            assert_ne!(next_generation(g), g);
            assert_ne!(next_generation(g), 0);
        }
    }

    #[test]
    fn global_stats_add_and_list_every_field() {
        // No `..Default::default()`: a new field must be added here too.
        let one = GlobalStats {
            flow_hits: 1,
            flow_misses: 2,
            no_server_drops: 3,
            fib_fallbacks: 4,
            port_alloc_failures: 5,
            acl_drops: 6,
            no_snat_drops: 7,
            unsupported_passes: 8,
            tcp_resets: 9,
            drained_drops: 10,
            promotions: 11,
        };
        let mut sum = one;
        sum.add(&one);
        let values: Vec<u64> = one.fields().iter().map(|(_, v)| *v).collect();
        assert_eq!(
            values,
            (1..=11).collect::<Vec<_>>(),
            "fields() lists each once"
        );
        for ((name, twice), (_, once)) in sum.fields().into_iter().zip(one.fields()) {
            assert_eq!(twice, 2 * once, "{name}");
        }
    }

    #[test]
    fn flow_hash_is_stable_and_direction_sensitive() {
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let h = flow_hash(&a, &b, [0x30, 0x39], [0, 80], 6);
        const GOLDEN: u32 = 1_664_136_683;
        // Golden value: both data planes and every elb node must agree, so
        // a change here is a compatibility break.
        assert_eq!(h, GOLDEN);
        assert_ne!(h, flow_hash(&b, &a, [0, 80], [0x30, 0x39], 6));
        assert_ne!(h, flow_hash(&a, &b, [0x30, 0x3a], [0, 80], 6));
        assert_ne!(h, flow_hash(&a, &b, [0x30, 0x39], [0, 80], 17));
    }
}
