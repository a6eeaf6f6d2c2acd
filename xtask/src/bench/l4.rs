//! `cargo xtask bench l4`: requests/s and connections/s through an LB
//! network namespace, in one run, for elb's XDP data plane, elb's userspace
//! fallback, HAProxy in TCP mode and iptables DNAT+SNAT.
//!
//! Topology (as tests/src/l4_e2e.rs): a client namespace and two server
//! namespaces, each on its own veth link to the LB namespace; tx checksum
//! offload off and GRO on at the client and server ends, forwarding on in
//! the LB. The servers run nginx (one worker, a 3-byte body naming the
//! server); the client runs wrk, keep-alive for requests/s and with
//! `Connection: close` for connections/s (every request a new TCP
//! connection through the balancer).
//!
//! Only one contender is set up at a time, and it is removed completely
//! before the next starts: an attached XDP program changes how veth
//! receives, and a NAT table turns on connection tracking for the whole
//! namespace, so leaving either in place would tax the others. Rounds
//! alternate the contenders; figures are medians.
//!
//! Everything is cleaned up on the way out, on failure and on Ctrl-C too:
//! processes, the elb's pins (`elb teardown`, then the pin directory),
//! iptables rules, and the namespaces (which also takes the veths and any
//! XDP program attached to them).
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    median,
    procs::{Background, busy_cpu_seconds, cpu_seconds},
    temp_dir::TempDir,
    wrk::{WrkResult, WrkRun},
};

const VIP: &str = "10.99.0.1";
const VIP_PORT: u16 = 80;
/// Server namespaces; server `i` (from 0) is on 10.6<i+1>.0.0/16, where the
/// LB is 10.6<i+1>.0.1.
const SERVERS: usize = 2;
const SERVER_PORT: u16 = 8080;
const CLIENT: (&str, &str) = ("10.50.0.2", "10.50.0.1");
const ADMIN_PORT: u16 = 9900;
const SECONDS: u32 = 8;
const CONNECTIONS: u32 = 64;

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    install_interrupt_handler();
    // Everything below has been undone (drops) by the time this returns.
    let result = bench(&elb_bin, rounds);
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; namespaces, processes, rules and pins are cleaned up");
    }
    result
}

fn bench(elb_bin: &Path, rounds: usize) -> Result<()> {
    let dir = TempDir::new("elb-bench-l4")?;
    if !(1..=250).contains(&rounds) {
        bail!("--rounds must be 1 to 250 (one server address per round)");
    }
    let net = Net::build(rounds).context("building the bench namespaces")?;
    let _backends = start_backends(&net, dir.path())?;

    let fallback = fallback_available(elb_bin);
    let iptables = probe_iptables(&net);
    let mut contenders = vec![Contender::Xdp];
    if fallback.is_ok() {
        contenders.push(Contender::Userspace);
    }
    contenders.push(Contender::Haproxy);
    if iptables.is_ok() {
        contenders.push(Contender::Iptables);
    }
    for (what, why) in [
        ("elb userspace fallback", &fallback),
        ("iptables NAT", &iptables),
    ] {
        if let Err(why) = why {
            eprintln!("bench l4: WARNING: {what} cannot be measured here: {why}");
        }
    }

    let ctx = Ctx {
        elb_bin,
        dir: dir.path(),
        net: &net,
    };
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); contenders.len()];
    for round in 1..=rounds {
        for (contender, runs) in contenders.iter().zip(&mut results) {
            check_interrupted()?;
            eprintln!("bench l4: round {round}/{rounds}: {}", contender.name());
            let running = contender
                .start(&ctx, round)
                .with_context(|| format!("starting {}", contender.name()))?;
            check_routing(&net, contender.name())?;
            if round == 1 {
                measure(&net, &running, 1).context("warm-up")?;
            }
            let m = measure(&net, &running, SECONDS)?;
            eprintln!(
                "bench l4:   {:.0} requests/s, {:.0} connections/s{}",
                m.requests_per_sec,
                m.connections_per_sec,
                if m.port_alloc_failures > 0 {
                    format!(", {} NAT port-allocation failures", m.port_alloc_failures)
                } else {
                    String::new()
                }
            );
            runs.push(m);
            running.finish()?;
        }
    }

    print_report(rounds, &contenders, &results, &fallback, &iptables);
    Ok(())
}

