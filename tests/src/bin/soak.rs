//! `cargo xtask soak`'s runner: steady mixed load through a real elb (its
//! store in a real etcd, L4 services on the userspace data plane) while a
//! seeded fault plan `kill -9`s and restarts backends and etcd, and changes
//! rules, upstreams, L4 services and ACL entries through the admin API.
//! Prints a Markdown table and a `SOAK-SUMMARY {json}` line; exits non-zero
//! if an idempotent request failed, elb's descriptors grew, or (on runs of
//! 10 minutes or more) its RSS grew more than 5% after warm-up.
//!
//! Usage: `soak [--minutes M | --seconds S] [--seed N] [--rate R] [--samples FILE.csv]`.
//! `ELB_BIN` names the elb binary (default: `elb` next to this one).
//! `soak --backend NAME ADDR` is one backend process (the runner starts
//! four, so that `kill -9` kills a real process).
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use elb_tests::{
    backend::Backend,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
    ports::free_port,
    soak::{
        plan::{self, AdminChange, ProcessFault, RequestSpec, Rng},
        report::{self, Admin, FaultEvent, L4Probes, Outcome, Phases, Records, Sample},
    },
};
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const HOST: &str = "soak.test";
const BACKENDS: usize = 4;
/// Client tasks on keep-alive connections and on a new connection per request.
const KEEP_ALIVE_CLIENTS: usize = 4;
const NEW_CONNECTION_CLIENTS: usize = 2;
/// Longest a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    duration: Duration,
    seed: u64,
    /// Requests per second over all clients.
    rate: f64,
    /// Where to write every RSS and fd sample (CSV), if anywhere.
    samples: Option<std::path::PathBuf>,
}

