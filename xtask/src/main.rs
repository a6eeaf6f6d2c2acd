//! `cargo xtask <command>`: setup, eBPF build, run, test and benchmarks.
mod bench;
mod cmd;
mod dist;
mod ebpf;
mod fuzz;
mod setup;
mod soak;
mod test;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "elb's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: the eBPF nightly, bpf-linker and
    /// Debian packages. Idempotent.
    Setup,
    /// Build the XDP program into target/ebpf/elb.bpf.o.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Set up if needed, build everything in release mode and run `elb`.
    Run {
        /// Arguments for `elb`, e.g. `-- run --xdp-iface eth0`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A release tarball: the binary, the systemd unit, the default
    /// configuration and the README (target/dist/).
    Dist,
    /// Run a benchmark comparison and print a Markdown table (l7, l7-instructions, tls, xdp, l4, health, scrape, discovery-consul, aws-api, discovery-asg).
    Bench {
        name: String,
        /// Alternating timed rounds per contender; figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Mixed load through a release elb while backends and etcd are killed
    /// and the configuration churns; prints a Markdown table. Fails on a
    /// failed idempotent request, growing fds, or (≥ 10 min) RSS growth > 5%.
    Soak {
        /// Length of the run (fractions allowed); default 10.
        #[arg(long, conflicts_with = "seconds")]
        minutes: Option<f64>,
        /// Length of the run in seconds, instead of --minutes.
        #[arg(long)]
        seconds: Option<f64>,
        /// Seed of the fault plan and the request mix (default 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Requests per second over all clients (default 200).
        #[arg(long)]
        rate: Option<f64>,
        /// Also write every RSS and fd sample of elb to this CSV file.
        #[arg(long)]
        samples: Option<PathBuf>,
    },
    /// Run every fuzz target (libFuzzer targets in fuzz/, then the XDP
    /// packet fuzzer) for a time budget each; print a Markdown table of
    /// executions, exec/s and crashes; fail on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only this target (see `cd fuzz && cargo fuzz list`, or `xdp`).
        #[arg(long)]
        target: Option<String>,
        /// cargo-fuzz's sanitizer (`address`, or `none` for speed).
        #[arg(long, default_value = "address")]
        sanitizer: String,
        /// Build without compare tracing: faster executions, weaker
        /// guidance (for long campaigns over a grown corpus).
        #[arg(long)]
        no_trace_compares: bool,
        /// Build without optimisation: minutes faster to build, fewer
        /// executions per second (what `cargo xtask test` runs).
        #[arg(long)]
        dev: bool,
    },
    /// Set up if needed, build, check formatting and lints, run every test.
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.command {
        Task::Setup => setup::run(&root),
        Task::BuildEbpf { release } => ebpf::build(&root, release).map(|_| ()),
        Task::Run { args } => run_elb(&root, &args),
        Task::Test { args } => test::run(&root, &args),
        Task::Dist => dist::run(&root).map(|_| ()),
        Task::Bench { name, rounds } => bench::run(&root, &name, rounds),
        Task::Soak {
            minutes,
            seconds,
            seed,
            rate,
            samples,
        } => soak::runner_args(minutes, seconds, seed, rate, samples.as_deref())
            .and_then(|args| soak::run(&root, &args)),
        Task::Fuzz {
            time,
            target,
            sanitizer,
            no_trace_compares,
            dev,
        } => fuzz::run(
            &root,
            &fuzz::Options {
                seconds: time,
                target,
                with_xdp: true,
                sanitizer,
                no_trace_compares,
                unoptimized: dev,
            },
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Builds the eBPF object and the release `elb` that embeds it.
fn build_release_elb(root: &std::path::Path) -> Result<PathBuf> {
    // A given binary (say, an earlier build for a before/after comparison)
    // is used as it is.
    if let Some(binary) = std::env::var_os("ELB_BENCH_BIN") {
        return Ok(PathBuf::from(binary));
    }
    ebpf::build(root, true)?;
    cmd::cargo(root)
        .args([
            "build",
            "--release",
            "--package",
            "elb-userspace",
            "--bin",
            "elb",
        ])
        .run("building elb")?;
    Ok(root.join("target/release/elb"))
}

fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

fn run_elb(root: &std::path::Path, args: &[String]) -> Result<()> {
    setup::ensure(root)?;
    let binary = build_release_elb(root)?;
    // Replace this process so signals (Ctrl-C, SIGTERM) reach elb directly.
    let err = cmd::exec(&binary, args);
    Err(anyhow::anyhow!("starting {}: {err}", binary.display()))
}
