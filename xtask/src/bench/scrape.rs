//! `cargo xtask bench scrape`: the time of one Prometheus scrape of an elb
//! with 1,000 upstreams × 10 servers (each behind its own domain) and 100
//! L4 services (the userspace fallback: a bench has no XDP interface), and
//! whether scraping it every second slows its traffic (wrk requests/s in
//! alternating rounds without and with a scraper).
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::{
    median,
    procs::{free_port, measure_cpu},
    servers::{admin, start_backends, start_elb},
    temp_dir::TempDir,
    wrk::WrkRun,
};

const UPSTREAMS: usize = 1_000;
const SERVERS: usize = 10;
const SERVICES: usize = 100;
const SCRAPES: usize = 15;
/// The target for one scrape.
const TARGET_MS: f64 = 50.0;
const HOST: &str = "bench.example";
const REQUESTS_PER_UPSTREAM: usize = 4;

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let dir = TempDir::new("elb-bench-scrape")?;
    let (_backends, b1, b2) = start_backends(dir.path())?;
    let port = free_port()?;
    let metrics_port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut elb = start_elb(
        &elb_bin,
        dir.path(),
        "SCRAPE",
        port,
        &["--metrics", &metrics_addr],
    )?;
    elb.wait_port(port)?;
    eprintln!(
        "bench scrape: configuring {UPSTREAMS} upstreams × {SERVERS} servers, {SERVICES} L4 services"
    );
    configure(port, b1, b2)?;
    eprintln!("bench scrape: {REQUESTS_PER_UPSTREAM} requests to each upstream's domain");
    touch_every_upstream(port)?;
    let url = format!("http://{metrics_addr}/metrics");

    let traffic_url = format!("http://127.0.0.1:{port}/");
    let headers = [format!("Host: {HOST}")];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let wrk = |seconds: u32| {
        WrkRun {
            url: &traffic_url,
            headers: &headers,
            threads: 2,
            connections: 64,
            seconds,
        }
        .run()
    };
    wrk(2)?;

    let (first, _) = scrape(&url)?;
    let lines = first.lines().filter(|l| !l.starts_with('#')).count();
    let mut times = Vec::with_capacity(SCRAPES);
    let (_, cpu) = measure_cpu(elb.pid(), || {
        for _ in 0..SCRAPES {
            times.push(scrape(&url)?.1);
        }
        Ok(())
    })?;
    let mut sorted = times.clone();
    let scrape_median = median(&mut sorted);
    let cpu_ms = cpu.process.total() * 1e3 / SCRAPES as f64;

    let mut quiet = Vec::with_capacity(rounds);
    let mut scraped = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        eprintln!("bench scrape: traffic round {round}/{rounds}");
        quiet.push(wrk(8)?.requests_per_sec);
        let scraper = Scraper::start(url.clone(), Duration::from_secs(1));
        let with = wrk(8);
        let scrapes = scraper.stop()?;
        scraped.push(with?.requests_per_sec);
        eprintln!("bench scrape: {scrapes} scrapes during the round");
    }
    let ratios: Vec<f64> = scraped.iter().zip(&quiet).map(|(s, q)| s / q).collect();
    let mut sorted_ratios = ratios.clone();
    let ratio = median(&mut sorted_ratios);

    println!(
        "\n### Metrics scrape (`cargo xtask bench scrape --rounds {rounds}`)\n\n\
         {UPSTREAMS} upstreams × {SERVERS} servers (one domain each, {REQUESTS_PER_UPSTREAM} requests \
         to each first, so every upstream has requests, latencies and connect failures), \
         {SERVICES} L4 services (userspace fallback); {lines} samples, {} bytes per scrape.\n",
        first.len()
    );
    println!(
        "| scrapes | median | min | max | elb CPU per scrape | target |\n|---|---|---|---|---|---|"
    );
    println!(
        "| {SCRAPES} | **{scrape_median:.1} ms** | {:.1} ms | {:.1} ms | {cpu_ms:.1} ms | ≤ {TARGET_MS} ms |",
        sorted.first().copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    );
    println!(
        "\n| round | req/s without scraper | req/s with a scrape every 1 s | ratio |\n|---|---|---|---|"
    );
    for (i, ((q, s), r)) in quiet.iter().zip(&scraped).zip(&ratios).enumerate() {
        println!("| {} | {q:.0} | {s:.0} | {r:.3} |", i + 1);
    }
    println!("\nwith/without scraper requests/s, median of the paired rounds: **{ratio:.3}×**");
    if scrape_median > TARGET_MS {
        bail!("a scrape took {scrape_median:.1} ms (median), over the {TARGET_MS} ms target");
    }
    Ok(())
}

