//! The process's allocator, and the pages under it.

// Many small, short-lived allocations per request (headers, bodies):
// mimalloc handles them with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variable with which an operator hands THP back to mimalloc.
const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process, unless the operator
/// set `MIMALLOC_ALLOW_THP` (mimalloc then decides).
///
/// With THP (`always` on many kernels) the kernel backs elb's small, busy
/// heap with 2 MiB pages and khugepaged fills them in later: the 10-minute
/// soak's RSS was 47 MiB and stepped up by 10 MiB at fault bursts, failing
/// its +5% bound; without THP it is 19 MiB and flat (BENCHMARKS.md,
/// "Soak"). Redis and MongoDB advise the same for the same reason.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    if std::env::var_os(ALLOW_THP_ENV).is_some() {
        return Ok(());
    }
    // SAFETY: PR_SET_THP_DISABLE takes integers only.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_gets_no_transparent_huge_pages() {
        if std::env::var_os(ALLOW_THP_ENV).is_some() {
            return;
        }
        disable_transparent_huge_pages().expect("prctl(PR_SET_THP_DISABLE)");
        // SAFETY: PR_GET_THP_DISABLE takes integers only.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }
}
