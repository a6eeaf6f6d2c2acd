//! The deny-list for the HTTP listeners while the userspace data plane is
//! active: what the XDP program does for the L7 ports, done at accept.
use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

use super::deny::DenyList;
use crate::cidr::canonical;

/// Shared with the fallback, which swaps in every new deny-list.
#[derive(Clone)]
pub struct ListenerGuard {
    deny: Arc<ArcSwap<DenyList>>,
    refused: Arc<AtomicU64>,
}

impl ListenerGuard {
    pub(super) fn new(deny: Arc<ArcSwap<DenyList>>) -> Self {
        Self {
            deny,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether a client at `addr` must be refused; counts each refusal.
    /// Loopback clients never are: XDP does not see them either, and an
    /// entry such as 0.0.0.0/0 must not lock the node's own admin out.
    pub fn refuses(&self, addr: IpAddr) -> bool {
        let denied = !canonical(addr).is_loopback() && self.deny.load().denies(addr);
        if denied {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        denied
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_denied_clients_and_counts_them() {
        let deny = Arc::new(ArcSwap::from_pointee(DenyList::default()));
        let guard = ListenerGuard::new(Arc::clone(&deny));
        let client: IpAddr = "10.50.0.2".parse().expect("ip");
        assert!(!guard.refuses(client));
        deny.store(Arc::new(DenyList::new(&["10.50.0.0/24"
            .parse()
            .expect("cidr")])));
        assert!(guard.refuses(client));
        assert!(!guard.refuses("10.51.0.2".parse().expect("ip")));
        assert_eq!(guard.refused(), 1);
    }

    #[test]
    fn never_refuses_loopback_clients() {
        let all: Vec<_> = ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|c| c.parse().expect("cidr"))
            .collect();
        let guard = ListenerGuard::new(Arc::new(ArcSwap::from_pointee(DenyList::new(&all))));
        for loopback in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(!guard.refuses(loopback.parse().expect("ip")), "{loopback}");
        }
        assert!(guard.refuses("192.0.2.1".parse().expect("ip")));
        assert!(guard.refuses("2001:db8::1".parse().expect("ip")));
    }
}
