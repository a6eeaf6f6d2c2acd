//! Bench-only programs for `cargo xtask bench xdp` (feature `bench`; built
//! into target/ebpf/elb-bench.bpf.o, never into the production object).
//!
//! `BPF_PROG_TEST_RUN` with `repeat` runs a program again and again on the
//! same buffer, so from the second run on elb would see its own NAT'd
//! output and time the wrong path. `elb_bench` therefore first copies a
//! template frame (kept in a map) over the whole frame, optionally gives it
//! a fresh source address and port (every run a new 5-tuple), and only then
//! runs elb's real per-frame code (`crate::process`, the very function
//! `elb_xdp` inlines). With `run_elb = 0` it does the same copy and
//! variation and skips elb: timing both in one run isolates elb's cost.
//! Every run's action is counted per CPU, so the bench can check that all
//! timed runs took the expected path.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    btf_maps::{Array, ArrayOfMaps, LruHashMap, PerCpuArray},
    helpers::{bpf_get_smp_processor_id, generated::bpf_xdp_store_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

use elb_common::l4::{FlowEntry, FlowKey, VipKey};

use crate::{
    headers::{EthHdr, Ipv4Hdr},
    maps::{FLOWS, SCRATCH, SERVICES, Scratch},
    parse::{L4Packet, Parsed, header_at},
};

/// Largest template frame.
pub const TEMPLATE_CAPACITY: usize = 256;
/// Slots of [`ACTIONS`]: one per XDP action (0..=4), then "anything else".
pub const ACTION_SLOTS: u32 = 6;

/// What `elb_bench` does on every run. The userspace runner
/// (tests/src/bin/bench_xdp.rs) declares the same layout.
#[repr(C)]
pub struct BenchConfig {
    /// Template length in bytes, 1..=[`TEMPLATE_CAPACITY`]; the frame
    /// handed to `BPF_PROG_TEST_RUN` has exactly this length.
    pub len: u32,
    /// What runs after the copy: [`RUN_EMPTY`], [`RUN_ELB`], [`RUN_FLOOR`]
    /// or [`RUN_NAT_FLOOR`].
    pub run_elb: u32,
    /// 1: a fresh IPv4 source address and TCP/UDP source port every run.
    pub vary: u32,
    pub empty_action: u32,
    /// [`RUN_FLOOR`] only: the connection table it uses, one of the
    /// `TABLE_*` constants.
    pub table: u32,
    /// [`RUN_FLOOR`] only: entries inserted on a miss, 1 or 2 (full NAT
    /// inserts the forward entry and the reply entry).
    pub inserts: u32,
}

/// Return `empty_action`, running nothing.
pub const RUN_EMPTY: u32 = 0;
/// elb's real per-frame code.
pub const RUN_ELB: u32 = 1;
/// The least any design with a VIP map and an LRU connection table must
/// do: parse the frame, look up its VIP (which must be found, else
/// XDP_ABORTED) and its 5-tuple, insert an entry if there was none (one
/// insert; full NAT needs two), then return `empty_action`.
pub const RUN_FLOOR: u32 = 2;
/// The least a full-NAT forward of an established flow must do: parse the
/// frame, look up its 5-tuple in `elb_flows` (which must be found, else
/// XDP_ABORTED), rewrite addresses, ports and checksums from the entry and
/// send it with the entry's cached next hop; nothing else (no VIP check,
/// clock, idle timeout, ACL generation, route generation, flags or
/// counters). elb's established path minus this is what those cost.
pub const RUN_NAT_FLOOR: u32 = 3;

/// elb's own shared connection table, `elb_flows` (524,288 entries).
pub const TABLE_SHARED: u32 = 0;
/// [`SMALL`]: a shared LRU of [`SMALL_ENTRIES`], the size of an
/// "embryonic" table for flows that have not completed their handshake.
pub const TABLE_SMALL: u32 = 1;
/// [`PER_CPU`]: one LRU per CPU, chosen by CPU id (Katran's layout).
pub const TABLE_PER_CPU: u32 = 2;

pub const SMALL_ENTRIES: usize = 65_536;
/// Outer slots of the per-CPU layouts: CPU ids the runner may fill.
pub const MAX_CPUS: usize = 64;
/// Slots of [`FLOOR_COUNTS`].
pub const FLOOR_SLOTS: u32 = 4;
/// [`FLOOR_COUNTS`] slots: lookups that found the 5-tuple, lookups that
/// did not, entries inserted, inserts that failed.
pub const FLOOR_HITS: u32 = 0;
pub const FLOOR_MISSES: u32 = 1;
pub const FLOOR_INSERTED: u32 = 2;
pub const FLOOR_INSERT_FAILURES: u32 = 3;

#[repr(C)]
pub struct Template {
    pub bytes: [u8; TEMPLATE_CAPACITY],
}

#[btf_map(name = "elb_bench_cfg")]
static CONFIG: Array<BenchConfig, 1> = Array::new();

#[btf_map(name = "elb_bench_tmpl")]
static TEMPLATE: Array<Template, 1> = Array::new();

/// Per-CPU run counts by returned action.
#[btf_map(name = "elb_bench_act")]
static ACTIONS: PerCpuArray<u64, { ACTION_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "elb_bench_small")]
static SMALL: LruHashMap<FlowKey, FlowEntry, SMALL_ENTRIES> = LruHashMap::new();

