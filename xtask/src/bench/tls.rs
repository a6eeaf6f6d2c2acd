//! `cargo xtask bench tls`: elb against nginx over TLS, both serving the
//! same ECDSA P-256 certificate for one domain routed to one nginx backend:
//! HTTPS keep-alive requests, new connections with full and with resumed
//! handshakes, and multiplexed HTTP/2 requests.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::{
    h2load::{H2loadRun, Protocol},
    median,
    procs::{CpuUse, cpu_time, free_port, measure_cpu},
    s_time::{self, STimeRun},
    servers::{NGINX_PROXY, admin, common_conf, nginx, start_backends, start_elb, temp_paths},
    temp_dir::TempDir,
};

const HOST: &str = "bench.example";
const PATH: &str = "/api/items/42";
/// Length of each timed run and each warm-up run: seconds for s_time,
/// requests for h2load (about 5–10 s on the 2-core machine).
const SECONDS: u32 = 8;
const WARM_UP_SECONDS: u32 = 2;
const REQUESTS: u64 = 240_000;
const WARM_UP_REQUESTS: u64 = 40_000;
/// The name of the certificate in elb's store.
const CERT_NAME: &str = "bench";

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let dir = TempDir::new("elb-bench-tls")?;
    let cert = Certificate::generate(dir.path())?;
    let (backends, backend, _) = start_backends(dir.path())?;

    let nginx_port = free_port()?;
    let mut nginx_lb = nginx(
        dir.path(),
        "nginx-tls",
        &nginx_conf(dir.path(), nginx_port, backend, &cert),
    )?;
    nginx_lb.wait_port(nginx_port)?;
    check_https("nginx", nginx_port, &cert)?;
    s_time::check_answer(
        &format!("127.0.0.1:{nginx_port}"),
        &s_time_www(),
        dir.path(),
    )
    .context("nginx")?;

    let admin_port = free_port()?;
    let mut elb = start_elb(&elb_bin, dir.path(), "TLSBENCH", admin_port, &[])?;
    elb.wait_port(admin_port)?;
    let elb_port = free_port()?;
    configure_elb(admin_port, elb_port, backend, &cert)?;
    elb.wait_port(elb_port)?;
    check_https("elb", elb_port, &cert)?;
    s_time::check_answer(&format!("127.0.0.1:{elb_port}"), &s_time_www(), dir.path())
        .context("elb")?;

    let contenders = [
        Contender {
            name: "elb",
            port: elb_port,
            pid: elb.pid(),
        },
        Contender {
            name: "nginx",
            port: nginx_port,
            pid: nginx_lb.pid(),
        },
    ];
    let mut results = Vec::with_capacity(Row::ALL.len());
    for row in Row::ALL {
        results.push(run_row(
            row,
            &contenders,
            backends.pid(),
            rounds,
            dir.path(),
        )?);
    }
    print_report(&results, rounds);
    Ok(())
}

/// The bench's certificate and key (PEM files in the bench directory).
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
}

