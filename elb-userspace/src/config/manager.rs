//! Owns the mirror of the store and the compiled configuration, and
//! publishes a new [`Snapshot`] after every change.
//!
//! Input comes from three places: the initial load (or a re-list after a
//! broken etcd watch), watch events, and admin writes after they committed.
//! Admin writes are validated before they reach the store; a bad entry that
//! arrives from the store is logged and skipped, and the previous version of
//! its domain, upstream or L4 service keeps serving. A bad ACL key is just
//! not an entry.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, hash_map},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{
    acl::{self, AclError, MAX_ACL_ENTRIES},
    discovery::{Discovery, DiscoveryError},
    domain_name::normalize_domain,
    keys::{KeyLayout, StoreKey, validate_key_segment},
    l4::{L4Service, L4ServiceError},
    listener::{Listener, ListenerError},
    own_addrs::{OwnAddrError, OwnAddrs},
    policy::{Policy, PolicyError},
    snapshot::{DomainEntry, Snapshot, SnapshotHandle, Upstream},
    zones::{Zones, ZonesError},
};
use crate::{
    cidr::Cidr,
    limits::UpstreamLimits,
    rules::{self, RegexCache, RuleError},
    store::{Kv, KvOp},
    targets::{TargetRegistry, UpstreamConfig},
    tls::{CertError, CertSet, Certificate},
    upstream::{self, Server},
};

/// The L4 services by name, as the snapshot holds them.
type Services = Arc<BTreeMap<String, Arc<L4Service>>>;
/// The configured L7 listeners by name, as the snapshot holds them.
type Listeners = Arc<BTreeMap<String, Arc<Listener>>>;

pub struct ConfigManager {
    layout: KeyLayout,
    /// Everything under the prefix as the store has it, bad entries included.
    kv: Kv,
    /// What is serving, keyed by domain as stored.
    domains: BTreeMap<String, Arc<DomainEntry>>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Replaced (new `Arc`) only when a service changes.
    services: Services,
    /// Every usable ACL key and its entry; several keys written by hand
    /// (`1.2.3.4`, `1.2.3.4/32`) may be the same entry.
    acl_keys: BTreeMap<String, Cidr>,
    acl: Arc<[Cidr]>,
    /// Target-health policies by upstream name (the upstream may not
    /// exist yet).
    policies: BTreeMap<String, Arc<Policy>>,
    /// Discovery documents by upstream name: the provider that owns each
    /// upstream's server list.
    discovery: BTreeMap<String, Arc<Discovery>>,
    zones: Zones,
    /// TLS certificates by name, and the SNI index over them (a new `Arc`
    /// only when one changes).
    certs: BTreeMap<String, Arc<Certificate>>,
    cert_set: Arc<CertSet>,
    /// Health, drains and gates of every server; synced before each publish.
    targets: Arc<TargetRegistry>,
    published: SnapshotHandle,
    /// Bumped after every publish; see [`ConfigManager::subscribe`].
    generation: watch::Sender<u64>,
    regexes: RegexCache,
    /// elb's listeners, static and configured: a server that is one of
    /// them is refused (a loop).
    own: OwnAddrs,
    /// The `--listen` addresses alone; `own` adds the configured ones.
    static_own: OwnAddrs,
    /// Replaced (new `Arc`) only when a listener changes.
    listeners: Listeners,
    /// Where the servers' `max_conns` go, when elb proxies.
    upstream_limits: Option<Arc<UpstreamLimits>>,
}

/// Why a stored entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{key}: the value is not JSON: {message}")]
    NotJson { key: String, message: String },
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("upstream {upstream:?}, server {server:?}: {message}")]
    Server {
        upstream: String,
        server: String,
        message: String,
    },
    #[error(transparent)]
    Service(#[from] L4ServiceError),
    #[error("{key}: {source}")]
    Acl { key: String, source: AclError },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("{key}: {source}")]
    Zones { key: String, source: ZonesError },
    #[error("{key}: {message}")]
    Name { key: String, message: String },
    #[error("{key}: {source}")]
    Cert { key: String, source: CertError },
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("listener {name:?}: address {address} is already {other}'s")]
    ListenerAddress {
        name: String,
        address: std::net::SocketAddr,
        other: String,
    },
    #[error("{key}: a backend rule's servername {source}")]
    OwnServername { key: String, source: OwnAddrError },
}

