//! The immutable configuration every request reads. A new one is built and
//! swapped in whole on every change; in-flight requests keep the one they
//! started with.
use std::{collections::BTreeMap, sync::Arc};

use arc_swap::ArcSwap;

use super::{l4::L4Service, listener::Listener};
use crate::{
    cidr::Cidr,
    fast_map::FastMap,
    metrics::cells::{DomainCells, UpstreamCells},
    rules::CompiledRules,
    targets::ServerGate,
    tls::CertSet,
    upstream::{Balancer, Server},
};

/// One domain's compiled rules, under the name it was stored with.
pub struct DomainEntry {
    pub domain: String,
    /// The canonical name a `Host` matches (lower case, IDNA punycode).
    pub host: String,
    pub rules: CompiledRules,
    /// Its request counters; carried over when its rules change.
    pub metrics: Arc<DomainCells>,
}

/// One upstream: its servers and their balancing and health state. Kept
/// (same `Arc`) across snapshots while its definition does not change, so
/// round-robin position and failure counts survive unrelated updates.
pub struct Upstream {
    pub name: String,
    pub balancer: Balancer,
    /// Its request counters, one cell per server in balancer order.
    pub metrics: UpstreamCells,
}

impl Upstream {
    pub fn new(name: String, servers: Vec<Server>) -> Self {
        let metrics = UpstreamCells::carry(None, &[], &servers);
        Self {
            name,
            balancer: Balancer::new(servers),
            metrics,
        }
    }

    /// An upstream whose servers read their routability from `gates`
    /// (the target registry's), same order as `servers`.
    pub fn with_gates(name: String, servers: Vec<Server>, gates: Vec<Arc<ServerGate>>) -> Self {
        let metrics = UpstreamCells::carry(None, &[], &servers);
        Self {
            name,
            balancer: Balancer::with_gates(servers, gates),
            metrics,
        }
    }

    /// Takes over the counters of `previous` (the definition this one
    /// replaces): same upstream, and the servers both have.
    pub fn with_metrics_of(mut self, previous: Option<&Upstream>) -> Self {
        if let Some(previous) = previous {
            self.metrics = UpstreamCells::carry(
                Some(&previous.metrics),
                previous.servers(),
                self.balancer.servers(),
            );
        }
        self
    }

    pub fn servers(&self) -> &[Server] {
        self.balancer.servers()
    }

    pub fn gates(&self) -> &[Arc<ServerGate>] {
        self.balancer.gates()
    }
}

#[derive(Default)]
pub struct Snapshot {
    /// Keyed by the lower-cased domain: Host matching is case-insensitive.
    domains: FastMap<String, Arc<DomainEntry>>,
    upstreams: FastMap<String, Arc<Upstream>>,
    /// Shared with the manager and between snapshots while unchanged, so
    /// publishing an L7 change does not copy the (possibly large) L4 state.
    services: Arc<BTreeMap<String, Arc<L4Service>>>,
    acl: Arc<[Cidr]>,
    /// The usable certificates; shared between snapshots while unchanged.
    certs: Arc<CertSet>,
    /// The L7 listeners from the store (not `--listen`), shared like
    /// `services`.
    listeners: Arc<BTreeMap<String, Arc<Listener>>>,
}

/// Where the current snapshot is published.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn new<'a>(
        domains: impl IntoIterator<Item = &'a Arc<DomainEntry>>,
        upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>,
    ) -> Self {
        Self {
            domains: by_host(domains),
            upstreams: upstreams
                .into_iter()
                .map(|upstream| (upstream.name.clone(), Arc::clone(upstream)))
                .collect(),
            services: Arc::default(),
            acl: Arc::default(),
            certs: Arc::default(),
            listeners: Arc::default(),
        }
    }

    /// Adds the certificates TLS handshakes choose from.
    pub fn with_certs(mut self, certs: Arc<CertSet>) -> Self {
        self.certs = certs;
        self
    }

    pub fn certs(&self) -> &Arc<CertSet> {
        &self.certs
    }

    /// Adds the L4 services and the deny-list (sorted, deduplicated).
    pub fn with_l4(
        mut self,
        services: Arc<BTreeMap<String, Arc<L4Service>>>,
        acl: Arc<[Cidr]>,
    ) -> Self {
        self.services = services;
        self.acl = acl;
        self
    }

    /// Adds the configured L7 listeners.
    pub fn with_listeners(mut self, listeners: Arc<BTreeMap<String, Arc<Listener>>>) -> Self {
        self.listeners = listeners;
        self
    }

    /// The configured listeners by name; the same allocation until one
    /// changes.
    pub fn listeners(&self) -> &Arc<BTreeMap<String, Arc<Listener>>> {
        &self.listeners
    }

    /// The domain for a Host header: the exact value first, then without
    /// `:port`, both compared case-insensitively.
    pub fn lookup_host(&self, host: &str) -> Option<&Arc<DomainEntry>> {
        let host = host.to_ascii_lowercase();
        if let Some(entry) = self.domains.get(&host) {
            return Some(entry);
        }
        let without_port = strip_port(&host)?;
        self.domains.get(without_port)
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Every upstream, in no particular order.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// Every domain, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = &Arc<DomainEntry>> {
        self.domains.values()
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The L4 services by name. The map is the same allocation in every
    /// snapshot until a service changes, so `std::ptr::eq` on two
    /// snapshots' maps is a cheap "nothing changed" test.
    pub fn services(&self) -> &BTreeMap<String, Arc<L4Service>> {
        &self.services
    }

    /// The deny-list, sorted and deduplicated; shared between snapshots
    /// like [`Snapshot::services`].
    pub fn acl(&self) -> &[Cidr] {
        &self.acl
    }
}

/// The entries by canonical host. Two stored spellings of one domain (only
/// a hand-written store has them: admin writes merge them) resolve to the
/// one stored in canonical form, else to the last by name.
fn by_host<'a>(
    domains: impl IntoIterator<Item = &'a Arc<DomainEntry>>,
) -> FastMap<String, Arc<DomainEntry>> {
    let mut map: FastMap<String, Arc<DomainEntry>> = FastMap::default();
    for entry in domains {
        match map.entry(entry.host.clone()) {
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                if slot.get().domain != slot.get().host {
                    slot.insert(Arc::clone(entry));
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Arc::clone(entry));
            }
        }
    }
    map
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`; `None` when there is no port.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A bare IPv6 address has colons but no brackets: no port to strip.
    if name.contains(':') && !(name.starts_with('[') && name.ends_with(']')) {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_stripping() {
        assert_eq!(strip_port("a.com:8080"), Some("a.com"));
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("a.com"), None);
        assert_eq!(strip_port("::1"), None);
        assert_eq!(strip_port("a.com:"), None);
        assert_eq!(strip_port("a.com:x"), None);
    }
}
