//! What the data planes read per server on every pick: may it take new
//! requests or flows, at what share of its weight (slow start), and a token
//! that ends its in-flight requests when its drain is over. Written only by
//! the registry; atomics, so a pick never takes the registry's lock.
use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use tokio_util::sync::CancellationToken;

/// Full weight, in thousandths.
pub const FULL_WEIGHT: u32 = 1000;

#[derive(Debug)]
pub struct ServerGate {
    routable: AtomicBool,
    /// The upstream has a policy: the server drains when it leaves, and
    /// its requests are cut when the drain ends.
    drainable: AtomicBool,
    weight_permille: AtomicU32,
    /// Replaced when a drained server comes back (a token cannot be reset).
    cut: Mutex<CancellationToken>,
}

impl Default for ServerGate {
    fn default() -> Self {
        Self {
            routable: AtomicBool::new(true),
            drainable: AtomicBool::new(false),
            weight_permille: AtomicU32::new(FULL_WEIGHT),
            cut: Mutex::new(CancellationToken::new()),
        }
    }
}

impl ServerGate {
    /// May the server get new requests (L7) or new flows (L4)?
    pub fn routable(&self) -> bool {
        self.routable.load(Ordering::Relaxed)
    }

    /// The share of its configured weight the server gets now, in
    /// thousandths (below 1000 during slow start).
    pub fn weight_permille(&self) -> u32 {
        self.weight_permille.load(Ordering::Relaxed)
    }

    /// The token that ends this server's requests when its drain ends;
    /// None when its upstream has no policy (no drains, nothing to watch).
    pub fn drain_token(&self) -> Option<CancellationToken> {
        self.drainable
            .load(Ordering::Relaxed)
            .then(|| self.cut_token())
    }

    /// Cancelled when the server's drain ends: requests still running on it
    /// are cut then.
    pub fn cut_token(&self) -> CancellationToken {
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, routable: bool, weight_permille: u32) -> bool {
        let was_routable = self.routable.swap(routable, Ordering::Relaxed);
        let was_weight = self
            .weight_permille
            .swap(weight_permille, Ordering::Relaxed);
        was_routable != routable || was_weight != weight_permille
    }

    pub(super) fn set_drainable(&self, drainable: bool) {
        self.drainable.store(drainable, Ordering::Relaxed);
    }

    pub(super) fn cut(&self) {
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }

    /// A fresh token for a server that serves again after a cut.
    pub(super) fn renew(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        if cut.is_cancelled() {
            *cut = CancellationToken::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_server_gets_a_fresh_token_when_it_serves_again() {
        let gate = ServerGate::default();
        let before = gate.cut_token();
        gate.cut();
        assert!(before.is_cancelled());
        gate.renew();
        assert!(!gate.cut_token().is_cancelled());
    }
}