/// Per-CPU connection tables, as Katran keeps them: plain LRU hashes (not
/// `BPF_F_NO_COMMON_LRU`) in an array indexed by CPU id. The runner
/// creates the inner maps (a hash map's size is not part of the inner
/// map's type; the declared one is only the template's) and swaps sets of
/// them in to time each size. One outer map only: a lookup whose inner
/// map may come from two outer maps is not inlined by the verifier (it
/// becomes the generic `bpf_map_lookup_elem`, an indirect call), which
/// would time the bench's construction, not the layout.
#[btf_map(name = "elb_bench_pcpu")]
static PER_CPU: ArrayOfMaps<LruHashMap<FlowKey, FlowEntry, 1024>, MAX_CPUS> = ArrayOfMaps::new();

/// Per-CPU counts of what the lookups floor did (`FLOOR_*` slots), so the
/// runner can check every timed run took the path it times.
#[btf_map(name = "elb_bench_floor")]
static FLOOR_COUNTS: PerCpuArray<u64, { FLOOR_SLOTS as usize }> = PerCpuArray::new();

/// Per-CPU sequence number for `vary`.
#[btf_map(name = "elb_bench_seq")]
static SEQUENCE: PerCpuArray<u64, 1> = PerCpuArray::new();

/// The template copy around elb's path (or around nothing).
#[xdp]
pub fn elb_bench(ctx: XdpContext) -> u32 {
    let action = wrapped(&ctx);
    let slot = if action < ACTION_SLOTS - 1 {
        action
    } else {
        ACTION_SLOTS - 1
    };
    if let Some(count) = ACTIONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's own slot.
        unsafe { *count += 1 };
    }
    action
}

/// The trivial program every figure is compared with.
#[xdp]
pub fn elb_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn wrapped(ctx: &XdpContext) -> u32 {
    let (Some(config), Some(template)) = (CONFIG.get(0), TEMPLATE.get_ptr(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // 1..=TEMPLATE_CAPACITY in a form the verifier can bound (a size
    // argument must be known non-zero and within the template).
    let len = (config.len.wrapping_sub(1) & (TEMPLATE_CAPACITY as u32 - 1)) + 1;
    // SAFETY: the template is a map value of TEMPLATE_CAPACITY bytes; the
    // helper checks the frame bounds itself and fails if the frame is shorter.
    let copied = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template as *mut _, len) };
    if copied != 0 {
        return xdp_action::XDP_ABORTED;
    }
    if config.vary != 0 && !vary(ctx) {
        return xdp_action::XDP_ABORTED;
    }
    match config.run_elb {
        RUN_ELB => crate::process(ctx),
        RUN_FLOOR => {
            if lookups_floor(ctx, config) {
                config.empty_action
            } else {
                xdp_action::XDP_ABORTED
            }
        }
        RUN_NAT_FLOOR => nat_floor(ctx),
        RUN_EMPTY => config.empty_action,
        // An unknown mode fails every run, and so the bench.
        _ => xdp_action::XDP_ABORTED,
    }
}

/// See [`RUN_FLOOR`]: false if the VIP or the table was not found or an
/// insert failed.
#[inline(always)]
fn lookups_floor(ctx: &XdpContext, config: &BenchConfig) -> bool {
    let Some((_, scratch)) = keyed(ctx) else {
        return false;
    };
    let key = &scratch.key;
    let vip = VipKey {
        addr: key.dst,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    };
    if SERVICES.get_ptr(&vip).is_none() {
        return false;
    }
    let two = config.inserts == 2;
    match config.table {
        TABLE_SHARED => in_table(&FLOWS, scratch, two),
        TABLE_SMALL => in_table(&SMALL, scratch, two),
        TABLE_PER_CPU => {
            // SAFETY: plain helper call.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            match PER_CPU.get(cpu) {
                Some(table) => in_table(table, scratch, two),
                None => false,
            }
        }
        _ => false,
    }
}

