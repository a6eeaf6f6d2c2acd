//! The target-health model of every upstream: each server's check state,
//! drain, slow start and zone, and the gates both data planes read.
//!
//! Three inputs change it, all under one lock:
//! - [`TargetRegistry::sync`]: the configuration (servers, policies,
//!   disabled zones), called by the configuration manager *before* it
//!   publishes a snapshot, so a snapshot is never visible with stale gates;
//! - [`TargetRegistry::record_check`]: a check's state transition;
//! - [`TargetRegistry::tick`]: time (drains end, slow start ramps up).
//!
//! Every change of a gate (routable, or an L4 slow-start step) or of the
//! set of draining servers bumps a generation that the L4 data plane and
//! the check monitor follow.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{
    gate::{FULL_WEIGHT, ServerGate},
    routing::{self, CheckState, Facts, Rules},
};
pub use crate::health::state::{LastCheck, TargetState};
use crate::{
    config::policy::{HealthCheck, Policy},
    health::state::INITIAL_REASON,
    upstream::Server,
};

/// A server whose checks should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckJob {
    pub upstream: String,
    pub server: String,
    pub check: HealthCheck,
    /// Bumped each time the server comes back into service: its checks
    /// start afresh from `initial`.
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Drain {
    Serving,
    /// No new requests or flows; in-flight ones finish until `until`.
    Draining {
        until: Instant,
        why: String,
    },
    /// The drain is over (the server is still configured: `down`, or its
    /// zone disabled).
    Drained {
        why: String,
    },
}

#[derive(Debug)]
struct Target {
    gate: Arc<ServerGate>,
    /// None: no longer in the upstream (it drains, then goes away).
    server: Option<Server>,
    /// Created by [`TargetRegistry::gates_for`], not yet seen by a sync.
    fresh: bool,
    /// Present at elb's start, or among the first servers of its upstream:
    /// no slow start on its first way to healthy (every server is new).
    at_start: bool,
    check: CheckState,
    check_reason: String,
    last_check: Option<LastCheck>,
    drain: Drain,
    /// When the reported state last changed.
    since: Instant,
    /// Slow start began here.
    ramp_from: Option<Instant>,
    /// The L4 step last published, to bump the generation on step changes.
    l4_step: u32,
    /// See [`CheckJob::epoch`].
    epoch: u64,
    /// Check state changes since the server was added.
    transitions: u64,
}

impl Target {
    fn new(now: Instant, at_start: bool) -> Self {
        Self {
            gate: Arc::new(ServerGate::default()),
            server: None,
            fresh: true,
            at_start,
            check: CheckState::Initial,
            check_reason: INITIAL_REASON.to_owned(),
            last_check: None,
            drain: Drain::Serving,
            since: now,
            ramp_from: None,
            l4_step: FULL_WEIGHT,
            epoch: 0,
            transitions: 0,
        }
    }

    fn serving(&self) -> bool {
        self.drain == Drain::Serving && self.server.is_some()
    }

    fn state(&self, checked: bool) -> TargetState {
        match (&self.drain, checked) {
            (Drain::Draining { .. }, _) => TargetState::Draining,
            (Drain::Drained { .. }, _) | (Drain::Serving, false) => TargetState::Unused,
            (Drain::Serving, true) => match self.check {
                CheckState::Initial => TargetState::Initial,
                CheckState::Healthy => TargetState::Healthy,
                CheckState::Unhealthy => TargetState::Unhealthy,
            },
        }
    }

    fn ramp_permille(&self, slow_start: Duration, now: Instant) -> u32 {
        match self.ramp_from {
            Some(from) if !slow_start.is_zero() => {
                let elapsed = now.saturating_duration_since(from).as_secs_f64();
                let share = elapsed / slow_start.as_secs_f64();
                if share >= 1.0 {
                    FULL_WEIGHT
                } else {
                    // Truncation is fine: the share is in [0, 1).
                    (share * f64::from(FULL_WEIGHT)) as u32
                }
            }
            _ => FULL_WEIGHT,
        }
    }
}

#[derive(Debug, Default)]
struct UpstreamTargets {
    policy: Option<Arc<Policy>>,
    fail_open: bool,
    targets: BTreeMap<String, Target>,
}

