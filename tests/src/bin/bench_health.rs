//! `cargo xtask bench health`'s runner. Three measurements:
//!
//! 1. **Check cost**: a real elb (`ELB_BIN`, release) checks 10,000
//!    loopback listeners every 5 s, TCP and then HTTP; elb's CPU time over a
//!    steady window, as a share of one core (target ≤ 5%).
//! 2. **Rebuild and write**: a server of a 1,000-server L4 service turns
//!    unhealthy (or healthy again); the time of `L4Sync::apply`, which
//!    rebuilds the Maglev table (65,537 slots) and writes the XDP maps
//!    (target ≤ 10 ms). Runs in a scratch network namespace, on maps of the
//!    real XDP object, so neighbour priming sends nothing anywhere.
//! 3. **etcd → XDP maps**: a real etcd and an elb with XDP attached in a
//!    namespace; the time from sending a service's put to etcd until elb's
//!    pinned `elb_services` map holds its VIP (target p99 ≤ 20 ms).
//!
//! Prints a markdown table. Usage: `bench_health [--servers N] [--window SECONDS] [--puts N]`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData},
};
use elb_common::l4::{ServiceEntry, VipKey};
use elb_tests::{
    elb_process::ElbProcess,
    etcd::Etcd,
    http,
    netns::{NetNs, unique_name, veth_pair},
    ports::free_port,
};
use elb_userspace::{
    config::{ConfigManager, KeyLayout},
    l4::{maps::L4Maps, sync::L4Sync},
    store::KvOp,
    targets::{CheckState, TargetRegistry},
};
use serde_json::{Value, json};

struct Args {
    servers: usize,
    window: u64,
    puts: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        servers: 10_000,
        window: 20,
        puts: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--servers" => args.servers = value.parse()?,
            "--window" => args.window = value.parse()?,
            "--puts" => args.puts = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = args()?;
    raise_fd_limit()?;
    let checks = check_cost(&args)?;
    let rebuild = rebuild_and_write()?;
    let propagation = etcd_to_maps(args.puts)?;

    println!("\n### Health (`cargo xtask bench health`)\n");
    println!("| measurement | figure | target |");
    println!("|---|---|---|");
    for c in &checks {
        println!(
            "| {} checks of {} loopback servers every 5 s: elb CPU | **{:.1}% of one core** ({:.0} checks/s, {:.1} µs CPU per check); the same connections from a bare blocking loop: {:.1}% | ≤ 5% |",
            c.kind,
            args.servers,
            c.core_share * 100.0,
            c.checks_per_second,
            c.us_per_check,
            c.floor_share * 100.0
        );
    }
    println!(
        "| 1,000-server L4 service, one server's health changes: Maglev rebuild + XDP map write | **{:.2} ms** median, {:.2} ms p99 ({} changes; rebuild alone {:.2} ms) | ≤ 10 ms |",
        rebuild.median_ms, rebuild.p99_ms, rebuild.samples, rebuild.plan_ms
    );
    println!(
        "| etcd put of a service → elb's pinned XDP map holds its VIP | **p99 {:.1} ms** (p50 {:.1} ms, max {:.1} ms, {} puts) | p99 ≤ 20 ms |",
        percentile(&propagation, 0.99),
        percentile(&propagation, 0.5),
        percentile(&propagation, 1.0),
        propagation.len()
    );
    Ok(())
}

/// 10,000 listeners need 10,000 descriptors: the soft limit goes up to the
/// hard one (elb inherits it).
fn raise_fd_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The port every check target listens on.
const TARGET_PORT: u16 = 8080;

struct CheckCost {
    kind: &'static str,
    core_share: f64,
    checks_per_second: f64,
    us_per_check: f64,
    /// The same connections from a bare blocking loop in this process.
    floor_share: f64,
}

/// Loopback listeners that accept, answer an HTTP request with 200 (or
/// nothing, for a TCP check) and close; counts connections.
struct Targets {
    addrs: Vec<SocketAddr>,
    accepted: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

fn start_targets(count: usize) -> Result<Targets> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::with_capacity(count);
    // Distinct loopback addresses on one port, as real servers would be:
    // 10,000 listeners on 127.0.0.1 would hold a third of the ephemeral
    // ports, and every connect would search past them.
    for i in 0..count {
        let ip = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
        let listener = TcpListener::bind((ip, TARGET_PORT))
            .with_context(|| format!("binding {ip}:{TARGET_PORT}"))?;
        listener.set_nonblocking(true)?;
        addrs.push(listener.local_addr()?);
        let accepted = Arc::clone(&accepted);
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
                        && n > 0
                    {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                });
            }
        });
    }
    Ok(Targets {
        addrs,
        accepted,
        _runtime: runtime,
    })
}

