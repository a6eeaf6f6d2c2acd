//! Makes sure a BPF filesystem is mounted where elb pins its maps.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use thiserror::Error;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: libc::c_long = 0xCAFE_4A11;

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error("cannot inspect {path}")]
    Inspect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot mount bpffs at {path}: permission denied; run elb as root or with CAP_SYS_ADMIN, \
         or mount it first with `mount -t bpf bpf {path}`"
    )]
    MountNotPermitted { path: String },
    #[error("cannot mount bpffs at {path}")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// True when `path` is the root of a mounted bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let c_path = c_path(path)?;
    // SAFETY: c_path is a valid NUL-terminated string, stat is a plain out-param.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(BpffsError::Inspect {
            path: path.display().to_string(),
            source: err,
        });
    }
    Ok(stat.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// Mounts bpffs at `path` unless one is already there.
pub fn ensure_mounted(path: &Path) -> Result<(), BpffsError> {
    if is_bpffs(path)? {
        return Ok(());
    }
    let display = path.display().to_string();
    std::fs::create_dir_all(path).map_err(|source| BpffsError::Mount {
        path: display.clone(),
        source,
    })?;
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) => BpffsError::MountNotPermitted { path: display },
            _ => BpffsError::Mount {
                path: display,
                source: err,
            },
        });
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, BpffsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| BpffsError::Inspect {
        path: path.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/")).expect("statfs on /"));
    }

    #[test]
    fn a_missing_path_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/nonexistent/elb/bpffs")).expect("statfs"));
    }
}
