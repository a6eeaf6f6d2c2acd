//! `cargo xtask build-ebpf`: builds the XDP program with the pinned nightly.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{cmd::Step, setup::ebpf_toolchain};

pub const TARGET: &str = "bpfel-unknown-none";

/// Where the userspace build (elb-userspace/build.rs) expects the object.
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target/ebpf/elb.bpf.o")
}

/// `cargo` for the eBPF crate, on its own nightly. RUSTUP_TOOLCHAIN comes
/// from the `cargo xtask` invocation and would override the crate's
/// rust-toolchain.toml, so it is named explicitly.
pub fn ebpf_cargo(root: &Path) -> Result<Step> {
    let channel = ebpf_toolchain(root)?;
    Ok(Step::new("rustup")
        .args(["run", &channel, "cargo"])
        .current_dir(&root.join("elb-ebpf"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS"))
}

/// Builds the object, copies it to [`object_path`] and returns that path.
pub fn build(root: &Path, release: bool) -> Result<PathBuf> {
    build_object(root, release, None, &object_path(root))
}

/// The bench object's target directory, relative to the eBPF crate.
pub const BENCH_TARGET_DIR: &str = "target/bench";

/// Where `cargo xtask bench xdp` puts the bench object.
pub fn bench_object_path(root: &Path) -> PathBuf {
    root.join("target/ebpf/elb-bench.bpf.o")
}

/// Builds the bench object: the same crate with feature `bench`, which adds
/// the timing wrapper (`elb-ebpf/src/bench.rs`) next to the unchanged
/// `elb_xdp`. It has its own target directory so that switching features
/// never rebuilds, or races with, the production object.
pub fn build_bench(root: &Path) -> Result<PathBuf> {
    build_object(
        root,
        true,
        Some(("bench", BENCH_TARGET_DIR)),
        &bench_object_path(root),
    )
}

/// `feature`: (cargo feature, target directory relative to the crate).
fn build_object(
    root: &Path,
    release: bool,
    feature: Option<(&str, &str)>,
    object: &Path,
) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let mut step = ebpf_cargo(root)?
        .args(["build", "--target", TARGET, "-Z", "build-std=core"])
        // BTF lets bpftool pretty-print map values by field name.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        );
    if release {
        step = step.args(["--release"]);
    }
    let mut target_dir = root.join("elb-ebpf/target");
    if let Some((feature, dir)) = feature {
        step = step.args(["--features", feature, "--target-dir", dir]);
        target_dir = root.join("elb-ebpf").join(dir);
    }
    step.run("building the eBPF program")?;

    let built = target_dir.join(TARGET).join(profile).join("elb");
    std::fs::create_dir_all(object.parent().context("object path has a parent")?)?;
    // Only a changed object is copied: a new mtime makes elb-userspace's
    // build script run again, and everything that embeds it rebuild.
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(object).ok().as_deref() != Some(bytes.as_slice()) {
        std::fs::write(object, &bytes)
            .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    }
    eprintln!("xtask: eBPF object: {}", object.display());
    Ok(object.to_path_buf())
}