#[derive(Debug, Default)]
struct Inner {
    own_zone: Option<String>,
    /// A first configuration was synced: servers seen later are additions.
    started: bool,
    disabled_zones: BTreeSet<String>,
    upstreams: BTreeMap<String, UpstreamTargets>,
    /// Some server drains or ramps up: [`TargetRegistry::tick`] has work.
    timed: bool,
}

/// One upstream's servers as [`TargetRegistry::health_view`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub upstream: String,
    /// No server passes its checks, so all of them get traffic.
    pub fail_open: bool,
    pub servers: Vec<ServerHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    pub server: String,
    pub state: TargetState,
    /// Whether new requests and flows may go to it now.
    pub routable: bool,
    /// Check state changes since it was added.
    pub transitions: u64,
}

/// One upstream of the configuration, as [`TargetRegistry::sync`] takes it.
pub struct UpstreamConfig<'a> {
    pub name: &'a str,
    pub servers: &'a [Server],
}

pub struct TargetRegistry {
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
    /// Bumped on every sync: the set of check jobs may have changed.
    synced: watch::Sender<u64>,
}

impl std::fmt::Debug for TargetRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRegistry").finish_non_exhaustive()
    }
}

impl Default for TargetRegistry {
    fn default() -> Self {
        Self::new(None)
    }
}

