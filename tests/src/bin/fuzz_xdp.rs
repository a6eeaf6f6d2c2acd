//! `cargo xtask fuzz`'s XDP runner: structure-aware packets through elb's
//! XDP program with `BPF_PROG_TEST_RUN`, every run checked against the
//! invariants of `elb_tests::xdp_fuzz::check`.
//!
//! Usage: `fuzz_xdp --seconds S [--packets N] [--seed X]`: stops after S
//! seconds or N packets, whichever comes first. The seed (decimal or 0x
//! hex; random if not given) is printed first and replays the run. The
//! last line is
//! `fuzz_xdp: packets=N rewritten=R passed=P dropped=D violations=V`;
//! the exit status is non-zero when V > 0 (or on error). Each violation
//! (the first 20 in full) names the invariant and prints the packet and
//! the program's output in hex. Needs root.
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use elb_tests::{
    privileges::root_and_bpf,
    xdp_fuzz::{self, Config},
};

struct Args {
    seconds: f64,
    packets: u64,
    seed: Option<u64>,
}

fn parse_u64(flag: &str, value: &str) -> Result<u64> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.with_context(|| format!("{flag} {value:?}: not an integer"))
}

fn parse_args() -> Result<Args> {
    let mut seconds = None;
    let mut args = Args {
        seconds: 0.0,
        packets: u64::MAX,
        seed: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => {
                let s: f64 = value
                    .parse()
                    .with_context(|| format!("--seconds {value:?}: not a number"))?;
                ensure!(s > 0.0 && s.is_finite(), "--seconds must be positive");
                seconds = Some(s);
            }
            "--packets" => args.packets = parse_u64(&flag, &value)?,
            "--seed" => args.seed = Some(parse_u64(&flag, &value)?),
            other => {
                bail!("unknown flag {other}; usage: fuzz_xdp --seconds S [--packets N] [--seed X]")
            }
        }
    }
    args.seconds = seconds.context("--seconds is required")?;
    Ok(args)
}

fn random_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fuzz_xdp: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<u64> {
    let args = parse_args()?;
    if let Err(why) = root_and_bpf() {
        bail!("needs root and BPF: {why}");
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    println!("fuzz_xdp: seed {seed:#x}");
    let summary = xdp_fuzz::run(&Config::new(args.seconds, args.packets, seed))?;
    println!("{}", summary.detail());
    println!("{}", summary.line());
    Ok(summary.violations)
}
