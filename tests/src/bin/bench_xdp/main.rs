//! `cargo xtask bench xdp`'s runner: ns per packet of elb's XDP paths
//! through `BPF_PROG_TEST_RUN`, next to a trivial XDP_PASS program timed in
//! the same run.
//!
//! It lives in the tests crate, not in xtask, because it needs aya, elb's
//! own map code (`L4Maps`, the Maglev planner) and the fixture network
//! (`L4Net`), all of which build on elb-userspace; xtask must stay buildable
//! on a fresh machine before `cargo xtask setup` has installed what
//! elb-userspace needs (protoc, the eBPF toolchain). xtask builds the bench
//! object and this binary, then runs it.
//!
//! With `repeat`, the kernel runs a program again and again on the same
//! buffer, so elb would see its own NAT'd output from the second run on.
//! The bench object's `elb_bench` wrapper (elb-ebpf/src/bench.rs) copies a
//! template frame over the buffer first, then runs elb's real code; the
//! same wrapper with elb's path switched off is timed in the same round,
//! and elb's figure is `trivial + (wrapper with elb − wrapper without)`.
//! Every timed run's action is counted by the wrapper and checked here,
//! together with the data plane's own counters.
//!
//! The lookups floor (parse, VIP lookup, 5-tuple lookup, insert on a miss)
//! is timed on several connection-table layouts: elb's shared
//! `elb_flows`, Katran's per-CPU LRUs (an ARRAY_OF_MAPS by CPU id, whose
//! inner maps this runner creates) at two sizes, and a small shared LRU;
//! for a hit, and for one or two inserts per new flow. The report ends
//! with issue 16's targets against Katran's fixed reference multiples.
//!
//! Usage: `bench-xdp --object target/ebpf/elb-bench.bpf.o [--rounds N] [--repeat N]`
//!
//! Last, its own phase (`exhaustion.rs`): the new-flow path of a 3-server
//! service held near port exhaustion.
//!
//! `--profile established|reply|non-vip|new-flow [--seconds N]` instead runs only elb's
//! path for that case, again and again for N seconds (checked as in the
//! bench), so a profiler (`perf record -e cpu-clock`) can sample it.
mod exhaustion;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Barrier},
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use elb_common::{
    counters::{IPPROTO_TCP, PacketCounter, ProtoCounter},
    l4::{FlowEntry, FlowKey, GlobalStats, MAX_FLOW_ENTRIES, ServerEntry, ServiceEntry},
    maps::{EMBRYOS, FLOWS, NAT_PORT_MAX_GLOBAL, NAT_PORT_MIN_GLOBAL, PROTO_STATS, XDP_PROGRAM},
};
use elb_tests::{
    l4_fixture::{
        CLIENT_MAC, CLIENT_V4, L4Net, LB_CLIENT_SIDE_MAC, LB_SERVER_SIDE_MAC, SNAT_V4, VIP_V4,
        server_v4, vip_key, write_iface_addrs,
    },
    privileges::root_and_bpf,
    xdp_fixture,
};
use elb_userspace::{
    l4::{maps::L4Maps, plan},
    sys::bpf::bpf,
    upstream::{Server, parse_params},
};
use etherparse::PacketBuilder;

/// Must match `elb-ebpf/src/bench.rs`.
const TEMPLATE_CAPACITY: usize = 256;
const ACTION_SLOTS: u32 = 6;
const FLOOR_SLOTS: u32 = 4;
const SMALL_ENTRIES: u32 = 65_536;
const MAX_CPUS: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BenchConfig {
    len: u32,
    run_elb: u32,
    vary: u32,
    empty_action: u32,
    table: u32,
    inserts: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Template {
    bytes: [u8; TEMPLATE_CAPACITY],
}

// SAFETY: plain `repr(C)` integers without padding.
unsafe impl Pod for BenchConfig {}
// SAFETY: a byte array.
unsafe impl Pod for Template {}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Katran's figures from issue 16, measured side by side on this machine
/// through the same wrapper, in multiples of the trivial program timed in
/// the same run. Katran cannot be part of this repository, so they are
/// fixed references, not measured here.
const KATRAN_ESTABLISHED: f64 = 5.9;
const KATRAN_NEW_FLOW: f64 = 31.7;
/// Issue 16's targets, × the trivial program: 0.8× Katran for an
/// established flow, 1.5× Katran for a new flow (full NAT also inserts a
/// reply entry).
const TARGET_ESTABLISHED: f64 = 4.7;
const TARGET_NEW_FLOW: f64 = 47.0;

/// Servers of the benchmarked service. A new flow's NAT port must be free
/// for its (server, SNAT address, server port) tuple, and each such tuple
/// has 12,768 ports (20000–32767) with 8 tries; the connection table holds
/// at most 262,144 reply entries, so with 1,000 servers at most ~2% of any
/// server's ports are taken and a port-allocation failure is ~1e-14 per
/// flow. The counters are checked anyway.
const SERVERS: u32 = 1000;
const SERVER_PORT: u16 = 8080;
/// The servers sit behind one permanent neighbour (a router), so the FIB
/// resolves all of them.
const SERVER_NET: &str = "10.89.0.0/16";
const MAGLEV_SLOTS: u32 = 65_537;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn server_addr(i: u32) -> SocketAddr {
    let ip = Ipv4Addr::new(10, 89, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::new(ip.into(), SERVER_PORT)
}

struct Args {
    object: PathBuf,
    rounds: usize,
    repeat: u32,
    /// `--profile`: only this case's elb path, for `seconds`.
    profile: Option<Case>,
    seconds: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        object: PathBuf::from("target/ebpf/elb-bench.bpf.o"),
        rounds: 5,
        repeat: 1_000_000,
        profile: None,
        seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--object" => args.object = value.into(),
            "--rounds" => args.rounds = value.parse().context("--rounds")?,
            "--repeat" => args.repeat = value.parse().context("--repeat")?,
            "--profile" => {
                args.profile = Some(match value.as_str() {
                    "established" => Case::Established,
                    "reply" => Case::Reply,
                    "non-vip" => Case::NonVip,
                    "new-flow" => Case::NewFlow,
                    other => {
                        bail!("--profile {other}: expected established, reply, non-vip or new-flow")
                    }
                })
            }
            "--seconds" => args.seconds = value.parse().context("--seconds")?,
            other => bail!("unknown flag {other}"),
        }
    }
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.repeat >= 1_000_000,
        "--repeat must be at least 1,000,000"
    );
    Ok(args)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench xdp: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    if let Err(why) = root_and_bpf() {
        bail!("needs root and BPF: {why}");
    }
    let net = L4Net::new().context("bench network namespace")?;
    net.lb
        .ip(&["route", "add", SERVER_NET, "via", &server_v4(0).to_string()])?;
    // The near-exhaustion phase's held flows answer to these clients.
    net.lb.ip(&[
        "route",
        "add",
        exhaustion::HELD_CLIENTS,
        "via",
        &CLIENT_V4.to_string(),
    ])?;
    let (client_ifindex, server_ifindex) = (net.client_ifindex, net.server_ifindex);
    // The FIB lookups resolve in the namespace of the thread that calls
    // BPF_PROG_TEST_RUN, so everything runs on a thread inside it.
    let report = net
        .lb
        .enter(move || bench(&args, client_ifindex, server_ifindex))??;
    drop(net);
    print!("{report}");
    Ok(())
}

