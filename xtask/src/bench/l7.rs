//! `cargo xtask bench l7`: elb against nginx with the same routing (UA
//! regex, then path regex, then two weighted upstreams) in front of the
//! same nginx backends; then the delay from an etcd write to requests
//! seeing it.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    median, percentile,
    procs::{Background, free_port, measure_cpu},
    servers::{NGINX_PROXY, admin, common_conf, nginx, start_backends, start_elb, temp_paths},
    temp_dir::TempDir,
    wrk::{WrkResult, WrkRun},
};

pub(super) const HOST: &str = "bench.example";
pub(super) const UA: &str = "Bench-Client/1.0";
pub(super) const PATH: &str = "/api/items/42";

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let dir = TempDir::new("elb-bench-l7")?;
    let (_backends, b1, b2) = start_backends(dir.path())?;

    let nginx_port = free_port()?;
    let mut nginx_lb = nginx(
        dir.path(),
        "nginx-lb",
        &nginx_lb_conf(dir.path(), nginx_port, None, b1, b2, 2),
    )?;
    nginx_lb.wait_port(nginx_port)?;

    let elb_port = free_port()?;
    let mut elb = start_elb(&elb_bin, dir.path(), "BENCH", elb_port, &[])?;
    elb.wait_port(elb_port)?;
    configure_elb(elb_port, b1, b2)?;

    for (name, port) in [("elb", elb_port), ("nginx", nginx_port)] {
        check_routing(name, port)?;
    }

    let url = |port: u16| format!("http://127.0.0.1:{port}{PATH}");
    let headers = [format!("Host: {HOST}"), format!("User-Agent: {UA}")];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    // Each run also reports the balancer's CPU time per request, which
    // says more than requests/s alone on a machine wrk and the backends
    // share, and the whole machine's, which bounds what any balancer gains.
    let wrk = |port: u16, pid: u32, seconds: u32| -> Result<Measured> {
        let (result, cpu) = measure_cpu(pid, || {
            WrkRun {
                url: &url(port),
                headers: &headers,
                threads: 2,
                connections: 64,
                seconds,
            }
            .run()
        })?;
        let per_request = 1e6 / (result.requests_per_sec * f64::from(seconds)).max(1.0);
        Ok(Measured {
            cpu_us_per_request: cpu.process.total() * per_request,
            user_us_per_request: cpu.process.user * per_request,
            machine_us_per_request: cpu.machine * per_request,
            wrk: result,
        })
    };
    eprintln!("bench l7: warming up");
    wrk(elb_port, elb.pid(), 2)?;
    wrk(nginx_port, nginx_lb.pid(), 2)?;
    let mut elb_runs = Vec::new();
    let mut nginx_runs = Vec::new();
    for round in 1..=rounds {
        eprintln!("bench l7: round {round}/{rounds}");
        elb_runs.push(wrk(elb_port, elb.pid(), 8)?);
        nginx_runs.push(wrk(nginx_port, nginx_lb.pid(), 8)?);
    }
    let elb_median = summarise(&elb_runs);
    let nginx_median = summarise(&nginx_runs);
    drop(elb);

    let propagation = etcd_propagation(&elb_bin, dir.path(), b1)?;

    println!(
        "\n### L7: elb vs nginx (`cargo xtask bench l7`, {rounds} alternating rounds of 8 s, medians)\n"
    );
    println!(
        "wrk -t2 -c64, `Host: {HOST}`, `User-Agent: {UA}`, `GET {PATH}`: UA regex, then path regex, then upstreams weighted 1:2; both balancers keep upstream connections alive; same nginx backends.\n"
    );
    println!(
        "| balancer | requests/s | p50 ms | p90 ms | p99 ms | balancer CPU µs/request | of which user space | machine CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, m) in [("elb", &elb_median), ("nginx", &nginx_median)] {
        let r = &m.wrk;
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} |",
            r.requests_per_sec,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            m.cpu_us_per_request,
            m.user_us_per_request,
            m.machine_us_per_request
        );
    }
    // Each elb round ran right before its nginx round, so their ratio is
    // less exposed to the machine's drift than a ratio of medians.
    println!("\n| round | elb req/s | nginx req/s | elb/nginx req/s | elb/nginx p99 |");
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::with_capacity(rounds);
    let mut p99_ratios = Vec::with_capacity(rounds);
    for (round, (e, n)) in elb_runs.iter().zip(&nginx_runs).enumerate() {
        let ratio = e.wrk.requests_per_sec / n.wrk.requests_per_sec;
        let p99_ratio = e.wrk.p99_ms / n.wrk.p99_ms;
        println!(
            "| {} | {:.0} | {:.0} | {ratio:.2}× | {p99_ratio:.2}× |",
            round + 1,
            e.wrk.requests_per_sec,
            n.wrk.requests_per_sec
        );
        ratios.push(ratio);
        p99_ratios.push(p99_ratio);
    }
    let spread = |values: &[f64]| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.2}–{high:.2}")
    };
    let (ratio_range, p99_range) = (spread(&ratios), spread(&p99_ratios));
    println!(
        "\nelb/nginx requests/s, median of the paired rounds: **{:.2}×** (range {ratio_range}; target ≥ 1.10×); \
         elb/nginx p99: **{:.2}×** (range {p99_range}; target ≤ 1.00×)",
        median(&mut ratios),
        median(&mut p99_ratios)
    );
    print_headroom(&nginx_median, &elb_median);
    println!(
        "\netcd write → visible in requests, {} writes: p50 {:.1} ms, p99 {:.1} ms (target p99 ≤ 100 ms); \
         measured from sending the put to etcd's HTTP API until elb answers with the new version",
        propagation.len(),
        percentile(&propagation, 0.50),
        percentile(&propagation, 0.99)
    );
    Ok(())
}

