//! Exponential back-off, shared by the clients that retry (Consul, EC2).
use std::time::Duration;

/// The delay before retry number `failures` (1 = after the first failure):
/// `first` doubled per failure since, at most `max`. Callers add their own
/// jitter on top.
pub fn doubling(first: Duration, max: Duration, failures: u32) -> Duration {
    first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_and_stops_at_the_max() {
        let (first, max) = (Duration::from_millis(250), Duration::from_secs(30));
        assert_eq!(doubling(first, max, 1), first);
        assert_eq!(doubling(first, max, 0), first);
        assert_eq!(doubling(first, max, 3), first * 4);
        assert_eq!(doubling(first, max, 40), max);
    }
}