/// One timed path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    NonVip,
    Established,
    Reply,
    NewFlow,
    /// A new flow to the 3-server service held near port exhaustion
    /// (`exhaustion.rs`): timed in its own phase, not in `ALL`.
    NearExhaustion,
}

impl Case {
    /// The order of a round: new flows come last, as their inserts evict
    /// older entries, this round's flow among them.
    const ALL: [Case; 4] = [Case::Established, Case::Reply, Case::NonVip, Case::NewFlow];

    fn name(self) -> &'static str {
        match self {
            Case::NonVip => "non-VIP packet (passed to the kernel)",
            Case::Established => "established flow (client → VIP, ACK)",
            Case::Reply => "reply (server → SNAT address, translated back)",
            Case::NewFlow => "new flow (SYN, fresh 5-tuple every run)",
            Case::NearExhaustion => {
                "new flow, 3-server service held near port exhaustion (SYN, fresh 5-tuple every run)"
            }
        }
    }

    /// Issue 16's target and Katran's reference, × the trivial program.
    fn target(self) -> Option<(f64, f64)> {
        match self {
            Case::Established => Some((TARGET_ESTABLISHED, KATRAN_ESTABLISHED)),
            Case::NewFlow => Some((TARGET_NEW_FLOW, KATRAN_NEW_FLOW)),
            _ => None,
        }
    }
}

/// A connection-table layout the lookups floor can use
/// (`BenchConfig::table`, the `TABLE_*` constants of elb-ebpf/src/bench.rs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Shared = 0,
    Small = 1,
    PerCpu = 2,
    /// Per-CPU tables of the full size: the same layout (`TABLE_PER_CPU`)
    /// with the other set of inner maps swapped in.
    PerCpuFull = 3,
}

impl Table {
    const ALL: [Table; 4] = [
        Table::Shared,
        Table::PerCpu,
        Table::PerCpuFull,
        Table::Small,
    ];

    fn name(self, cpus: u32) -> String {
        match self {
            Table::Shared => {
                format!("shared LRU `elb_flows`, {MAX_FLOW_ENTRIES} entries (today's)")
            }
            Table::PerCpu => format!(
                "per-CPU LRUs (ARRAY_OF_MAPS by CPU id), {MAX_FLOW_ENTRIES} / {cpus} possible CPUs = {} each",
                MAX_FLOW_ENTRIES / cpus
            ),
            Table::PerCpuFull => {
                format!("per-CPU LRUs (ARRAY_OF_MAPS by CPU id), {MAX_FLOW_ENTRIES} each")
            }
            Table::Small => format!("shared LRU, {SMALL_ENTRIES} entries (embryonic-table size)"),
        }
    }
}

/// What a floor run finds in its table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloorRun {
    /// The established flow's 5-tuple, present.
    Hit,
    /// A fresh 5-tuple every run, this many entries inserted.
    Insert(u32),
}

impl FloorRun {
    const ALL: [FloorRun; 3] = [FloorRun::Hit, FloorRun::Insert(1), FloorRun::Insert(2)];

    /// The floor runs timed on two CPUs at once, on today's table and on
    /// the per-CPU layout of the same total size.
    const CONTENDED: [(Table, FloorRun); 6] = [
        (Table::Shared, FloorRun::Hit),
        (Table::PerCpu, FloorRun::Hit),
        (Table::Shared, FloorRun::Insert(1)),
        (Table::PerCpu, FloorRun::Insert(1)),
        (Table::Shared, FloorRun::Insert(2)),
        (Table::PerCpu, FloorRun::Insert(2)),
    ];

    fn case(self) -> Case {
        match self {
            FloorRun::Hit => Case::Established,
            FloorRun::Insert(_) => Case::NewFlow,
        }
    }
}

struct Bench {
    ebpf: Ebpf,
    maps: L4Maps,
    config: Array<MapData, BenchConfig>,
    template: Array<MapData, Template>,
    actions: PerCpuArray<MapData, u64>,
    proto_stats: PerCpuArray<MapData, PacketCounter>,
    floor_counts: PerCpuArray<MapData, u64>,
    /// The per-CPU layout: the outer map, and its two sets of inner maps,
    /// one table per possible CPU each (see [`Bench::use_per_cpu_set`]).
    per_cpu: ArrayOfMaps<MapData, MapData>,
    per_cpu_split: Vec<MapData>,
    per_cpu_full: Vec<MapData>,
    /// Possible CPUs: the per-CPU layouts split the table by this.
    cpus: u32,
    repeat: u32,
}

/// Timings of one round, ns per run.
#[derive(Clone, Copy, Default)]
struct Sample {
    empty: f64,
    path: f64,
}

/// One round's timings: the trivial program, the production `elb_xdp` on
/// the non-VIP packet, each [`Case`] (in `Case::ALL` order), and the
/// lookups floor per [`Table`] and [`FloorRun`] (`[table][run]`, in their
/// `ALL` orders).
struct Round {
    trivial: f64,
    direct_non_vip: f64,
    samples: Vec<Sample>,
    /// The wrapper around the full-NAT forward floor ([`Mode::NatFloor`])
    /// on the established flow's packet, ns per run.
    nat_floor: f64,
    floors: Vec<Vec<f64>>,
    /// `FloorRun::CONTENDED`, ns per run (the two CPUs' mean); empty with
    /// one CPU.
    contended: Vec<f64>,
}

/// What the wrapper runs after its copy (`BenchConfig::run_elb`, the
/// `RUN_*` constants of elb-ebpf/src/bench.rs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Empty = 0,
    Elb = 1,
    Floor = 2,
    /// `RUN_NAT_FLOOR`: parse, 5-tuple lookup, NAT rewrite, send; nothing
    /// else.
    NatFloor = 3,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Empty => "empty path",
            Mode::Elb => "elb path",
            Mode::Floor => "lookups floor",
            Mode::NatFloor => "full-NAT forward floor",
        }
    }
}

