//! Finds the OS error behind a library error, so failures can be explained
//! in operator terms (missing privileges, no BPF in the kernel) instead of a
//! chain of wrapper types.
use std::error::Error;

/// The first `io::Error` errno found walking `err`'s source chain.
pub fn errno_in_chain(err: &(dyn Error + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(code) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn finds_errno_below_wrappers() {
        let err = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(errno_in_chain(&err), Some(libc::EPERM));
    }

    #[test]
    fn none_without_os_error() {
        let err = Outer(std::io::Error::other("no errno"));
        assert_eq!(errno_in_chain(&err), None);
    }
}
