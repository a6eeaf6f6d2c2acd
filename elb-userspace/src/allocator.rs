//! The process's allocator, and how soon it gives freed memory back.

use libmimalloc_sys::{mi_option_set, mi_option_t};

// Many small, short-lived allocations per request (headers, bodies):
// mimalloc handles them with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v2 and v3 alike).
/// libmimalloc-sys names its neighbour but not this one; the tests below
/// tie the number to it and to the option's default.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// The variable with which an operator sets the purge delay themselves.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Returns freed pages to the OS at once instead of after mimalloc's delay
/// (1 s by default, and only acted on at a later allocation).
///
/// With the default delay, a burst (a fault, then every client reconnecting)
/// left a 12 MiB RSS step that took minutes to fall, and the 10-minute soak
/// failed its +5% RSS bound; with immediate purging RSS follows the live
/// heap (BENCHMARKS.md, "Soak"). An operator's `MIMALLOC_PURGE_DELAY` wins.
pub fn return_freed_pages_promptly() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: sets one integer option; mimalloc reads options atomically
    // and allows changing this one at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::{mi_option_get, mi_option_use_numa_nodes};

    #[test]
    fn purge_delay_is_the_option_before_its_named_neighbour() {
        assert_eq!(MI_OPTION_PURGE_DELAY + 1, mi_option_use_numa_nodes);
    }

    #[test]
    fn freed_pages_are_purged_at_once_unless_the_operator_says_otherwise() {
        // SAFETY: reads one integer option.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        return_freed_pages_promptly();
        let after = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            assert_eq!(after, before);
        } else {
            // mimalloc v3's default (options.c; mimalloc.h still says 10).
            assert_eq!(before, 1000, "not the purge delay's default");
            assert_eq!(after, 0);
        }
    }
}