fn bench(args: &Args, client_ifindex: u32, server_ifindex: u32) -> Result<String> {
    pin_to_one_cpu()?;
    let (min, max) = (exhaustion::NAT_PORT_MIN, exhaustion::NAT_PORT_MAX);
    let mut ebpf = EbpfLoader::new()
        .override_global(NAT_PORT_MIN_GLOBAL, &min, true)
        .override_global(NAT_PORT_MAX_GLOBAL, &max, true)
        .load_file(&args.object)
        .with_context(|| format!("loading {}", args.object.display()))?;
    for name in ["elb_bench", "elb_bench_pass", XDP_PROGRAM] {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{} has no program {name}", args.object.display()))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("loading {name} (verifier)"))?;
    }
    let mut connection_tables = exhaustion::Tables {
        flows: HashMap::try_from(xdp_fixture::own_handle(&ebpf, FLOWS)?)?,
        embryos: HashMap::try_from(xdp_fixture::own_handle(&ebpf, EMBRYOS)?)?,
    };
    let mut maps = L4Maps::take(&mut ebpf)?;
    write_iface_addrs(&mut maps, client_ifindex, server_ifindex)?;
    // Service 0 over servers 0.. (id = index in the plan).
    install_service(&mut maps, 0, vip(), 0..SERVERS)?;
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("the bench object has no map {name}"))
    };
    let config = Array::try_from(take(&mut ebpf, "elb_bench_cfg")?)?;
    let template = Array::try_from(take(&mut ebpf, "elb_bench_tmpl")?)?;
    let actions = PerCpuArray::try_from(take(&mut ebpf, "elb_bench_act")?)?;
    let proto_stats = PerCpuArray::try_from(take(&mut ebpf, PROTO_STATS)?)?;
    let floor_counts = PerCpuArray::try_from(take(&mut ebpf, "elb_bench_floor")?)?;
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?
        .get();
    ensure!(
        cpus <= MAX_CPUS,
        "{cpus} possible CPUs; the bench object holds {MAX_CPUS}"
    );
    let per_cpu = ArrayOfMaps::try_from(take(&mut ebpf, "elb_bench_pcpu")?)?;
    let tables = |entries: u32| -> Result<Vec<MapData>> {
        (0..cpus)
            .map(|cpu| {
                create_lru_table(entries)
                    .with_context(|| format!("creating CPU {cpu}'s table of {entries} entries"))
            })
            .collect()
    };
    let per_cpu_split = tables(MAX_FLOW_ENTRIES / cpus)?;
    let per_cpu_full = tables(MAX_FLOW_ENTRIES)?;
    let mut bench = Bench {
        ebpf,
        maps,
        config,
        template,
        actions,
        proto_stats,
        floor_counts,
        per_cpu,
        per_cpu_split,
        per_cpu_full,
        cpus,
        repeat: args.repeat,
    };

    if let Some(case) = args.profile {
        return bench.profile(case, args.seconds);
    }

    // Warm-up: one round, not reported. It also fills the connection table
    // with new flows, so the new-flow runs measure the steady state of a
    // busy balancer (every insert evicts the least recently used entry).
    eprintln!("bench xdp: warming up");
    bench.round(u16::MAX)?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        eprintln!("bench xdp: round {}/{}", round + 1, args.rounds);
        rounds.push(bench.round(40_000 + round as u16)?);
    }
    let global = bench.maps.global_stats()?;
    ensure!(
        global.port_alloc_failures == 0 && global.no_server_drops == 0 && global.no_snat_drops == 0,
        "new flows were dropped during the bench ({} port-allocation failures, {} no-server drops, \
         {} no-SNAT drops): the figures are not valid",
        global.port_alloc_failures,
        global.no_server_drops,
        global.no_snat_drops
    );
    // Last: its held flows would not survive the floors' inserts into the
    // main table, and it may refuse SYNs.
    let near = exhaustion::run(
        &mut bench,
        &mut connection_tables,
        args.rounds,
        &exhaustion::HELD_LEVELS,
    )?;
    let mut out = report(args, bench.cpus, &rounds, &global);
    out.push_str(&exhaustion_report(&near, &rounds));
    Ok(out)
}

/// `BPF_PROG_TEST_RUN` of the program `fd` on `frame`, `repeat` times,
/// from any thread (aya's `test_run` needs the program object, which stays
/// with the bench's thread); returns the last run's action and the
/// kernel's ns per run.
fn test_run_fd(fd: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
    /// The `BPF_PROG_TEST_RUN` fields of `union bpf_attr` up to
    /// `duration`; the kernel takes the rest as zero.
    #[repr(C)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestRunAttr {
        prog_fd: fd.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat,
        duration: 0,
    };
    // SAFETY: attr is a valid prefix of bpf_attr; data_in points at
    // `frame`, alive for the call; no output buffer is given.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }.context("BPF_PROG_TEST_RUN")?;
    Ok((attr.retval, attr.duration))
}

/// A `BPF_MAP_TYPE_LRU_HASH` of `FlowKey` → `FlowEntry` with the common
/// LRU (no flags), as Katran's inner tables. aya can only create plain
/// hash maps standalone, so this is the `BPF_MAP_CREATE` call itself.
fn create_lru_table(entries: u32) -> Result<MapData> {
    /// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the
    /// kernel takes the rest as zero.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut map_name = [0u8; 16];
    map_name[..14].copy_from_slice(b"elb_bench_cpu_");
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: size_of::<FlowKey>() as u32,
        value_size: size_of::<FlowEntry>() as u32,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    // SAFETY: attr is a valid, initialised prefix of bpf_attr.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.context("BPF_MAP_CREATE")?;
    // SAFETY: a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(MapData::from_fd(fd)?)
}

/// One established flow's frames: its SYN (sent with a fresh 5-tuple
/// every run), its ACK, its server's reply, and a packet to the node's
/// own port 22 from the same client.
struct Frames {
    syn: Vec<u8>,
    ack: Vec<u8>,
    reply: Vec<u8>,
    non_vip: Vec<u8>,
}

impl Frames {
    /// The frame a case times, and whether each run varies its 5-tuple.
    fn of(&self, case: Case) -> Result<(&[u8], bool)> {
        Ok(match case {
            Case::Established => (&self.ack, false),
            Case::Reply => (&self.reply, false),
            Case::NonVip => (&self.non_vip, false),
            Case::NewFlow => (&self.syn, true),
            Case::NearExhaustion => bail!("near exhaustion is timed in its own phase"),
        })
    }
}

impl Bench {
    /// One round: the trivial program, then every case with the wrapper
    /// around an empty path and around elb's path, back to back.
    /// `client_port` names this round's established flow.
    fn round(&mut self, client_port: u16) -> Result<Round> {
        let frames = self.frames(client_port)?;
        let trivial = self.time_trivial(&frames.syn)?;
        let mut samples = Vec::new();
        let mut floors = vec![vec![0.0; FloorRun::ALL.len()]; Table::ALL.len()];
        let mut nat_floor = 0.0;
        for case in Case::ALL {
            let (frame, vary) = frames.of(case)?;
            let empty = self.time_wrapped(case, frame, vary, Mode::Empty)?;
            let path = self.time_wrapped(case, frame, vary, Mode::Elb)?;
            samples.push(Sample { empty, path });
            if case == Case::Established {
                // Before the new flows, whose inserts may evict this entry.
                nat_floor = self.time_wrapped(case, frame, vary, Mode::NatFloor)?;
            }
            for (t, table) in Table::ALL.into_iter().enumerate() {
                for (r, run) in FloorRun::ALL.into_iter().enumerate() {
                    if run.case() == case {
                        floors[t][r] = self.time_floor_on(table, run, frame, false)?;
                    }
                }
            }
        }
        let direct_non_vip = self.time_direct_non_vip(&frames.non_vip)?;
        let mut contended = Vec::new();
        if self.cpus >= 2 {
            for (table, run) in FloorRun::CONTENDED {
                let frame = if run == FloorRun::Hit {
                    &frames.ack
                } else {
                    &frames.syn
                };
                contended.push(self.time_floor_on(table, run, frame, true)?);
            }
        }
        Ok(Round {
            trivial,
            direct_non_vip,
            samples,
            nat_floor,
            floors,
            contended,
        })
    }

