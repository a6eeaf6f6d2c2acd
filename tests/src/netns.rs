//! Network namespaces and veth links for end-to-end tests. Everything is
//! removed on drop, including when a test panics.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, usable as an interface
/// name (at most 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{id}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program` in this network namespace only. Unlike `ip netns
    /// exec`, this keeps the mount namespace, so bpffs pins stay visible.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let net = format!("--net={}", self.path().display());
        let mut full = vec![net.as_str(), program];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it
    /// creates stay in the namespace after it returns.
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        let ns_file =
            File::open(self.path()).with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::spawn(move || -> Result<R> {
            // SAFETY: the fd is open; setns only affects this thread.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth ends inside it.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair with one end in each namespace, addressed and up.
pub struct Veth {
    pub a: String,
    pub b: String,
}

/// Links `a_ns` and `b_ns` with a veth pair; `a_addrs` / `b_addrs` are CIDRs
/// (IPv6 ones get `nodad` so they are usable at once).
pub fn veth_pair(a_ns: &NetNs, a_addrs: &[&str], b_ns: &NetNs, b_addrs: &[&str]) -> Result<Veth> {
    let a = unique_name("ea");
    let b = unique_name("eb");
    run(
        "ip",
        &[
            "link",
            "add",
            &a,
            "netns",
            a_ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            b_ns.name(),
        ],
    )?;
    for (ns, dev, addrs) in [(a_ns, &a, a_addrs), (b_ns, &b, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(Veth { a, b })
}
