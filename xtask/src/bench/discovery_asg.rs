//! `cargo xtask bench discovery-asg`: the time from an Auto Scaling group
//! change (a new `InService` member) to the first request that reaches it,
//! for provider intervals of 1 s, 2 s and 5 s (2 × `--rounds` changes
//! each). AWS is moto from `cargo xtask setup`'s venv; the runner is
//! tests/src/bin/bench_discovery_asg.rs.
use std::path::Path;

use anyhow::Result;

use crate::cmd;

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb = crate::build_release_elb(root)?;
    let runner = super::build_runner(root, "bench_discovery_asg")?;
    cmd::Step::new(runner)
        .env("ELB_BIN", &elb)
        .args(["--changes".to_owned(), (rounds.max(1) * 2).to_string()])
        .current_dir(root)
        .run("running the discovery-asg bench")
}