impl ConfigManager {
    pub fn new(layout: KeyLayout) -> Self {
        Self::with_targets(layout, Arc::default())
    }

    /// A manager whose upstreams route by `targets` (health, drains, zones).
    pub fn with_targets(layout: KeyLayout, targets: Arc<TargetRegistry>) -> Self {
        Self {
            policies: BTreeMap::new(),
            discovery: BTreeMap::new(),
            zones: Zones::default(),
            certs: BTreeMap::new(),
            cert_set: Arc::default(),
            targets,
            layout,
            kv: Kv::new(),
            domains: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            services: Services::default(),
            acl_keys: BTreeMap::new(),
            acl: Arc::default(),
            published: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            generation: watch::Sender::new(0),
            regexes: RegexCache::default(),
            own: OwnAddrs::default(),
            static_own: OwnAddrs::default(),
            listeners: Listeners::default(),
            upstream_limits: None,
        }
    }

    /// Keeps `limits` told of the servers' `max_conns`.
    pub fn with_upstream_limits(mut self, limits: Arc<UpstreamLimits>) -> Self {
        self.upstream_limits = Some(limits);
        self
    }

    /// Refuses servers that are elb's own listeners (see [`OwnAddrs`]).
    pub fn with_own_addrs(mut self, own: OwnAddrs) -> Self {
        self.static_own = own.clone();
        self.own = own;
        self
    }

    /// The `--listen` addresses alone (no configured listener).
    pub fn static_addrs(&self) -> &OwnAddrs {
        &self.static_own
    }

    /// The configured L7 listeners that are in effect.
    pub fn listeners(&self) -> &BTreeMap<String, Arc<Listener>> {
        &self.listeners
    }

    pub fn own_addrs(&self) -> &OwnAddrs {
        &self.own
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    /// The handle requests load snapshots from.
    pub fn snapshot_handle(&self) -> SnapshotHandle {
        Arc::clone(&self.published)
    }

    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub fn domains(&self) -> &BTreeMap<String, Arc<DomainEntry>> {
        &self.domains
    }

    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.upstreams
    }

    /// The serving L4 services.
    pub fn services(&self) -> &BTreeMap<String, Arc<L4Service>> {
        &self.services
    }

    pub fn policies(&self) -> &BTreeMap<String, Arc<Policy>> {
        &self.policies
    }

    /// The discovery documents in effect, by upstream.
    pub fn discovery(&self) -> &BTreeMap<String, Arc<Discovery>> {
        &self.discovery
    }

    pub fn zones(&self) -> &Zones {
        &self.zones
    }

    /// The serving TLS certificates by name.
    pub fn certs(&self) -> &BTreeMap<String, Arc<Certificate>> {
        &self.certs
    }

    pub fn targets(&self) -> &Arc<TargetRegistry> {
        &self.targets
    }

    /// The serving deny-list, sorted and deduplicated.
    pub fn acl(&self) -> &[Cidr] {
        &self.acl
    }

    /// The store keys of the serving ACL entries (for DELETE: a hand-written
    /// key may not be in canonical form).
    pub fn acl_keys(&self) -> &BTreeMap<String, Cidr> {
        &self.acl_keys
    }