struct Ctx<'a> {
    elb_bin: &'a Path,
    dir: &'a Path,
    net: &'a Net,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Xdp = 0,
    Userspace = 1,
    Haproxy = 2,
    Iptables = 3,
}

/// The LB's address on server `i`'s link (the SNAT source of every
/// contender).
fn lb_addr(i: usize) -> String {
    format!("10.6{}.0.1", i + 1)
}

/// Server `i`'s address for `contender` in `round` (0: set-up checks).
/// Every contender and round talks to the same nginx at an address of its
/// own: a server keeps the 4-tuples of closed connections in TIME_WAIT for
/// 60 s (and a balancer its NAT state), and a run that reused the tuples of
/// the run before would pay for that run's connections (SYNs refused by
/// PAWS at a TIME_WAIT, then retransmitted a second later). Within a run, a
/// balancer meets only its own earlier connections, as it would in service.
fn server_addr(i: usize, contender: Contender, round: usize) -> String {
    format!("10.6{}.{round}.{}", i + 1, 2 + contender as usize)
}

const CONTENDERS: [Contender; 4] = [
    Contender::Xdp,
    Contender::Userspace,
    Contender::Haproxy,
    Contender::Iptables,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Xdp => "elb XDP (driver mode)",
            Contender::Userspace => "elb userspace fallback",
            Contender::Haproxy => "HAProxy (mode tcp)",
            Contender::Iptables => "iptables DNAT+SNAT",
        }
    }

    fn start(self, ctx: &Ctx, round: usize) -> Result<Running> {
        let net = ctx.net;
        let mut running = Running::default();
        match self {
            Contender::Xdp | Contender::Userspace => {
                let name = format!("l4bench-{}", std::process::id());
                let dir = ctx.dir.join(format!("elb-{name}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let mut args: Vec<String> = [
                    "run",
                    "--name",
                    &name,
                    "--listen",
                    &format!("127.0.0.1:{ADMIN_PORT}"),
                    "--state-file",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.push(dir.join("state.json").display().to_string());
                args.extend(["--run-dir".into(), dir.display().to_string()]);
                if self == Contender::Xdp {
                    for iface in net.lb_ifaces() {
                        args.extend(["--xdp-iface".into(), iface]);
                    }
                    args.extend(["--xdp-mode".into(), "driver".into()]);
                    if fallback_available(ctx.elb_bin).is_ok() {
                        args.extend(["--l4-dataplane".into(), "xdp".into()]);
                    }
                    // Runs after elb has stopped (cleanups run in reverse):
                    // the data plane stays pinned and attached after elb
                    // exits, `elb teardown` removes it; whatever is left
                    // goes with the pin directory and the namespace.
                    let (bin, lb, pins) = (
                        ctx.elb_bin.to_path_buf(),
                        net.lb.clone(),
                        PathBuf::from(format!("/sys/fs/bpf/elb/{name}")),
                    );
                    let (teardown_name, run_dir) = (name.clone(), dir.clone());
                    running.cleanup(move || {
                        let _ = lb
                            .command(&bin)
                            .args(["teardown", "--name", &teardown_name, "--run-dir"])
                            .arg(&run_dir)
                            .output();
                        for iface in lb.lb_ifaces_of() {
                            let _ = lb.run("ip", &["link", "set", "dev", &iface, "xdp", "off"]);
                        }
                        let _ = std::fs::remove_dir_all(&pins);
                    });
                } else {
                    args.extend(["--l4-dataplane".into(), "userspace".into()]);
                    running.vip_on_lo(net)?;
                }
                let mut command = net.lb.command(ctx.elb_bin);
                command.args(&args).env("RUST_LOG", "warn");
                let mut elb = Background::spawn(&format!("elb-{name}"), &mut command, &dir)?;
                wait_for(
                    &mut elb,
                    &dir.join(format!("elb-{name}.log")),
                    Duration::from_secs(20),
                    || admin(net, "GET", "service", None).is_ok(),
                )?;
                let pid = elb.pid();
                running.process(elb, pid);
                let upstream = (0..SERVERS)
                    .map(|i| {
                        format!(
                            r#""{}:{SERVER_PORT}": "weight=1""#,
                            server_addr(i, self, round)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                admin(
                    net,
                    "PUT",
                    "upstream",
                    Some(&format!(r#"{{"web": {{{upstream}}}}}"#)),
                )?;
                admin(
                    net,
                    "PUT",
                    "service",
                    Some(&format!(
                        r#"{{"web": {{"vip": "{VIP}:{VIP_PORT}", "proto": "tcp", "upstream": "web"}}}}"#
                    )),
                )?;
                if self == Contender::Xdp {
                    running.xdp_pins = Some(PathBuf::from(format!("/sys/fs/bpf/elb/{name}")));
                    // XDP works in softirq: the elb process is idle, and
                    // its ~0 CPU would read as "free". The machine's CPU
                    // column shows the cost.
                    running.pid = None;
                }
                // The admin API answers before the data plane has the
                // service (and the servers' neighbours) in place.
                let log = dir.join(format!("elb-{name}.log"));
                wait_until(Duration::from_secs(10), || vip_answers(net)).with_context(|| {
                    format!(
                        "the VIP does not answer through elb; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })?;
            }
            Contender::Haproxy => {
                running.vip_on_lo(net)?;
                let conf = ctx.dir.join("haproxy.cfg");
                let servers: String = (0..SERVERS)
                    .map(|i| {
                        let addr = server_addr(i, self, round);
                        format!("  server s{} {addr}:{SERVER_PORT}\n", i + 1)
                    })
                    .collect();
                // One thread per CPU, as elb runs one worker per CPU.
                std::fs::write(
                    &conf,
                    format!(
                        "global\n  nbthread 2\n  maxconn 8000\n\
                         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                         frontend fe\n  bind {VIP}:{VIP_PORT}\n  default_backend be\n\
                         backend be\n  balance roundrobin\n{servers}"
                    ),
                )?;
                let mut command = net.lb.command(Path::new("haproxy"));
                command.arg("-db").arg("-f").arg(&conf);
                let mut haproxy = Background::spawn("haproxy", &mut command, ctx.dir)?;
                wait_for(
                    &mut haproxy,
                    &ctx.dir.join("haproxy.log"),
                    Duration::from_secs(10),
                    || vip_answers(net),
                )?;
                let pid = haproxy.pid();
                running.process(haproxy, pid);
            }
            Contender::Iptables => {
                let lb = net.lb.clone();
                running.cleanup(move || remove_nat_table(&lb));
                for rule in iptables_rules(round) {
                    let args: Vec<&str> = rule.iter().map(String::as_str).collect();
                    net.lb.run("iptables", &args)?;
                }
            }
        }
        Ok(running)
    }
}

/// The DNAT rules spread new connections over the servers in turn (the
/// nth match), like the other contenders' round robin or hash; SNAT makes
/// replies come back through the LB, as full NAT does.
fn iptables_rules(round: usize) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    let words = |s: String| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let n = SERVERS;
    for i in 0..n {
        let addr = server_addr(i, Contender::Iptables, round);
        let nth = if i + 1 < n {
            format!("-m statistic --mode nth --every {} --packet 0 ", n - i)
        } else {
            String::new()
        };
        rules.push(words(format!(
            "-t nat -A PREROUTING -d {VIP}/32 -p tcp --dport {VIP_PORT} {nth}-j DNAT --to-destination {addr}:{SERVER_PORT}"
        )));
    }
    for i in 0..n {
        let (addr, lb_addr) = (server_addr(i, Contender::Iptables, round), lb_addr(i));
        rules.push(words(format!(
            "-t nat -A POSTROUTING -d {addr}/32 -p tcp --dport {SERVER_PORT} -j SNAT --to-source {lb_addr}"
        )));
    }
    rules
}

/// Deletes the rules and the table itself: an empty NAT table still keeps
/// connection tracking on for the namespace.
fn remove_nat_table(lb: &Ns) {
    let _ = lb.run("iptables", &["-t", "nat", "-F"]);
    let _ = lb.run("iptables", &["-t", "nat", "-X"]);
    let _ = lb.run("nft", &["delete", "table", "ip", "nat"]);
}

/// Whether iptables NAT works in a namespace here: the rules must load and
/// a connection must go through them. Err says why not.
fn probe_iptables(net: &Net) -> Result<(), String> {
    let lb = net.lb.clone();
    let _cleanup = Guard(Some(Box::new(move || remove_nat_table(&lb))));
    for rule in iptables_rules(0) {
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        net.lb
            .run("iptables", &args)
            .map_err(|e| format!("`iptables {}` failed: {e:#}", rule.join(" ")))?;
    }
    net.client
        .run(
            "curl",
            &["-sf", "-m", "2", &format!("http://{VIP}:{VIP_PORT}/")],
        )
        .map(|_| ())
        .map_err(|e| format!("the rules load, but no connection gets through them: {e:#}"))
}

/// Whether this elb has the userspace fallback (`--l4-dataplane`).
fn fallback_available(elb: &Path) -> Result<(), String> {
    let help = Command::new(elb)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("running elb: {e}"))?;
    if String::from_utf8_lossy(&help.stdout).contains("--l4-dataplane") {
        Ok(())
    } else {
        Err("this elb has no --l4-dataplane flag yet".into())
    }
}

/// A started contender; [`Running::finish`] (or drop) undoes everything
/// in reverse order.
#[derive(Default)]
struct Running {
    cleanups: Vec<Guard>,
    /// The balancer's process, for its CPU time (none for kernel NAT).
    pid: Option<u32>,
    /// XDP elb: its pin directory, for its port-allocation failures.
    xdp_pins: Option<PathBuf>,
}

struct Guard(Option<Box<dyn FnOnce()>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Running {
    fn cleanup(&mut self, f: impl FnOnce() + 'static) {
        self.cleanups.push(Guard(Some(Box::new(f))));
    }

    fn process(&mut self, process: Background, pid: u32) {
        self.pid = Some(pid);
        self.cleanup(move || drop(process));
    }

    fn vip_on_lo(&mut self, net: &Net) -> Result<()> {
        let lb = net.lb.clone();
        net.lb
            .run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        self.cleanup(move || {
            let _ = lb.run("ip", &["addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
        });
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        while let Some(guard) = self.cleanups.pop() {
            drop(guard);
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        while let Some(guard) = self.cleanups.pop() {
            drop(guard);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Measured {
    requests_per_sec: f64,
    request_p99_ms: f64,
    connections_per_sec: f64,
    connection_p99_ms: f64,
    /// Busy CPU time of the whole machine (both cores, every process and
    /// softirq) per request or connection: kernel NAT and XDP do their work
    /// in softirq, which no process is charged for.
    cpu_us_per_request: f64,
    cpu_us_per_connection: f64,
    /// The balancer process's own CPU per request/connection (userspace
    /// contenders only).
    lb_cpu_us_per_request: Option<f64>,
    lb_cpu_us_per_connection: Option<f64>,
    port_alloc_failures: u64,
}

fn measure(net: &Net, running: &Running, seconds: u32) -> Result<Measured> {
    let url = format!("http://{VIP}:{VIP_PORT}/");
    let failures_before = running.port_alloc_failures()?;
    let run = |headers: &'static [&'static str]| -> Result<(WrkResult, f64, Option<f64>)> {
        check_interrupted()?;
        let busy = busy_cpu_seconds()?;
        let lb_cpu = running.pid.map(cpu_seconds).transpose()?;
        let url = url.clone();
        let result = net.client.within(move || {
            WrkRun {
                url: &url,
                headers,
                threads: 2,
                connections: CONNECTIONS,
                seconds,
            }
            .run()
        })??;
        let count = result.requests_per_sec * f64::from(seconds);
        let per = |cpu: f64| cpu * 1e6 / count.max(1.0);
        let lb = match (running.pid, lb_cpu) {
            (Some(pid), Some(before)) => Some(per(cpu_seconds(pid)? - before)),
            _ => None,
        };
        Ok((result, per(busy_cpu_seconds()? - busy), lb))
    };
    let (keep_alive, cpu_request, lb_request) = run(&[])?;
    let (close, cpu_connection, lb_connection) = run(&["Connection: close"])?;
    Ok(Measured {
        requests_per_sec: keep_alive.requests_per_sec,
        request_p99_ms: keep_alive.p99_ms,
        connections_per_sec: close.requests_per_sec,
        connection_p99_ms: close.p99_ms,
        cpu_us_per_request: cpu_request,
        cpu_us_per_connection: cpu_connection,
        lb_cpu_us_per_request: lb_request,
        lb_cpu_us_per_connection: lb_connection,
        port_alloc_failures: running.port_alloc_failures()? - failures_before,
    })
}

impl Running {
    /// XDP elb's NAT port-allocation failures so far, summed over CPUs,
    /// read from its pinned statistics map.
    fn port_alloc_failures(&self) -> Result<u64> {
        let Some(pins) = &self.xdp_pins else {
            return Ok(0);
        };
        let output = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pins.join("elb_glob_stats"))
            .output()
            .context("running bpftool")?;
        if !output.status.success() {
            bail!(
                "bpftool could not read elb's statistics: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let key = "\"port_alloc_failures\":";
        Ok(text
            .match_indices(key)
            .filter_map(|(at, _)| {
                let rest = text[at + key.len()..].trim_start();
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse::<u64>().ok()
            })
            .sum())
    }
}

/// New connections through the VIP must all be answered, by both servers
/// between them, before anything is timed: 20 of them, and if one server
/// got none (2 in a million by chance), 20 more, with a warning.
fn check_routing(net: &Net, name: &str) -> Result<()> {
    let mut seen = [0u32; SERVERS];
    for batch in 1..=2 {
        for _ in 0..20 {
            let out = net
                .client
                .run(
                    "curl",
                    &["-sf", "-m", "2", &format!("http://{VIP}:{VIP_PORT}/")],
                )
                .with_context(|| format!("{name}: a request through the VIP failed"))?;
            let body = out.trim();
            match body.strip_prefix('s').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (1..=SERVERS).contains(&n) => seen[n - 1] += 1,
                _ => bail!("{name}: unexpected answer {body:?}"),
            }
        }
        if !seen.contains(&0) {
            return Ok(());
        }
        eprintln!(
            "bench l4: WARNING: {name}: {} connections reached the servers {seen:?}",
            batch * 20
        );
    }
    bail!("{name}: 40 connections reached the servers {seen:?}; expected both")
}

fn print_report(
    rounds: usize,
    contenders: &[Contender],
    results: &[Vec<Measured>],
    fallback: &Result<(), String>,
    iptables: &Result<(), String>,
) {
    let medians: Vec<Measured> = results.iter().map(|runs| summarise(runs)).collect();
    println!(
        "\n### L4: requests/s and connections/s through the LB namespace (`cargo xtask bench l4 --rounds {rounds}`, {rounds} alternating rounds of {SECONDS} s per measure, medians)\n"
    );
    println!(
        "wrk -t2 -c{CONNECTIONS} from a client namespace to the VIP {VIP}:{VIP_PORT}; two nginx servers (1 worker each) in their own namespaces; requests/s with keep-alive, connections/s with `Connection: close` (one TCP connection per request). CPU is the whole machine's busy time (2 cores: wrk, nginx, the balancer, softirq) per request or connection; \"LB process\" is the balancer process's own share where there is one.\n"
    );
    println!(
        "| data plane | requests/s | p99 ms | connections/s | p99 ms | machine CPU µs/request | machine CPU µs/connection | LB process CPU µs/request | LB process CPU µs/connection |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    for (contender, m) in contenders.iter().zip(&medians) {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} | {:.1} | {} | {} |",
            contender.name(),
            m.requests_per_sec,
            m.request_p99_ms,
            m.connections_per_sec,
            m.connection_p99_ms,
            m.cpu_us_per_request,
            m.cpu_us_per_connection,
            opt(m.lb_cpu_us_per_request),
            opt(m.lb_cpu_us_per_connection),
        );
    }
    for (what, why) in [
        ("elb userspace fallback", fallback),
        ("iptables DNAT+SNAT", iptables),
    ] {
        if let Err(why) = why {
            println!("| {what} | not measured: {why} | | | | | | | |");
        }
    }
    println!();
    let find = |c: Contender| {
        contenders
            .iter()
            .position(|x| *x == c)
            .map(|i| (i, medians[i]))
    };
    let Some((xdp_index, _)) = find(Contender::Xdp) else {
        return;
    };
    for (other, target) in [(Contender::Haproxy, 1.5), (Contender::Iptables, 1.0)] {
        let Some((other_index, _)) = find(other) else {
            println!(
                "- XDP elb / {}: **not measured** (target ≥ {target:.1}×)",
                other.name()
            );
            continue;
        };
        // Ratios per round (same round, same machine state), then medians.
        let ratio = |f: fn(&Measured) -> f64| {
            let mut r: Vec<f64> = results[xdp_index]
                .iter()
                .zip(&results[other_index])
                .map(|(x, o)| f(x) / f(o))
                .collect();
            median(&mut r)
        };
        let requests = ratio(|m| m.requests_per_sec);
        let connections = ratio(|m| m.connections_per_sec);
        let verdict = |r: f64| if r >= target { "met" } else { "**not met**" };
        println!(
            "- XDP elb / {}: requests/s **{requests:.2}×**, connections/s **{connections:.2}×** (target ≥ {target:.1}×: requests/s {}, connections/s {})",
            other.name(),
            verdict(requests),
            verdict(connections)
        );
    }
    let failures: Vec<String> = results[xdp_index]
        .iter()
        .map(|m| m.port_alloc_failures.to_string())
        .collect();
    println!(
        "- XDP elb NAT port-allocation failures per round: {} (each one a dropped SYN that the client retransmits after 1 s; wrk's latency starts after connect, so only the rate shows them)",
        failures.join(", ")
    );
}

fn summarise(runs: &[Measured]) -> Measured {
    let pick = |f: fn(&Measured) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let pick_opt = |f: fn(&Measured) -> Option<f64>| {
        let values: Vec<f64> = runs.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| median(&mut values.clone()))
    };
    Measured {
        requests_per_sec: pick(|m| m.requests_per_sec),
        request_p99_ms: pick(|m| m.request_p99_ms),
        connections_per_sec: pick(|m| m.connections_per_sec),
        connection_p99_ms: pick(|m| m.connection_p99_ms),
        cpu_us_per_request: pick(|m| m.cpu_us_per_request),
        cpu_us_per_connection: pick(|m| m.cpu_us_per_connection),
        lb_cpu_us_per_request: pick_opt(|m| m.lb_cpu_us_per_request),
        lb_cpu_us_per_connection: pick_opt(|m| m.lb_cpu_us_per_connection),
        port_alloc_failures: pick(|m| m.port_alloc_failures as f64) as u64,
    }
}

/// `PUT`/`GET /__erulb__/<endpoint>` on the elb in the LB namespace.
fn admin(net: &Net, method: &str, endpoint: &str, body: Option<&str>) -> Result<String> {
    let url = format!("http://127.0.0.1:{ADMIN_PORT}/__erulb__/{endpoint}");
    let mut args = vec!["-sS", "--fail-with-body", "-m", "5", "-X", method, &url];
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    net.lb.run("curl", &args)
}

fn vip_answers(net: &Net) -> bool {
    net.client
        .run(
            "curl",
            &["-sf", "-m", "1", &format!("http://{VIP}:{VIP_PORT}/")],
        )
        .is_ok()
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        check_interrupted()?;
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not ready after {timeout:?}")
}

/// Waits for `ready` while `process` (logging to `log`) lives.
fn wait_for(
    process: &mut Background,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        check_interrupted()?;
        if ready() {
            return Ok(());
        }
        process.check_alive().with_context(|| {
            format!(
                "its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })?;
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not ready after {timeout:?}")
}

trait CheckAlive {
    fn check_alive(&mut self) -> Result<()>;
}

impl CheckAlive for Background {
    /// `wait_port` only knows loopback of this namespace, so this checks
    /// the process through /proc instead.
    fn check_alive(&mut self) -> Result<()> {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            bail!("the process exited");
        }
        Ok(())
    }
}

/// nginx in every server namespace, answering `s<i>` on :8080.
fn start_backends(net: &Net, dir: &Path) -> Result<Vec<Background>> {
    let mut backends = Vec::new();
    for (i, ns) in net.servers.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let d = dir.join(&name);
        std::fs::create_dir_all(&d)?;
        let dd = d.display();
        let conf = format!(
            "worker_processes 1;\npid {dd}/nginx.pid;\nerror_log {dd}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             client_body_temp_path {dd}/body; proxy_temp_path {dd}/proxy; fastcgi_temp_path {dd}/fcgi; \
             uwsgi_temp_path {dd}/uwsgi; scgi_temp_path {dd}/scgi;\n\
             server {{ listen {SERVER_PORT} backlog=4096; location / {{ return 200 \"{name}\\n\"; }} }} }}\n"
        );
        let path = d.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut command = ns.command(Path::new("nginx"));
        command
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]);
        let mut nginx = Background::spawn(&format!("nginx-{name}"), &mut command, &d)?;
        let lb = net.lb.clone();
        let url = format!(
            "http://{}:{SERVER_PORT}/",
            server_addr(i, Contender::Xdp, 0)
        );
        wait_for(
            &mut nginx,
            &d.join(format!("nginx-{name}.log")),
            Duration::from_secs(10),
            || lb.run("curl", &["-sf", "-m", "1", &url]).is_ok(),
        )
        .with_context(|| format!("nginx in {}", ns.name))?;
        backends.push(nginx);
    }
    Ok(backends)
}

/// A network namespace (by name).
#[derive(Clone)]
struct Ns {
    name: String,
}

impl Ns {
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` in this namespace. `nsenter --net` (unlike `ip netns
    /// exec`) keeps the mount namespace, so elb sees bpffs; it execs the
    /// program in place, so the pid is the program's.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg(program);
        command
    }

    /// Runs a command to completion; stdout, or an error with stderr.
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = self
            .command(Path::new(program))
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "`{program} {}` in {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `f` on a thread inside this namespace; processes it starts
    /// (wrk) inherit the namespace.
    fn within<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        let file = std::fs::File::open(self.path())
            .with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::spawn(move || -> Result<R> {
            // SAFETY: the fd is open; setns only affects this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in a namespace panicked"))?
    }

    /// The LB's ends of the veth links (every interface but lo).
    fn lb_ifaces_of(&self) -> Vec<String> {
        self.run("ip", &["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|name| !name.is_empty() && name != "lo")
            .collect()
    }
}

/// The bench's namespaces; deleted on drop (with their veths and whatever
/// XDP program, NAT rule or address they held).
struct Net {
    client: Ns,
    lb: Ns,
    servers: Vec<Ns>,
    created: Vec<String>,
}

impl Net {
    /// Server addresses for set-up checks and `rounds` rounds.
    fn build(rounds: usize) -> Result<Self> {
        let pid = std::process::id();
        let mut net = Net {
            client: Ns {
                name: format!("elbl4c-{pid}"),
            },
            lb: Ns {
                name: format!("elbl4lb-{pid}"),
            },
            servers: (1..=SERVERS)
                .map(|i| Ns {
                    name: format!("elbl4s{i}-{pid}"),
                })
                .collect(),
            created: Vec::new(),
        };
        let all: Vec<Ns> = [net.client.clone(), net.lb.clone()]
            .into_iter()
            .chain(net.servers.iter().cloned())
            .collect();
        for ns in &all {
            crate::cmd::Step::new("ip")
                .args(["netns", "add", &ns.name])
                .run("creating a namespace")?;
            net.created.push(ns.name.clone());
            ns.run("ip", &["link", "set", "lo", "up"])?;
        }
        let short = pid % 100_000;
        net.link(
            &net.client,
            &format!("l4c{short}"),
            (&[CLIENT.0.to_owned()], CLIENT.1),
            &format!("l4cl{short}"),
        )?;
        net.client
            .run("ip", &["route", "add", "10.99.0.0/24", "via", CLIENT.1])?;
        for (i, server) in net.servers.iter().enumerate() {
            let lb_addr = lb_addr(i);
            let addrs: Vec<String> = (0..=rounds)
                .flat_map(|round| CONTENDERS.map(|c| server_addr(i, c, round)))
                .collect();
            net.link(
                server,
                &format!("l4s{i}x{short}"),
                (&addrs, lb_addr.as_str()),
                &format!("l4sl{i}x{short}"),
            )?;
            server.run("ip", &["route", "add", "default", "via", &lb_addr])?;
        }
        net.lb.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(net)
    }

    /// A veth from `peer` (end `peer_dev`, addresses `peer_addrs`) to the
    /// LB (end `lb_dev`, address `lb_addr`), /16s; checksum offload off and
    /// GRO on at the peer's end (see README: veth and XDP).
    fn link(
        &self,
        peer: &Ns,
        peer_dev: &str,
        (peer_addrs, lb_addr): (&[String], &str),
        lb_dev: &str,
    ) -> Result<()> {
        crate::cmd::Step::new("ip")
            .args(["link", "add", peer_dev, "netns", &peer.name, "type", "veth"])
            .args(["peer", "name", lb_dev, "netns", &self.lb.name])
            .run("creating a veth link")?;
        for addr in peer_addrs {
            peer.run(
                "ip",
                &["addr", "add", &format!("{addr}/16"), "dev", peer_dev],
            )?;
        }
        self.lb.run(
            "ip",
            &["addr", "add", &format!("{lb_addr}/16"), "dev", lb_dev],
        )?;
        peer.run("ip", &["link", "set", peer_dev, "up"])?;
        self.lb.run("ip", &["link", "set", lb_dev, "up"])?;
        peer.run("ethtool", &["-K", peer_dev, "tx", "off"])?;
        peer.run("ethtool", &["-K", peer_dev, "gro", "on"])?;
        Ok(())
    }

    fn lb_ifaces(&self) -> Vec<String> {
        self.lb.lb_ifaces_of()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM stop the bench between steps (wrk runs are bounded),
/// so the cleanups above run instead of the process dying with namespaces,
/// rules and pins left behind.
fn install_interrupt_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
