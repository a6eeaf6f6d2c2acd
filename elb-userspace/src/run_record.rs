//! `<run-dir>/<name>.admin.json`: where a running elb's admin API answers,
//! so `elb status --name NAME` finds it. Written once elb listens, removed
//! when it stops (only if it is still this process's: a successor may have
//! written its own).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pid: u32,
    /// An address of the admin API reachable from this host.
    pub admin: SocketAddr,
    /// The bpffs root it pins under.
    pub bpffs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a run record: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub fn path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.admin.json"))
}

/// Where a client on this host reaches a listener bound to `listen`: the
/// loopback address of its family for a wildcard bind.
pub fn local_admin_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

impl RunRecord {
    /// Writes the record whole (a temporary file renamed over it).
    pub fn write(&self, run_dir: &Path, name: &str) -> Result<(), RecordError> {
        let target = path(run_dir, name);
        let temp = run_dir.join(format!(".{name}.admin.json.{}", self.pid));
        let error = |source| RecordError::Write {
            path: target.clone(),
            source,
        };
        let text = serde_json::to_string(self).map_err(|e| error(io::Error::other(e)))?;
        std::fs::write(&temp, text).map_err(error)?;
        std::fs::rename(&temp, &target).map_err(error)
    }

    /// None when there is no record (no elb of this name has run here, or
    /// it stopped cleanly).
    pub fn read(run_dir: &Path, name: &str) -> Result<Option<Self>, RecordError> {
        let path = path(run_dir, name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RecordError::Invalid {
                path,
                message: e.to_string(),
            })
    }

    /// Removes the record if it is still this process's.
    pub fn remove_own(run_dir: &Path, name: &str) {
        if let Ok(Some(record)) = Self::read(run_dir, name)
            && record.pid == std::process::id()
        {
            let _ = std::fs::remove_file(path(run_dir, name));
        }
    }

    /// Whether the recorded process still exists (a crash leaves the file).
    pub fn process_alive(&self) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: signal 0 checks for the process without sending anything.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_on_loopback() {
        let cases = [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("[::]:8080", "[::1]:8080"),
            ("10.1.2.3:80", "10.1.2.3:80"),
            ("[fe80::1]:80", "[fe80::1]:80"),
        ];
        for (listen, admin) in cases {
            let listen: SocketAddr = listen.parse().expect("addr");
            assert_eq!(local_admin_address(listen).to_string(), admin);
        }
    }

    #[test]
    fn written_read_and_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(RunRecord::read(dir.path(), "ELB").expect("read"), None);
        let mine = RunRecord {
            pid: std::process::id(),
            admin: "127.0.0.1:8080".parse().expect("addr"),
            bpffs: "/sys/fs/bpf".into(),
        };
        mine.write(dir.path(), "ELB").expect("write");
        assert_eq!(
            RunRecord::read(dir.path(), "ELB").expect("read"),
            Some(mine.clone())
        );
        assert!(mine.process_alive());
        let other = RunRecord {
            pid: mine.pid + 1,
            ..mine.clone()
        };
        other.write(dir.path(), "OTHER").expect("write");
        RunRecord::remove_own(dir.path(), "OTHER");
        assert!(path(dir.path(), "OTHER").exists(), "not ours: kept");
        RunRecord::remove_own(dir.path(), "ELB");
        assert!(!path(dir.path(), "ELB").exists());
        std::fs::write(path(dir.path(), "BAD"), "{").expect("write");
        let error = RunRecord::read(dir.path(), "BAD").expect_err("invalid");
        assert!(
            error
                .to_string()
                .contains("BAD.admin.json is not a run record")
        );
    }
}
