//! One elb per ELB name on a host: two daemons sharing pinned maps and etcd
//! state under one name would fight over them, so the second one refuses to
//! start instead.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
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
         stop it or choose another --name"
    )]
    Held { path: PathBuf, holder: String },
}

/// An exclusive `flock` on `<dir>/<name>.lock`, released when dropped (and by
/// the kernel if the process dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
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
        file.set_len(0).map_err(open_err)?;
        file.rewind().map_err(open_err)?;
        write!(file, "{}", std::process::id()).map_err(open_err)?;
        Ok(Self { _file: file })
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
}
