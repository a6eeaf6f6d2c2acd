//! A latency histogram made of atomics: recording is a bucket search over a
//! dozen constants and two relaxed adds, no lock.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds of the buckets, in seconds (the `le` labels). The last
/// bucket, `+Inf`, is implicit.
pub const BOUNDS_SECONDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in microseconds, what the request path compares.
const BOUNDS_MICROS: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// A point-in-time copy.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// `(upper bound, count in this bucket alone)`, `+Inf` last; the
    /// encoder makes them cumulative.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BOUNDS_MICROS.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let le = BOUNDS_SECONDS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((le, count));
        }
        HistogramSnapshot {
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_add_up() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(300));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.buckets[0], (0.005, 2));
        assert_eq!(snapshot.buckets[6], (0.5, 1));
        assert_eq!(snapshot.buckets[10], (10.0, 0));
        assert_eq!(snapshot.buckets[11], (f64::INFINITY, 1));
        assert!((snapshot.sum_seconds - 60.308).abs() < 1e-9);
    }

    #[test]
    fn bounds_agree() {
        for (seconds, micros) in BOUNDS_SECONDS.iter().zip(BOUNDS_MICROS) {
            assert_eq!((seconds * 1e6).round() as u64, micros);
        }
    }
}
