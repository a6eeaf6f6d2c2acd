//! `cargo xtask bench l7-instructions`: user-space instructions per request
//! of elb and of nginx, counted by callgrind, for the same routing and
//! backends as `bench l7`: HTTP/1.1 keep-alive, and HTTP/2 by prior
//! knowledge (h2c) with streams in flight. Unlike requests/s on these
//! shared 2-core machines, the counts repeat from run to run to within
//! about 1%, so they show what a change to the proxy path costs or saves.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    h2load::{H2loadRun, Protocol},
    l7::{HOST, PATH, UA, check_routing, configure_elb, nginx_lb_conf},
    procs::{Background, free_port},
    servers::{admin, start_backends},
    temp_dir::TempDir,
    // Streams in flight on the one h2c connection, as `bench tls` has.
    tls::H2_STREAMS,
};

/// Requests counted; before them, `WARM_UP` uncounted ones fill the
/// upstream connection pools and the allocators' caches.
const REQUESTS: u32 = 4000;
const WARM_UP: u32 = 400;

/// Instructions per request, by client protocol.
struct Counts {
    http1: f64,
    http2: f64,
}

pub fn run(root: &Path) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let dir = TempDir::new("elb-bench-l7-instructions")?;
    // The dumps outlive the run, for `callgrind_annotate`.
    let kept = root.join("target/bench-l7-instructions");
    std::fs::create_dir_all(&kept).with_context(|| format!("creating {}", kept.display()))?;
    let (_backends, b1, b2) = start_backends(dir.path())?;

    // One worker each, so every instruction of a request is on one thread.
    let (elb_port, elb_h2c_port) = (free_port()?, free_port()?);
    let state_file = dir.path().join("elb.json");
    let mut elb = Counted::start(
        "elb",
        Command::new(&elb_bin)
            .args(["run", "--name", "INSTR", "--workers", "1", "--listen"])
            .arg(format!("127.0.0.1:{elb_port}"))
            .arg("--state-file")
            .arg(&state_file)
            .arg("--run-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn"),
        dir.path(),
        &kept,
        elb_port,
    )?;
    configure_elb(elb_port, b1, b2)?;
    let listener = serde_json::json!({
        "bench-h2c": {
            "address": format!("127.0.0.1:{elb_h2c_port}"),
            "protocol": "http",
            "http2": true,
        }
    });
    admin(elb_port, "listener", &listener.to_string()).context("creating elb's h2c listener")?;
    elb.process.wait_port(elb_h2c_port)?;
    let elb_counts = elb.count(elb_port, elb_h2c_port, dir.path())?;

    let (nginx_port, nginx_h2c_port) = (free_port()?, free_port()?);
    let conf_path = dir.path().join("nginx-lb.conf");
    let conf = format!(
        "master_process off;\n{}",
        nginx_lb_conf(dir.path(), nginx_port, Some(nginx_h2c_port), b1, b2, 1)
    );
    std::fs::write(&conf_path, conf)?;
    let nginx_lb = Counted::start(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]),
        dir.path(),
        &kept,
        nginx_port,
    )?;
    let nginx_counts = nginx_lb.count(nginx_port, nginx_h2c_port, dir.path())?;

    println!(
        "\n### L7: user-space instructions per request (`cargo xtask bench l7-instructions`, callgrind)\n"
    );
    println!(
        "{REQUESTS} `GET {PATH}` (`Host: {HOST}`, `User-Agent: {UA}`) after {WARM_UP} uncounted ones; the routing of `bench l7`; one worker each. HTTP/1.1: one keep-alive connection, one request at a time. HTTP/2: h2c by prior knowledge (`h2load -c1 -m{H2_STREAMS}`), {H2_STREAMS} streams in flight on one connection.\n"
    );
    println!("| client protocol | elb | nginx | elb/nginx |");
    println!("|---|---|---|---|");
    for (protocol, elb_count, nginx_count) in [
        ("HTTP/1.1", elb_counts.http1, nginx_counts.http1),
        ("HTTP/2 (h2c)", elb_counts.http2, nginx_counts.http2),
    ] {
        println!(
            "| {protocol} | {elb_count:.0} | {nginx_count:.0} | **{:.2}×** |",
            elb_count / nginx_count
        );
    }
    println!(
        "\nUser space only: the system calls' kernel work is not counted. The callgrind dumps are in {} (`callgrind_annotate --inclusive=yes <file>`).",
        kept.display()
    );
    Ok(())
}

/// A balancer running under callgrind with counting off until asked.
struct Counted {
    name: &'static str,
    process: Background,
    out_file: PathBuf,
    /// Dumps written so far (callgrind numbers them from 1).
    dumps: u32,
    /// Where each dump is copied, as `<name>-<protocol>.callgrind`.
    kept: PathBuf,
}

