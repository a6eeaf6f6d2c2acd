//! Logging a limit once per episode rather than once per refusal.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// An episode starts with the first refusal and ends when the limit has
/// room again; the caller logs at both ends.
#[derive(Debug, Default)]
pub struct Episode {
    open: AtomicBool,
    refused: AtomicU64,
}

impl Episode {
    /// Counts a refusal; true for the one that starts an episode.
    pub fn refuse(&self) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// The limit has room again: the refusals of the episode that ends
    /// now, or None if none was open. One load when none is (the usual
    /// case on every connection close).
    pub fn room(&self) -> Option<u64> {
        if !self.open.load(Ordering::Acquire) || !self.open.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.refused.swap(0, Ordering::Relaxed))
    }
}

/// For events with no "room again" moment (a request that came around a
/// loop): the first one logs, then at most one per `interval`, with the
/// count since.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    since: AtomicU64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            since: AtomicU64::new(0),
        }
    }

    /// Counts an event; Some(events since the last log) when this one logs.
    pub fn event(&self, now: Instant) -> Option<u64> {
        let count = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            return None;
        }
        *last = Some(now);
        self.since.fetch_sub(count, Ordering::Relaxed);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_logs_at_its_start_and_end() {
        let episode = Episode::default();
        assert_eq!(episode.room(), None, "no episode yet");
        assert!(episode.refuse());
        assert!(!episode.refuse());
        assert!(!episode.refuse());
        assert_eq!(episode.room(), Some(3));
        assert_eq!(episode.room(), None);
        assert!(episode.refuse(), "a new episode");
        assert_eq!(episode.room(), Some(1));
    }

    #[test]
    fn a_throttle_logs_once_per_interval() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(throttle.event(start), Some(1));
        assert_eq!(throttle.event(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.event(start + Duration::from_secs(2)), None);
        assert_eq!(throttle.event(start + Duration::from_secs(61)), Some(3));
    }
}
