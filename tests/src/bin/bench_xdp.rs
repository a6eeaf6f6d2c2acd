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
//! Usage: `bench-xdp --object target/ebpf/elb-bench.bpf.o [--rounds N] [--repeat N]`
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, Pod,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use elb_common::{
    counters::{IPPROTO_TCP, PacketCounter, ProtoCounter},
    l4::{GlobalStats, ServerEntry, ServiceEntry},
    maps::{PROTO_STATS, XDP_PROGRAM},
};
use elb_tests::{
    l4_fixture::{
        CLIENT_MAC, CLIENT_V4, L4Net, LB_CLIENT_SIDE_MAC, LB_SERVER_SIDE_MAC, SNAT_V4, VIP_V4,
        server_v4, vip_key, write_iface_addrs,
    },
    privileges::root_and_bpf,
};
use elb_userspace::{
    l4::{maps::L4Maps, plan},
    upstream::{Server, parse_params},
};
use etherparse::PacketBuilder;

/// Must match `elb-ebpf/src/bench.rs`.
const TEMPLATE_CAPACITY: usize = 256;
const ACTION_SLOTS: u32 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BenchConfig {
    len: u32,
    run_elb: u32,
    vary: u32,
    empty_action: u32,
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

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

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
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        object: PathBuf::from("target/ebpf/elb-bench.bpf.o"),
        rounds: 5,
        repeat: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--object" => args.object = value.into(),
            "--rounds" => args.rounds = value.parse().context("--rounds")?,
            "--repeat" => args.repeat = value.parse().context("--repeat")?,
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
        }
    }

    fn target(self) -> Option<f64> {
        match self {
            Case::Established => Some(3.0),
            Case::NewFlow => Some(6.0),
            _ => None,
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
    repeat: u32,
}

/// Timings of one round, ns per run.
#[derive(Clone, Copy, Default)]
struct Sample {
    empty: f64,
    path: f64,
    /// The lookups floor (`Mode::Floor`); established and new flows only.
    floor: Option<f64>,
}

/// What the wrapper runs after its copy (`BenchConfig::run_elb`, the
/// `RUN_*` constants of elb-ebpf/src/bench.rs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Empty = 0,
    Elb = 1,
    Floor = 2,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Empty => "empty path",
            Mode::Elb => "elb path",
            Mode::Floor => "lookups floor",
        }
    }
}

fn bench(args: &Args, client_ifindex: u32, server_ifindex: u32) -> Result<String> {
    pin_to_one_cpu()?;
    let mut ebpf = Ebpf::load_file(&args.object)
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
    let mut maps = L4Maps::take(&mut ebpf)?;
    write_iface_addrs(&mut maps, client_ifindex, server_ifindex)?;
    install_service(&mut maps)?;
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("the bench object has no map {name}"))
    };
    let config = Array::try_from(take(&mut ebpf, "elb_bench_cfg")?)?;
    let template = Array::try_from(take(&mut ebpf, "elb_bench_tmpl")?)?;
    let actions = PerCpuArray::try_from(take(&mut ebpf, "elb_bench_act")?)?;
    let proto_stats = PerCpuArray::try_from(take(&mut ebpf, PROTO_STATS)?)?;
    let mut bench = Bench {
        ebpf,
        maps,
        config,
        template,
        actions,
        proto_stats,
        repeat: args.repeat,
    };

    // Warm-up: one round, not reported. It also fills the connection table
    // with new flows, so the new-flow runs measure the steady state of a
    // busy balancer (every insert evicts the least recently used entry).
    eprintln!("bench xdp: warming up");
    bench.round(u16::MAX)?;
    let mut trivial = Vec::new();
    let mut direct_non_vip = Vec::new();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Case::ALL.len()];
    for round in 0..args.rounds {
        eprintln!("bench xdp: round {}/{}", round + 1, args.rounds);
        let (t, direct, round_samples) = bench.round(40_000 + round as u16)?;
        trivial.push(t);
        direct_non_vip.push(direct);
        for (all, sample) in samples.iter_mut().zip(round_samples) {
            all.push(sample);
        }
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
    Ok(report(args, &trivial, &direct_non_vip, &samples, &global))
}

