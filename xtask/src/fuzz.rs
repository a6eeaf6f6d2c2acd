//! `cargo xtask fuzz`: runs every libFuzzer target of `fuzz/` (cargo-fuzz,
//! on the pinned nightly) and the XDP packet fuzzer, one after the other,
//! each for a time budget; prints a Markdown table of executions, exec/s
//! and crashes; fails on any crash.
//!
//! libFuzzer adds the inputs it finds to a scratch corpus under
//! `fuzz/target/corpus/`, next to the committed seeds in `fuzz/corpus/`
//! (read only), so a run never dirties the checkout. Crashing inputs go to
//! `fuzz/artifacts/<target>/`.
use std::{path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd::Step, ebpf, setup};

/// The XDP packet fuzzer, a runner binary of the tests crate.
pub const XDP_TARGET: &str = "xdp";
const XDP_RUNNER: &str = "fuzz_xdp";

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Budget per target, in seconds.
    pub seconds: u64,
    /// Only this target (a libFuzzer target's name, or `xdp`).
    pub target: Option<String>,
    /// Whether the XDP packet fuzzer runs too (it needs root and a release
    /// build of its runner; `cargo test` runs it as `xdp_fuzz` already).
    pub with_xdp: bool,
    /// cargo-fuzz's sanitizer: `address` (the default) or `none`, several
    /// times faster for a long campaign over safe code.
    pub sanitizer: String,
    /// Builds without cargo-fuzz's compare tracing (`--no-trace-compares`):
    /// about twice the executions per second on targets whose time goes
    /// to comparisons (rules), at the cost of weaker guidance; for long
    /// campaigns over a corpus grown with it.
    pub no_trace_compares: bool,
    /// Builds without optimisation (cargo-fuzz's `--dev`): a much faster
    /// build and slower executions, for CI's short runs from the seeds.
    pub unoptimized: bool,
}

impl Options {
    /// cargo-fuzz's build flags, the same for `build` and `run` (a
    /// difference would rebuild).
    fn build_flags(&self) -> Vec<&str> {
        let mut flags = vec!["--sanitizer", self.sanitizer.as_str()];
        if self.no_trace_compares {
            flags.push("--no-trace-compares");
        }
        if self.unoptimized {
            flags.push("--dev");
        }
        flags
    }
}

/// One target's figures.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    executions: u64,
    exec_per_sec: u64,
    new_units: u64,
    crashes: u64,
    /// Where libFuzzer wrote the crashing inputs.
    artifacts: Vec<String>,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    setup::ensure(root)?;
    // elb-userspace embeds the XDP object, so the fuzz crate needs it too.
    ebpf::build(root, true)?;
    let fuzz_dir = root.join("fuzz");
    let channel = nightly(root)?;
    let mut targets = list_targets(&fuzz_dir, &channel)?;
    if options.with_xdp {
        targets.push(XDP_TARGET.to_owned());
    }
    if let Some(only) = &options.target {
        if !targets.contains(only) {
            bail!("no fuzz target {only:?}; available: {}", targets.join(", "));
        }
        targets.retain(|t| t == only);
    }

    let libfuzzer: Vec<&String> = targets.iter().filter(|t| *t != XDP_TARGET).collect();
    if !libfuzzer.is_empty() {
        let started = Instant::now();
        fuzz_cargo(&fuzz_dir, &channel)
            .args(["build"])
            .args(options.build_flags())
            .run("building the fuzz targets")?;
        eprintln!(
            "xtask: fuzz: built the fuzz targets in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let logs = fuzz_dir.join("target/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let mut rows = Vec::new();
    for target in &targets {
        let figures = if target == XDP_TARGET {
            match run_xdp(root, options.seconds, &logs)? {
                Some(figures) => figures,
                None => continue,
            }
        } else {
            run_libfuzzer(
                &fuzz_dir,
                &channel,
                target,
                &options.build_flags(),
                options.seconds,
                &logs,
            )?
        };
        eprintln!(
            "xtask: fuzz: {target}: {} executions, {} exec/s, {} crashes",
            figures.executions, figures.exec_per_sec, figures.crashes
        );
        rows.push((target.clone(), figures));
    }

    println!("{}", table(&rows, options.seconds));
    let crashed: Vec<String> = rows
        .iter()
        .filter(|(_, f)| f.crashes > 0)
        .map(|(t, f)| format!("{t} ({})", f.artifacts.join(", ")))
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes in {}; reproduce one with `cd fuzz && cargo fuzz run TARGET ARTIFACT`",
            crashed.join("; ")
        );
    }
    Ok(())
}

