//! The pinned state of one elb under bpffs, and removing it (`elb teardown`).
//!
//! Layout: `<bpffs>/elb/<name>/<map>` for every map in `maps::ALL`, and
//! `<bpffs>/elb/<name>/links/<interface>` for every XDP attachment. The
//! pins outlive the process, which is what keeps the data plane forwarding
//! across a restart.
use std::{
    io,
    path::{Path, PathBuf},
};

use elb_common::maps;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PinError {
    #[error("{action} {path}: permission denied. elb needs root, or CAP_BPF + CAP_NET_ADMIN")]
    NotPermitted { action: &'static str, path: PathBuf },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} holds files elb did not create ({files}); they were left in place, \
         remove them by hand"
    )]
    Foreign { path: PathBuf, files: String },
}

impl PinError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            return Self::NotPermitted {
                action,
                path: path.to_owned(),
            };
        }
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Where one elb's pins live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs_root: &Path, name: &str) -> Self {
        Self {
            dir: bpffs_root.join("elb").join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(interface)
    }

    /// True when a previous elb left its maps here.
    pub fn has_maps(&self) -> bool {
        maps::ALL.iter().any(|name| self.map(name).exists())
    }

    pub fn create(&self) -> Result<(), PinError> {
        let links = self.links_dir();
        std::fs::create_dir_all(&links).map_err(|e| PinError::io("creating", &links, e))
    }

    /// Interfaces with a pinned XDP link, sorted.
    pub fn pinned_links(&self) -> Result<Vec<String>, PinError> {
        let dir = self.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PinError::io("listing", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PinError::io("listing", &dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Unpins one link. The kernel detaches the program once no process
    /// holds the link either.
    pub fn unpin_link(&self, interface: &str) -> Result<(), PinError> {
        remove_file_if_present(&self.link(interface))
    }
}

/// What `teardown` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    pub detached: Vec<String>,
    pub maps_removed: usize,
}

/// Detaches every pinned link and removes every pinned map and the
/// directory. Run it only while no elb of this name is running.
pub fn teardown(layout: &PinLayout) -> Result<TeardownReport, PinError> {
    let mut report = TeardownReport::default();
    for interface in layout.pinned_links()? {
        layout.unpin_link(&interface)?;
        report.detached.push(interface);
    }
    for name in maps::ALL {
        let path = layout.map(name);
        if path.exists() {
            remove_file_if_present(&path)?;
            report.maps_removed += 1;
        }
    }
    remove_dir_if_present(&layout.links_dir())?;
    remove_dir_if_present(layout.dir())?;
    Ok(report)
}

fn remove_file_if_present(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::io("unpinning", path, e)),
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            let files = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            Err(PinError::Foreign {
                path: dir.to_owned(),
                files,
            })
        }
        Err(e) => Err(PinError::io("removing", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_elb_name_then_maps_and_links() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf"), "ELB");
        assert_eq!(layout.dir(), Path::new("/sys/fs/bpf/elb/ELB"));
        assert_eq!(
            layout.map("elb_flows"),
            PathBuf::from("/sys/fs/bpf/elb/ELB/elb_flows")
        );
        assert_eq!(
            layout.link("eth0"),
            PathBuf::from("/sys/fs/bpf/elb/ELB/links/eth0")
        );
    }

    // A plain directory stands in for bpffs: teardown only unlinks files.
    #[test]
    fn teardown_removes_known_pins_and_reports_them_plain_fs() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = PinLayout::new(root.path(), "T");
        layout.create().expect("create");
        std::fs::write(layout.map(maps::FLOWS), b"").expect("map");
        std::fs::write(layout.map(maps::SERVICES), b"").expect("map");
        std::fs::write(layout.link("veth0"), b"").expect("link");
        assert!(layout.has_maps());
        let report = teardown(&layout).expect("teardown");
        assert_eq!(
            report,
            TeardownReport {
                detached: vec!["veth0".into()],
                maps_removed: 2,
            }
        );
        assert!(!layout.dir().exists());
        assert_eq!(teardown(&layout).expect("again"), TeardownReport::default());
    }

    #[test]
    fn teardown_leaves_foreign_files_and_names_them_plain_fs() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = PinLayout::new(root.path(), "T");
        layout.create().expect("create");
        std::fs::write(layout.map(maps::FLOWS), b"").expect("map");
        std::fs::write(layout.map("someone_elses_map"), b"").expect("foreign");
        let err = teardown(&layout).expect_err("foreign file");
        assert!(err.to_string().contains("someone_elses_map"), "{err}");
        assert!(!layout.map(maps::FLOWS).exists());
        assert!(layout.map("someone_elses_map").exists());
    }
}
