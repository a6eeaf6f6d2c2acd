//! Background processes a benchmark starts, stopped on drop.
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    pub fn spawn(name: &str, command: &mut Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `port` on loopback accepts connections.
    pub fn wait_port(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} is not listening on {port}: {}",
            self.name,
            self.log_text()
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SIGTERM first so servers clean up (elb unpins, nginx removes its pid).
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `curl` with a body; fails unless the reply is 2xx.
pub fn curl(method: &str, url: &str, body: Option<&str>, headers: &[&str]) -> Result<String> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--fail-with-body", "-X", method, url]);
    for header in headers {
        command.args(["-H", header]);
    }
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let output = command.output().context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{method} {url} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// CPU time a process and its children have used so far, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// CPU time (user + system) a process and its children have used so far,
/// in seconds; nginx does its work in worker children of the master.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(cpu_time(pid)?.total())
}

/// [`cpu_seconds`], split into user and system time.
pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let (mut user, mut system) = process_ticks(pid)?;
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|task| {
            let task = task.ok()?.path();
            std::fs::read_to_string(task.join("children")).ok()
        })
        .collect::<String>();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        let (child_user, child_system) = process_ticks(child).unwrap_or((0, 0));
        user += child_user;
        system += child_system;
    }
    Ok(CpuTime {
        user: ticks_to_seconds(user),
        system: ticks_to_seconds(system),
    })
}

/// CPU time spent while a measured piece of work ran.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// The watched process and its children.
    pub process: CpuTime,
    /// The whole machine ([`worked_cpu_seconds`]).
    pub machine: f64,
    /// Children of this process that exited and were waited for meanwhile:
    /// the load generators the work ran.
    pub clients: f64,
}

/// Runs `work` and returns what it gave with the CPU time process `pid`,
/// the whole machine and the load generators used meanwhile.
pub fn measure_cpu<T>(pid: u32, work: impl FnOnce() -> Result<T>) -> Result<(T, CpuUse)> {
    let (process, machine, clients) =
        (cpu_time(pid)?, worked_cpu_seconds()?, waited_children_cpu());
    let result = work()?;
    Ok((
        result,
        CpuUse {
            process: cpu_time(pid)? - process,
            machine: worked_cpu_seconds()? - machine,
            clients: waited_children_cpu() - clients,
        },
    ))
}

/// User + system time of every child this process has waited for.
fn waited_children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

// Columns of the first line of /proc/stat, after "cpu".
const USER: usize = 0;
const NICE: usize = 1;
const SYSTEM: usize = 2;
const IRQ: usize = 5;
const SOFTIRQ: usize = 6;
const STEAL: usize = 7;

/// Busy time of all CPUs so far (user, nice, system, irq, softirq, steal),
/// in seconds: XDP and iptables work in softirq, charged to no process.
pub fn busy_cpu_seconds() -> Result<f64> {
    machine_cpu_seconds(&[USER, NICE, SYSTEM, IRQ, SOFTIRQ, STEAL])
}

/// Time all CPUs spent running this machine's work so far, in seconds:
/// [`busy_cpu_seconds`] without steal, which is the host's, not ours.
pub fn worked_cpu_seconds() -> Result<f64> {
    machine_cpu_seconds(&[USER, NICE, SYSTEM, IRQ, SOFTIRQ])
}

fn machine_cpu_seconds(columns: &[usize]) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks: u64 = columns.iter().filter_map(|&i| fields.get(i)).sum();
    Ok(ticks_to_seconds(ticks))
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// (utime, stime) of a whole process (all threads), from /proc/PID/stat.
fn process_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse()
            .context("bad /proc stat")
    };
    Ok((field(11)?, field(12)?))
}