    /// A generation counter bumped after every published snapshot, for
    /// consumers that act on changes (the XDP data plane) rather than read
    /// the snapshot per request. The current value counts as seen: call
    /// this, then load the snapshot, then await `changed()` for the next.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Operations that make `prefix` hold exactly `entries`: deletes for keys
    /// that go away, puts for the rest. etcd refuses a transaction in which a
    /// prefix delete overlaps a put, so "replace whole" is spelled out.
    pub fn replace_prefix_ops(&self, prefix: &str, entries: Vec<(String, String)>) -> Vec<KvOp> {
        let keep: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let mut ops: Vec<KvOp> = self
            .kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| !keep.contains(k.as_str()))
            .map(|(k, _)| KvOp::Delete { key: k.clone() })
            .collect();
        ops.extend(
            entries
                .into_iter()
                .map(|(key, value)| KvOp::Put { key, value }),
        );
        ops
    }

    /// Replaces the whole mirror (initial load, re-list). Returns the
    /// entries that were skipped.
    pub fn replace_all(&mut self, kv: Kv) -> Vec<EntryError> {
        let mut affected: BTreeSet<String> = self.kv.keys().cloned().collect();
        affected.extend(kv.keys().cloned());
        self.kv = kv;
        self.rebuild(affected)
    }

    /// Applies committed operations or watch events.
    pub fn apply(&mut self, ops: &[KvOp]) -> Vec<EntryError> {
        let mut affected = BTreeSet::new();
        for op in ops {
            match op {
                KvOp::Put { key, value } => {
                    if self.kv.get(key) != Some(value) {
                        affected.insert(key.clone());
                    }
                }
                KvOp::Delete { key } => {
                    if self.kv.contains_key(key) {
                        affected.insert(key.clone());
                    }
                }
                KvOp::DeletePrefix { prefix } => affected.extend(
                    self.kv
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone()),
                ),
            }
            op.apply_to(&mut self.kv);
        }
        self.rebuild(affected)
    }

    /// Recompiles the domains, upstreams, services and ACL entries the
    /// changed keys belong to, then publishes a new snapshot if anything
    /// changed.
    fn rebuild(&mut self, changed_keys: BTreeSet<String>) -> Vec<EntryError> {
        let mut domains = BTreeSet::new();
        let mut upstreams = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut acl_changed = false;
        let mut acl_errors = Vec::new();
        let mut name_errors = Vec::new();
        let mut policies = BTreeSet::new();
        let mut discovery = BTreeSet::new();
        let mut zones_changed = false;
        let mut certs = BTreeSet::new();
        let mut listeners = BTreeSet::new();
        for key in &changed_keys {
            match self.layout.parse(key) {
                Some(StoreKey::Rule { domain }) => {
                    domains.insert(domain.to_owned());
                }
                Some(StoreKey::Server { upstream, .. }) => {
                    // `..` or `*`: only a hand-written store has such names.
                    match validate_key_segment("upstream", upstream) {
                        Ok(()) => {
                            upstreams.insert(upstream.to_owned());
                        }
                        Err(message) => name_errors.push(EntryError::Name {
                            key: key.clone(),
                            message,
                        }),
                    }
                }
                Some(StoreKey::Service { name }) => {
                    services.insert(name.to_owned());
                }
                Some(StoreKey::Policy { upstream }) => {
                    policies.insert(upstream.to_owned());
                }
                Some(StoreKey::Discovery { upstream }) => {
                    discovery.insert(upstream.to_owned());
                }
                Some(StoreKey::Zones) => zones_changed = true,
                Some(StoreKey::Cert { name }) => match validate_key_segment("certificate", name) {
                    Ok(()) => {
                        certs.insert(name.to_owned());
                    }
                    Err(message) => name_errors.push(EntryError::Name {
                        key: key.clone(),
                        message,
                    }),
                },
                Some(StoreKey::Listener { name }) => {
                    listeners.insert(name.to_owned());
                }
                Some(StoreKey::Acl { cidr }) => {
                    acl_changed = true;
                    if let Err(err) = self.update_acl_key(key, cidr) {
                        acl_errors.push(err);
                    }
                }
                None => {}
            }
        }
        if domains.is_empty()
            && name_errors.is_empty()
            && upstreams.is_empty()
            && services.is_empty()
            && !acl_changed
            && policies.is_empty()
            && discovery.is_empty()
            && !zones_changed
            && certs.is_empty()
            && listeners.is_empty()
        {
            return Vec::new();
        }
        let mut errors = acl_errors;
        errors.extend(name_errors);
        // Before the servers: a server that is a new listener's address
        // would loop.
        if !listeners.is_empty() {
            errors.extend(self.rebuild_listeners(&listeners));
        }
        for upstream in policies {
            if let Err(err) = self.update_policy(&upstream) {
                errors.push(err);
            }
        }
        for upstream in discovery {
            if let Err(err) = self.update_discovery(&upstream) {
                errors.push(err);
            }
        }
        if zones_changed && let Err(err) = self.update_zones() {
            errors.push(err);
        }
        if !certs.is_empty() {
            errors.extend(self.update_certs(&certs));
        }
        for domain in domains {
            let key = self.layout.rule_key(&domain);
            match self.kv.get(&key) {
                None => {
                    self.domains.remove(&domain);
                }
                Some(value) => {
                    match compile_domain(&key, &domain, value, &self.regexes).and_then(|entry| {
                        self.own
                            .check_servernames(entry.rules.servernames())
                            .map_err(|source| EntryError::OwnServername {
                                key: key.clone(),
                                source,
                            })?;
                        Ok(entry)
                    }) {
                        Ok(mut entry) => {
                            if let Some(previous) = self.domains.get(&domain) {
                                entry.metrics = Arc::clone(&previous.metrics);
                            }
                            self.domains.insert(domain, Arc::new(entry));
                        }
                        Err(err) => errors.push(err),
                    }
                }
            }
        }
        for name in upstreams {
            let servers = self.servers_of(&name);
            if servers.is_empty() {
                self.upstreams.remove(&name);
                continue;
            }
            match parse_servers(&name, servers, &self.own) {
                Ok(servers) => {
                    let unchanged = self
                        .upstreams
                        .get(&name)
                        .is_some_and(|current| same_servers(current.servers(), &servers));
                    if !unchanged {
                        let gates = self.targets.gates_for(&name, &servers);
                        let upstream = Upstream::with_gates(name.clone(), servers, gates)
                            .with_metrics_of(self.upstreams.get(&name).map(Arc::as_ref));
                        self.upstreams.insert(name, Arc::new(upstream));
                    }
                }
                Err(err) => errors.push(err),
            }
        }
        if !services.is_empty() {
            errors.extend(self.rebuild_services(&services));
        }
        if acl_changed {
            self.rebuild_acl();
        }
        for err in &errors {
            tracing::error!(error = %err, "skipping a bad entry from the store; the previous version keeps serving");
        }
        self.publish();
        errors
    }

    /// The server keys under the upstream's prefix. A deeper key
    /// (`/ELB/upstreams/up1/a/b`, hand-written) is no server: counting it
    /// made the upstream bad once its real servers were deleted, so a
    /// running elb kept serving them while a restarted one had none.
    fn servers_of(&self, upstream: &str) -> Vec<(&str, &str)> {
        let prefix = self.layout.upstream_prefix(upstream);
        self.kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| match self.layout.parse(k) {
                Some(StoreKey::Server { server, .. }) => Some((server, v.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Re-reads one policy; a bad one keeps the previous version.
    fn update_policy(&mut self, upstream: &str) -> Result<(), EntryError> {
        match self.kv.get(&self.layout.policy_key(upstream)) {
            None => {
                self.policies.remove(upstream);
                Ok(())
            }
            Some(value) => {
                let policy = Policy::parse(upstream, value)?;
                self.policies.insert(upstream.to_owned(), Arc::new(policy));
                Ok(())
            }
        }
    }

    /// Re-reads one discovery document; a bad one keeps the previous
    /// version (and its provider keeps running).
    fn update_discovery(&mut self, upstream: &str) -> Result<(), EntryError> {
        match self.kv.get(&self.layout.discovery_key(upstream)) {
            None => {
                self.discovery.remove(upstream);
                Ok(())
            }
            Some(value) => {
                let document = Discovery::parse(upstream, value)?;
                if self.discovery.get(upstream).is_none_or(|d| **d != document) {
                    self.discovery
                        .insert(upstream.to_owned(), Arc::new(document));
                }
                Ok(())
            }
        }
    }

    /// Re-reads the zones document; a bad one keeps the previous version.
    fn update_zones(&mut self) -> Result<(), EntryError> {
        let key = self.layout.zones_key();
        self.zones = match self.kv.get(key) {
            None => Zones::default(),
            Some(value) => Zones::parse(value).map_err(|source| EntryError::Zones {
                key: key.to_owned(),
                source,
            })?,
        };
        Ok(())
    }

    /// Re-reads the named certificates; a bad one keeps the previous
    /// version. Expiry is judged now, when the document is read.
    fn update_certs(&mut self, names: &BTreeSet<String>) -> Vec<EntryError> {
        let now = std::time::SystemTime::now();
        let mut errors = Vec::new();
        for name in names {
            let key = self.layout.cert_key(name);
            match self.kv.get(&key) {
                None => {
                    self.certs.remove(name);
                }
                Some(value) => match Certificate::parse(name, value, now) {
                    Ok(cert) => {
                        self.certs.insert(name.clone(), Arc::new(cert));
                    }
                    Err(source) => errors.push(EntryError::Cert { key, source }),
                },
            }
        }
        self.cert_set = Arc::new(CertSet::from_certificates(self.certs.values()));
        errors
    }

    /// Re-reads one ACL key into `acl_keys`.
    fn update_acl_key(&mut self, key: &str, cidr: &str) -> Result<(), EntryError> {
        if !self.kv.contains_key(key) {
            self.acl_keys.remove(key);
            return Ok(());
        }
        match acl::parse_entry(cidr) {
            Ok(entry) => {
                self.acl_keys.insert(key.to_owned(), entry);
                Ok(())
            }
            Err(source) => {
                self.acl_keys.remove(key);
                Err(EntryError::Acl {
                    key: key.to_owned(),
                    source,
                })
            }
        }
    }

    fn rebuild_acl(&mut self) {
        let mut entries = acl::normalize(self.acl_keys.values().copied());
        if entries.len() > MAX_ACL_ENTRIES {
            // Only a hand-edited store gets here; the admin API refuses it.
            tracing::error!(
                entries = entries.len(),
                max = MAX_ACL_ENTRIES,
                "the stored ACL is too long; ignoring the entries after the limit"
            );
            entries.truncate(MAX_ACL_ENTRIES);
        }
        self.acl = entries.into();
    }

    /// Recomputes the services from the store (they are few). A bad
    /// definition keeps its previous version; of two services on the same
    /// (VIP, protocol), the one already serving there keeps it, else the
    /// first by name. Reports errors only for the `changed` names, so an
    /// entry that stays bad is not reported again on every change.
    fn rebuild_services(&mut self, changed: &BTreeSet<String>) -> Vec<EntryError> {
        let previous = Arc::clone(&self.services);
        let prefix = self.layout.services_prefix();
        let documents = self
            .kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(key, value)| match self.layout.parse(key) {
                Some(StoreKey::Service { name }) => Some((name, value.as_str())),
                _ => None,
            });
        let (candidates, errors) =
            documents::candidates(documents, L4Service::parse, &previous, changed);
        let mut errors: Vec<EntryError> = errors.into_iter().map(Into::into).collect();
        let mut claimed: HashMap<_, String> = HashMap::new();
        let mut services = BTreeMap::new();
        for candidate in candidates {
            let name = candidate.name.clone();
            let previous_version = previous
                .get(&name)
                .filter(|current| !Arc::ptr_eq(current, &candidate))
                .cloned();
            // The stored version if its VIP is free, else the previous one
            // if that VIP is.
            for (attempt, version) in std::iter::once(candidate)
                .chain(previous_version)
                .enumerate()
            {
                match claimed.entry((version.vip, version.proto)) {
                    hash_map::Entry::Vacant(slot) => {
                        slot.insert(name.clone());
                        services.insert(name.clone(), version);
                        break;
                    }
                    hash_map::Entry::Occupied(slot) => {
                        if attempt == 0 && changed.contains(&name) {
                            errors.push(EntryError::Service(L4ServiceError::DuplicateVip {
                                service: name.clone(),
                                other: slot.get().clone(),
                                proto: version.proto,
                                vip: version.vip,
                            }));
                        }
                    }
                }
            }
        }
        if !documents::same_entries(&services, &previous) {
            self.services = Arc::new(services);
        }
        errors
    }

    /// Recomputes the listeners from the store (they are few). A bad
    /// definition keeps its previous version; of two on one address (only
    /// a hand-written store has them), the one already serving keeps it,
    /// else the first by name; a `--listen` address is never taken.
    fn rebuild_listeners(&mut self, changed: &BTreeSet<String>) -> Vec<EntryError> {
        let previous = Arc::clone(&self.listeners);
        let prefix = self.layout.listeners_prefix();
        let documents = self
            .kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(key, value)| match self.layout.parse(key) {
                Some(StoreKey::Listener { name }) => Some((name, value.as_str())),
                _ => None,
            });
        let (candidates, errors) =
            documents::candidates(documents, Listener::parse, &previous, changed);
        let mut errors: Vec<EntryError> = errors.into_iter().map(Into::into).collect();
        let mut claimed: HashMap<std::net::SocketAddr, String> = self
            .static_own
            .listen()
            .iter()
            .map(|addr| (*addr, "--listen".to_owned()))
            .collect();
        let mut listeners = BTreeMap::new();
        for listener in candidates {
            match claimed.entry(listener.address) {
                hash_map::Entry::Vacant(slot) => {
                    slot.insert(format!("listener {:?}", listener.name));
                    listeners.insert(listener.name.clone(), listener);
                }
                hash_map::Entry::Occupied(slot) => {
                    if changed.contains(&listener.name) {
                        errors.push(EntryError::ListenerAddress {
                            name: listener.name.clone(),
                            address: listener.address,
                            other: slot.get().clone(),
                        });
                    }
                }
            }
        }
        if !documents::same_entries(&listeners, &previous) {
            self.listeners = Arc::new(listeners);
            self.own = self
                .static_own
                .with_more(self.listeners.values().map(|l| l.address));
        }
        errors
    }

    fn publish(&self) {
        // Gates first: a snapshot is never visible with stale routing.
        self.targets.sync(
            self.upstreams
                .iter()
                .map(|(name, upstream)| UpstreamConfig {
                    name,
                    servers: upstream.servers(),
                }),
            &self.policies,
            &self.zones.disabled,
            std::time::Instant::now(),
        );
        if let Some(limits) = &self.upstream_limits {
            limits.set_caps(server_caps(self.upstreams.values()));
        }
        self.published.store(Arc::new(
            Snapshot::new(self.domains.values(), self.upstreams.values())
                .with_l4(Arc::clone(&self.services), Arc::clone(&self.acl))
                .with_certs(Arc::clone(&self.cert_set))
                .with_listeners(Arc::clone(&self.listeners)),
        ));
        // After the store: whoever sees the new generation sees the snapshot.
        self.generation.send_modify(|generation| *generation += 1);
    }
}

/// Compiles one stored rule document.
pub fn compile_domain(
    key: &str,
    domain: &str,
    value: &str,
    regexes: &RegexCache,
) -> Result<DomainEntry, EntryError> {
    let doc: serde_json::Value = serde_json::from_str(value).map_err(|e| EntryError::NotJson {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    let host = normalize_domain(domain).map_err(|message| EntryError::Name {
        key: key.to_owned(),
        message,
    })?;
    Ok(DomainEntry {
        domain: domain.to_owned(),
        host,
        rules: rules::compile_cached(domain, &doc, regexes)?,
        metrics: Arc::default(),
    })
}

/// Parses one upstream's `(server, params)` pairs.
pub fn parse_servers(
    upstream: &str,
    servers: Vec<(&str, &str)>,
    own: &OwnAddrs,
) -> Result<Vec<Server>, EntryError> {
    servers
        .into_iter()
        .map(|(server, params)| {
            let error = |message: String| EntryError::Server {
                upstream: upstream.to_owned(),
                server: server.to_owned(),
                message,
            };
            upstream::validate_server_address(server).map_err(|e| error(e.to_string()))?;
            own.check(server).map_err(|e| error(e.to_string()))?;
            let params = upstream::parse_params(params).map_err(|e| error(e.to_string()))?;
            Ok(Server {
                name: server.to_owned(),
                params,
            })
        })
        .collect()
}

/// Each server address's `max_conns`; the smallest if it is in several
/// upstreams.
fn server_caps<'a>(upstreams: impl Iterator<Item = &'a Arc<Upstream>>) -> HashMap<String, usize> {
    let mut caps: HashMap<String, usize> = HashMap::new();
    for server in upstreams.flat_map(|upstream| upstream.servers()) {
        let Ok(cap) = usize::try_from(server.params.max_conns) else {
            continue;
        };
        if cap > 0 {
            caps.entry(server.name.clone())
                .and_modify(|current| *current = (*current).min(cap))
                .or_insert(cap);
        }
    }
    caps
}

fn same_servers(a: &[Server], b: &[Server]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.params == y.params)
}

mod documents;
#[cfg(test)]
mod tests;