impl Counted {
    fn start(
        name: &'static str,
        command: &Command,
        dir: &Path,
        kept: &Path,
        port: u16,
    ) -> Result<Self> {
        let out_file = dir.join(format!("{name}.callgrind"));
        let mut wrapped = Command::new("valgrind");
        wrapped
            .args(["--tool=callgrind", "--instr-atstart=no"])
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                wrapped.env(key, value);
            }
        }
        let mut process = Background::spawn(&format!("{name}-callgrind"), &mut wrapped, dir)?;
        process.wait_port(port)?;
        Ok(Self {
            name,
            process,
            out_file,
            dumps: 0,
            kept: kept.to_owned(),
        })
    }

    /// Instructions per request over [`REQUESTS`] requests, HTTP/1.1 on
    /// `port`, then HTTP/2 on `h2c_port`.
    fn count(mut self, port: u16, h2c_port: u16, dir: &Path) -> Result<Counts> {
        check_routing(self.name, port)?;
        keep_alive_gets(port, WARM_UP)?;
        let http1 = self.counted("http1", || keep_alive_gets(port, REQUESTS))?;
        check_h2c(self.name, h2c_port)?;
        h2c_gets(h2c_port, WARM_UP, dir)?;
        let http2 = self.counted("h2c", || h2c_gets(h2c_port, REQUESTS, dir))?;
        Ok(Counts { http1, http2 })
    }

    /// Instructions per request while `requests` sends [`REQUESTS`].
    fn counted(&mut self, protocol: &str, requests: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.callgrind_control("on")?;
        requests()?;
        self.callgrind_control("off")?;
        // A dump now, rather than the report at exit: it does not depend on
        // how each balancer shuts down. A dump also zeroes the counts.
        self.callgrind_control("dump")?;
        self.dumps += 1;
        let dump = self
            .out_file
            .with_extension(format!("callgrind.{}", self.dumps));
        let text = std::fs::read_to_string(&dump)
            .with_context(|| format!("reading {}", dump.display()))?;
        let copy = self
            .kept
            .join(format!("{}-{protocol}.callgrind", self.name));
        std::fs::write(&copy, &text).with_context(|| format!("writing {}", copy.display()))?;
        let total = text
            .lines()
            .find_map(|line| line.strip_prefix("totals:"))
            .with_context(|| format!("no totals line in {}", dump.display()))?
            .trim();
        let total: f64 = total
            .parse()
            .with_context(|| format!("bad callgrind total {total:?}"))?;
        Ok(total / f64::from(REQUESTS))
    }

    /// `on`/`off` switch counting; `dump` writes the counts so far.
    fn callgrind_control(&self, action: &str) -> Result<()> {
        let flags: &[&str] = match action {
            "dump" => &["--dump"],
            _ => &["-i", action],
        };
        let output = Command::new("callgrind_control")
            .args(flags)
            .arg(self.process.pid().to_string())
            .output()
            .context("running callgrind_control")?;
        if !output.status.success() {
            bail!(
                "callgrind_control {action} for {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// `count` GETs one after another on one keep-alive connection; each must
/// be answered 200 with a body.
fn keep_alive_gets(port: u16, count: u32) -> Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let request =
        format!("GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: {UA}\r\n\r\n").into_bytes();
    let mut line = String::new();
    let mut body = Vec::new();
    for sent in 0..count {
        writer.write_all(&request)?;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200 ") {
            bail!("request {sent}: answered {line:?}");
        }
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let length = length.with_context(|| format!("request {sent}: no Content-Length"))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(())
}

/// One GET over h2c by prior knowledge must be routed to a backend.
fn check_h2c(name: &str, port: u16) -> Result<()> {
    let output = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--http2-prior-knowledge"])
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
        .args(["-A", UA, "-w", "\n%{http_version}"])
        .arg(format!("http://{HOST}:{port}{PATH}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let answered_by_backend = text.starts_with("b1") || text.starts_with("b2");
    if !output.status.success() || !answered_by_backend || !text.ends_with("\n2") {
        bail!(
            "{name}: GET {PATH} over h2c answered {text:?}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `count` GETs over one h2c connection, [`H2_STREAMS`] in flight; each
/// must be answered 2xx.
fn h2c_gets(port: u16, count: u32, dir: &Path) -> Result<()> {
    let url = format!("http://{HOST}{PATH}");
    let connect_to = format!("127.0.0.1:{port}");
    let user_agent = format!("user-agent: {UA}");
    let result = H2loadRun {
        url: &url,
        connect_to: &connect_to,
        protocol: Protocol::H2c,
        threads: 1,
        clients: 1,
        streams: H2_STREAMS,
        requests: u64::from(count),
        headers: &[&user_agent],
        log: &dir.join("h2load-h2c.log"),
    }
    .run()?;
    if result.requests != u64::from(count) {
        bail!("h2load finished {} of {count} requests", result.requests);
    }
    Ok(())
}