impl Certificate {
    /// A self-signed ECDSA P-256 certificate for [`HOST`].
    fn generate(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args(["-subj", &format!("/CN={HOST}")])
            .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl req")?;
        if !output.status.success() {
            bail!(
                "openssl req could not make the bench certificate: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self { cert, key })
    }
}

/// nginx with TLS 1.2 and 1.3 (1.22's default still has 1.0 and 1.1 but
/// not 1.3) and its default session resumption (tickets), HTTP/2 by ALPN.
/// It keeps up to 256 idle upstream connections per worker, as elb keeps
/// 256 per server: with `keepalive 128`, the 256 HTTP/2 streams in flight
/// made it open and close about 4,000 backend connections a second.
fn nginx_conf(dir: &Path, port: u16, backend: u16, cert: &Certificate) -> String {
    format!(
        "{}http {{\n access_log off; {}\n keepalive_requests 100000;\n\
         ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate {}; ssl_certificate_key {};\n\
         upstream up {{ server 127.0.0.1:{backend}; keepalive 256; }}\n\
         server {{ listen 127.0.0.1:{port} ssl http2; server_name {HOST};\n\
           location / {{ proxy_pass http://up; {NGINX_PROXY}}} }}\n}}\n",
        common_conf(dir, "nginx-tls", 2),
        temp_paths(dir),
        cert.cert.display(),
        cert.key.display(),
    )
}

/// The same routing in elb, with the certificate uploaded and an https
/// listener (HTTP/2 by ALPN) on `https_port`.
fn configure_elb(admin_port: u16, https_port: u16, backend: u16, cert: &Certificate) -> Result<()> {
    admin(
        admin_port,
        "upstream",
        &format!(r#"{{"up": {{"127.0.0.1:{backend}": ""}}}}"#),
    )?;
    admin(
        admin_port,
        "domain",
        &format!(
            r#"{{"{HOST}": {{"init": "r1", "rules": {{"r1": {{"type": "backend", "args": {{"servername": "up"}}}}}}}}}}"#
        ),
    )?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let upload = serde_json::json!({
        CERT_NAME: { "cert": read(&cert.cert)?, "key": read(&cert.key)? }
    });
    admin(admin_port, "cert", &upload.to_string())
        .context("uploading the bench certificate to elb")?;
    let listener = serde_json::json!({
        "bench-https": {
            "address": format!("127.0.0.1:{https_port}"),
            "protocol": "https",
            "http2": true,
            "default_certificate": CERT_NAME,
        }
    });
    admin(admin_port, "listener", &listener.to_string())
        .context("creating elb's https listener")?;
    Ok(())
}

/// One GET over HTTP/1.1 and one over HTTP/2, verified against the bench
/// certificate: the balancer serves it, and routes to the backend.
fn check_https(name: &str, port: u16, cert: &Certificate) -> Result<()> {
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let output = Command::new("curl")
            .args(["-sS", "--fail-with-body", flag, "--cacert"])
            .arg(&cert.cert)
            .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://{HOST}:{port}{PATH}"))
            .output()
            .context("running curl")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "{name}: GET {PATH} over HTTPS ({flag}) failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let (body, spoken) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if !body.starts_with("b1") || spoken != version {
            bail!(
                "{name}: GET {PATH} ({flag}) answered {body:?} over HTTP/{spoken}, expected the backend over HTTP/{version}"
            );
        }
    }
    Ok(())
}

/// s_time sends `GET <www> HTTP/1.0` and reads until the server closes:
/// the request it sends carries the Host both balancers route on and asks
/// to close, and s_time's own version string lands in a header.
fn s_time_www() -> String {
    format!("{PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nX-Bench:")
}

struct Contender {
    name: &'static str,
    port: u16,
    pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    KeepAlive,
    FullHandshakes,
    Resumed,
    Http2,
}

/// h2load's clients and threads for the keep-alive rows.
const THREADS: u32 = 2;
const H1_CLIENTS: u32 = 64;
const H2_CLIENTS: u32 = 16;
pub(super) const H2_STREAMS: u32 = 16;
/// openssl s_time processes side by side (each one connection at a time).
const S_TIME_PROCESSES: u32 = 2;

impl Row {
    const ALL: [Self; 4] = [
        Self::KeepAlive,
        Self::FullHandshakes,
        Self::Resumed,
        Self::Http2,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::KeepAlive => "HTTPS keep-alive, HTTP/1.1 (requests/s)",
            Self::FullHandshakes => "new connections, full handshakes (connections/s)",
            Self::Resumed => "new connections, resumed handshakes (connections/s)",
            Self::Http2 => "HTTP/2, multiplexed (requests/s)",
        }
    }