    /// `--profile`: elb's path for `case` only, timed and checked run after
    /// run for `seconds`; returns a line with the median ns per packet of
    /// the wrapper around it.
    fn profile(&mut self, case: Case, seconds: u64) -> Result<String> {
        let frames = self.frames(40_000)?;
        let (frame, vary) = frames.of(case)?;
        eprintln!("bench xdp: profiling {} for {seconds} s", case.name());
        let start = std::time::Instant::now();
        let mut runs = Vec::new();
        while start.elapsed().as_secs() < seconds {
            runs.push(self.time_wrapped(case, frame, vary, Mode::Elb)?);
        }
        Ok(format!(
            "{}: wrapper with elb's path {:.1} ns per packet (median of {} runs of {}; fastest run {:.1})\n",
            case.name(),
            median(&runs),
            runs.len(),
            self.repeat,
            runs.iter().copied().fold(f64::INFINITY, f64::min)
        ))
    }

    /// Opens and establishes the flow from `client_port` (its first packet,
    /// checked, gives the NAT port) and returns the frames of every case.
    fn frames(&mut self, client_port: u16) -> Result<Frames> {
        let client = SocketAddr::new(CLIENT_V4.into(), client_port);
        let syn = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), true);
        let nat_port = self.open_flow(&syn)?;
        let ack = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), false);
        let server = self.server_of(client)?;
        self.establish(server, nat_port, &ack)?;
        let reply = tcp_frame(
            [0x02, 0, 0, 0, 0, 0x10],
            LB_SERVER_SIDE_MAC,
            server,
            SocketAddr::new(SNAT_V4.into(), nat_port),
            false,
        );
        // To the node's own address, port 22: not a VIP, not a NAT port.
        let non_vip = tcp_frame(
            CLIENT_MAC,
            LB_CLIENT_SIDE_MAC,
            client,
            SocketAddr::new(Ipv4Addr::new(10, 77, 0, 1).into(), 22),
            false,
        );
        Ok(Frames {
            syn,
            ack,
            reply,
            non_vip,
        })
    }

    /// Sends a flow's SYN through elb once and checks the NAT'd result;
    /// returns the NAT source port.
    fn open_flow(&mut self, syn: &[u8]) -> Result<u16> {
        self.set_template(syn, false, Mode::Elb, XDP_PASS)?;
        let (action, out) = self.run_once("elb_bench", syn)?;
        ensure!(
            action == XDP_REDIRECT || action == XDP_TX,
            "the flow's SYN returned action {action}"
        );
        let (to, nat_port) = forwarded_syn(&out)?;
        ensure!(
            matches!(to.ip(), IpAddr::V4(ip) if ip.octets()[..2] == [10, 89])
                && to.port() == SERVER_PORT,
            "NAT'd SYN goes to {to}"
        );
        Ok(nat_port)
    }

    /// The server's SYN-ACK (ISN 0) and the client's ACK of it (`ack`
    /// acknowledges 1), once each: the flow completes its handshake and
    /// moves from the embryonic table to the main one, so the established
    /// and reply cases time the main table's path. Checked by the
    /// promotion counter.
    fn establish(&mut self, server: SocketAddr, nat_port: u16, ack: &[u8]) -> Result<()> {
        let before = self.maps.global_stats()?.promotions;
        let syn_ack = syn_ack_frame(server, SocketAddr::new(SNAT_V4.into(), nat_port));
        for (what, frame) in [("SYN-ACK", syn_ack.as_slice()), ("ACK", ack)] {
            self.set_template(frame, false, Mode::Elb, XDP_PASS)?;
            let (action, _) = self.run_once("elb_bench", frame)?;
            ensure!(
                action == XDP_REDIRECT || action == XDP_TX,
                "the flow's {what} returned action {action}"
            );
        }
        let promoted = self.maps.global_stats()?.promotions - before;
        ensure!(
            promoted == 1,
            "the handshake promoted {promoted} flows, not 1"
        );
        Ok(())
    }

    fn server_of(&self, client: SocketAddr) -> Result<SocketAddr> {
        let (planned, _) = plan::plan_service(vip(), &servers(0..SERVERS), MAGLEV_SLOTS);
        let planned = planned?.context("no plan")?;
        Ok(planned
            .pick(client, vip(), IPPROTO_TCP)
            .context("no server for the flow")?
            .addr)
    }

    fn set_template(
        &mut self,
        frame: &[u8],
        vary: bool,
        mode: Mode,
        empty_action: u32,
    ) -> Result<()> {
        self.set_config(frame, vary, mode, empty_action, Table::Shared, 1)
    }

    fn set_config(
        &mut self,
        frame: &[u8],
        vary: bool,
        mode: Mode,
        empty_action: u32,
        table: Table,
        inserts: u32,
    ) -> Result<()> {
        ensure!(frame.len() <= TEMPLATE_CAPACITY, "template too long");
        let mut template = Template {
            bytes: [0; TEMPLATE_CAPACITY],
        };
        template.bytes[..frame.len()].copy_from_slice(frame);
        self.template.set(0, &template, 0)?;
        self.config.set(
            0,
            &BenchConfig {
                len: frame.len() as u32,
                run_elb: mode as u32,
                vary: u32::from(vary),
                empty_action,
                table: table as u32,
                inserts,
            },
            0,
        )?;
        Ok(())
    }

    fn run_once(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .context("program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// `repeat` runs of `program` on `frame`: ns per run, as the kernel
    /// measures it (time scheduled out is not counted).
    fn time(&mut self, program: &str, frame: &[u8]) -> Result<(u32, f64)> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .context("program")?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: self.repeat,
            ..TestRunOptions::default()
        })?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    fn time_trivial(&mut self, frame: &[u8]) -> Result<f64> {
        let (action, ns) = self.time("elb_bench_pass", frame)?;
        ensure!(action == XDP_PASS, "the trivial program returned {action}");
        Ok(ns)
    }

    /// Times the wrapper on `case` and checks that every run took the
    /// expected path: the action counts and elb's counters must add up to
    /// exactly `repeat` runs of it.
    fn time_wrapped(&mut self, case: Case, frame: &[u8], vary: bool, mode: Mode) -> Result<f64> {
        ensure!(
            case != Case::NearExhaustion,
            "{}: time it with time_wrapped_refusing",
            case.name()
        );
        Ok(self.time_wrapped_refusing(case, frame, vary, mode)?.0)
    }

    /// [`Bench::time_wrapped`], except that near exhaustion a SYN may find
    /// no port: it is dropped and counted as a port-allocation failure, and
    /// the action counts and counters must say so run for run. Returns ns
    /// per run and how many SYNs were refused.
    fn time_wrapped_refusing(
        &mut self,
        case: Case,
        frame: &[u8],
        vary: bool,
        mode: Mode,
    ) -> Result<(f64, u64)> {
        let expected = match case {
            Case::NonVip => XDP_PASS,
            // The fixture runs arrive on loopback and leave by the server
            // side: a redirect.
            _ => XDP_REDIRECT,
        };
        self.set_template(frame, vary, mode, expected)?;
        let actions_before = self.action_counts()?;
        let stats_before = self.maps.global_stats()?;
        let (last, ns) = self.time("elb_bench", frame)?;
        let actions = diff_counts(&self.action_counts()?, &actions_before);
        let stats = stats_delta(&self.maps.global_stats()?, &stats_before);
        let what = format!("{} ({})", case.name(), mode.name());
        let repeat = u64::from(self.repeat);
        let refused = match (mode, case) {
            (Mode::Elb, Case::NearExhaustion) => actions[XDP_DROP as usize],
            _ => 0,
        };
        let mut want = [0u64; ACTION_SLOTS as usize];
        want[expected as usize] = repeat - refused;
        want[XDP_DROP as usize] = refused;
        ensure!(
            actions == want && (last == expected || (refused > 0 && last == XDP_DROP)),
            "{what}: actions per slot (aborted, drop, pass, tx, redirect, other) were {actions:?}, \
             expected all {repeat} runs to return {expected}, except refused SYNs near exhaustion"
        );
        let (hits, misses) = match (mode, case) {
            (Mode::Empty | Mode::Floor | Mode::NatFloor, _) | (Mode::Elb, Case::NonVip) => (0, 0),
            (Mode::Elb, Case::Established | Case::Reply) => (repeat, 0),
            (Mode::Elb, Case::NewFlow | Case::NearExhaustion) => (0, repeat),
        };
        ensure!(
            stats.flow_hits == hits
                && stats.flow_misses == misses
                && stats.port_alloc_failures == refused
                && stats.no_server_drops == 0
                && stats.fib_fallbacks == 0
                && stats.tcp_resets == 0
                && stats.drained_drops == 0
                && stats.promotions == 0,
            "{what}: the data plane's counters moved by {stats:?}, expected {hits} flow hits and \
             {misses} misses, {refused} port-allocation failures (the dropped SYNs) and nothing \
             else; the figure would not be valid"
        );
        Ok((ns, refused))
    }

    /// A cross-check of the wrapper construction: the production program
    /// itself (`elb_xdp`, byte for byte the production object's) timed
    /// without any wrapper, on the one path where that is valid because it
    /// leaves the packet as it is. Its per-protocol counter must count every
    /// run, and flow counters must not move.
    fn time_direct_non_vip(&mut self, frame: &[u8]) -> Result<f64> {
        let slot = ProtoCounter::for_l4(false, IPPROTO_TCP).index();
        let count = |bench: &Self| -> Result<u64> {
            Ok(bench
                .proto_stats
                .get(&slot, 0)?
                .iter()
                .map(|c| c.packets)
                .sum())
        };
        let (packets_before, stats_before) = (count(self)?, self.maps.global_stats()?);
        let (last, ns) = self.time(XDP_PROGRAM, frame)?;
        let packets = count(self)? - packets_before;
        let stats = stats_delta(&self.maps.global_stats()?, &stats_before);
        ensure!(
            last == XDP_PASS
                && packets == u64::from(self.repeat)
                && stats == GlobalStats::default(),
            "elb_xdp on the non-VIP packet: returned {last}, counted {packets} TCP packets \
             of {} runs, counters moved by {stats:?}",
            self.repeat
        );
        Ok(ns)
    }

    /// Times the lookups floor on `table`, and checks that every run took
    /// the path it stands for: all returned the expected action, and the
    /// floor's own counts moved by `repeat` hits (with no miss), or by
    /// `repeat` misses and `repeat × inserts` inserted entries (with no
    /// failed insert); elb's counters do not move. Before a hit run, one
    /// run puts the established flow's 5-tuple into the table.
    ///
    /// `both_cpus`: a second thread, on another CPU, runs the same floor
    /// at the same time (the counts then double; both threads' runs must
    /// take the path); the figure is the two CPUs' mean ns per run.
    fn time_floor_on(
        &mut self,
        table: Table,
        run: FloorRun,
        frame: &[u8],
        both_cpus: bool,
    ) -> Result<f64> {
        let (vary, inserts) = match run {
            FloorRun::Hit => (false, 1),
            FloorRun::Insert(n) => (true, n),
        };
        self.use_per_cpu_set(table)?;
        // Both per-CPU sets are the one layout, TABLE_PER_CPU.
        let layout = match table {
            Table::PerCpuFull => Table::PerCpu,
            other => other,
        };
        self.set_config(frame, vary, Mode::Floor, XDP_REDIRECT, layout, inserts)?;
        let what = format!(
            "{} (lookups floor, {}, {inserts} insert(s) on a miss)",
            run.case().name(),
            table.name(self.cpus)
        );
        if run == FloorRun::Hit {
            let (action, _) = self.run_once("elb_bench", frame)?;
            ensure!(
                action == XDP_REDIRECT,
                "{what}: the priming run returned {action}"
            );
            if both_cpus {
                // The other CPU's own table needs the 5-tuple too.
                let (action, _) = self.on_other_cpu(frame, 1)?;
                ensure!(
                    action == XDP_REDIRECT,
                    "{what}: the other CPU's priming run returned {action}"
                );
            }
        }
        let actions_before = self.action_counts()?;
        let floor_before = self.floor_counts()?;
        let stats_before = self.maps.global_stats()?;
        let (last, ns) = if both_cpus {
            self.time_on_both_cpus(frame, &what)?
        } else {
            self.time("elb_bench", frame)?
        };
        let actions = diff_counts(&self.action_counts()?, &actions_before);
        let floor = diff_counts(&self.floor_counts()?, &floor_before);
        let stats = stats_delta(&self.maps.global_stats()?, &stats_before);
        let repeat = u64::from(self.repeat) * if both_cpus { 2 } else { 1 };
        let mut want = [0u64; ACTION_SLOTS as usize];
        want[XDP_REDIRECT as usize] = repeat;
        ensure!(
            actions == want && last == XDP_REDIRECT,
            "{what}: actions per slot (aborted, drop, pass, tx, redirect, other) were {actions:?}, \
             expected all {repeat} runs to return {XDP_REDIRECT}"
        );
        let want_floor = match run {
            FloorRun::Hit => [repeat, 0, 0, 0],
            FloorRun::Insert(n) => [0, repeat, repeat * u64::from(n), 0],
        };
        ensure!(
            floor == want_floor,
            "{what}: hits, misses, inserted entries, failed inserts were {floor:?}, expected \
             {want_floor:?}"
        );
        ensure!(
            stats == GlobalStats::default(),
            "{what}: the data plane's counters moved by {stats:?}; the floor must not run elb"
        );
        Ok(ns)
    }

    /// Starts a thread on another CPU than this one (the runner sits on
    /// the last CPU; this takes the one before it) that runs `elb_bench`
    /// `repeat` times on `frame` once `start` lets it; it returns the
    /// action of its last run and ns per run.
    fn spawn_on_other_cpu(
        &self,
        frame: &[u8],
        repeat: u32,
        start: Option<Arc<Barrier>>,
    ) -> Result<std::thread::JoinHandle<Result<(u32, u32)>>> {
        let program: &Xdp = self
            .ebpf
            .program("elb_bench")
            .context("program")?
            .try_into()?;
        let fd = program.fd()?.try_clone()?;
        let cpu = self.cpus as usize - 2;
        let frame = frame.to_vec();
        Ok(std::thread::spawn(move || -> Result<(u32, u32)> {
            let pinned = pin_to_cpu(cpu);
            // Waits even if pinning failed, so the other side never hangs.
            if let Some(start) = start {
                start.wait();
            }
            pinned?;
            test_run_fd(fd.as_fd(), &frame, repeat)
        }))
    }

    fn on_other_cpu(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        self.spawn_on_other_cpu(frame, repeat, None)?
            .join()
            .map_err(|_| anyhow::anyhow!("the other CPU's thread panicked"))?
    }

    /// `repeat` runs on this CPU and, at the same time, on another one;
    /// returns this CPU's last action and the two CPUs' mean ns per run.
    fn time_on_both_cpus(&mut self, frame: &[u8], what: &str) -> Result<(u32, f64)> {
        let start = Arc::new(Barrier::new(2));
        let other = self.spawn_on_other_cpu(frame, self.repeat, Some(start.clone()))?;
        start.wait();
        let mine = self.time("elb_bench", frame);
        let (their_action, their_ns) = other
            .join()
            .map_err(|_| anyhow::anyhow!("the other CPU's thread panicked"))??;
        let (action, ns) = mine?;
        ensure!(
            their_action == XDP_REDIRECT,
            "{what}: the other CPU's last run returned {their_action}"
        );
        Ok((action, (ns + f64::from(their_ns)) / 2.0))
    }

    /// Points every CPU's slot of the per-CPU layout at `table`'s set of
    /// inner maps. Each set keeps its entries while the other is in use.
    fn use_per_cpu_set(&mut self, table: Table) -> Result<()> {
        let set = match table {
            Table::PerCpu => &self.per_cpu_split,
            Table::PerCpuFull => &self.per_cpu_full,
            Table::Shared | Table::Small => return Ok(()),
        };
        for (cpu, inner) in set.iter().enumerate() {
            self.per_cpu.set(cpu as u32, inner, 0)?;
        }
        Ok(())
    }

    fn floor_counts(&self) -> Result<[u64; FLOOR_SLOTS as usize]> {
        let mut counts = [0u64; FLOOR_SLOTS as usize];
        for (slot, count) in counts.iter_mut().enumerate() {
            *count = self.floor_counts.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(counts)
    }

    fn action_counts(&self) -> Result<[u64; ACTION_SLOTS as usize]> {
        let mut counts = [0u64; ACTION_SLOTS as usize];
        for (slot, count) in counts.iter_mut().enumerate() {
            *count = self.actions.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(counts)
    }
}

fn diff_counts<const N: usize>(after: &[u64; N], before: &[u64; N]) -> [u64; N] {
    std::array::from_fn(|i| after[i] - before[i])
}

fn stats_delta(after: &GlobalStats, before: &GlobalStats) -> GlobalStats {
    GlobalStats {
        flow_hits: after.flow_hits - before.flow_hits,
        flow_misses: after.flow_misses - before.flow_misses,
        no_server_drops: after.no_server_drops - before.no_server_drops,
        fib_fallbacks: after.fib_fallbacks - before.fib_fallbacks,
        port_alloc_failures: after.port_alloc_failures - before.port_alloc_failures,
        acl_drops: after.acl_drops - before.acl_drops,
        no_snat_drops: after.no_snat_drops - before.no_snat_drops,
        unsupported_passes: after.unsupported_passes - before.unsupported_passes,
        tcp_resets: after.tcp_resets - before.tcp_resets,
        drained_drops: after.drained_drops - before.drained_drops,
        promotions: after.promotions - before.promotions,
    }
}

/// The servers with ids `ids`, weight 1 each, at [`server_addr`].
fn servers(ids: std::ops::Range<u32>) -> Vec<Server> {
    ids.map(|i| {
        Server::new(
            server_addr(i).to_string(),
            parse_params("weight=1").expect("params"),
        )
    })
    .collect()
}

/// Service `id` at `vip` over the servers with ids `ids` (in plan order),
/// with the production table size and the planner the daemon uses.
fn install_service(
    maps: &mut L4Maps,
    id: u32,
    vip: SocketAddr,
    ids: std::ops::Range<u32>,
) -> Result<plan::ServicePlan> {
    let first = ids.start;
    let (planned, skipped) = plan::plan_service(vip, &servers(ids), MAGLEV_SLOTS);
    ensure!(skipped.is_empty(), "skipped servers: {skipped:?}");
    let planned = planned?.context("no servers")?;
    for (index, server) in planned.servers.iter().enumerate() {
        maps.set_server(
            first + index as u32,
            &ServerEntry {
                addr: plan::addr16(server.addr.ip()),
                port: server.addr.port().to_be_bytes(),
                family: plan::family(server.addr.ip()),
                _pad: 0,
            },
        )?;
    }
    // The planner's slots index its servers; the map holds server ids.
    let table: Vec<u32> = planned.table.iter().map(|i| first + i).collect();
    maps.set_table(id, &table)?;
    maps.set_service(
        &vip_key(vip, IPPROTO_TCP),
        &ServiceEntry {
            id,
            table_size: table.len() as u32,
            flags: 0,
            _pad: 0,
            snat: Default::default(),
        },
    )?;
    Ok(planned)
}

/// A minimal TCP segment (no payload): a SYN, or an ACK.
fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).expect("tcp frame");
    frame
}

