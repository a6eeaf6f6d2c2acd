//! `cargo xtask bench l7-instructions`: user-space instructions per request
//! of elb and of nginx, counted by callgrind, for the same routing and
//! backends as `bench l7`. Unlike requests/s on these shared 2-core
//! machines, the counts repeat from run to run to within about 1%,
//! so they show what a change to the proxy path costs or saves.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    l7::{HOST, PATH, UA, check_routing, configure_elb, nginx_lb_conf},
    procs::{Background, free_port},
    servers::start_backends,
    temp_dir::TempDir,
};

/// Requests counted; before them, `WARM_UP` uncounted ones fill the
/// upstream connection pools and the allocators' caches.
const REQUESTS: u32 = 4000;
const WARM_UP: u32 = 400;

pub fn run(root: &Path) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let dir = TempDir::new("elb-bench-l7-instructions")?;
    let (_backends, b1, b2) = start_backends(dir.path())?;

    // One worker each, so every instruction of a request is on one thread.
    let elb_port = free_port()?;
    let state_file = dir.path().join("elb.json");
    let elb = Counted::start(
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
        elb_port,
    )?;
    configure_elb(elb_port, b1, b2)?;
    let elb_count = elb.count(elb_port)?;

    let nginx_port = free_port()?;
    let conf_path = dir.path().join("nginx-lb.conf");
    let conf = format!(
        "master_process off;\n{}",
        nginx_lb_conf(dir.path(), nginx_port, b1, b2, 1)
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
        nginx_port,
    )?;
    let nginx_count = nginx_lb.count(nginx_port)?;

    println!(
        "\n### L7: user-space instructions per request (`cargo xtask bench l7-instructions`, callgrind)\n"
    );
    println!(
        "{REQUESTS} keep-alive `GET {PATH}` (`Host: {HOST}`, `User-Agent: {UA}`) on one connection after {WARM_UP} uncounted ones; the routing of `bench l7`; one worker each.\n"
    );
    println!("| balancer | instructions/request |");
    println!("|---|---|");
    println!("| elb | {elb_count:.0} |");
    println!("| nginx | {nginx_count:.0} |");
    println!(
        "\nelb/nginx: **{:.2}×** (user space only: the system calls' kernel work is not counted)",
        elb_count / nginx_count
    );
    Ok(())
}

/// A balancer running under callgrind with counting off until asked.
struct Counted {
    name: &'static str,
    process: Background,
    out_file: PathBuf,
}

impl Counted {
    fn start(name: &'static str, command: &Command, dir: &Path, port: u16) -> Result<Self> {
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
        })
    }

    /// Instructions per request over [`REQUESTS`] requests.
    fn count(self, port: u16) -> Result<f64> {
        check_routing(self.name, port)?;
        keep_alive_gets(port, WARM_UP)?;
        self.callgrind_control("on")?;
        keep_alive_gets(port, REQUESTS)?;
        self.callgrind_control("off")?;
        // A dump now, rather than the report at exit: it does not depend on
        // how each balancer shuts down. The first dump is "<out file>.1".
        self.callgrind_control("dump")?;
        let dump = self.out_file.with_extension("callgrind.1");
        let text = std::fs::read_to_string(&dump)
            .with_context(|| format!("reading {}", dump.display()))?;
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
