//! Every map the program uses. Names and value types come from
//! `elb_common::{maps, l4}`; userspace pins them all under
//! `/sys/fs/bpf/elb/<name>/` and adopts them on restart.
use aya_ebpf::btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray};
use aya_ebpf::macros::btf_map;
use elb_common::{
    counters::{PacketCounter, ProtoCounter},
    l4::{
        EMBRYO_ENTRIES, FlowEntry, FlowKey, GEN_SLOTS, GlobalStats, IfaceAddrs, MAGLEV_CAPACITY,
        MAX_ACL_ENTRIES, MAX_FLOW_ENTRIES, MAX_INTERFACES, MAX_L7_PORTS, MAX_SERVERS, MAX_SERVICES,
        ServerEntry, ServiceEntry, ServiceStats, VipKey,
    },
    nat::{MAX_SNAT_POOL, NatCursor, SnatPool},
    vip_ports::VipPorts,
};

use crate::fib::FibParams;

/// Per-CPU packet and byte counts per [`ProtoCounter`] slot.
#[btf_map(name = "elb_proto_stats")]
pub static PROTO_STATS: PerCpuArray<PacketCounter, { ProtoCounter::COUNT }> = PerCpuArray::new();

#[btf_map(name = "elb_services")]
pub static SERVICES: HashMap<VipKey, ServiceEntry, { MAX_SERVICES as usize }> = HashMap::new();

/// The VIP each service id serves, mirroring `SERVICES`: an established
/// flow's packet checks its service here (an array read) instead of
/// hashing the VIP; a zeroed slot (family 0) matches no packet.
#[btf_map(name = "elb_svc_vips")]
pub static SERVICE_VIPS: Array<VipKey, { MAX_SERVICES as usize }> = Array::new();

/// One slot: the ports services listen on (`elb_common::vip_ports`).
#[btf_map(name = "elb_vip_ports")]
pub static VIP_PORTS: Array<VipPorts, 1> = Array::new();

#[btf_map(name = "elb_servers")]
pub static SERVERS: Array<ServerEntry, { MAX_SERVERS as usize }> = Array::new();

/// One inner table per service id, replaced whole on every change so a
/// packet never sees a half-written table.
#[btf_map(name = "elb_maglev")]
pub static MAGLEV: ArrayOfMaps<
    Array<u32, { MAGLEV_CAPACITY as usize }>,
    { MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// Shared by all CPUs (not per-CPU): a reply may arrive on another CPU than
/// its flow's first packet, and port allocation needs one global view.
#[btf_map(name = "elb_flows")]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry, { MAX_FLOW_ENTRIES as usize }> = LruHashMap::new();

/// New flows until their handshake is complete (`elb_common::embryo`): a
/// flood of SYNs churns this table, never `FLOWS`. Userspace sizes both
/// (`--conn-table-size`, `--embryonic-table-size`).
#[btf_map(name = "elb_embryos")]
pub static EMBRYOS: LruHashMap<FlowKey, FlowEntry, { EMBRYO_ENTRIES as usize }> = LruHashMap::new();

#[btf_map(name = "elb_iface_addrs")]
pub static IFACE_ADDRS: HashMap<u32, IfaceAddrs, { MAX_INTERFACES as usize }> = HashMap::new();

#[btf_map(name = "elb_acl_v4")]
pub static ACL_V4: LpmTrie<[u8; 4], u32, { MAX_ACL_ENTRIES as usize }> = LpmTrie::new();

#[btf_map(name = "elb_acl_v6")]
pub static ACL_V6: LpmTrie<[u8; 16], u32, { MAX_ACL_ENTRIES as usize }> = LpmTrie::new();

#[btf_map(name = "elb_l7_ports")]
pub static L7_PORTS: HashMap<u32, u32, { MAX_L7_PORTS as usize }> = HashMap::new();

/// Generations userspace bumps (`elb_common::l4::GEN_*`): a flow entry's
/// deny-list check and next hop stay valid while theirs is current.
#[btf_map(name = "elb_l4_gen")]
pub static GENERATIONS: Array<u32, { GEN_SLOTS as usize }> = Array::new();

#[btf_map(name = "elb_svc_stats")]
pub static SERVICE_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map(name = "elb_srv_stats")]
pub static SERVER_STATS: PerCpuArray<PacketCounter, { MAX_SERVERS as usize }> = PerCpuArray::new();

#[btf_map(name = "elb_glob_stats")]
pub static GLOBAL_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();

/// SNAT pools of services with `SERVICE_SNAT_POOL`, by service id.
#[btf_map(name = "elb_snat_pools")]
pub static SNAT_POOLS: Array<SnatPool, { MAX_SERVICES as usize }> = Array::new();

/// Port-allocation cursors by (server id, SNAT pool index); shared by all
/// CPUs, as the port space is (see `elb_common::nat`).
#[btf_map(name = "elb_nat_cursor")]
pub static NAT_CURSORS: Array<NatCursor, { (MAX_SERVERS * MAX_SNAT_POOL) as usize }> = Array::new();

/// New flows dropped for want of a NAT port, per server id.
#[btf_map(name = "elb_nat_fail")]
pub static NAT_FAILURES: PerCpuArray<u64, { MAX_SERVERS as usize }> = PerCpuArray::new();

/// Working memory for one packet: flow keys, a flow entry and FIB
/// parameters do not fit on the 512-byte BPF stack together.
#[repr(C)]
pub struct Scratch {
    pub key: FlowKey,
    pub reply_key: FlowKey,
    /// The client-side key of the flow holding a NAT port a new flow
    /// wants (`lb::claim_reply_tuple`).
    pub owner_key: FlowKey,
    pub entry: FlowEntry,
    pub fib: FibParams,
}

#[btf_map(name = "elb_scratch")]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
