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
    warn_if_pins_are_short_lived(path, private_mount_namespace());
    Ok(())
}

/// Whether this process's mount namespace is not init's (`ip netns exec`,
/// `unshare -m`, most containers): a mount made here ends with it. `None`
/// when it cannot tell (init's namespace is not readable).
fn private_mount_namespace() -> Option<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let init = std::fs::read_link("/proc/1/ns/mnt").ok()?;
    Some(own != init)
}

/// elb mounted bpffs itself: the pins live only as long as that mount.
/// One line says so, and how to fix it.
fn warn_if_pins_are_short_lived(path: &Path, private: Option<bool>) {
    if let Some(line) = short_lived_pins_warning(path, private) {
        tracing::warn!("{line}");
    }
}

/// Pure: the warning for a bpffs elb had to mount, if one is due.
fn short_lived_pins_warning(path: &Path, private: Option<bool>) -> Option<String> {
    let path = path.display();
    let whose = match private {
        Some(true) => {
            "this process's private mount namespace (ip netns exec, unshare, a container)"
        }
        Some(false) => return None,
        None => "this mount namespace (if it is a container's or ip netns exec's)",
    };
    Some(format!(
        "bpffs was not mounted at {path}, so elb mounted it in {whose}: the pinned maps and \
         XDP links live only as long as that namespace, and a restart elsewhere loses them \
         (the XDP program detaches); mount bpffs on the host (`mount -t bpf bpf {path}`) \
         and share it: `-v {path}:{path}` for a container, `nsenter --net=` instead of \
         `ip netns exec`"
    ))
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
    fn a_mount_in_a_private_namespace_is_warned_about_with_the_fix() {
        let path = Path::new("/sys/fs/bpf");
        assert_eq!(short_lived_pins_warning(path, Some(false)), None);
        for private in [Some(true), None] {
            let line = short_lived_pins_warning(path, private).expect("a warning");
            assert!(line.contains("mount -t bpf bpf /sys/fs/bpf"), "{line}");
            assert!(line.contains("-v /sys/fs/bpf:/sys/fs/bpf"), "{line}");
            assert!(!line.contains('\n'), "one line");
        }
    }

    #[test]
    fn a_missing_path_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/nonexistent/elb/bpffs")).expect("statfs"));
    }
}