/// The nightly cargo-fuzz runs on: the eBPF crate's, which
/// fuzz/rust-toolchain.toml must name too (it serves a bare `cargo fuzz`).
fn nightly(root: &Path) -> Result<String> {
    let channel = setup::ebpf_toolchain(root)?;
    let fuzz_channel = setup::toolchain_channel(&root.join("fuzz/rust-toolchain.toml"))?;
    if fuzz_channel != channel {
        bail!(
            "fuzz/rust-toolchain.toml pins {fuzz_channel}, elb-ebpf/rust-toolchain.toml {channel}: make them agree"
        );
    }
    Ok(channel)
}

/// `cargo fuzz` on the nightly, in `fuzz/`. The variables a `cargo xtask`
/// invocation sets would otherwise point at the stable toolchain.
fn fuzz_cargo(fuzz_dir: &Path, channel: &str) -> Step {
    Step::new("rustup")
        .args(["run", channel, "cargo", "fuzz"])
        .current_dir(fuzz_dir)
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
}

fn list_targets(fuzz_dir: &Path, channel: &str) -> Result<Vec<String>> {
    let listed = fuzz_cargo(fuzz_dir, channel)
        .args(["list"])
        .probe()
        .context("`cargo fuzz list` failed (is cargo-fuzz installed? `cargo xtask setup`)")?;
    Ok(listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn run_libfuzzer(
    fuzz_dir: &Path,
    channel: &str,
    target: &str,
    build_flags: &[&str],
    seconds: u64,
    logs: &Path,
) -> Result<Figures> {
    let seeds = fuzz_dir.join("corpus").join(target);
    let scratch = fuzz_dir.join("target/corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let log = logs.join(format!("{target}.log"));
    let status = fuzz_cargo(fuzz_dir, channel)
        .args(["run"])
        .args(build_flags)
        .args([target])
        .args([&scratch, &seeds])
        .args([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            "-print_final_stats=1".to_owned(),
            // A unit this slow is a bug (a parser that is not linear).
            "-timeout=10".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
        ])
        .run_logged(&format!("fuzzing {target} for {seconds} s"), &log)?;
    let output =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let figures = parse_libfuzzer(&output);
    if !status.success() && figures.crashes == 0 {
        // Not a finding: the run itself failed (build, arguments).
        eprintln!("{}", tail(&output, 40));
        bail!("fuzzing {target} failed ({status}); see {}", log.display());
    }
    if figures.crashes > 0 {
        eprintln!("{}", tail(&output, 60));
    }
    Ok(figures)
}

/// The XDP fuzzer, if the tests crate has it; `None` when it does not.
fn run_xdp(root: &Path, seconds: u64, logs: &Path) -> Result<Option<Figures>> {
    if !root
        .join("tests/src/bin")
        .join(format!("{XDP_RUNNER}.rs"))
        .is_file()
    {
        eprintln!("xtask: fuzz: tests/src/bin/{XDP_RUNNER}.rs does not exist; no XDP fuzzing");
        return Ok(None);
    }
    // BPF_PROG_TEST_RUN needs CAP_BPF and CAP_NET_ADMIN.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the XDP fuzzer loads the XDP program: run `cargo xtask fuzz` as root");
    }
    let runner = crate::bench::build_runner(root, XDP_RUNNER)?;
    let log = logs.join(format!("{XDP_TARGET}.log"));
    let started = Instant::now();
    let status = Step::new(&runner)
        .args(["--seconds".to_owned(), seconds.to_string()])
        .run_logged(&format!("fuzzing the XDP program for {seconds} s"), &log)?;
    let elapsed = started.elapsed().as_secs_f64();
    let output =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let Some(mut figures) = parse_xdp(&output, elapsed) else {
        eprintln!("{}", tail(&output, 40));
        bail!(
            "{XDP_RUNNER} ended ({status}) without its final line; see {}",
            log.display()
        );
    };
    if !status.success() && figures.crashes == 0 {
        // A failure that is not a counted violation is still one.
        figures.crashes = 1;
    }
    if figures.crashes > 0 {
        figures.artifacts.push(log.display().to_string());
        eprintln!("{}", tail(&output, 60));
    }
    Ok(Some(figures))
}

/// Reads libFuzzer's `-print_final_stats=1` lines and the crash reports.
fn parse_libfuzzer(output: &str) -> Figures {
    let mut figures = Figures::default();
    for line in output.lines() {
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            figures.executions = n;
        } else if let Some(n) = stat("stat::average_exec_per_sec:") {
            figures.exec_per_sec = n;
        } else if let Some(n) = stat("stat::new_units_added:") {
            figures.new_units = n;
        } else if let Some(path) = line
            .split_once("Test unit written to ")
            .map(|(_, path)| path.trim())
        {
            let name = path.rsplit('/').next().unwrap_or(path);
            if ["crash-", "timeout-", "oom-", "leak-"]
                .iter()
                .any(|kind| name.starts_with(kind))
            {
                figures.crashes += 1;
                figures.artifacts.push(path.to_owned());
            }
        }
    }
    figures
}

/// Reads the runner's last line:
/// `fuzz_xdp: packets=N rewritten=R passed=P dropped=D violations=V`.
fn parse_xdp(output: &str, seconds: f64) -> Option<Figures> {
    let line = output.lines().rev().find(|l| l.starts_with("fuzz_xdp:"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<u64>().ok())
    };
    let executions = field("packets")?;
    Some(Figures {
        executions,
        exec_per_sec: if seconds > 0.0 {
            (executions as f64 / seconds) as u64
        } else {
            0
        },
        new_units: 0,
        crashes: field("violations")?,
        artifacts: Vec::new(),
    })
}

fn table(rows: &[(String, Figures)], seconds: u64) -> String {
    let mut out = format!(
        "| target ({seconds} s each) | executions | exec/s | new corpus units | crashes |\n\
         | --- | ---: | ---: | ---: | ---: |\n"
    );
    for (target, f) in rows {
        let units = if target == XDP_TARGET {
            "–".to_owned()
        } else {
            f.new_units.to_string()
        };
        out.push_str(&format!(
            "| {target} | {} | {} | {units} | {} |\n",
            thousands(f.executions),
            thousands(f.exec_per_sec),
            f.crashes
        ));
    }
    out
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats_and_crashes() {
        let output = "\
#1024\tpulse  cov: 10 ft: 20 corp: 5/100b exec/s: 512 rss: 40Mb
Done 123456 runs in 11 second(s)
stat::number_of_executed_units: 123456
stat::average_exec_per_sec:     11223
stat::new_units_added:          42
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              51
";
        assert_eq!(
            parse_libfuzzer(output),
            Figures {
                executions: 123_456,
                exec_per_sec: 11_223,
                new_units: 42,
                crashes: 0,
                artifacts: vec![],
            }
        );
        let crashed = "\
thread '<unnamed>' panicked at fuzz_targets/rules.rs:10:5:
==123== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/fuzz/artifacts/rules/'; Test unit written to /w/fuzz/artifacts/rules/crash-abc
stat::number_of_executed_units: 77
";
        let figures = parse_libfuzzer(crashed);
        assert_eq!(figures.crashes, 1);
        assert_eq!(figures.executions, 77);
        assert_eq!(figures.artifacts, ["/w/fuzz/artifacts/rules/crash-abc"]);
        // A slow unit is reported, not counted as a crash.
        let slow = "Test unit written to /w/fuzz/artifacts/rules/slow-unit-abc\n";
        assert_eq!(parse_libfuzzer(slow).crashes, 0);
    }

    #[test]
    fn reads_the_xdp_runners_last_line() {
        let output =
            "loading\nfuzz_xdp: packets=1000000 rewritten=5 passed=6 dropped=7 violations=0\n";
        let figures = parse_xdp(output, 10.0).expect("a final line");
        assert_eq!(figures.executions, 1_000_000);
        assert_eq!(figures.exec_per_sec, 100_000);
        assert_eq!(figures.crashes, 0);
        assert_eq!(
            parse_xdp("fuzz_xdp: packets=3 violations=2", 1.0).map(|f| f.crashes),
            Some(2)
        );
        assert_eq!(parse_xdp("no summary", 1.0), None);
    }

    #[test]
    fn table_groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        let rows = [("rules".to_owned(), Figures::default())];
        assert!(table(&rows, 20).contains("| rules | 0 | 0 | 0 | 0 |"));
    }
}
