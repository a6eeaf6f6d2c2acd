//! `cargo xtask test`: the whole suite CI runs.
use std::path::Path;

use anyhow::Result;

use crate::{
    cmd,
    ebpf::{self, TARGET},
    fuzz, setup, soak,
};

/// Seconds each fuzz target runs in CI, from its committed seeds: long
/// enough to replay the seeds and mutate past them. CI builds the targets
/// unoptimised (cargo-fuzz's `--dev`): 4.2 minutes from scratch on a 2-core
/// machine against 7.2 for the optimised build (one codegen unit; half of
/// it the daemon's library), for about a sixth of the executions (rules:
/// 473 exec/s, about 5,200 in its 10 s). The long campaigns of `cargo
/// xtask fuzz` keep the optimised build.
const CI_FUZZ_SECONDS: u64 = 10;

pub fn run(root: &Path, extra_args: &[String]) -> Result<()> {
    setup::ensure(root)?;
    ebpf::build(root, true)?;

    cmd::cargo(root)
        .args(["fmt", "--all", "--check"])
        .run("checking formatting")?;
    // The fuzz crate is a workspace of its own (nightly only).
    ebpf::ebpf_cargo(root)?
        .current_dir(&root.join("fuzz"))
        .args(["fmt", "--check"])
        .run("checking formatting of the fuzz crate")?;
    ebpf::ebpf_cargo(root)?
        .args(["fmt", "--check"])
        .run("checking formatting of the eBPF crate")?;

    cmd::cargo(root)
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .run("linting")?;
    // The fuzz crate's build of the daemon's library: without the AWS SDK.
    cmd::cargo(root)
        .args(["clippy", "--package", "elb-userspace", "--lib"])
        .args(["--no-default-features", "--", "-D", "warnings"])
        .run("linting elb-userspace without its `aws` feature")?;
    ebpf::ebpf_cargo(root)?
        .args(["clippy", "--target", TARGET, "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .run("linting the eBPF crate")?;
    // The bench programs (feature `bench`), in the bench object's own
    // target directory, as `cargo xtask bench xdp` builds them.
    ebpf::ebpf_cargo(root)?
        .args(["clippy", "--target", TARGET, "-Z", "build-std=core"])
        .args([
            "--features",
            "bench",
            "--target-dir",
            ebpf::BENCH_TARGET_DIR,
        ])
        .args(["--", "-D", "warnings"])
        .run("linting the eBPF crate's bench programs")?;

    // One build serves every step below: the tests, the `elb` binary they
    // start and the soak runner (cargo builds a package's binaries along
    // with its tests and benches). A build of one package resolves its
    // dependencies' features for that package alone, so it recompiled
    // about 80 crates a second time (10.7 minutes in CI for `elb`; 7.5 for
    // the soak runner after the tests' build).
    cmd::cargo(root)
        .args(["test", "--workspace", "--all-targets", "--no-run"])
        .run("building the tests, elb and the soak runner")?;
    cmd::cargo(root)
        .args(["test", "--workspace", "--all-targets"])
        .args(extra_args)
        .env("ELB_BIN", root.join("target/debug/elb"))
        .run("running the tests")?;
    fuzz::run(
        root,
        &fuzz::Options {
            seconds: CI_FUZZ_SECONDS,
            target: None,
            // The XDP fuzzer ran above, as the `xdp_fuzz` test.
            with_xdp: false,
            sanitizer: "address".to_owned(),
            no_trace_compares: false,
            unoptimized: true,
        },
    )?;
    // A short soak: mixed load while backends and etcd are killed.
    soak::run_debug(root, 60)
}
