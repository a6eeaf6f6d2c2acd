//! Names of the BPF maps the XDP program declares.
//!
//! Kernel object names are limited to 15 characters (`BPF_OBJ_NAME_LEN - 1`);
//! userspace finds maps and pins them under these names, so they live here.

/// Per-CPU array of [`crate::counters::PacketCounter`], indexed by
/// [`crate::counters::ProtoCounter`].
pub const PROTO_STATS: &str = "elb_proto_stats";

/// Hash of [`crate::l4::VipKey`] → [`crate::l4::ServiceEntry`].
pub const SERVICES: &str = "elb_services";
/// Array of [`crate::l4::VipKey`] by service id: the VIP each service
/// serves (zeroed: none), kept in step with [`SERVICES`]. An established
/// flow's packet checks its service there instead of hashing the VIP.
pub const SERVICE_VIPS: &str = "elb_svc_vips";
/// One-slot array of [`crate::vip_ports::VipPorts`]: the ports services
/// listen on; packets to other ports skip the early flow lookup.
pub const VIP_PORTS: &str = "elb_vip_ports";
/// Array of [`crate::l4::ServerEntry`], indexed by server id.
pub const SERVERS: &str = "elb_servers";
/// Array of maps, indexed by service id: each inner map is an array of
/// server ids, the service's Maglev lookup table.
pub const MAGLEV: &str = "elb_maglev";
/// LRU hash of [`crate::l4::FlowKey`] → [`crate::l4::FlowEntry`].
pub const FLOWS: &str = "elb_flows";
/// LRU hash of [`crate::l4::FlowKey`] → [`crate::l4::FlowEntry`]: flows
/// whose handshake is not complete ([`crate::embryo`]).
pub const EMBRYOS: &str = "elb_embryos";
/// Hash of ifindex → [`crate::l4::IfaceAddrs`].
pub const IFACE_ADDRS: &str = "elb_iface_addrs";
/// LPM tries of denied source prefixes (IPv4 and IPv6).
pub const ACL_V4: &str = "elb_acl_v4";
pub const ACL_V6: &str = "elb_acl_v6";
/// Hash of TCP port (host order, as u32) → 1: the L7 listener ports the
/// deny-list also guards.
pub const L7_PORTS: &str = "elb_l7_ports";
/// Per-CPU [`crate::l4::ServiceStats`] by service id.
pub const SERVICE_STATS: &str = "elb_svc_stats";
/// Per-CPU [`crate::counters::PacketCounter`] by server id.
pub const SERVER_STATS: &str = "elb_srv_stats";
/// Per-CPU [`crate::l4::GlobalStats`], one slot.
pub const GLOBAL_STATS: &str = "elb_glob_stats";

/// Array of [`crate::nat::SnatPool`] by service id: the SNAT pools of
/// services with `SERVICE_SNAT_POOL`.
pub const SNAT_POOLS: &str = "elb_snat_pools";
/// Array of [`crate::nat::NatCursor`] by
/// [`crate::nat::NatCursor::slot`]`(server id, pool index)`.
pub const NAT_CURSORS: &str = "elb_nat_cursor";
/// Per-CPU `u64` by server id: new flows to the server dropped because no
/// NAT port was free.
pub const NAT_FAILURES: &str = "elb_nat_fail";
/// Array of u32 generations, indexed by [`crate::l4::GEN_ACL`] and
/// [`crate::l4::GEN_ROUTE`]: userspace bumps one when the deny-list, or the
/// routes and neighbours, change; flow entries that cached a check or a
/// next hop at an older generation do it again.
pub const GENERATIONS: &str = "elb_l4_gen";

/// Every map the program declares, in the order userspace pins them.
pub const ALL: &[&str] = &[
    PROTO_STATS,
    SERVICES,
    SERVICE_VIPS,
    VIP_PORTS,
    SERVERS,
    MAGLEV,
    FLOWS,
    EMBRYOS,
    IFACE_ADDRS,
    ACL_V4,
    ACL_V6,
    L7_PORTS,
    SERVICE_STATS,
    SERVER_STATS,
    GLOBAL_STATS,
    SNAT_POOLS,
    NAT_CURSORS,
    NAT_FAILURES,
    GENERATIONS,
];

/// The XDP program's load-time constants (`EbpfLoader::set_global`): the
/// NAT port range, `u16` each.
pub const NAT_PORT_MIN_GLOBAL: &str = "ELB_NAT_PORT_MIN";
pub const NAT_PORT_MAX_GLOBAL: &str = "ELB_NAT_PORT_MAX";

/// The XDP program's function name in the object file.
pub const XDP_PROGRAM: &str = "elb_xdp";

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].len() <= 15, "BPF object names are at most 15 bytes");
        i += 1;
    }
};