struct Measured {
    wrk: WrkResult,
    /// The balancer's CPU time (user + system) per request.
    cpu_us_per_request: f64,
    /// The part of it spent in user space (the balancer and its libraries).
    user_us_per_request: f64,
    /// CPU time of the whole machine (wrk, backends, balancer, softirq).
    machine_us_per_request: f64,
}

fn summarise(runs: &[Measured]) -> Measured {
    let pick = |f: fn(&Measured) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Measured {
        wrk: WrkResult {
            requests_per_sec: pick(|m| m.wrk.requests_per_sec),
            p50_ms: pick(|m| m.wrk.p50_ms),
            p90_ms: pick(|m| m.wrk.p90_ms),
            p99_ms: pick(|m| m.wrk.p99_ms),
        },
        cpu_us_per_request: pick(|m| m.cpu_us_per_request),
        user_us_per_request: pick(|m| m.user_us_per_request),
        machine_us_per_request: pick(|m| m.machine_us_per_request),
    }
}

/// What the 2 shared cores leave any balancer to gain over nginx. They are
/// saturated, so requests/s goes as 1 / machine CPU per request. A balancer
/// with nginx's syscalls and kernel work but no user-space work at all would
/// save nginx's user time from each request, and no more.
fn print_headroom(nginx: &Measured, elb: &Measured) {
    let machine = nginx.machine_us_per_request;
    let ceiling = machine / (machine - nginx.user_us_per_request);
    let budget = nginx.cpu_us_per_request - (machine - machine / 1.1);
    println!(
        "\nHeadroom on this machine (nginx's rounds): {machine:.1} µs of machine CPU per request. \
         A balancer with nginx's kernel work and zero user-space work would reach **{ceiling:.2}×** nginx. \
         1.10× needs a balancer CPU of ≤ {budget:.1} µs/request (nginx {:.1}, elb {:.1}), \
         which with nginx's kernel time leaves ≤ {:.1} µs of user space (nginx {:.1}, elb {:.1}).",
        nginx.cpu_us_per_request,
        elb.cpu_us_per_request,
        budget - (nginx.cpu_us_per_request - nginx.user_us_per_request),
        nginx.user_us_per_request,
        elb.user_us_per_request,
    );
}

/// The rule document below, written as nginx configuration: nginx as the
/// balancer on `port`, and on `h2c_port` if given, HTTP/2 by prior
/// knowledge.
pub(super) fn nginx_lb_conf(
    dir: &Path,
    port: u16,
    h2c_port: Option<u16>,
    b1: u16,
    b2: u16,
    workers: u32,
) -> String {
    let h2c_listen = h2c_port.map_or(String::new(), |p| format!(" listen 127.0.0.1:{p} http2;"));
    format!(
        "{}http {{\n access_log off; {}\n keepalive_requests 100000;\n\
         map $http_user_agent $ua_match {{ \"~*bench-client\" 1; default 0; }}\n\
         map \"$ua_match:$uri\" $target {{ \"~^1:/api/(\\S+)$\" weighted; default fallback; }}\n\
         upstream weighted {{ server 127.0.0.1:{b1} weight=1; server 127.0.0.1:{b2} weight=2; keepalive 128; }}\n\
         upstream fallback {{ server 127.0.0.1:{b1}; keepalive 32; }}\n\
         server {{ listen 127.0.0.1:{port};{h2c_listen} location / {{\n\
           proxy_pass http://$target; {NGINX_PROXY}\
         }} }}\n}}\n",
        common_conf(dir, "nginx-lb", workers),
        temp_paths(dir)
    )
}

