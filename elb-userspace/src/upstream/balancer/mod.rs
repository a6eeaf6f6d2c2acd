//! Picks the server for each request attempt: nginx's smooth weighted round
//! robin over the servers that are not `down` and not out by passive health
//! (see `peer.rs`), backups only when no primary is left.
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::{
    targets::{ServerGate, gate::FULL_WEIGHT},
    upstream::ServerParams,
};

mod peer;

use peer::PeerState;

/// One upstream server: `host:port` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub params: ServerParams,
}

impl Server {
    pub fn new(name: impl Into<String>, params: ServerParams) -> Self {
        Self {
            name: name.into(),
            params,
        }
    }
}

/// The servers of one upstream with their balancing state. Server indices
/// are positions in the `servers` given to [`Balancer::new`].
#[derive(Debug)]
pub struct Balancer {
    servers: Vec<Server>,
    /// Same order: whether each server may take new requests (health,
    /// drain, zone) and its slow-start share, from the target registry.
    gates: Vec<Arc<ServerGate>>,
    /// One entry per server, same order; one lock so a pick sees and updates
    /// every peer consistently, as nginx's per-upstream lock does.
    peers: Mutex<Vec<PeerState>>,
}

impl Balancer {
    /// A balancer whose servers are always routable (no target registry).
    pub fn new(servers: Vec<Server>) -> Self {
        let gates = servers.iter().map(|_| Arc::default()).collect();
        Self::with_gates(servers, gates)
    }

    /// `gates[i]` belongs to `servers[i]`; a missing gate counts as
    /// routable.
    pub fn with_gates(servers: Vec<Server>, mut gates: Vec<Arc<ServerGate>>) -> Self {
        gates.resize_with(servers.len(), Arc::default);
        let peers = servers
            .iter()
            .map(|server| PeerState::new(&server.params))
            .collect();
        Self {
            servers,
            gates,
            peers: Mutex::new(peers),
        }
    }

    /// The gate of server `index`.
    pub fn gate(&self, index: usize) -> Option<&Arc<ServerGate>> {
        self.gates.get(index)
    }

    pub fn gates(&self) -> &[Arc<ServerGate>] {
        &self.gates
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Next server by smooth weighted round robin among live primaries not in
    /// `tried`; backups only when no primary is live (and not tried); None
    /// when nothing is left (the proxy answers 502).
    pub fn pick(&self, now: Instant, tried: &[usize]) -> Option<usize> {
        let mut peers = self.lock_peers();
        self.pick_in_tier(&mut peers, now, tried, false)
            .or_else(|| self.pick_in_tier(&mut peers, now, tried, true))
    }

    /// `ngx_http_upstream_get_peer` over the primaries or over the backups.
    fn pick_in_tier(
        &self,
        peers: &mut [PeerState],
        now: Instant,
        tried: &[usize],
        backup: bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, i64)> = None;
        let mut total: i64 = 0;
        // While a server ramps up (slow start), every weight counts in
        // thousandths, so even a weight of 1 can be scaled down.
        let ramping = self
            .gates
            .iter()
            .any(|gate| gate.weight_permille() < FULL_WEIGHT);
        let candidates = self.servers.iter().zip(&self.gates).zip(peers.iter_mut());
        for (index, ((server, gate), peer)) in candidates.enumerate() {
            let params = &server.params;
            if params.backup != backup
                || params.down
                || !gate.routable()
                || tried.contains(&index)
                || !peer.is_available(params, now)
            {
                continue;
            }
            let (current, added) = if ramping {
                let weight = u64::from(params.weight.max(1)) * u64::from(gate.weight_permille());
                peer.accumulate_fixed(i64::try_from(weight).unwrap_or(i64::MAX).max(1))
            } else {
                peer.accumulate(i64::from(params.weight))
            };
            total = total.saturating_add(added);
            // Strictly greater: on a tie the earlier server wins, as in nginx.
            if best.is_none_or(|(_, best_current)| current > best_current) {
                best = Some((index, current));
            }
        }
        let (index, _) = best?;
        let params = &self.servers.get(index)?.params;
        peers.get_mut(index)?.take_pick(total, params, now);
        Some(index)
    }

    /// The attempt on `index` failed (connect error, timeout, 502/504).
    /// Out-of-range indices are ignored.
    pub fn report_failure(&self, index: usize, now: Instant) {
        let Some(server) = self.servers.get(index) else {
            return;
        };
        let (taken_out, fails) = {
            let mut peers = self.lock_peers();
            let Some(peer) = peers.get_mut(index) else {
                return;
            };
            (peer.record_failure(&server.params, now), peer.fails())
        };
        if taken_out {
            tracing::warn!(
                server = %server.name,
                fails,
                fail_timeout = ?server.params.fail_timeout,
                "upstream server temporarily disabled"
            );
        }
    }

    /// The attempt on `index` succeeded. Out-of-range indices are ignored.
    pub fn report_success(&self, index: usize) {
        if let Some(peer) = self.lock_peers().get_mut(index) {
            peer.record_success();
        }
    }

    /// Whether `pick` could choose `index` now, ignoring `tried` and the
    /// primary/backup tiers: not `down` and not out by passive health.
    pub fn is_live(&self, index: usize, now: Instant) -> bool {
        let Some(server) = self.servers.get(index) else {
            return false;
        };
        !server.params.down
            && self.gates.get(index).is_none_or(|gate| gate.routable())
            && self
                .lock_peers()
                .get(index)
                .is_some_and(|peer| peer.is_available(&server.params, now))
    }

    /// The state is only counters and timestamps, each update leaves it
    /// consistent, so a panic elsewhere while holding the lock is no reason
    /// to stop balancing.
    fn lock_peers(&self) -> MutexGuard<'_, Vec<PeerState>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod poison_tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_balancing() {
        let balancer = Balancer::new(vec![Server::new("a:1", ServerParams::default())]);
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = balancer.peers.lock();
                    panic!("poison the balancer lock");
                })
                .join()
        });
        assert!(result.is_err());
        assert!(balancer.peers.is_poisoned());
        let now = Instant::now();
        assert_eq!(balancer.pick(now, &[]), Some(0));
        balancer.report_failure(0, now);
        assert!(!balancer.is_live(0, now));
        balancer.report_success(0);
    }
}
