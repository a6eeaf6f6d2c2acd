//! The control plane's state as the configuration service and the etcd
//! sync see it: store connection, applied revision, last apply, rejected
//! documents.
use std::{
    sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

#[derive(Debug, Default)]
pub struct ControlPlane {
    store_connected: AtomicBool,
    applied_revision: AtomicI64,
    /// Milliseconds since the epoch; 0 before the first apply.
    last_apply_ms: AtomicU64,
    rejected: AtomicU64,
}

/// A point-in-time copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControlState {
    pub store_connected: bool,
    pub applied_revision: i64,
    /// Seconds since the epoch, `None` before the first apply.
    pub last_apply_seconds: Option<f64>,
    pub rejected_documents: u64,
}

impl ControlPlane {
    /// `connected`: the store's state at start (a file is always there).
    pub fn new(connected: bool) -> Self {
        let control = Self::default();
        control.set_connected(connected);
        control
    }

    pub fn set_connected(&self, connected: bool) {
        self.store_connected.store(connected, Ordering::Relaxed);
    }

    /// A configuration change of `revision` was applied now, with
    /// `rejected` stored documents skipped as invalid.
    pub fn applied(&self, revision: i64, rejected: usize) {
        self.applied_revision.store(revision, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_apply_ms.store(now, Ordering::Relaxed);
        self.rejected.fetch_add(
            u64::try_from(rejected).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn state(&self) -> ControlState {
        let last = self.last_apply_ms.load(Ordering::Relaxed);
        ControlState {
            store_connected: self.store_connected.load(Ordering::Relaxed),
            applied_revision: self.applied_revision.load(Ordering::Relaxed),
            last_apply_seconds: (last > 0).then(|| last as f64 / 1000.0),
            rejected_documents: self.rejected.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_set_the_revision_and_time_and_add_up_rejections() {
        let control = ControlPlane::new(false);
        assert_eq!(control.state().last_apply_seconds, None);
        control.applied(7, 2);
        control.applied(9, 1);
        control.set_connected(true);
        let state = control.state();
        assert!(state.store_connected);
        assert_eq!(state.applied_revision, 9);
        assert_eq!(state.rejected_documents, 3);
        assert!(state.last_apply_seconds.is_some_and(|t| t > 1.7e9));
    }
}
