//! `cargo xtask bench xdp`: ns per packet of elb's XDP paths (established
//! flow, new flow, reply, non-VIP) through `BPF_PROG_TEST_RUN`, against a
//! trivial XDP_PASS program timed in the same run; issue 16's two targets
//! against Katran's fixed reference multiples; and the lookups floor per
//! connection-table layout (today's shared LRU, Katran's per-CPU LRUs at
//! two sizes, a small shared LRU), for a hit and for one or two inserts.
//!
//! xtask only builds and starts the runner: the runner needs aya and elb's
//! own map and fixture code (the tests crate), which xtask cannot depend on
//! because it must build before `setup` has installed their prerequisites.
//! How the figures are made is explained in tests/src/bin/bench_xdp.rs and
//! BENCHMARKS.md.
use std::path::Path;

use anyhow::Result;

use crate::{cmd, ebpf};

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    // The production object first: elb-userspace (a dependency of the
    // runner) embeds it.
    ebpf::build(root, true)?;
    let object = ebpf::build_bench(root)?;
    let runner = super::build_runner(root, "bench_xdp")?;
    cmd::Step::new(runner)
        .args(["--rounds", &rounds.to_string(), "--object"])
        .args([&object])
        .current_dir(root)
        .run("running the XDP bench")
}