fn check_cost(args: &Args) -> Result<Vec<CheckCost>> {
    eprintln!("bench health: starting {} loopback targets", args.servers);
    let targets = start_targets(args.servers)?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state.json");
    let state = state.to_string_lossy().into_owned();
    let run_dir = dir.path().to_string_lossy().into_owned();
    let name = unique_name("HB");
    let mut elb = ElbProcess::spawn(
        &[
            "run",
            "--name",
            &name,
            "--listen",
            &listen,
            "--state-file",
            &state,
            "--run-dir",
            &run_dir,
            "--l4-dataplane",
            "userspace",
            "--workers",
            "1",
        ],
        None,
    )?;
    let addr: SocketAddr = listen.parse()?;
    elb.wait_until(Duration::from_secs(20), || {
        http::get(addr, "/__erulb__/upstream", &[]).is_ok()
    })?;
    let servers: serde_json::Map<String, Value> = targets
        .addrs
        .iter()
        .map(|a| (a.to_string(), Value::from("")))
        .collect();
    admin_ok(addr, "PUT", "upstream", &json!({ "hc": servers }))?;
    let pid = elb.pid().context("elb has exited")?;
    let mut results = Vec::new();
    for (kind, target) in [("TCP", "TCP"), ("HTTP", "HTTP/health")] {
        let policy = json!({"hc": {"health_check": {"target": target, "interval": "5s",
            "timeout": "2s", "healthy_threshold": 2, "unhealthy_threshold": 2}}});
        admin_ok(addr, "PUT", "policy", &policy)?;
        eprintln!("bench health: {kind} checks, warming up for 11 s");
        std::thread::sleep(Duration::from_secs(11));
        let (cpu_before, accepted_before, started) = (
            cpu_seconds(pid)?,
            targets.accepted.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(args.window));
        let cpu = cpu_seconds(pid)? - cpu_before;
        let elapsed = started.elapsed().as_secs_f64();
        let checks = (targets.accepted.load(Ordering::Relaxed) - accepted_before) as f64;
        let floor_share = floor(&targets.addrs, kind == "HTTP", checks / elapsed)?;
        results.push(CheckCost {
            kind,
            core_share: cpu / elapsed,
            checks_per_second: checks / elapsed,
            us_per_check: cpu * 1e6 / checks.max(1.0),
            floor_share,
        });
    }
    let health = admin_ok(addr, "GET", "health", &Value::Null)?;
    let healthy = health["hc"]["servers"].as_object().map_or(0, |s| {
        s.values().filter(|v| v["state"] == "healthy").count()
    });
    if healthy != args.servers {
        bail!("only {healthy} of {} servers are healthy", args.servers);
    }
    Ok(results)
}