    /// The load, as a command line (without the per-run port and paths).
    fn load(self) -> String {
        let url = format!("https://{HOST}{PATH}");
        match self {
            Self::KeepAlive => format!(
                "`h2load --h1 -t{THREADS} -c{H1_CLIENTS} -n{REQUESTS} {url}` (one request at a time per connection)"
            ),
            Self::FullHandshakes => format!(
                "{S_TIME_PROCESSES}× `openssl s_time -new -time {SECONDS} -www '{PATH} …'` side by side, one GET per connection, every handshake full (no `r` mark)"
            ),
            Self::Resumed => format!(
                "{S_TIME_PROCESSES}× `openssl s_time -reuse -time {SECONDS} -www '{PATH} …'` side by side, one GET per connection, every handshake resumed (`r` mark)"
            ),
            Self::Http2 => format!(
                "`h2load -t{THREADS} -c{H2_CLIENTS} -m{H2_STREAMS} -n{REQUESTS} {url}` (ALPN h2, {H2_STREAMS} streams in flight per connection)"
            ),
        }
    }

    /// One timed run (or a shorter warm-up) against `contender`, with the
    /// CPU it, the load generators, the backend (`backend_pid`) and the
    /// machine used.
    fn run(
        self,
        contender: &Contender,
        backend_pid: u32,
        warm_up: bool,
        dir: &Path,
    ) -> Result<Sample> {
        let (seconds, requests) = if warm_up {
            (WARM_UP_SECONDS, WARM_UP_REQUESTS)
        } else {
            (SECONDS, REQUESTS)
        };
        let connect_to = format!("127.0.0.1:{}", contender.port);
        let url = format!("https://{HOST}{PATH}");
        let log = dir.join("h2load.log");
        let h2load = |protocol, clients, streams| H2loadRun {
            url: &url,
            connect_to: &connect_to,
            protocol,
            threads: THREADS,
            clients,
            streams,
            requests,
            headers: &[],
            log: &log,
        };
        let www = s_time_www();
        let s_time = |resume| STimeRun {
            connect: &connect_to,
            resume,
            seconds,
            www: &www,
            processes: S_TIME_PROCESSES,
            dir,
        };
        let started = Instant::now();
        let backend_before = cpu_time(backend_pid)?;
        let (sample, cpu) = measure_cpu(contender.pid, || -> Result<Sample> {
            Ok(match self {
                Self::KeepAlive | Self::Http2 => {
                    let run = if self == Self::KeepAlive {
                        h2load(Protocol::Http1, H1_CLIENTS, 1)
                    } else {
                        h2load(Protocol::Http2, H2_CLIENTS, H2_STREAMS)
                    };
                    let result = run.run()?;
                    Sample::new(
                        result.requests_per_sec,
                        result.requests,
                        Some(result.p99_ms),
                    )
                }
                Self::FullHandshakes | Self::Resumed => {
                    let result = s_time(self == Self::Resumed).run()?;
                    Sample::new(result.connections_per_sec, result.connections, None)
                }
            })
        })
        .with_context(|| format!("{}: {}", contender.name, self.label()))?;
        let backend = (cpu_time(backend_pid)? - backend_before).total();
        Ok(sample.with_cpu(cpu, backend, started.elapsed().as_secs_f64()))
    }
}

/// One timed run of one balancer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    p99_ms: Option<f64>,
    count: u64,
    /// The balancer's user + system CPU, per request (µs).
    cpu_us: f64,
    /// The part of it in user space.
    user_us: f64,
    /// The load generators' CPU per request (µs).
    client_us: f64,
    /// The backend's CPU per request (µs).
    backend_us: f64,
    /// The rest of the machine's CPU per request (µs): softirq time no
    /// process is charged with, and whatever else runs on the machine.
    rest_us: f64,
    /// Share of all cores' time the machine was busy.
    busy: f64,
}

impl Sample {
    fn new(rate: f64, count: u64, p99_ms: Option<f64>) -> Self {
        Self {
            rate,
            p99_ms,
            count,
            cpu_us: 0.0,
            user_us: 0.0,
            client_us: 0.0,
            backend_us: 0.0,
            rest_us: 0.0,
            busy: 0.0,
        }
    }

