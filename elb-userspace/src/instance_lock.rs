//! One elb per ELB name on a host: two daemons sharing pinned maps and etcd
//! state under one name would fight over them, so the second one refuses to
//! start instead.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another elb with this name is already running (pid {holder}, lock file {path}); \
         stop it, choose another --name, or take over with `elb run --takeover`"
    )]
    Held { path: PathBuf, holder: String },
}

/// An exclusive `flock` on `<dir>/<name>.lock`, released when dropped (and by
/// the kernel if the process dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
}

impl InstanceLock {
    pub fn acquire(dir: &Path, name: &str) -> Result<Self, LockError> {
        let path = dir.join(format!("{name}.lock"));
        let open_err = |source| LockError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        // SAFETY: the fd is owned by `file` and open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    path,
                    holder: holder.trim().to_owned(),
                });
            }
            return Err(open_err(err));
        }
        let lock = Self { file };
        lock.write_pid().map_err(open_err)?;
        Ok(lock)
    }

    /// The lock handed over by the elb this one takes over: the same open
    /// file, so the same `flock` (see [`crate::takeover`]).
    pub fn inherited(file: OwnedFd) -> Self {
        Self {
            file: File::from(file),
        }
    }

    /// Writes this process's id into the file, for the "already running"
    /// message.
    pub fn write_pid(&self) -> io::Result<()> {
        let mut file = &self.file;
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())
    }

    /// A duplicate of the locked file, to hand over.
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("elb-lock-test-{}", std::process::id()));
        let first = InstanceLock::acquire(&dir, "ELB").expect("first lock");
        match InstanceLock::acquire(&dir, "ELB") {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            other => panic!("expected Held, got {other:?}"),
        }
        InstanceLock::acquire(&dir, "OTHER").expect("other names are independent");
        drop(first);
        InstanceLock::acquire(&dir, "ELB").expect("lock is free again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_handed_over_lock_stays_held_when_the_first_holder_exits() {
        let dir = std::env::temp_dir().join(format!("elb-lock-handover-{}", std::process::id()));
        let first = InstanceLock::acquire(&dir, "ELB").expect("first lock");
        let second = InstanceLock::inherited(first.duplicate().expect("dup"));
        drop(first);
        assert!(matches!(
            InstanceLock::acquire(&dir, "ELB"),
            Err(LockError::Held { .. })
        ));
        drop(second);
        InstanceLock::acquire(&dir, "ELB").expect("lock is free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
