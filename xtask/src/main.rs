//! `cargo xtask <command>`: setup, eBPF build, run, test and benchmarks.
mod bench;
mod cmd;
mod ebpf;
mod fuzz;
mod setup;
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
    /// Run a benchmark comparison and print a Markdown table (l7, l7-instructions, xdp, l4, health).
    Bench {
        name: String,
        /// Alternating timed rounds per contender; figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
        Task::Bench { name, rounds } => bench::run(&root, &name, rounds),
        Task::Fuzz { time, target } => fuzz::run(
            &root,
            &fuzz::Options {
                seconds: time,
                target,
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
