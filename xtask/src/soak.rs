//! `cargo xtask soak --minutes N`: mixed load through a real elb (release)
//! while a seeded fault plan kills backends and etcd and churns the
//! configuration (see tests/src/bin/soak.rs, the runner). Fails if an
//! idempotent request failed or elb's descriptors or RSS grew.
use std::path::Path;

use anyhow::{Result, bail};

use crate::{bench, cmd, setup};

/// The runner's arguments: `--seconds S` plus the optional seed, rate and
/// samples file.
pub fn runner_args(
    minutes: Option<f64>,
    seconds: Option<f64>,
    seed: Option<u64>,
    rate: Option<f64>,
    samples: Option<&Path>,
) -> Result<Vec<String>> {
    let seconds = match (minutes, seconds) {
        (Some(_), Some(_)) => bail!("give --minutes or --seconds, not both"),
        (Some(m), None) => m * 60.0,
        (None, Some(s)) => s,
        (None, None) => 600.0,
    };
    let mut args = vec!["--seconds".to_owned(), seconds.to_string()];
    if let Some(seed) = seed {
        args.extend(["--seed".to_owned(), seed.to_string()]);
    }
    if let Some(rate) = rate {
        args.extend(["--rate".to_owned(), rate.to_string()]);
    }
    if let Some(samples) = samples {
        args.extend(["--samples".to_owned(), samples.display().to_string()]);
    }
    Ok(args)
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    setup::ensure(root)?;
    let elb = crate::build_release_elb(root)?;
    let runner = bench::build_runner(root, "soak")?;
    cmd::Step::new(runner)
        .args(args)
        .env("ELB_BIN", &elb)
        .current_dir(root)
        .run("running the soak")
}

/// The short soak `cargo xtask test` ends with, on the debug elb it tested;
/// the runner and elb come from that suite's build of the workspace.
pub fn run_debug(root: &Path, seconds: u64) -> Result<()> {
    cmd::Step::new(root.join("target/debug/soak"))
        .args(["--seconds", &seconds.to_string()])
        .env("ELB_BIN", root.join("target/debug/elb"))
        .current_dir(root)
        .run("running a short soak")
}