impl TargetRegistry {
    /// `own_zone`: elb's zone (`--zone`), for `cross_zone: false`.
    pub fn new(own_zone: Option<String>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                own_zone,
                ..Inner::default()
            }),
            generation: watch::Sender::new(0),
            synced: watch::Sender::new(0),
        }
    }

    /// Bumped after every configuration sync (the check monitor follows it).
    pub fn subscribe_syncs(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Bumped after every change of a gate or of the set of draining
    /// servers. The current value counts as seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut receiver = self.generation.subscribe();
        receiver.mark_unchanged();
        receiver
    }

    /// The gates of `servers` (same order), made for a new upstream
    /// definition before it is published. Servers keep their gate (and
    /// state) across definitions.
    pub fn gates_for(&self, upstream: &str, servers: &[Server]) -> Vec<Arc<ServerGate>> {
        let mut inner = self.lock();
        let now = Instant::now();
        let started = inner.started;
        let entry = inner.upstreams.entry(upstream.to_owned()).or_default();
        // Slow start is for servers added to a live upstream.
        let at_start = !started || !entry.targets.values().any(|t| t.serving() && !t.fresh);
        servers
            .iter()
            .map(|server| {
                let target = entry
                    .targets
                    .entry(server.name.clone())
                    .or_insert_with(|| Target::new(now, at_start));
                Arc::clone(&target.gate)
            })
            .collect()
    }

    /// Brings the model to a configuration: new servers start `initial`,
    /// servers that left or are `down` or in a disabled zone drain (with a
    /// policy; without one they leave at once), and every gate is
    /// recomputed.
    pub fn sync<'a>(
        &self,
        upstreams: impl IntoIterator<Item = UpstreamConfig<'a>>,
        policies: &BTreeMap<String, Arc<Policy>>,
        disabled_zones: &BTreeSet<String>,
        now: Instant,
    ) {
        let mut inner = self.lock();
        let at_start = !inner.started;
        inner.disabled_zones = disabled_zones.clone();
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for upstream in upstreams {
            seen.insert(upstream.name.to_owned());
            let entry = inner.upstreams.entry(upstream.name.to_owned()).or_default();
            entry.policy = policies.get(upstream.name).cloned();
            let names: BTreeSet<&str> = upstream.servers.iter().map(|s| s.name.as_str()).collect();
            for server in upstream.servers {
                let target = entry
                    .targets
                    .entry(server.name.clone())
                    .or_insert_with(|| Target::new(now, at_start));
                target.fresh = false;
                target.server = Some(server.clone());
                let why = server_drain_reason(server, disabled_zones);
                changed |= set_drain(target, why, entry.policy.as_deref(), upstream.name, now);
            }
            for (name, target) in &mut entry.targets {
                if !names.contains(name.as_str()) && !target.fresh && target.server.is_some() {
                    target.server = None;
                    changed |= set_drain(
                        target,
                        Some("removed from the upstream".to_owned()),
                        entry.policy.as_deref(),
                        upstream.name,
                        now,
                    );
                }
            }
        }
        for (name, entry) in &mut inner.upstreams {
            if seen.contains(name) {
                continue;
            }
            entry.policy = policies.get(name).cloned();
            for target in entry.targets.values_mut() {
                if target.server.is_some() && !target.fresh {
                    target.server = None;
                    changed |= set_drain(
                        target,
                        Some("removed with its upstream".to_owned()),
                        entry.policy.as_deref(),
                        name,
                        now,
                    );
                }
            }
        }
        // Policies of upstreams that are not (yet) configured are kept
        // only as part of the snapshot; nothing to route here.
        inner.started = true;
        changed |= inner.expire(now);
        changed |= inner.route_all(now);
        drop(inner);
        if changed {
            self.bump();
        }
        self.synced.send_modify(|g| *g += 1);
    }

    /// A server's checks changed its state (the monitor logs it). Reports
    /// from an older `epoch` (a checker stopped meanwhile) are ignored.
    pub fn record_check(
        &self,
        job: (&str, &str, u64),
        state: CheckState,
        reason: String,
        now: Instant,
    ) {
        let (upstream, server, epoch) = job;
        let mut inner = self.lock();
        let Some(entry) = inner.upstreams.get_mut(upstream) else {
            return;
        };
        let slow_start = entry
            .policy
            .as_ref()
            .map_or(Duration::ZERO, |p| p.slow_start);
        let Some(target) = entry.targets.get_mut(server).filter(|t| t.epoch == epoch) else {
            return;
        };
        let mut timed = false;
        if target.check != state {
            if state == CheckState::Healthy {
                let first_at_start = target.at_start && target.check == CheckState::Initial;
                if !slow_start.is_zero() && !first_at_start {
                    target.ramp_from = Some(now);
                    timed = true;
                }
                // Only its first way to healthy can be exempt.
                target.at_start = false;
            } else {
                target.ramp_from = None;
            }
            target.check = state;
            target.transitions += 1;
            if target.drain == Drain::Serving {
                target.since = now;
            }
        }
        target.check_reason = reason;
        inner.timed |= timed;
        let changed = inner.route_one(upstream, now);
        drop(inner);
        if changed {
            self.bump();
        }
    }

    /// The result of the last check, for the report.
    pub fn record_last_check(&self, job: (&str, &str, u64), last: LastCheck) {
        let (upstream, server, epoch) = job;
        let mut inner = self.lock();
        if let Some(target) = inner
            .upstreams
            .get_mut(upstream)
            .and_then(|u| u.targets.get_mut(server))
            .filter(|t| t.epoch == epoch)
        {
            target.last_check = Some(last);
        }
    }

    /// Ends drains that are due and moves slow starts along. Cheap when
    /// nothing drains or ramps up.
    pub fn tick(&self, now: Instant) {
        let mut inner = self.lock();
        if !inner.timed {
            return;
        }
        let mut changed = inner.expire(now);
        changed |= inner.route_all(now);
        drop(inner);
        if changed {
            self.bump();
        }
    }

    /// The servers whose checks should run: configured, serving, in an
    /// upstream with a policy.
    pub fn check_jobs(&self) -> Vec<CheckJob> {
        let inner = self.lock();
        let mut jobs = Vec::new();
        for (upstream, entry) in &inner.upstreams {
            let Some(policy) = &entry.policy else {
                continue;
            };
            for (server, target) in &entry.targets {
                if target.serving() {
                    jobs.push(CheckJob {
                        upstream: upstream.clone(),
                        server: server.clone(),
                        check: policy.health_check.clone(),
                        epoch: target.epoch,
                    });
                }
            }
        }
        jobs
    }

    /// Servers of `upstream` that are draining now (no new flows, their
    /// established flows live on until the drain ends).
    pub fn draining(&self, upstream: &str) -> Vec<String> {
        let inner = self.lock();
        inner
            .upstreams
            .get(upstream)
            .map(|entry| {
                entry
                    .targets
                    .iter()
                    .filter(|(_, t)| matches!(t.drain, Drain::Draining { .. }))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every upstream's servers with their state, for `/metrics`; servers
    /// that left are there until their drain ends.
    pub fn health_view(&self) -> Vec<UpstreamHealth> {
        let inner = self.lock();
        inner
            .upstreams
            .iter()
            .filter(|(_, entry)| !entry.targets.is_empty())
            .map(|(name, entry)| {
                let checked = entry.policy.is_some();
                UpstreamHealth {
                    upstream: name.clone(),
                    fail_open: entry.fail_open,
                    servers: entry
                        .targets
                        .iter()
                        .map(|(server, target)| ServerHealth {
                            server: server.clone(),
                            state: target.state(checked),
                            routable: target.gate.routable(),
                            transitions: target.transitions,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// `GET /__erulb__/health`.
    pub fn report(&self, now: Instant) -> Value {
        let inner = self.lock();
        let mut upstreams = Map::new();
        for (name, entry) in &inner.upstreams {
            if entry.targets.is_empty() {
                continue;
            }
            let checked = entry.policy.is_some();
            let mut servers = Map::new();
            for (server, target) in &entry.targets {
                servers.insert(server.clone(), target_json(target, checked, entry, now));
            }
            upstreams.insert(
                name.clone(),
                json!({"fail_open": entry.fail_open, "health_checks": checked, "servers": servers}),
            );
        }
        Value::Object(upstreams)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each update leaves the model consistent; a panic elsewhere is no
        // reason to stop routing.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Inner {
    /// Ends the drains that are due; removed servers then go away. Returns
    /// whether anything changed.
    fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (upstream, entry) in &mut self.upstreams {
            entry.targets.retain(|server, target| {
                let Drain::Draining { until, why } = &target.drain else {
                    // A removed server that is not draining leaves at once.
                    return target.server.is_some() || target.fresh;
                };
                if *until > now {
                    return true;
                }
                tracing::info!(upstream, server, reason = %why, "drain over: requests and flows still on the server are cut");
                target.gate.cut();
                changed = true;
                if target.server.is_none() {
                    return false;
                }
                target.drain = Drain::Drained { why: why.clone() };
                target.since = now;
                true
            });
        }
        self.upstreams
            .retain(|_, entry| !entry.targets.is_empty() || entry.policy.is_some());
        changed
    }

    fn route_all(&mut self, now: Instant) -> bool {
        let names: Vec<String> = self.upstreams.keys().cloned().collect();
        let mut changed = false;
        for name in names {
            changed |= self.route_one(&name, now);
        }
        self.timed = self.upstreams.values().any(|entry| {
            entry
                .targets
                .values()
                .any(|t| t.ramp_from.is_some() || matches!(t.drain, Drain::Draining { .. }))
        });
        changed
    }

    /// Recomputes one upstream's gates; true if a gate's routability or
    /// L4 step changed.
    fn route_one(&mut self, upstream: &str, now: Instant) -> bool {
        let own_zone = self.own_zone.as_deref();
        let Some(entry) = self.upstreams.get_mut(upstream) else {
            return false;
        };
        let (checked, cross_zone, slow_start) = match &entry.policy {
            Some(policy) => (true, policy.cross_zone, policy.slow_start),
            None => (false, true, Duration::ZERO),
        };
        let facts: Vec<Facts<'_>> = entry
            .targets
            .values()
            .map(|t| Facts {
                check: t.check,
                serving: t.serving(),
                zone: t.server.as_ref().and_then(|s| s.params.zone.as_deref()),
                ramp_permille: t.ramp_permille(slow_start, now),
            })
            .collect();
        let routing = routing::route(
            &facts,
            Rules {
                checked,
                cross_zone,
                own_zone,
            },
        );
        if routing.fail_open != entry.fail_open {
            if routing.fail_open {
                tracing::warn!(upstream, "no healthy server: failing open to every server");
            } else {
                tracing::info!(upstream, "a server is healthy again: fail-open ends");
            }
            entry.fail_open = routing.fail_open;
        }
        let mut changed = false;
        for (target, (routable, permille)) in entry.targets.values_mut().zip(routing.servers) {
            if permille >= FULL_WEIGHT {
                target.ramp_from = None;
            }
            let was_routable = target.gate.routable();
            target.gate.set(routable, permille);
            target.gate.set_drainable(checked);
            let step = if routable {
                routing::l4_step(permille)
            } else {
                FULL_WEIGHT
            };
            changed |= was_routable != routable || step != target.l4_step;
            target.l4_step = step;
        }
        changed
    }
}

/// Why a configured server drains: `down` or a disabled zone.
fn server_drain_reason(server: &Server, disabled_zones: &BTreeSet<String>) -> Option<String> {
    if server.params.down {
        return Some("marked down".to_owned());
    }
    let zone = server.params.zone.as_ref()?;
    disabled_zones
        .contains(zone)
        .then(|| format!("zone {zone} is disabled"))
}

/// Starts or ends a drain; true if the drain state changed.
fn set_drain(
    target: &mut Target,
    why: Option<String>,
    policy: Option<&Policy>,
    upstream: &str,
    now: Instant,
) -> bool {
    match (why, &target.drain) {
        (None, Drain::Serving) => false,
        (None, _) => {
            // Back in service: checked afresh, as a newly registered target.
            target.drain = Drain::Serving;
            target.gate.renew();
            target.check = CheckState::Initial;
            target.check_reason = INITIAL_REASON.to_owned();
            target.since = now;
            target.epoch += 1;
            true
        }
        (Some(why), Drain::Serving) => {
            let Some(policy) = policy else {
                // No policy, no drain: out of rotation at once, in-flight
                // requests and established flows are left alone.
                target.drain = Drain::Drained { why };
                target.since = now;
                return true;
            };
            let delay = policy.deregistration_delay;
            let server = target.server.as_ref().map_or("", |s| s.name.as_str());
            tracing::info!(upstream, server, reason = %why, delay = ?delay, "server draining");
            target.drain = Drain::Draining {
                until: now + delay,
                why,
            };
            target.since = now;
            target.ramp_from = None;
            true
        }
        (Some(why), Drain::Draining { until, .. }) => {
            let until = *until;
            target.drain = Drain::Draining { until, why };
            false
        }
        (Some(why), Drain::Drained { .. }) => {
            target.drain = Drain::Drained { why };
            false
        }
    }
}

fn target_json(target: &Target, checked: bool, entry: &UpstreamTargets, now: Instant) -> Value {
    let state = target.state(checked);
    let reason = match (&target.drain, state) {
        (Drain::Draining { why, .. }, _) => format!("Target deregistration is in progress: {why}"),
        (Drain::Drained { why }, _) => format!("Target is not in service: {why}"),
        (Drain::Serving, TargetState::Unused) => {
            "The upstream has no health-check policy".to_owned()
        }
        _ => target.check_reason.clone(),
    };
    let mut object = Map::new();
    object.insert("state".into(), json!(state.as_str()));
    object.insert("reason".into(), json!(reason));
    object.insert(
        "seconds_in_state".into(),
        json!(round_ms(now.saturating_duration_since(target.since))),
    );
    object.insert("routable".into(), json!(target.gate.routable()));
    if let Drain::Draining { until, .. } = &target.drain {
        object.insert(
            "drain_seconds_left".into(),
            json!(round_ms(until.saturating_duration_since(now))),
        );
    }
    let slow_start = entry
        .policy
        .as_ref()
        .map_or(Duration::ZERO, |p| p.slow_start);
    if target.ramp_from.is_some() {
        object.insert(
            "slow_start_weight_percent".into(),
            json!(target.ramp_permille(slow_start, now) / 10),
        );
    }
    if let Some(last) = &target.last_check {
        object.insert(
            "last_check".into(),
            json!({
                "passed": last.passed,
                "status": last.status,
                "latency_ms": round_ms(last.latency) * 1000.0,
                "reason": last.reason,
                "seconds_ago": round_ms(now.saturating_duration_since(last.at)),
            }),
        );
    }
    Value::Object(object)
}

/// Seconds with millisecond precision.
fn round_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;
