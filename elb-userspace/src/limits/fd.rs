//! `RLIMIT_NOFILE`: raised to its hard limit at start, as nginx's
//! `worker_rlimit_nofile` and HAProxy do, so the budgets can be large.
use std::io;

/// The soft and hard limits after raising the soft one to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft fd limit to the hard limit (or to `fs.nr_open` when the
/// hard limit is "unlimited", which the kernel refuses for this resource).
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        nr_open().unwrap_or(before)
    } else {
        limit.rlim_max
    };
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = target;
    }
    Ok(NofileLimit {
        before,
        now: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise_nofile().expect("raise");
        assert!(limit.now >= limit.before);
        if limit.hard != libc::RLIM_INFINITY {
            assert_eq!(limit.now, limit.hard);
        }
    }
}
