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
    pub fn refuses(&self, addr: IpAddr) -> bool {
        let denied = self.deny.load().denies(addr);
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
}
