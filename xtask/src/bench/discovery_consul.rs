//! `cargo xtask bench discovery-consul`: the time from a Consul change to
//! the first request that reaches the new server (median of 6 × `--rounds` changes).
//! Consul is the stand-in of the tests (no Consul server is packaged
//! here); the runner is tests/src/bin/bench_discovery_consul.rs.
use std::path::Path;

use anyhow::Result;

use crate::cmd;

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb = crate::build_release_elb(root)?;
    let runner = super::build_runner(root, "bench_discovery_consul")?;
    cmd::Step::new(runner)
        .env("ELB_BIN", &elb)
        .args(["--rounds".to_owned(), (rounds.max(1) * 6).to_string()])
        .current_dir(root)
        .run("running the discovery-consul bench")
}
