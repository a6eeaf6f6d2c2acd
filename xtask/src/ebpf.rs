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
    step.run("building the eBPF program")?;

    let built = root
        .join("elb-ebpf/target")
        .join(TARGET)
        .join(profile)
        .join("elb");
    let object = object_path(root);
    std::fs::create_dir_all(object.parent().context("object path has a parent")?)?;
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    eprintln!("xtask: eBPF object: {}", object.display());
    Ok(object)
}