fn rule_document(weighted: &str, fallback: &str, version: &str) -> String {
    format!(
        r#"{{"init": "r1", "rules": {{
        "r1": {{"type": "ua", "args": {{"pattern": "bench-client", "succ": "r2", "fail": "r4"}}}},
        "r2": {{"type": "path", "args": {{"regex": true, "pattern": "^/api/(\\S+)$", "succ": "r3", "fail": "r4"}}}},
        "r3": {{"type": "backend", "args": {{"servername": "{weighted}", "x-version": "{version}"}}}},
        "r4": {{"type": "backend", "args": {{"servername": "{fallback}"}}}}}}}}"#
    )
}

pub(super) fn configure_elb(port: u16, b1: u16, b2: u16) -> Result<()> {
    admin(
        port,
        "upstream",
        &format!(
            r#"{{"weighted": {{"127.0.0.1:{b1}": "weight=1", "127.0.0.1:{b2}": "weight=2"}}, "fallback": {{"127.0.0.1:{b1}": ""}}}}"#
        ),
    )?;
    admin(
        port,
        "domain",
        &format!(
            r#"{{"{HOST}": {}}}"#,
            rule_document("weighted", "fallback", "")
        ),
    )?;
    Ok(())
}

/// Both balancers must route the same way before they are timed.
pub(super) fn check_routing(name: &str, port: u16) -> Result<()> {
    let mut seen = [0u32; 2];
    for _ in 0..30 {
        let (status, body) = http_get(port, PATH, UA)?;
        if status != 200 {
            bail!("{name}: GET {PATH} answered {status}: {body}");
        }
        match body.split_whitespace().next() {
            Some("b1") => seen[0] += 1,
            Some("b2") => seen[1] += 1,
            _ => bail!("{name}: unexpected body {body:?}"),
        }
    }
    if seen != [10, 20] {
        bail!("{name}: weighted split over 30 requests was {seen:?}, expected [10, 20]");
    }
    for (path, ua) in [("/other", UA), (PATH, "curl/8")] {
        let (status, body) = http_get(port, path, ua)?;
        if status != 200 || !body.starts_with("b1") {
            bail!("{name}: fallback for {path} with {ua} answered {status} {body:?}");
        }
    }
    Ok(())
}

/// One GET on a fresh connection: (status, body).
fn http_get(port: u16, path: &str, ua: &str) -> Result<(u16, String)> {
    exchange(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// Sends one whole request (which asks to close) on a fresh connection to
/// `port`: (status, body).
fn exchange(port: u16, request: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// Delay from writing a new rule version to etcd to elb serving it.
fn etcd_propagation(elb_bin: &Path, dir: &Path, backend: u16) -> Result<Vec<f64>> {
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Background::spawn(
        "etcd",
        Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")]),
        dir,
    )?;
    etcd.wait_port(client)?;
    let endpoint = format!("127.0.0.1:{client}");
    let put = |key: &str, value: &str| etcd_put(client, key, value);
    let deadline = Instant::now() + Duration::from_secs(20);
    while put("/PROP/probe", "").is_err() {
        if Instant::now() > deadline {
            bail!("etcd did not come up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    put(&format!("/PROP/upstreams/up/127.0.0.1:{backend}"), "")?;
    let port = free_port()?;
    let mut elb = start_elb(elb_bin, dir, "PROP", port, &["--etcd", &endpoint])?;
    elb.wait_port(port)?;

    let mut delays = Vec::with_capacity(100);
    for version in 1..=100 {
        let started = Instant::now();
        put(
            "/PROP/rules/bench.example",
            &rule_document("up", "up", &version.to_string()),
        )?;
        let want = format!("b1 {version}");
        loop {
            let (status, body) = http_get(port, PATH, UA)?;
            if status == 200 && body.trim() == want {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("version {version} not visible after 5 s (last answer {status} {body:?})");
            }
        }
        delays.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

/// One put through etcd's JSON gateway, the same write `etcdctl put` makes,
/// without timing a process start-up.
fn etcd_put(port: u16, key: &str, value: &str) -> Result<()> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        STANDARD.encode(key),
        STANDARD.encode(value)
    );
    let (status, answer) = exchange(
        port,
        &format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )?;
    if status != 200 || !answer.contains("\"revision\"") {
        bail!("etcd put of {key} failed: {status} {answer}");
    }
    Ok(())
}
