//! `--max-connections`: open client connections, all workers together.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::Episode;

/// Refused connections that may be open at once while their 503 is
/// written (within [`super::RESERVED_FDS`]); beyond, they are just closed.
const MAX_REFUSING: usize = 64;

#[derive(Debug)]
pub struct ClientLimit {
    max: usize,
    open: AtomicUsize,
    episode: Episode,
    refusing: AtomicUsize,
}

/// A refused connection that is being answered 503.
#[derive(Debug)]
pub struct RefusalPermit(Arc<ClientLimit>);

impl Drop for RefusalPermit {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open client connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ClientPermit(Arc<ClientLimit>);

impl ClientLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
            episode: Episode::default(),
            refusing: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more connection, or None at the limit (the first
    /// refusal of an episode is logged).
    pub fn try_acquire(self: &Arc<Self>) -> Option<ClientPermit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before < self.max {
            return Some(ClientPermit(Arc::clone(self)));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.episode.refuse() {
            tracing::warn!(
                max = self.max,
                "client connections reached --max-connections: new ones get 503 until some close"
            );
        }
        None
    }
}

impl ClientLimit {
    /// Room to answer one refused connection, if not too many are.
    pub fn try_refuse(self: &Arc<Self>) -> Option<RefusalPermit> {
        if self.refusing.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING {
            return Some(RefusalPermit(Arc::clone(self)));
        }
        self.refusing.fetch_sub(1, Ordering::AcqRel);
        None
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let limit = &self.0;
        let open = limit.open.fetch_sub(1, Ordering::AcqRel) - 1;
        // Hysteresis: the episode ends once a tenth of the slots are free,
        // not on every close at the limit.
        if open <= low_water(limit.max)
            && let Some(refused) = limit.episode.room()
        {
            tracing::info!(
                open,
                max = limit.max,
                refused,
                "client connections back under --max-connections"
            );
        }
    }
}

/// Where an episode at `max` ends.
pub(super) fn low_water(max: usize) -> usize {
    max - max.div_ceil(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let limit = ClientLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        assert!(limit.try_acquire().is_none());
        drop(a);
        let c = limit.try_acquire().expect("a slot came back");
        drop((b, c));
        assert_eq!(limit.open.load(Ordering::Relaxed), 0);
        assert_eq!(low_water(1), 0);
        assert_eq!(low_water(100), 90);
    }
}