/// PUTs the upstreams (in batches: curl takes the body as an argument),
/// their domains, the bench domain and the L4 services.
fn configure(port: u16, b1: u16, b2: u16) -> Result<()> {
    for batch in (0..UPSTREAMS).collect::<Vec<_>>().chunks(100) {
        let mut upstreams = Map::new();
        let mut domains = Map::new();
        for &i in batch {
            let servers: Map<String, Value> = (0..SERVERS)
                .map(|s| (server_addr(i, s), json!("")))
                .collect();
            upstreams.insert(format!("up{i}"), Value::Object(servers));
            domains.insert(format!("d{i}.example"), backend(&format!("up{i}")));
        }
        admin(port, "upstream", &Value::Object(upstreams).to_string())?;
        admin(port, "domain", &Value::Object(domains).to_string())?;
    }
    admin(
        port,
        "upstream",
        &json!({"bench": {format!("127.0.0.1:{b1}"): "", format!("127.0.0.1:{b2}"): ""}})
            .to_string(),
    )?;
    admin(
        port,
        "domain",
        &json!({ HOST: backend("bench") }).to_string(),
    )?;
    // Free ports, each once (the kernel may hand one out twice).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < SERVICES {
        ports.insert(free_port()?);
    }
    let mut services = Map::new();
    for (i, port) in ports.into_iter().enumerate() {
        services.insert(
            format!("svc{i}"),
            json!({"vip": format!("127.0.0.1:{port}"), "proto": "tcp", "upstream": format!("up{i}")}),
        );
    }
    admin(port, "service", &Value::Object(services).to_string())?;
    Ok(())
}

/// Server `s` of upstream `i`: a loopback address where nothing listens,
/// so that a request's tries fail at once and every server gets series.
fn server_addr(i: usize, s: usize) -> String {
    format!("127.{}.{}.{}:1", 1 + i / 250, i % 250, s + 1)
}

/// A few requests to every upstream's domain (each answered 502 after
/// its failed tries), so the scrape carries requests, connect failures
/// and latencies for all of them, not only idle series.
fn touch_every_upstream(port: u16) -> Result<()> {
    for i in 0..UPSTREAMS {
        for _ in 0..REQUESTS_PER_UPSTREAM {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            write!(
                stream,
                "GET / HTTP/1.1\r\nHost: d{i}.example\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            if !answer.starts_with(b"HTTP/1.1 5") {
                bail!(
                    "d{i}.example answered {:?}, expected a 5xx",
                    String::from_utf8_lossy(&answer[..answer.len().min(40)])
                );
            }
        }
    }
    Ok(())
}

fn backend(upstream: &str) -> Value {
    json!({"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": upstream}}}})
}

/// One scrape with curl: its body and its total time in milliseconds.
fn scrape(url: &str) -> Result<(String, f64)> {
    let body_file = std::env::temp_dir().join(format!("elb-scrape-{}.txt", std::process::id()));
    let output = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&body_file)
        .args(["-w", "%{time_total}", url])
        .output()
        .context("running curl")?;
    if !output.status.success() {
        bail!(
            "scraping {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("curl's time_total")?;
    let body = std::fs::read_to_string(&body_file)?;
    let _ = std::fs::remove_file(&body_file);
    Ok((body, seconds * 1e3))
}

/// Scrapes every `interval` on a thread until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Scraper {
    fn start(url: String, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    scrape(&url)?;
                    count.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(interval);
                }
                Ok(())
            }
        });
        Self {
            stop,
            count,
            thread,
        }
    }

    fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("the scraper thread panicked"),
        }
        Ok(self.count.load(Ordering::Relaxed))
    }
}
