//! `cargo xtask dist`: a release tarball, `target/dist/elb-<version>-<arch>-linux.tar.gz`,
//! holding the binary (the XDP object is embedded), the systemd unit, the
//! default configuration and the README, laid out as they install:
//!
//! ```text
//! elb/bin/elb
//! elb/lib/systemd/system/elb.service
//! elb/etc/elb/elb.env
//! elb/share/doc/elb/README.md
//! ```
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::Step;

/// Where each shipped file comes from (relative to the workspace root) and
/// where it goes in the tarball.
pub fn layout() -> [(&'static str, &'static str); 4] {
    [
        ("target/release/elb", "elb/bin/elb"),
        ("dist/elb.service", "elb/lib/systemd/system/elb.service"),
        ("dist/elb.env", "elb/etc/elb/elb.env"),
        ("README.md", "elb/share/doc/elb/README.md"),
    ]
}

pub fn run(root: &Path) -> Result<PathBuf> {
    crate::build_release_elb(root)?;
    let staging = root.join("target/dist");
    let tree = staging.join("elb");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("clearing {}", tree.display()))?;
    }
    for (from, to) in layout() {
        let (from, to) = (root.join(from), staging.join(to));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    // The release profile keeps debug info (benches profile it); the
    // shipped binary does not need it.
    let binary = staging.join("elb/bin/elb");
    Step::new("strip")
        .args(["--strip-debug"])
        .args([binary.as_os_str()])
        .run("stripping debug info from the binary")?;
    let version = env!("CARGO_PKG_VERSION");
    let tarball = staging.join(format!(
        "elb-{version}-{}-linux.tar.gz",
        std::env::consts::ARCH
    ));
    Step::new("tar")
        .args(["--owner=0", "--group=0", "-czf"])
        .args([tarball.as_os_str()])
        .args(["-C"])
        .args([staging.as_os_str()])
        .args(["elb"])
        .run("packing the tarball")?;
    eprintln!("xtask: dist: {}", tarball.display());
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_but_the_binary_is_in_the_checkout() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (from, to) in layout() {
            assert!(to.starts_with("elb/"), "{to}");
            if from != "target/release/elb" {
                assert!(root.join(from).is_file(), "{from} is missing");
            }
        }
    }
}
