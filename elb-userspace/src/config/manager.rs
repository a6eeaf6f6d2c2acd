//! Owns the mirror of the store and the compiled configuration, and
//! publishes a new [`Snapshot`] after every change.
//!
//! Input comes from three places: the initial load (or a re-list after a
//! broken etcd watch), watch events, and admin writes after they committed.
//! Admin writes are validated before they reach the store; a bad entry that
//! arrives from the store is logged and skipped, and the previous version of
//! its domain or upstream keeps serving.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use arc_swap::ArcSwap;

use super::{
    keys::{KeyLayout, StoreKey},
    snapshot::{DomainEntry, Snapshot, SnapshotHandle, Upstream},
};
use crate::{
    rules::{self, RegexCache, RuleError},
    store::{Kv, KvOp},
    upstream::{self, Server},
};

pub struct ConfigManager {
    layout: KeyLayout,
    /// Everything under the prefix as the store has it, bad entries included.
    kv: Kv,
    /// What is serving, keyed by domain as stored.
    domains: BTreeMap<String, Arc<DomainEntry>>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    published: SnapshotHandle,
    regexes: RegexCache,
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
}

impl ConfigManager {
    pub fn new(layout: KeyLayout) -> Self {
        Self {
            layout,
            kv: Kv::new(),
            domains: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            published: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            regexes: RegexCache::default(),
        }
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

    /// Recompiles the domains and upstreams the changed keys belong to, then
    /// publishes a new snapshot if anything changed.
    fn rebuild(&mut self, changed_keys: BTreeSet<String>) -> Vec<EntryError> {
        let mut domains = BTreeSet::new();
        let mut upstreams = BTreeSet::new();
        for key in &changed_keys {
            match self.layout.parse(key) {
                Some(StoreKey::Rule { domain }) => {
                    domains.insert(domain.to_owned());
                }
                Some(StoreKey::Server { upstream, .. }) => {
                    upstreams.insert(upstream.to_owned());
                }
                None => {}
            }
        }
        if domains.is_empty() && upstreams.is_empty() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        for domain in domains {
            let key = self.layout.rule_key(&domain);
            match self.kv.get(&key) {
                None => {
                    self.domains.remove(&domain);
                }
                Some(value) => match compile_domain(&key, &domain, value, &self.regexes) {
                    Ok(entry) => {
                        self.domains.insert(domain, Arc::new(entry));
                    }
                    Err(err) => errors.push(err),
                },
            }
        }
        for name in upstreams {
            let servers = self.servers_of(&name);
            if servers.is_empty() {
                self.upstreams.remove(&name);
                continue;
            }
            match parse_servers(&name, servers) {
                Ok(servers) => {
                    let unchanged = self
                        .upstreams
                        .get(&name)
                        .is_some_and(|current| same_servers(current.servers(), &servers));
                    if !unchanged {
                        self.upstreams
                            .insert(name.clone(), Arc::new(Upstream::new(name, servers)));
                    }
                }
                Err(err) => errors.push(err),
            }
        }
        for err in &errors {
            tracing::error!(error = %err, "skipping a bad entry from the store; the previous version keeps serving");
        }
        self.publish();
        errors
    }

    fn servers_of(&self, upstream: &str) -> Vec<(&str, &str)> {
        let prefix = self.layout.upstream_prefix(upstream);
        self.kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, v.as_str())))
            .collect()
    }

    fn publish(&self) {
        self.published.store(Arc::new(Snapshot::new(
            self.domains.values(),
            self.upstreams.values(),
        )));
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
    Ok(DomainEntry {
        domain: domain.to_owned(),
        rules: rules::compile_cached(domain, &doc, regexes)?,
    })
}

/// Parses one upstream's `(server, params)` pairs.
pub fn parse_servers(
    upstream: &str,
    servers: Vec<(&str, &str)>,
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
            let params = upstream::parse_params(params).map_err(|e| error(e.to_string()))?;
            Ok(Server {
                name: server.to_owned(),
                params,
            })
        })
        .collect()
}

fn same_servers(a: &[Server], b: &[Server]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.params == y.params)
}
