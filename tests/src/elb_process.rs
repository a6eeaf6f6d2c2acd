//! Runs the real `elb` binary, optionally inside a network namespace, and
//! stops it on drop.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// The `elb` binary: `ELB_BIN` (set by `cargo xtask test`), else the one
/// next to this test binary's directory.
pub fn elb_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ELB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("elb"))
        .context("test binary has no parent directory")?;
    if !candidate.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p elb-userspace` or run `cargo xtask test`",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A running `elb`. Its stderr goes to a log file read on failure. An elb
/// with `--xdp-iface` leaves its data plane pinned when it exits, so the
/// drop runs `elb teardown` for it (refused, harmlessly, while another elb
/// of the same name runs).
pub struct ElbProcess {
    child: Option<Child>,
    log: PathBuf,
    teardown_args: Option<Vec<String>>,
    /// Its `--run-dir`, to remove again after it stopped if the test's
    /// cleanup already ran (see `l7::Cleanup`).
    run_dir: Option<PathBuf>,
}

/// `elb teardown` arguments matching a `run` command line that attaches XDP.
fn teardown_args(args: &[&str]) -> Option<Vec<String>> {
    if !args.contains(&"--xdp-iface") {
        return None;
    }
    let mut teardown = vec!["teardown".to_owned()];
    for flag in ["--name", "--run-dir", "--bpffs"] {
        if let Some(i) = args.iter().position(|a| *a == flag) {
            teardown.push(flag.to_owned());
            teardown.push(args.get(i + 1)?.to_string());
        }
    }
    Some(teardown)
}

/// Runs `elb teardown` with these arguments; returns its combined output.
pub fn elb_teardown(args: &[&str]) -> Result<String> {
    let output = Command::new(elb_binary()?)
        .arg("teardown")
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .context("running elb teardown")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("elb teardown failed ({}): {text}", output.status);
    }
    Ok(text)
}

impl ElbProcess {
    /// Starts `elb <args>` inside `netns` (or the test's own namespace).
    pub fn spawn(args: &[&str], netns: Option<&NetNs>) -> Result<Self> {
        Self::spawn_wrapped(&[], args, netns)
    }

    /// Starts `<wrapper...> elb <args>`, e.g. `setpriv ...` to drop
    /// privileges.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str], netns: Option<&NetNs>) -> Result<Self> {
        Self::spawn_with_env(wrapper, args, &[], netns)
    }

    /// [`ElbProcess::spawn_wrapped`] with extra environment variables (the
    /// AWS SDK's `AWS_ENDPOINT_URL`, keys and region for moto).
    pub fn spawn_with_env(
        wrapper: &[&str],
        args: &[&str],
        env: &[(String, String)],
        netns: Option<&NetNs>,
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "elb-test-{}-{}.log",
            std::process::id(),
            crate::netns::unique_name("l")
        ));
        let log_file = File::create(&log)?;
        let elb = elb_binary()?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(&elb);
                command
            }
            None => Command::new(&elb),
        };
        command
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(ns) = netns {
            let ns_file = File::open(ns.path())?;
            // SAFETY: setns is async-signal-safe; the fd stays open in the
            // closure, which runs in the child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().context("starting elb")?;
        Ok(Self {
            child: Some(child),
            log,
            teardown_args: teardown_args(args),
            run_dir: args
                .iter()
                .position(|arg| *arg == "--run-dir")
                .and_then(|at| args.get(at + 1))
                .map(PathBuf::from),
        })
    }

    /// The process id, while elb runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without its colour codes (`ESC [ ... m`), for matching
    /// fields such as `requests=3`.
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Waits until `ready()` holds, failing early (with the log) if elb exits.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.child_mut()?.try_wait()? {
                bail!("elb exited early ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("elb not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until elb's log contains `needle`.
    pub fn wait_for_log(&mut self, timeout: Duration, needle: &str) -> Result<()> {
        let log = self.log.clone();
        self.wait_until(timeout, || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle))
        })
    }

    /// Sends SIGTERM and waits for the exit status. elb drains first:
    /// requests still in flight after [`DRAIN_PATIENCE`] get a second
    /// SIGTERM (exit at once), so a test's teardown never waits for
    /// `--drain-timeout`.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let child = self.child_mut()?;
        let pid = child.id() as i32;
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        let mut second = false;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if !second && started.elapsed() > DRAIN_PATIENCE {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                second = true;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("elb did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for elb to exit by itself (for commands expected to fail).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut()?.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("elb still running after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> Result<&mut Child> {
        self.child.as_mut().context("elb already exited")
    }
}

/// How long [`ElbProcess::stop`] lets elb drain before the second SIGTERM.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

impl Drop for ElbProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(args) = &self.teardown_args {
            let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
            let _ = elb_teardown(&args);
        }
        if let Some(dir) = &self.run_dir {
            crate::l7::remove_again_if_cleaned(dir);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts `elb run` in `netns` with `--listen 0.0.0.0:8080`, a unique name
/// from `name_prefix`, state and run directory in a temporary directory
/// (removed on drop) and `extra`; returns once `127.0.0.1:ready_port`
/// answers inside the namespace.
pub fn spawn_in_netns(
    netns: &NetNs,
    name_prefix: &str,
    extra: &[&str],
    ready_port: u16,
) -> (ElbProcess, tempfile::TempDir) {
    let temp = tempfile::tempdir().expect("dir");
    let dir = temp.path();
    let state = dir.join("state.json");
    let name = crate::netns::unique_name(name_prefix);
    let mut args = vec![
        "run",
        "--name",
        &name,
        "--listen",
        "0.0.0.0:8080",
        "--state-file",
        state.to_str().expect("utf-8"),
        "--run-dir",
        dir.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let mut elb = ElbProcess::spawn(&args, Some(netns)).expect("spawn elb");
    elb.wait_until(Duration::from_secs(10), move || {
        netns
            .enter(move || std::net::TcpStream::connect(("127.0.0.1", ready_port)).is_ok())
            .unwrap_or(false)
    })
    .expect("elb listens");
    (elb, temp)
}