impl Bench {
    /// One round: the trivial program, then every case with the wrapper
    /// around an empty path and around elb's path, back to back.
    /// `client_port` names this round's established flow. Returns the
    /// trivial program's time, the production `elb_xdp`'s own time on the
    /// non-VIP packet (see [`Bench::time_direct_non_vip`]) and each case's.
    fn round(&mut self, client_port: u16) -> Result<(f64, f64, Vec<Sample>)> {
        let client = SocketAddr::new(CLIENT_V4.into(), client_port);
        let syn = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), true);
        // This round's flow: its first packet, checked, gives the NAT port.
        let nat_port = self.open_flow(&syn)?;
        let ack = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), false);
        let server = self.server_of(client)?;
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

        let trivial = self.time_trivial(&syn)?;
        let mut samples = Vec::new();
        for case in Case::ALL {
            let (frame, vary) = match case {
                Case::Established => (&ack, false),
                Case::Reply => (&reply, false),
                Case::NonVip => (&non_vip, false),
                Case::NewFlow => (&syn, true),
            };
            let empty = self.time_wrapped(case, frame, vary, Mode::Empty)?;
            let path = self.time_wrapped(case, frame, vary, Mode::Elb)?;
            let floor = match case {
                Case::Established | Case::NewFlow => {
                    Some(self.time_wrapped(case, frame, vary, Mode::Floor)?)
                }
                Case::Reply | Case::NonVip => None,
            };
            samples.push(Sample { empty, path, floor });
        }
        let direct = self.time_direct_non_vip(&non_vip)?;
        Ok((trivial, direct, samples))
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
        let headers = etherparse::SlicedPacket::from_ethernet(&out).context("NAT'd SYN")?;
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
        let dst = ip.header().destination_addr();
        ensure!(
            dst.octets()[..2] == [10, 89] && tcp.destination_port() == SERVER_PORT,
            "NAT'd SYN goes to {dst}:{}",
            tcp.destination_port()
        );
        Ok(tcp.source_port())
    }

    fn server_of(&self, client: SocketAddr) -> Result<SocketAddr> {
        let (planned, _) = plan::plan_service(vip(), &servers(), MAGLEV_SLOTS);
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
        let mut want = [0u64; ACTION_SLOTS as usize];
        want[expected as usize] = repeat;
        ensure!(
            actions == want && last == expected,
            "{what}: actions per slot (aborted, drop, pass, tx, redirect, other) were {actions:?}, \
             expected all {repeat} runs to return {expected}"
        );
        let (hits, misses) = match (mode, case) {
            (Mode::Empty | Mode::Floor, _) | (Mode::Elb, Case::NonVip) => (0, 0),
            (Mode::Elb, Case::Established | Case::Reply) => (repeat, 0),
            (Mode::Elb, Case::NewFlow) => (0, repeat),
        };
        ensure!(
            stats.flow_hits == hits
                && stats.flow_misses == misses
                && stats.port_alloc_failures == 0
                && stats.no_server_drops == 0
                && stats.fib_fallbacks == 0
                && stats.tcp_resets == 0
                && stats.drained_drops == 0,
            "{what}: the data plane's counters moved by {stats:?}, expected {hits} flow hits and \
             {misses} misses and nothing else; the figure would not be valid"
        );
        Ok(ns)
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

    fn action_counts(&self) -> Result<[u64; ACTION_SLOTS as usize]> {
        let mut counts = [0u64; ACTION_SLOTS as usize];
        for (slot, count) in counts.iter_mut().enumerate() {
            *count = self.actions.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(counts)
    }
}

fn diff_counts(after: &[u64; 6], before: &[u64; 6]) -> [u64; 6] {
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

fn servers() -> Vec<Server> {
    (0..SERVERS)
        .map(|i| {
            Server::new(
                server_addr(i).to_string(),
                parse_params("weight=1").expect("params"),
            )
        })
        .collect()
}

/// Service id 0 at the VIP over [`SERVERS`] servers (ids 0..), with the
/// production table size and the planner the daemon uses.
fn install_service(maps: &mut L4Maps) -> Result<()> {
    let (planned, skipped) = plan::plan_service(vip(), &servers(), MAGLEV_SLOTS);
    ensure!(skipped.is_empty(), "skipped servers: {skipped:?}");
    let planned = planned?.context("no servers")?;
    // Server id = index in the plan.
    for (id, server) in planned.servers.iter().enumerate() {
        maps.set_server(
            id as u32,
            &ServerEntry {
                addr: plan::addr16(server.addr.ip()),
                port: server.addr.port().to_be_bytes(),
                family: plan::family(server.addr.ip()),
                _pad: 0,
            },
        )?;
    }
    maps.set_table(0, &planned.table)?;
    maps.set_service(
        &vip_key(vip(), IPPROTO_TCP),
        &ServiceEntry {
            id: 0,
            table_size: planned.table.len() as u32,
            flags: 0,
            _pad: 0,
            snat: Default::default(),
        },
    )?;
    Ok(())
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

/// The kernel may move a test run to another CPU when it reschedules; the
/// per-CPU sequence numbers stay distinct anyway (the CPU is part of the
/// varied address), but one CPU also keeps the figures steadier.
fn pin_to_one_cpu() -> Result<()> {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set.
    unsafe { libc::CPU_SET(cpus - 1, &mut set) };
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

fn report(
    args: &Args,
    trivial: &[f64],
    direct_non_vip: &[f64],
    samples: &[Vec<Sample>],
    global: &GlobalStats,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = median(trivial);
    let _ = writeln!(
        out,
        "\n### XDP paths through BPF_PROG_TEST_RUN (`cargo xtask bench xdp --rounds {}`, repeat {}, medians of {} rounds)\n",
        args.rounds, args.repeat, args.rounds
    );
    let _ = writeln!(
        out,
        "| path | wrapper, empty path ns | wrapper, elb path ns | elb ns/packet = trivial + difference | × trivial | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| trivial XDP_PASS program | – | – | {t:.0} | 1.00× | |"
    );
    let mut verdicts = Vec::new();
    let mut wrapped_non_vip = 0.0;
    for (case, runs) in Case::ALL.iter().zip(samples) {
        // Per round: trivial + (path − empty), paired within the round.
        let elb: Vec<f64> = runs
            .iter()
            .zip(trivial)
            .map(|(s, t)| t + (s.path - s.empty))
            .collect();
        let ratios: Vec<f64> = elb.iter().zip(trivial).map(|(e, t)| e / t).collect();
        let ratio = median(&ratios);
        if *case == Case::NonVip {
            wrapped_non_vip = median(&elb);
        }
        let target = match case.target() {
            Some(limit) => {
                let met = ratio <= limit;
                verdicts.push(format!(
                    "{}: **{ratio:.2}×** the trivial program (target ≤ {limit:.0}×, {})",
                    case.name(),
                    if met { "met" } else { "**not met**" }
                ));
                format!("≤ {limit:.0}× ({})", if met { "met" } else { "not met" })
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
    let _ = writeln!(out);
    for verdict in verdicts {
        let _ = writeln!(out, "- {verdict}");
    }
    for (case, runs) in Case::ALL.iter().zip(samples) {
        // Per round, as for elb's paths: trivial + (floor − empty).
        let floor: Vec<f64> = runs
            .iter()
            .zip(trivial)
            .filter_map(|(s, t)| s.floor.map(|floor| (t + floor - s.empty) / t))
            .collect();
        if !floor.is_empty() {
            let _ = writeln!(
                out,
                "- lookups floor, {}: **{:.2}×** the trivial program (parse, look up the VIP and the 5-tuple, insert one entry if there was none; nothing else)",
                case.name(),
                median(&floor)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCross-check of the construction: the production `elb_xdp` timed directly on the non-VIP packet (valid without a wrapper, as that path leaves the packet unchanged) takes {:.0} ns ({:.2}× the trivial program); the wrapper construction above gives {wrapped_non_vip:.0} ns.",
        median(direct_non_vip),
        median(direct_non_vip) / t
    );
    let _ = writeln!(
        out,
        "\nEvery timed run returned the expected action (XDP_REDIRECT for the NAT'd paths, XDP_PASS for the non-VIP packet) and moved elb's flow counters by exactly one hit or miss; over the whole bench: {} flow hits, {} misses (new flows), {} port-allocation failures, {} no-server drops. Service of {SERVERS} servers, Maglev table {MAGLEV_SLOTS} slots.",
        global.flow_hits, global.flow_misses, global.port_alloc_failures, global.no_server_drops
    );
    out
}
