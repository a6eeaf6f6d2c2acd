//! `cargo xtask bench health`: what active health checking costs and how
//! fast a change reaches the XDP data plane (10,000 servers checked every
//! 5 s; a 1,000-server service rebuilt after a health change; etcd → XDP
//! maps). xtask builds the release elb and the runner, which lives in the
//! tests crate (it needs aya, etcd and elb's own code; see
//! tests/src/bin/bench_health.rs), then runs it.
use std::path::Path;

use anyhow::Result;

use crate::{cmd, ebpf};

pub fn run(root: &Path) -> Result<()> {
    ebpf::build(root, true)?;
    let elb = crate::build_release_elb(root)?;
    let runner = super::build_runner(root, "bench_health")?;
    cmd::Step::new(runner)
        .env("ELB_BIN", &elb)
        .current_dir(root)
        .run("running the health bench")
}
