//! Whether elb is in touch with its configuration store, for the status
//! page: etcd's watch loop reports each success and failure here.
use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct StoreLink {
    state: Mutex<LinkState>,
}

/// A copy of the link's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// The last failure, while not connected.
    pub error: Option<String>,
    pub since: Instant,
}

impl StoreLink {
    pub fn new(connected: bool) -> Self {
        Self {
            state: Mutex::new(LinkState {
                connected,
                error: None,
                since: Instant::now(),
            }),
        }
    }

    pub fn up(&self) {
        let mut state = self.lock();
        if !state.connected {
            *state = LinkState {
                connected: true,
                error: None,
                since: Instant::now(),
            };
        }
    }

    pub fn down(&self, error: impl ToString) {
        let mut state = self.lock();
        if state.connected {
            state.connected = false;
            state.since = Instant::now();
        }
        state.error = Some(error.to_string());
    }

    pub fn get(&self) -> LinkState {
        self.lock().clone()
    }

    /// How long the link has been in its state.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.lock().since)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_keeps_the_latest_error_and_up_clears_it() {
        let link = StoreLink::new(false);
        link.down("connect error");
        let first = link.get();
        assert!(!first.connected);
        link.down("timeout");
        let second = link.get();
        assert_eq!(second.error.as_deref(), Some("timeout"));
        assert_eq!(second.since, first.since, "still the same outage");
        link.up();
        let up = link.get();
        assert!(up.connected);
        assert_eq!(up.error, None);
    }
}