fn args() -> Result<Args> {
    let mut args = Args {
        duration: Duration::from_secs(60),
        seed: 1,
        rate: 200.0,
        samples: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<f64> {
            let n: f64 = value
                .parse()
                .with_context(|| format!("{flag}: {value:?} is not a number"))?;
            if !(n.is_finite() && n > 0.0) {
                bail!("{flag}: {value} must be more than 0");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--minutes" => args.duration = Duration::from_secs_f64(number()? * 60.0),
            "--seconds" => args.duration = Duration::from_secs_f64(number()?),
            "--rate" => args.rate = number()?,
            "--seed" => args.seed = value.parse().with_context(|| format!("--seed {value}"))?,
            "--samples" => args.samples = Some(value.into()),
            other => bail!(
                "unknown flag {other}; usage: soak [--minutes M | --seconds S] [--seed N] [--rate R] [--samples FILE.csv]"
            ),
        }
    }
    if args.duration < Duration::from_secs(20) {
        bail!("a soak needs at least 20 s (calm, warm-up, faults and tail)");
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--backend") {
        return match run_backend(&argv[2..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("soak backend: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match soak() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("soak: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The backend process: a test backend until it is killed.
fn run_backend(args: &[String]) -> Result<()> {
    let [name, addr] = args else {
        bail!("usage: soak --backend NAME ADDR");
    };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let _backend = Backend::start_on(name, addr.parse()?)?;
    // Ends with the runner, even one that was killed (PR_SET_PDEATHSIG
    // would follow the thread that spawned this process, not the runner).
    // SAFETY: as above.
    while unsafe { libc::getppid() } == parent {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A backend in its own process, so that `kill -9` is real.
struct BackendProcess {
    name: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl BackendProcess {
    fn start(name: &str, addr: SocketAddr) -> Result<Self> {
        let mut backend = Self {
            name: name.to_owned(),
            addr,
            child: None,
        };
        backend.spawn()?;
        Ok(backend)
    }

    fn spawn(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args(["--backend", &self.name, &self.addr.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let mut child = command.spawn().context("starting a backend process")?;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    // The port may still be held for a moment after a kill.
                    eprintln!(
                        "soak: backend {} exited ({status}); starting it again",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100))
                    .is_ok()
                {
                    self.child = Some(child);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "backend {} did not listen on {} within 10 s",
                    self.name,
                    self.addr
                );
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL: the kernel closes the sockets mid-request.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the threads share.
struct Shared {
    started: Instant,
    stop_load: AtomicBool,
    stop_faults: AtomicBool,
    etcd_down: AtomicBool,
    /// A backend is killed and not yet restarted.
    backend_down: AtomicBool,
    faults: Mutex<Vec<FaultEvent>>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn log_fault(&self, what: String) {
        eprintln!("soak: {:7.1} s  {what}", self.now().as_secs_f64());
        let at = self.now();
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FaultEvent { at, what });
    }

    /// Sleeps until `at` (since the start); false if the faults must stop.
    fn sleep_until(&self, at: Duration) -> bool {
        loop {
            if self.stop_faults.load(Ordering::Relaxed) {
                return false;
            }
            let now = self.now();
            if now >= at {
                return true;
            }
            std::thread::sleep((at - now).min(Duration::from_millis(50)));
        }
    }
}

fn soak() -> Result<bool> {
    let args = args()?;
    if std::env::var_os("ELB_BIN").is_none() {
        let sibling = std::env::current_exe()?.with_file_name("elb");
        // SAFETY: set before any other thread starts.
        unsafe { std::env::set_var("ELB_BIN", &sibling) };
    }
    let phases = Phases::for_run(args.duration);
    eprintln!(
        "soak: {:.0} s, seed {}, {} req/s; elb {}",
        args.duration.as_secs_f64(),
        args.seed,
        args.rate,
        std::env::var("ELB_BIN").unwrap_or_default()
    );

    let mut etcd = Etcd::start()?;
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        backends.push(BackendProcess::start(&format!("b{i}"), addr)?);
    }
    let servers: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .arg("--l4-dataplane")
        .arg("userspace")
        .arg("--workers")
        .arg("2")
        .start()?;
    let _cleanup = Cleanup(elb.state_dir.clone());
    let pid = elb.process.pid().context("elb has exited")?;
    configure(&elb, &servers)?;
    let vip = format!("127.0.0.1:{}", free_port());

    let shared = Arc::new(Shared {
        started: Instant::now(),
        stop_load: AtomicBool::new(false),
        stop_faults: AtomicBool::new(false),
        etcd_down: AtomicBool::new(false),
        backend_down: AtomicBool::new(false),
        faults: Mutex::new(Vec::new()),
    });

    let sampler = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || sample_elb(pid, &shared))
    };
    let process_faults =
        plan::process_faults(args.seed, phases.calm_end, phases.faults_end, BACKENDS);
    let faulter = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || -> Result<(Etcd, Vec<BackendProcess>)> {
            run_process_faults(&shared, &process_faults, &mut etcd, &mut backends)?;
            Ok((etcd, backends))
        })
    };
    let churner = {
        let shared = Arc::clone(&shared);
        let addr = elb.addr;
        let servers = servers.clone();
        let seed = args.seed;
        std::thread::spawn(move || run_admin_churn(&shared, addr, seed, phases, &servers, &vip))
    };
    let stopper = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let _ = shared.sleep_until(phases.faults_end);
            shared.stop_faults.store(true, Ordering::Relaxed);
            while shared.now() < phases.total {
                std::thread::sleep(Duration::from_millis(50));
            }
            shared.stop_load.store(true, Ordering::Relaxed);
        })
    };

    let outcomes = run_load(&shared, elb.addr, args.seed, args.rate)?;
    let _ = stopper.join();
    let (admin, l4) = churner
        .join()
        .map_err(|_| anyhow::anyhow!("admin churn panicked"))??;
    let (etcd, backends) = faulter
        .join()
        .map_err(|_| anyhow::anyhow!("fault thread panicked"))??;
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;

    let faults = shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let records = Records {
        outcomes,
        samples,
        faults,
        admin,
        l4,
        phases,
        seed: args.seed,
        clients: format!(
            "{KEEP_ALIVE_CLIENTS} keep-alive clients + {NEW_CONNECTION_CLIENTS} with a new connection per request, {BACKENDS} backends"
        ),
    };
    if let Some(path) = &args.samples {
        let mut csv = String::from("seconds,rss_kib,anon_kib,fds\n");
        for s in &records.samples {
            csv.push_str(&format!(
                "{:.1},{},{},{}\n",
                s.at.as_secs_f64(),
                s.rss_kib,
                s.anon_kib,
                s.fds
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = report::summarize(&records);
    let problems = report::verdict(&summary, phases.total);
    println!(
        "\n### Soak (`cargo xtask soak --minutes {:.2}`)\n",
        phases.total.as_secs_f64() / 60.0
    );
    println!("{}", report::markdown(&records, &summary));
    println!(
        "SOAK-SUMMARY {}",
        report::summary_json(&records, &summary, &problems)
    );
    for problem in &problems {
        eprintln!("soak: FAIL: {problem}");
    }
    if !problems.is_empty() {
        let log = elb.process.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("soak: elb's log, last lines:");
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
    }
    drop(elb);
    drop(backends);
    drop(etcd);
    Ok(problems.is_empty())
}

/// The starting configuration: `pool` with every backend, `soak.test` → pool.
fn configure(elb: &L7Elb, servers: &[String]) -> Result<()> {
    let pool: serde_json::Map<String, Value> = servers
        .iter()
        .map(|s| (s.clone(), Value::from("")))
        .collect();
    admin_write(elb.addr, "PUT", "upstream", &json!({ "pool": pool }))?;
    admin_write(
        elb.addr,
        "PUT",
        "domain",
        &json!({ HOST: backend_doc("pool") }),
    )?;
    Ok(())
}

fn admin_write(addr: SocketAddr, method: &str, endpoint: &str, body: &Value) -> Result<()> {
    let response = http::admin(addr, method, endpoint, Some(body))?;
    if response.status != 200 {
        bail!(
            "{method} {endpoint}: {} {}",
            response.status,
            response.text()
        );
    }
    Ok(())
}

/// elb's RSS and descriptor count every second.
fn sample_elb(pid: u32, shared: &Shared) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !shared.stop_load.load(Ordering::Relaxed) {
        let at = shared.now();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64);
        if let (Some(rss_kib), Some(anon_kib), Ok(fds)) = (field("VmRSS:"), field("RssAnon:"), fds)
        {
            samples.push(Sample {
                at,
                rss_kib,
                anon_kib,
                fds,
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    samples
}

fn run_process_faults(
    shared: &Shared,
    plan: &[plan::Scheduled],
    etcd: &mut Etcd,
    backends: &mut [BackendProcess],
) -> Result<()> {
    for step in plan {
        if !shared.sleep_until(step.at) {
            break;
        }
        match &step.fault {
            ProcessFault::KillBackend(i) => {
                shared.log_fault(format!("kill -9 backend b{i}"));
                shared.backend_down.store(true, Ordering::Relaxed);
                backends[*i].kill();
            }
            ProcessFault::RestartBackend(i) => {
                backends[*i].spawn()?;
                shared.backend_down.store(false, Ordering::Relaxed);
                shared.log_fault(format!("backend b{i} restarted"));
            }
            ProcessFault::KillEtcd => {
                shared.etcd_down.store(true, Ordering::Relaxed);
                shared.log_fault("kill -9 etcd".to_owned());
                etcd.kill();
            }
            ProcessFault::RestartEtcd => {
                etcd.restart()?;
                shared.etcd_down.store(false, Ordering::Relaxed);
                shared.log_fault("etcd restarted".to_owned());
            }
        }
    }
    // The plan restarts everything it kills; a stop in between must too.
    for backend in backends.iter_mut() {
        if backend.child.is_none() {
            backend.spawn()?;
        }
    }
    if shared.etcd_down.load(Ordering::Relaxed) {
        etcd.restart()?;
        shared.etcd_down.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// Admin writes every 100 ms from the end of the calm phase until the
/// faults end; then the L4 service and ACL entries are removed again.
fn run_admin_churn(
    shared: &Shared,
    addr: SocketAddr,
    seed: u64,
    phases: Phases,
    servers: &[String],
    vip: &str,
) -> Result<(Admin, L4Probes)> {
    let mut rng = Rng::new(seed ^ 0xAD31);
    let mut admin = Admin::default();
    let mut l4 = L4Probes::default();
    let tick_length = Duration::from_millis(1000 / plan::CHANGES_PER_SECOND);
    let mut tick = 0u64;
    loop {
        if !shared.sleep_until(phases.calm_end + tick_length * tick as u32) {
            break;
        }
        // A slow answer (etcd down) skips the ticks it overran.
        let behind = (shared.now().saturating_sub(phases.calm_end).as_millis()
            / tick_length.as_millis()) as u64;
        tick = tick.max(behind);
        for change in plan::admin_changes(&mut rng, tick, HOST, servers, vip) {
            let applied = apply(shared, addr, &change, &mut admin);
            // A VIP must accept connections once its PUT was answered.
            if applied && change.kind == "service" && change.method == "PUT" {
                let backend_down = shared.backend_down.load(Ordering::Relaxed);
                probe_l4(vip, backend_down, &mut l4);
            }
        }
        tick += 1;
    }
    // Leave the configuration as it started, so fds can return to their level.
    let cleanup = [
        ("DELETE", "service", json!(["soak-l4"])),
        ("PUT", "domain", json!({ HOST: backend_doc("pool") })),
    ];
    for (method, endpoint, body) in cleanup {
        let change = AdminChange {
            method,
            endpoint,
            body,
            kind: "cleanup",
        };
        let _ = apply(shared, addr, &change, &mut admin);
    }
    Ok((admin, l4))
}

/// Sends one admin write; true if it was applied.
fn apply(shared: &Shared, addr: SocketAddr, change: &AdminChange, admin: &mut Admin) -> bool {
    let etcd_down = shared.etcd_down.load(Ordering::Relaxed);
    let result = http::admin(addr, change.method, change.endpoint, Some(&change.body));
    // etcd may have come back during the call.
    let etcd_down = etcd_down || shared.etcd_down.load(Ordering::Relaxed);
    match result {
        Ok(response) if response.status == 200 => {
            *admin.ok.entry(change.kind).or_default() += 1;
            return true;
        }
        Ok(response) if response.status == 500 && etcd_down => admin.refused_etcd_down += 1,
        Ok(response) => {
            let reason = format!(
                "{} {} → {} {}",
                change.method,
                change.endpoint,
                response.status,
                response.text().chars().take(120).collect::<String>()
            );
            eprintln!("soak: admin write failed: {reason}");
            *admin.failed.entry(reason).or_default() += 1;
        }
        Err(err) if etcd_down => {
            let _ = err;
            admin.refused_etcd_down += 1;
        }
        Err(err) => {
            let reason = format!("{} {}: {err:#}", change.method, change.endpoint);
            eprintln!("soak: admin write failed: {reason}");
            *admin.failed.entry(reason).or_default() += 1;
        }
    }
    false
}

/// One request through the L4 service's VIP, right after it was added
/// (L4 has no retries: one landing on a killed backend fails).
fn probe_l4(vip: &str, backend_down: bool, l4: &mut L4Probes) {
    let result = vip
        .parse()
        .map_err(anyhow::Error::from)
        .and_then(|addr| http::get(addr, "/l4", &[("Host", HOST)]));
    let failure = match result {
        Ok(response) if response.status == 200 => {
            l4.ok += 1;
            return;
        }
        Ok(response) => format!("status {}", response.status),
        Err(err) => format!("{err:#}"),
    };
    let when = if backend_down {
        "a backend was down"
    } else {
        "all backends up"
    };
    *l4.failed.entry(format!("{failure} ({when})")).or_default() += 1;
}

fn run_load(shared: &Arc<Shared>, addr: SocketAddr, seed: u64, rate: f64) -> Result<Vec<Outcome>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let clients = KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS;
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for id in 0..clients {
            let shared = Arc::clone(shared);
            let keep_alive = id < KEEP_ALIVE_CLIENTS;
            tasks.push(tokio::spawn(async move {
                client(&shared, addr, seed, id as u64, keep_alive, interval).await
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.context("a client task panicked")?);
        }
        outcomes.sort_by_key(|o| o.at);
        Ok(outcomes)
    })
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One client: a request every `interval` (none while the previous one
/// runs), on one keep-alive connection or a new one each time.
async fn client(
    shared: &Shared,
    addr: SocketAddr,
    seed: u64,
    id: u64,
    keep_alive: bool,
    interval: Duration,
) -> Vec<Outcome> {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(id));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender: Option<Sender> = None;
    let mut outcomes = Vec::new();
    let mut n = 0u64;
    while !shared.stop_load.load(Ordering::Relaxed) {
        ticker.tick().await;
        n += 1;
        let spec = plan::request_spec(&mut rng, id * 1_000_000_000 + n);
        let at = shared.now();
        let started = Instant::now();
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            exchange(addr, &spec, keep_alive, &mut sender),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")));
        if result.is_err() {
            sender = None;
        }
        outcomes.push(Outcome {
            at,
            latency: started.elapsed(),
            method: spec.method,
            idempotent: spec.idempotent(),
            failure: result.err().map(|e| format!("{e:#}")),
        });
    }
    outcomes
}

/// Sends one request and checks the answer: 200, and for all but HEAD the
/// backend's echo of the method and the body length.
async fn exchange(
    addr: SocketAddr,
    spec: &RequestSpec,
    keep_alive: bool,
    sender: &mut Option<Sender>,
) -> Result<()> {
    let body = Bytes::from(vec![b'x'; spec.body_len]);
    let build = || {
        let mut request = Request::builder()
            .method(spec.method)
            .uri(spec.path.as_str())
            .header(hyper::header::HOST, HOST);
        if !keep_alive {
            request = request.header(hyper::header::CONNECTION, "close");
        }
        if matches!(spec.method, "POST" | "PUT") {
            request = request.header(hyper::header::CONTENT_LENGTH, spec.body_len);
        }
        request.body(Full::new(body.clone()))
    };
    // A keep-alive connection elb closed while idle is no failure of the
    // request: it was never sent, so it goes out again on a new connection.
    let mut request = build()?;
    let response = loop {
        let reused = match sender.take() {
            Some(mut s) if keep_alive => s.ready().await.is_ok().then_some(s),
            _ => None,
        };
        let mut current = match reused {
            Some(s) => s,
            None => connect(addr)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to elb: {e:#}"))?,
        };
        match current.try_send_request(request).await {
            Ok(response) => {
                if keep_alive {
                    *sender = Some(current);
                }
                break response;
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) => request = unsent,
                None => bail!("connection to elb broke: {}", error.into_error()),
            },
        }
    };
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if status != 200 {
        let text = String::from_utf8_lossy(&bytes);
        bail!("status {} {:?}", status.as_u16(), text.trim());
    }
    if spec.method == "HEAD" {
        return Ok(());
    }
    let echo: Value =
        serde_json::from_slice(&bytes).context("the answer is not the backend's JSON")?;
    if echo["method"] != spec.method || echo["body_len"] != spec.body_len {
        bail!(
            "wrong echo: {} with {} bytes, expected {} with {}",
            echo["method"],
            echo["body_len"],
            spec.method,
            spec.body_len
        );
    }
    Ok(())
}
