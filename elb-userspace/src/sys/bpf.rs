//! The `bpf(2)` system call, for the commands aya does not expose.
use std::io;

/// `bpf(cmd, attr, size_of::<A>())`: the call's result (a new file
/// descriptor for the commands that make one, else 0), or the OS error.
///
/// # Safety
/// `attr` must be a valid prefix of `union bpf_attr` for `cmd`, with
/// explicit zeros where the kernel checks for them, and every pointer in
/// it valid for what the kernel reads or writes through it during the call.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller's contract.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