    fn with_cpu(self, cpu: CpuUse, backend: f64, wall_seconds: f64) -> Self {
        let per = 1e6 / (self.count.max(1) as f64);
        let ours = cpu.process.total() + cpu.clients + backend;
        Self {
            cpu_us: cpu.process.total() * per,
            user_us: cpu.process.user * per,
            client_us: cpu.clients * per,
            backend_us: backend * per,
            rest_us: (cpu.machine - ours).max(0.0) * per,
            busy: cpu.machine / (wall_seconds * cores()),
            ..self
        }
    }

    /// CPU per request of the processes the bench runs: balancer, load
    /// generators and backend.
    fn bench_us(&self) -> f64 {
        self.cpu_us + self.client_us + self.backend_us
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A row's rounds for both balancers (elb first, then nginx).
struct RowResult {
    row: Row,
    elb: Vec<Sample>,
    nginx: Vec<Sample>,
    /// Runs that failed once and passed when repeated, with the failure.
    repeated: Vec<String>,
}

fn run_row(
    row: Row,
    contenders: &[Contender; 2],
    backend_pid: u32,
    rounds: usize,
    dir: &Path,
) -> Result<RowResult> {
    eprintln!("bench tls: {}: warming up", row.label());
    for contender in contenders {
        row.run(contender, backend_pid, true, dir)?;
    }
    let mut runs = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    let mut repeated = Vec::new();
    for round in 1..=rounds {
        eprintln!("bench tls: {}: round {round}/{rounds}", row.label());
        // Each elb run right before its nginx run, so that their ratio is
        // less exposed to the machine's drift.
        for (contender, samples) in contenders.iter().zip(&mut runs) {
            // A run that fails on a loaded machine gets one repeat, and the
            // report says so; a second failure stops the bench.
            let sample = match row.run(contender, backend_pid, false, dir) {
                Ok(sample) => sample,
                Err(err) => {
                    eprintln!("bench tls: {err:#}\nbench tls: repeating the run once");
                    let first_line = format!("{err:#}");
                    let first_line = first_line.lines().next().unwrap_or_default();
                    repeated.push(format!("round {round}: {first_line}"));
                    row.run(contender, backend_pid, false, dir)
                        .context("the repeated run failed too")?
                }
            };
            samples.push(sample);
        }
    }
    let [elb, nginx] = runs;
    Ok(RowResult {
        row,
        elb,
        nginx,
        repeated,
    })
}

fn median_of(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> f64 {
    median(&mut samples.iter().map(field).collect::<Vec<_>>())
}

/// Median and range of elb/nginx over the paired rounds.
fn paired(result: &RowResult, field: impl Fn(&Sample) -> Option<f64>) -> Option<String> {
    let mut ratios: Vec<f64> = result
        .elb
        .iter()
        .zip(&result.nginx)
        .map(|(e, n)| Some(field(e)? / field(n)?))
        .collect::<Option<_>>()?;
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(format!(
        "**{:.2}×** ({low:.2}–{high:.2})",
        median(&mut ratios)
    ))
}

fn print_report(results: &[RowResult], rounds: usize) {
    println!(
        "\n### TLS: elb vs nginx (`cargo xtask bench tls`, {rounds} alternating rounds per row, medians)\n"
    );
    println!(
        "Both serve one self-signed ECDSA P-256 certificate for `{HOST}` (TLS 1.3, checked in h2load's runs) and route `{HOST}` to one upstream of one nginx backend, kept alive; nginx runs 2 workers, elb its default worker threads. Loads, all on loopback:\n"
    );
    for result in results {
        println!("- {}: {}", result.row.label(), result.row.load());
    }
    println!(
        "\n| row | balancer | rate/s | p99 ms | balancer CPU µs/request | of which user space | load generators µs/request | backend µs/request | rest of the machine µs/request | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for result in results {
        for (name, samples) in [("elb", &result.elb), ("nginx", &result.nginx)] {
            let p99 = samples
                .iter()
                .map(|s| s.p99_ms)
                .collect::<Option<Vec<_>>>()
                .map_or("—".to_owned(), |mut v| format!("{:.2}", median(&mut v)));
            println!(
                "| {} | {name} | {:.0} | {p99} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% |",
                result.row.label(),
                median_of(samples, |s| s.rate),
                median_of(samples, |s| s.cpu_us),
                median_of(samples, |s| s.user_us),
                median_of(samples, |s| s.client_us),
                median_of(samples, |s| s.backend_us),
                median_of(samples, |s| s.rest_us),
                100.0 * median_of(samples, |s| s.busy),
            );
        }
    }
    println!(
        "\nelb/nginx, median of the paired rounds (range). Target: CPU per request ≤ 1.00× and p99 ≤ 1.00× on every row.\n"
    );
    println!(
        "| row | elb/nginx rate | elb/nginx CPU per request | elb/nginx p99 | zero-CPU balancer's ceiling | what bounds the rate |"
    );
    println!("|---|---|---|---|---|---|");
    for result in results {
        let none = || "—".to_owned();
        let busy = median_of(&result.nginx, |s| s.busy);
        let bench = median_of(&result.nginx, Sample::bench_us);
        let rest = median_of(&result.nginx, |s| s.rest_us);
        let nginx_cpu = median_of(&result.nginx, |s| s.cpu_us);
        println!(
            "| {} | {} | {} | {} | {:.2}× | {} |",
            result.row.label(),
            paired(result, |s| Some(s.rate)).unwrap_or_else(none),
            paired(result, |s| Some(s.cpu_us)).unwrap_or_else(none),
            paired(result, |s| s.p99_ms).unwrap_or_else(none),
            ceiling(bench, nginx_cpu),
            bound(busy, rest / (bench + rest).max(f64::EPSILON)),
        );
    }
    println!(
        "\nThe ceiling is the rate over nginx's that a balancer costing no CPU at all, and changing nothing else, would reach on this machine: with the cores saturated, requests/s goes as 1 / CPU per request of the processes the bench runs (balancer, load generators, backend), and such a balancer saves nginx's share of it. A balancer that also makes its peers' work cheaper (the load generators' and the backend's columns) can pass it. The rest of the machine (softirq time charged to no process of the bench, and other work on a shared machine) is left out. Where the machine is not saturated, the clients' round trips bound the rate. Either way, CPU per request is the comparison that counts."
    );
    let repeated: Vec<&String> = results.iter().flat_map(|r| &r.repeated).collect();
    if !repeated.is_empty() {
        println!("\nRuns that failed once and were repeated (the repeats passed):");
        for line in repeated {
            println!("- {line}");
        }
    }
}

/// What a balancer costing nothing would reach over nginx when the cores
/// are saturated: `bench_us` is the CPU per request of everything the bench
/// runs with nginx, `nginx_us` nginx's part of it.
fn ceiling(bench_us: f64, nginx_us: f64) -> f64 {
    bench_us / (bench_us - nginx_us).max(f64::EPSILON)
}

/// Where a row's rate comes from, by how busy the machine was during
/// nginx's runs and how much of that was outside the bench (`rest`).
fn bound(busy: f64, rest: f64) -> String {
    let cores = cores();
    let (busy, rest) = (busy * 100.0, rest * 100.0);
    if busy >= 90.0 {
        format!("the {cores:.0} cores ({busy:.0}% busy, {rest:.0}% of it outside the bench)")
    } else {
        format!("the clients' round trips ({busy:.0}% of {cores:.0} cores busy)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_what_nginx_cpu_leaves() {
        // 40 µs of the bench's CPU per request, 10 of them nginx's: a free
        // balancer would need 30, so reach 4/3 of nginx's rate.
        assert!((ceiling(40.0, 10.0) - 4.0 / 3.0).abs() < 1e-9);
    }
}
