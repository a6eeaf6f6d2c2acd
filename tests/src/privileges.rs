//! Whether the privileged tests can run here.
use std::io::Write;

/// `Ok` when running as root on a kernel with the `bpf()` system call.
pub fn root_and_bpf() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    // BPF_MAP_CREATE with an empty attribute: EINVAL means bpf() exists.
    // SAFETY: a NULL attribute with size 0 is read by nobody.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if rc == -1 && errno == Some(libc::ENOSYS) {
        return Err("the kernel has no bpf() system call".into());
    }
    Ok(())
}

/// Written to stderr directly so it shows even when the harness captures
/// test output. The test harness names each test's thread after the test.
pub fn print_skipped(why: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("unnamed test");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: needs root and BPF ({why}): {test}"
    );
}
