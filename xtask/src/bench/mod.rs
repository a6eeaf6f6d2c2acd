//! `cargo xtask bench <name>`: comparisons that run in one go and print
//! ratios. The machines are noisy, so every figure is the median of several
//! alternating rounds.
mod aws_api;
mod discovery_asg;
mod discovery_consul;
mod h2load;
mod health;
mod l4;
mod l7;
mod l7_instructions;
mod procs;
mod s_time;
mod scrape;
mod servers;
mod temp_dir;
mod tls;
mod wrk;
mod xdp;

use std::path::Path;

use anyhow::{Result, bail};

pub fn run(root: &Path, name: &str, rounds: usize) -> Result<()> {
    crate::setup::ensure(root)?;
    match name {
        "l7" => l7::run(root, rounds),
        "xdp" => xdp::run(root, rounds),
        "l4" => l4::run(root, rounds),
        "l7-instructions" => l7_instructions::run(root),
        "health" => health::run(root),
        "tls" => tls::run(root, rounds),
        "scrape" => scrape::run(root, rounds),
        "discovery-consul" => discovery_consul::run(root, rounds),
        "aws-api" => aws_api::run(root, rounds),
        "discovery-asg" => discovery_asg::run(root, rounds),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: l7, l7-instructions, tls, xdp, l4, health, scrape, discovery-consul, aws-api, discovery-asg"
            )
        }
    }
}

/// Builds a bench runner of the tests crate (release), returning its path.
pub(crate) fn build_runner(root: &Path, bin: &str) -> Result<std::path::PathBuf> {
    crate::cmd::cargo(root)
        .args(["build", "--release", "--package", "elb-tests", "--bin", bin])
        .run(&format!("building the runner {bin}"))?;
    Ok(root.join("target/release").join(bin))
}

/// Median of a non-empty list.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The value at fraction `p` (0..=1) of a sorted, non-empty list.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