/// Parses the frame (TCP or UDP only) and writes its 5-tuple into this
/// CPU's scratch key, as elb does first.
#[inline(always)]
fn keyed(ctx: &XdpContext) -> Option<(L4Packet, &'static mut Scratch)> {
    let Parsed::L4(packet) = crate::parse::parse(ctx) else {
        return None;
    };
    // SAFETY: this CPU's own scratch slot, used by one run at a time.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    if !crate::lb::fill_flow_key(ctx, &packet, &mut scratch.key) {
        return None;
    }
    Some((packet, scratch))
}

/// See [`RUN_NAT_FLOOR`].
#[inline(always)]
fn nat_floor(ctx: &XdpContext) -> u32 {
    let Some((packet, scratch)) = keyed(ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(flow) = FLOWS.get_ptr(&scratch.key) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: map values stay valid for this run.
    let entry = unsafe { &*flow };
    if !crate::nat::rewrite(ctx, &packet, entry) {
        return xdp_action::XDP_ABORTED;
    }
    crate::lb::transmit(ctx, entry.ifindex, &entry.src_mac, &entry.dst_mac)
}

/// The floor's table work: look up the 5-tuple; on a miss insert it, and
/// with `two` first a reply entry (the 5-tuple reversed, `BPF_NOEXIST` as
/// elb claims a NAT port), then the forward entry, as elb's new flows do.
#[inline(always)]
fn in_table<const N: usize>(
    table: &LruHashMap<FlowKey, FlowEntry, N>,
    scratch: &mut Scratch,
    two: bool,
) -> bool {
    if table.get_ptr(&scratch.key).is_some() {
        floor_count(FLOOR_HITS, 1);
        return true;
    }
    floor_count(FLOOR_MISSES, 1);
    if two {
        let (key, reply) = (&scratch.key, &mut scratch.reply_key);
        reply.src = key.dst;
        reply.dst = key.src;
        reply.src_port = key.dst_port;
        reply.dst_port = key.src_port;
        reply.proto = key.proto;
        reply.family = key.family;
        reply._pad = [0; 2];
        if table
            .insert(&scratch.reply_key, &scratch.entry, BPF_NOEXIST as u64)
            .is_err()
        {
            floor_count(FLOOR_INSERT_FAILURES, 1);
            return false;
        }
    }
    if table
        .insert(&scratch.key, &scratch.entry, BPF_ANY as u64)
        .is_err()
    {
        floor_count(FLOOR_INSERT_FAILURES, 1);
        return false;
    }
    floor_count(FLOOR_INSERTED, if two { 2 } else { 1 });
    true
}

#[inline(always)]
fn floor_count(slot: u32, n: u64) {
    if let Some(count) = FLOOR_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's own slot.
        unsafe { *count += n };
    }
}

/// Gives the (untagged IPv4, TCP or UDP) frame a source address and port
/// no earlier run on this CPU had: 10.<cpu>.<seq bits 0-15> and port
/// 1024 + (seq >> 16) % 64512. Checksums are left as they are: elb never
/// verifies them, and its incremental update costs the same for any value.
#[inline(always)]
fn vary(ctx: &XdpContext) -> bool {
    let Some(seq) = SEQUENCE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's own slot.
    let n = unsafe {
        *seq += 1;
        *seq
    };
    let Some(ip) = header_at::<Ipv4Hdr>(ctx, size_of::<EthHdr>()) else {
        return false;
    };
    let Some(ports) = header_at::<[u8; 4]>(ctx, size_of::<EthHdr>() + size_of::<Ipv4Hdr>()) else {
        return false;
    };
    // SAFETY: plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u8;
    let port = 1024 + ((n >> 16) % 64512) as u16;
    let (ip, ports) = (ip as *mut Ipv4Hdr, ports as *mut [u8; 4]);
    // SAFETY: bounds checked by header_at; XDP packet data is writable.
    unsafe {
        (*ip).src = [10, cpu, (n >> 8) as u8, n as u8];
        (*ports)[0] = (port >> 8) as u8;
        (*ports)[1] = port as u8;
    }
    true
}