/// A SYN as elb forwarded it: its destination (the server) and NAT source
/// port; its source must be the SNAT address.
fn forwarded_syn(out: &[u8]) -> Result<(SocketAddr, u16)> {
    let headers = etherparse::SlicedPacket::from_ethernet(out).context("NAT'd SYN")?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = headers.net else {
        bail!("NAT'd SYN is not IPv4")
    };
    let Some(etherparse::TransportSlice::Tcp(tcp)) = headers.transport else {
        bail!("NAT'd SYN is not TCP")
    };
    ensure!(
        ip.header().source_addr() == SNAT_V4,
        "NAT'd SYN comes from {}",
        ip.header().source_addr()
    );
    let to = SocketAddr::new(
        ip.header().destination_addr().into(),
        tcp.destination_port(),
    );
    Ok((to, tcp.source_port()))
}

/// The server's SYN-ACK with ISN 0 from `server` to the NAT address
/// `nat`, as it arrives from the server side.
fn syn_ack_frame(server: SocketAddr, nat: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (server.ip(), nat.ip()) else {
        panic!("IPv4 only")
    };
    let b = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x10], LB_SERVER_SIDE_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(server.port(), nat.port(), 0, 64240)
        .syn()
        .ack(1001);
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).expect("tcp frame");
    frame
}

