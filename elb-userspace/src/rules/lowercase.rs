//! ASCII lower-casing of the User-Agent without allocating per request.
use std::cell::RefCell;

/// Scratch buffers larger than this are dropped after use, so one huge header
/// does not pin memory on a worker thread for good.
const SCRATCH_KEEP_LIMIT: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Calls `use_lowered` with `input` ASCII-lower-cased (as Lua's
/// `string.lower`). Borrows `input` when it has no upper-case letter, else
/// reuses a per-thread buffer; allocates only if that buffer is unavailable.
pub(super) fn with_ascii_lowercase<R>(input: &[u8], use_lowered: impl Fn(&[u8]) -> R) -> R {
    if !input.iter().any(u8::is_ascii_uppercase) {
        return use_lowered(input);
    }
    let from_scratch = SCRATCH.try_with(|cell| {
        // Fails only on re-entry from `use_lowered`, which rule evaluation never does.
        let mut scratch = cell.try_borrow_mut().ok()?;
        scratch.clear();
        scratch.extend(input.iter().map(u8::to_ascii_lowercase));
        let result = use_lowered(&scratch);
        if scratch.capacity() > SCRATCH_KEEP_LIMIT {
            *scratch = Vec::new();
        }
        Some(result)
    });
    match from_scratch {
        Ok(Some(result)) => result,
        // Thread-local storage is gone (thread exit) or busy.
        _ => use_lowered(&input.to_ascii_lowercase()),
    }
}