/// The kernel's share of a check, on loopback: the same number of
/// connections per second (closed with a reset, as elb's checks; for HTTP
/// also a request and the response head) from a plain blocking loop, paced
/// in 5 ms batches as elb's checks are, for 10 s; this thread's CPU time as
/// a share of one core. On loopback the server side's handshake runs in
/// the connecting thread too, so this is what any checker pays here.
fn floor(addrs: &[SocketAddr], http: bool, per_second: f64) -> Result<f64> {
    let addrs = addrs.to_vec();
    let batch = ((per_second * 0.005).round() as usize).max(1);
    std::thread::spawn(move || -> Result<f64> {
        let cpu_before = thread_cpu_seconds();
        let started = Instant::now();
        let mut sent = 0usize;
        while started.elapsed() < Duration::from_secs(10) {
            for _ in 0..batch {
                let addr = addrs[sent % addrs.len()];
                sent += 1;
                let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                else {
                    continue;
                };
                if http {
                    let _ = stream
                        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                    let mut buf = [0u8; 512];
                    let _ = stream.read(&mut buf);
                }
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            let due = started + Duration::from_secs_f64(sent as f64 / per_second);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok((thread_cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the floor thread panicked"))?
}

fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn admin_ok(addr: SocketAddr, method: &str, endpoint: &str, body: &Value) -> Result<Value> {
    let body = (!body.is_null()).then_some(body);
    let response = http::admin(addr, method, endpoint, body)?;
    if response.status != 200 {
        bail!(
            "{method} {endpoint}: {} {}",
            response.status,
            response.text()
        );
    }
    response.json()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: plain sysconf.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

struct Rebuild {
    median_ms: f64,
    p99_ms: f64,
    plan_ms: f64,
    samples: usize,
}

fn rebuild_and_write() -> Result<Rebuild> {
    eprintln!("bench health: rebuild and write of a 1,000-server service");
    let ns = NetNs::new("hb")?;
    ns.enter(rebuild_in_namespace)?
}

fn rebuild_in_namespace() -> Result<Rebuild> {
    let registry = Arc::new(TargetRegistry::new(None));
    let mut manager = ConfigManager::with_targets(KeyLayout::new("BENCH"), Arc::clone(&registry));
    let mut ops: Vec<KvOp> = (0..1000)
        .map(|i| KvOp::Put {
            key: format!("/BENCH/upstreams/big/10.1.{}.{}:80", i / 250, i % 250 + 1),
            value: String::new(),
        })
        .collect();
    ops.push(KvOp::Put {
        key: "/BENCH/policies/big".into(),
        value: "{}".into(),
    });
    ops.push(KvOp::Put {
        key: "/BENCH/services/svc".into(),
        value: json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "big"}).to_string(),
    });
    let skipped = manager.apply(&ops);
    if !skipped.is_empty() {
        bail!("configuration refused: {skipped:?}");
    }
    let jobs = registry.check_jobs();
    let now = Instant::now();
    for job in &jobs {
        registry.record_check(
            (&job.upstream, &job.server, job.epoch),
            CheckState::Healthy,
            "bench".into(),
            now,
        );
    }
    let mut ebpf = Ebpf::load(elb_userspace::EBPF_OBJECT).context("loading the XDP object")?;
    let mut sync = L4Sync::new(L4Maps::take(&mut ebpf)?)?;
    let snapshot = manager.snapshot_handle().load_full();
    sync.apply(&snapshot)?;
    let mut times = Vec::new();
    let mut plans = Vec::new();
    for round in 0..40 {
        let job = jobs.get(round * 7 % jobs.len()).context("no jobs")?;
        for state in [CheckState::Unhealthy, CheckState::Healthy] {
            registry.record_check(
                (&job.upstream, &job.server, job.epoch),
                state,
                "bench".into(),
                Instant::now(),
            );
            let started = Instant::now();
            sync.apply(&snapshot)?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            if let Some(upstream) = snapshot.upstream("big") {
                let started = Instant::now();
                let (plan, _) = elb_userspace::l4::plan::plan_gated(
                    "10.0.0.1:80".parse()?,
                    upstream.servers(),
                    upstream.gates(),
                    65_537,
                );
                plans.push(started.elapsed().as_secs_f64() * 1000.0);
                plan?.context("no plan")?;
            }
        }
    }
    Ok(Rebuild {
        median_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        plan_ms: percentile(&plans, 0.5),
        samples: times.len(),
    })
}

fn etcd_to_maps(puts: usize) -> Result<Vec<f64>> {
    eprintln!("bench health: etcd → XDP maps, {puts} puts");
    let lb = NetNs::new("hbl")?;
    let peer = NetNs::new("hbp")?;
    let veth = veth_pair(&lb, &["10.97.0.1/24"], &peer, &["10.97.0.2/24"])?;
    let name = unique_name("HBX");
    let dir = tempfile::tempdir()?;
    let run_dir = dir.path().to_string_lossy().into_owned();
    let iface = veth.a.clone();
    lb.enter(move || -> Result<Vec<f64>> {
        let etcd = Etcd::start()?;
        let endpoint = etcd.endpoint();
        let http_port = free_port().to_string();
        let listen = format!("127.0.0.1:{http_port}");
        let mut elb = ElbProcess::spawn(
            &[
                "run", "--name", &name, "--listen", &listen, "--run-dir", &run_dir, "--etcd",
                &endpoint, "--xdp-iface", &iface, "--l4-dataplane", "xdp",
            ],
            None,
        )?;
        elb.wait_for_log(Duration::from_secs(20), "L4 data plane: xdp")?;
        let pin = format!("/sys/fs/bpf/elb/{name}/elb_services");
        let map = MapData::from_pin(&pin).with_context(|| format!("opening {pin}"))?;
        let services: BpfHashMap<MapData, VipKey, ServiceEntry> =
            BpfHashMap::try_from(Map::HashMap(map))?;
        let etcd_port: u16 = endpoint.rsplit_once(':').context("port")?.1.parse()?;
        let mut delays = Vec::with_capacity(puts);
        for i in 0..puts {
            let vip: SocketAddr = format!("10.200.{}.{}:80", i / 250, i % 250 + 1).parse()?;
            let key = elb_userspace::l4::sync::vip_key(&elb_userspace::config::L4Service {
                name: format!("s{i}"),
                vip,
                proto: elb_userspace::config::L4Proto::Tcp,
                upstream: "up".into(),
                snat: None,
                table_size: 251,
            });
            let value = json!({"vip": vip.to_string(), "proto": "tcp", "upstream": "up", "table_size": 251});
            let started = Instant::now();
            etcd_put(etcd_port, &format!("/{name}/services/s{i}"), &value.to_string())?;
            while services.get(&key, 0).is_err() {
                if started.elapsed() > Duration::from_secs(5) {
                    bail!("service {i} not in the XDP map after 5 s: {}", elb.log());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            delays.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        drop(elb);
        drop(etcd);
        Ok(delays)
    })?
}

/// One put through etcd's JSON gateway: the write `etcdctl put` makes,
/// without a process start-up in the measurement.
fn etcd_put(port: u16, key: &str, value: &str) -> Result<()> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let body = json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)}).to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") || !answer.contains("\"revision\"") {
        bail!("etcd put of {key} failed: {answer}");
    }
    Ok(())
}

/// The `q` quantile (nearest rank) of the values.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