/// The kernel may move a test run to another CPU when it reschedules; the
/// per-CPU sequence numbers stay distinct anyway (the CPU is part of the
/// varied address), but one CPU also keeps the figures steadier.
fn pin_to_one_cpu() -> Result<()> {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    pin_to_cpu(cpus - 1)
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is valid for its size; 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn report(args: &Args, cpus: u32, rounds: &[Round], global: &GlobalStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let trivial: Vec<f64> = rounds.iter().map(|r| r.trivial).collect();
    let t = median(&trivial);
    let _ = writeln!(
        out,
        "\n### XDP paths through BPF_PROG_TEST_RUN (`cargo xtask bench xdp --rounds {}`, repeat {}, medians of {} rounds)\n",
        args.rounds, args.repeat, args.rounds
    );
    let _ = writeln!(
        out,
        "| path | wrapper, empty path ns | wrapper, elb path ns | elb ns/packet = trivial + difference | × trivial | target (issue 16) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| trivial XDP_PASS program | – | – | {t:.0} | 1.00× | |"
    );
    let mut targets = Vec::new();
    let mut wrapped_non_vip = 0.0;
    for (i, case) in Case::ALL.iter().enumerate() {
        let runs: Vec<Sample> = rounds.iter().map(|r| r.samples[i]).collect();
        // Per round: trivial + (path − empty), paired within the round.
        let elb: Vec<f64> = runs
            .iter()
            .zip(&trivial)
            .map(|(s, t)| t + (s.path - s.empty))
            .collect();
        let ratios: Vec<f64> = elb.iter().zip(&trivial).map(|(e, t)| e / t).collect();
        let ratio = median(&ratios);
        if *case == Case::NonVip {
            wrapped_non_vip = median(&elb);
        }
        let target = match case.target() {
            Some((limit, katran)) => {
                targets.push((*case, ratio, median(&elb), limit, katran));
                format!("≤ {limit}× ({})", verdict(ratio, limit))
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {ratio:.2}× | {target} |",
            case.name(),
            median(&runs.iter().map(|s| s.empty).collect::<Vec<_>>()),
            median(&runs.iter().map(|s| s.path).collect::<Vec<_>>()),
            median(&elb),
        );
    }

    let _ = writeln!(
        out,
        "\n**Targets** (issue 16), × the trivial program timed in the same run; elb from this run's medians, Katran's the fixed references of issue 16 (measured there through the same wrapper on this machine; Katran cannot be part of this repository):\n"
    );
    let _ = writeln!(
        out,
        "| path | elb | Katran (reference, issue 16) | elb / Katran | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (case, ratio, ns, limit, katran) in &targets {
        let _ = writeln!(
            out,
            "| {} | {ratio:.2}× ({ns:.0} ns) | {katran}× | {:.2} | ≤ {limit}× ({:.1}× Katran) | **{}** |",
            case.name(),
            ratio / katran,
            limit / katran,
            verdict(*ratio, *limit)
        );
    }

    let established = Case::ALL
        .iter()
        .position(|c| *c == Case::Established)
        .unwrap_or_default();
    let floor_ns: Vec<f64> = rounds
        .iter()
        .map(|r| r.trivial + (r.nat_floor - r.samples[established].empty))
        .collect();
    let floor_ratios: Vec<f64> = floor_ns.iter().zip(&trivial).map(|(n, t)| n / t).collect();
    let path_ratios: Vec<f64> = rounds
        .iter()
        .map(|r| (r.samples[established].path - r.nat_floor) / r.trivial)
        .collect();
    let _ = writeln!(
        out,
        "\n**Full-NAT forward floor** (the established flow's packet): parse, 5-tuple lookup, rewrite of addresses, ports and checksums, MACs and send from the entry's cached next hop; nothing else. {:.0} ns, **{:.2}×** trivial (target for the whole path: ≤ {TARGET_ESTABLISHED}×). What elb's established path adds on top (VIP check, clock and idle timeout, ACL and route generations, flags, last-seen time, counters): {:.2}× trivial.",
        median(&floor_ns),
        median(&floor_ratios),
        median(&path_ratios),
    );

    if let Some((_, ratio, ns, _, _)) = targets.iter().find(|t| t.0 == Case::NewFlow) {
        let _ = writeln!(
            out,
            "\n**Flood** (issue 16's flood row): a spoofed SYN from a fresh source takes exactly the new-flow path above, {ns:.0} ns per packet ({ratio:.2}× trivial): each run is a fresh 5-tuple into an embryonic table that the warm-up filled, so every insert evicts, as under a flood. It touches no main-table entry (the runs' counters: misses only, no promotion), which is what keeps established flows alive (`tests/tests/l4_flood.rs`)."
        );
    }
    let _ = writeln!(
        out,
        "\n**Lookups floor by connection-table layout**: parse, VIP lookup, 5-tuple lookup, and on a miss one insert (or two: a reply entry with `BPF_NOEXIST`, then the forward entry, as full NAT does); nothing else. ns = trivial + (floor − wrapper empty), × trivial per round, medians. Every table was full before its insert runs (the warm-up inserts 1,000,000 fresh 5-tuples or more into each).\n"
    );
    let _ = writeln!(
        out,
        "| table layout | established (hit) | new flow, 1 insert | new flow, 2 inserts |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let floor_cell = |table: usize, run: usize| -> (f64, f64) {
        let case = FloorRun::ALL[run].case();
        let i = Case::ALL.iter().position(|c| *c == case).unwrap_or(0);
        let ns: Vec<f64> = rounds
            .iter()
            .map(|r| r.trivial + r.floors[table][run] - r.samples[i].empty)
            .collect();
        let ratios: Vec<f64> = ns.iter().zip(&trivial).map(|(n, t)| n / t).collect();
        (median(&ns), median(&ratios))
    };
    for (ti, table) in Table::ALL.iter().enumerate() {
        let cells: Vec<String> = (0..FloorRun::ALL.len())
            .map(|r| {
                let (ns, ratio) = floor_cell(ti, r);
                format!("{ratio:.2}× ({ns:.0} ns)")
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", table.name(cpus), cells.join(" | "));
    }
    let shared = Table::ALL
        .iter()
        .position(|t| *t == Table::Shared)
        .unwrap_or(0);
    for (ti, table) in Table::ALL.iter().enumerate() {
        if ti == shared {
            continue;
        }
        let cells: Vec<String> = (0..FloorRun::ALL.len())
            .map(|r| {
                // Per round, the layout's floor against the shared table's.
                let ratios: Vec<f64> = rounds
                    .iter()
                    .map(|round| {
                        let i = Case::ALL
                            .iter()
                            .position(|c| *c == FloorRun::ALL[r].case())
                            .unwrap_or(0);
                        let e = round.samples[i].empty;
                        (round.trivial + round.floors[ti][r] - e)
                            / (round.trivial + round.floors[shared][r] - e)
                    })
                    .collect();
                format!("{:.2}", median(&ratios))
            })
            .collect();
        let _ = writeln!(
            out,
            "- {} against the shared table: hit {}, 1 insert {}, 2 inserts {} (below 1: faster)",
            table.name(cpus),
            cells[0],
            cells[1],
            cells[2]
        );
    }

    if rounds
        .iter()
        .all(|r| r.contended.len() == FloorRun::CONTENDED.len())
    {
        let _ = writeln!(
            out,
            "\n**The same floor on two CPUs at once** (a second thread on another CPU runs it at the same time; its own per-CPU table for each CPU in the per-CPU layout; ns per run of the whole wrapper, the two CPUs' mean, medians of rounds: not corrected for the wrapper, so compare the rows with each other, not with the table above):\n"
        );
        let _ = writeln!(
            out,
            "| table layout | established (hit) | new flow, 1 insert | new flow, 2 inserts |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        let cell = |i: usize| median(&rounds.iter().map(|r| r.contended[i]).collect::<Vec<_>>());
        for table in [Table::Shared, Table::PerCpu] {
            let cells: Vec<String> = FloorRun::ALL
                .iter()
                .map(|run| {
                    FloorRun::CONTENDED
                        .iter()
                        .position(|c| *c == (table, *run))
                        .map_or("–".to_string(), |i| format!("{:.0} ns", cell(i)))
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", table.name(cpus), cells.join(" | "));
        }
        let ratios: Vec<String> = FloorRun::ALL
            .iter()
            .map(|run| {
                let at = |table| FloorRun::CONTENDED.iter().position(|c| *c == (table, *run));
                match (at(Table::PerCpu), at(Table::Shared)) {
                    (Some(p), Some(sh)) => {
                        let per_round: Vec<f64> = rounds
                            .iter()
                            .map(|r| r.contended[p] / r.contended[sh])
                            .collect();
                        format!("{:.2}", median(&per_round))
                    }
                    _ => "–".to_string(),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "- per-CPU against shared, both CPUs busy: hit {}, 1 insert {}, 2 inserts {} (below 1: faster)",
            ratios[0], ratios[1], ratios[2]
        );
    }

    let direct: Vec<f64> = rounds.iter().map(|r| r.direct_non_vip).collect();
    let _ = writeln!(
        out,
        "\nCross-check of the construction: the production `elb_xdp` timed directly on the non-VIP packet (valid without a wrapper, as that path leaves the packet unchanged) takes {:.0} ns ({:.2}× the trivial program); the wrapper construction above gives {wrapped_non_vip:.0} ns.",
        median(&direct),
        median(&direct) / t
    );
    let _ = writeln!(
        out,
        "\nEvery timed run returned the expected action (XDP_REDIRECT for the NAT'd paths, XDP_PASS for the non-VIP packet) and moved elb's flow counters by exactly one hit or miss (the floor runs: its own counts, one hit, or one miss and its inserts, and none of elb's); over the whole bench: {} flow hits, {} misses (new flows), {} port-allocation failures, {} no-server drops. Service of {SERVERS} servers, Maglev table {MAGLEV_SLOTS} slots. One CPU runs the bench, except the two-CPU floor runs: only those show what CPUs sharing one table's LRU lists and cache lines cost.",
        global.flow_hits, global.flow_misses, global.port_alloc_failures, global.no_server_drops
    );
    out
}

fn verdict(ratio: f64, limit: f64) -> &'static str {
    if ratio <= limit { "met" } else { "not met" }
}

/// The near-exhaustion phase's section: a row per level of held flows, as
/// the main table's rows are made (trivial + difference, per round),
/// against the main rounds' new flow, and the ports held at its end.
fn exhaustion_report(near: &exhaustion::Phase, rounds: &[Round]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let new_flow = Case::ALL
        .iter()
        .position(|c| *c == Case::NewFlow)
        .unwrap_or(0);
    let normal: Vec<f64> = rounds
        .iter()
        .map(|r| r.trivial + (r.samples[new_flow].path - r.samples[new_flow].empty))
        .collect();
    let _ = writeln!(
        out,
        "\n**{}** (its own phase, after the rounds above: a service at {} over 3 servers, NAT ports {}–{} = {} per (server, SNAT address); each server first holds the given number of established flows, opened through elb's own path: SYN, the server's SYN-ACK, the client's ACK; then the timed SYNs' embryonic entries take their share on top; medians of {} rounds per level; a refused SYN (no port) is dropped and counted, run for run):\n",
        Case::NearExhaustion.name(),
        exhaustion::vip(),
        exhaustion::NAT_PORT_MIN,
        exhaustion::NAT_PORT_MAX,
        near.ports,
        near.levels.first().map_or(0, |l| l.rounds.len())
    );
    let _ = writeln!(
        out,
        "| established flows held per server | held flows' SYNs refused while filling | NAT ports in use per server at the end (main + embryonic) | timed SYNs refused | trivial ns | wrapper, empty path ns | wrapper, elb path ns | elb ns/packet | × trivial | against the new-flow row above |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for level in &near.levels {
        let elb: Vec<f64> = level
            .rounds
            .iter()
            .map(|r| r.trivial + (r.path - r.empty))
            .collect();
        let ratios: Vec<f64> = elb
            .iter()
            .zip(&level.rounds)
            .map(|(e, r)| e / r.trivial)
            .collect();
        let column = |f: fn(&exhaustion::Round) -> f64| {
            median(&level.rounds.iter().map(f).collect::<Vec<_>>())
        };
        let in_use: Vec<String> = level
            .ports_in_use
            .iter()
            .map(|(main, embryonic)| {
                let total = main + embryonic;
                format!(
                    "{main} + {embryonic} = {total} ({:.1}%)",
                    100.0 * f64::from(total) / f64::from(near.ports)
                )
            })
            .collect();
        let refused: u64 = level.rounds.iter().map(|r| r.refused).sum();
        let runs = level.rounds.len() as u64 * u64::from(near.repeat);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {refused} of {runs} ({:.2}%) | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2} |",
            level.held_per_server,
            level.refused_in_fill,
            in_use.join("; "),
            100.0 * refused as f64 / runs as f64,
            column(|r| r.trivial),
            column(|r| r.empty),
            column(|r| r.path),
            median(&elb),
            median(&ratios),
            median(&elb) / median(&normal)
        );
    }
    out
}
