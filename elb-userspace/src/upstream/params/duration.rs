//! `fail_timeout` values in nginx time syntax, plus milliseconds.
//!
//! nginx (`ngx_parse_time`) accepts one or more `<number><unit>` parts with
//! units in decreasing order, each at most once: `y` (365 d), `M` (30 d), `w`,
//! `d`, `h`, `m`, `s`; a number without a unit means seconds (`10`, and as the
//! last part `1m30`). nginx refuses `ms` for `fail_timeout`, but the ERU
//! contract accepts `500ms`, so `ms` is allowed here as the smallest unit.
use std::time::Duration;

/// nginx stores `fail_timeout` as seconds in an `int32`; larger values are
/// refused there, so they are refused here too.
pub(super) const MAX_FAIL_TIMEOUT_SECS: u64 = i32::MAX as u64;
pub(super) const MAX_FAIL_TIMEOUT_TEXT: &str = "2147483647s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DurationError {
    Malformed,
    Overflow,
}

/// Units from largest to smallest; a part's unit must come after the previous
/// part's unit in this list. `ms` precedes `m` so the longer suffix wins.
const UNITS: [(&str, u64); 8] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("M", 30 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("ms", 1),
    ("m", 60 * 1000),
    ("s", 1000),
];

/// Position of each unit in size order (`ms` is the smallest although it is
/// listed before `m` for matching).
fn rank(unit: &str) -> u8 {
    match unit {
        "y" => 0,
        "M" => 1,
        "w" => 2,
        "d" => 3,
        "h" => 4,
        "m" => 5,
        "s" => 6,
        _ => 7, // "ms"
    }
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Malformed);
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut smallest_rank_so_far: Option<u8> = None;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(DurationError::Malformed);
        }
        let (digits, after) = rest.split_at(digits_len);
        let value = parse_digits(digits).ok_or(DurationError::Overflow)?;
        // A trailing bare number counts as seconds, as in nginx.
        let (unit, unit_ms, unit_len) = if after.is_empty() {
            ("s", 1000, 0)
        } else {
            let &(unit, unit_ms) = UNITS
                .iter()
                .find(|(unit, _)| after.starts_with(unit))
                .ok_or(DurationError::Malformed)?;
            (unit, unit_ms, unit.len())
        };
        let unit_rank = rank(unit);
        if smallest_rank_so_far.is_some_and(|previous| unit_rank <= previous) {
            return Err(DurationError::Malformed);
        }
        smallest_rank_so_far = Some(unit_rank);
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or(DurationError::Overflow)?;
        rest = &after[unit_len..];
    }
    if total_ms > MAX_FAIL_TIMEOUT_SECS * 1000 {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_millis(total_ms))
}

fn parse_digits(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// Canonical text: whole seconds as `Ns`, anything else as `Nms` (sub-millisecond
/// precision cannot be written and is truncated).
pub(super) fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}
