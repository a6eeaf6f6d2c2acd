use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;
use crate::upstream::parse_params;

fn server(name: &str, params: &str) -> Server {
    Server::new(name, parse_params(params).expect("params"))
}

fn policy(delay_ms: u64, slow_start_ms: u64) -> Arc<Policy> {
    Arc::new(Policy {
        deregistration_delay: Duration::from_millis(delay_ms),
        slow_start: Duration::from_millis(slow_start_ms),
        ..Policy::default()
    })
}

struct World {
    registry: TargetRegistry,
    policies: BTreeMap<String, Arc<Policy>>,
    zones: BTreeSet<String>,
}

impl World {
    fn new(policy: Option<Arc<Policy>>) -> Self {
        Self {
            registry: TargetRegistry::new(Some("a".to_owned())),
            policies: policy
                .map(|p| BTreeMap::from([("up".to_owned(), p)]))
                .unwrap_or_default(),
            zones: BTreeSet::new(),
        }
    }

    /// Publishes `servers` as upstream "up" (gates first, as the manager does).
    fn configure(&self, servers: &[Server], now: Instant) -> Vec<Arc<ServerGate>> {
        let gates = self.registry.gates_for("up", servers);
        self.registry.sync(
            [UpstreamConfig {
                name: "up",
                servers,
            }],
            &self.policies,
            &self.zones,
            now,
        );
        gates
    }

    fn state(&self, server: &str, now: Instant) -> String {
        self.registry.report(now)["up"]["servers"][server]["state"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    }

    fn check(&self, server: &str, state: CheckState, now: Instant) {
        let epoch = self
            .registry
            .check_jobs()
            .iter()
            .find(|job| job.server == server)
            .map_or(0, |job| job.epoch);
        self.registry
            .record_check(("up", server, epoch), state, format!("{state:?}"), now);
    }
}

fn routable(gates: &[Arc<ServerGate>]) -> Vec<bool> {
    gates.iter().map(|g| g.routable()).collect()
}

#[test]
fn servers_start_initial_and_fail_open_until_one_is_healthy() {
    let world = World::new(Some(policy(0, 0)));
    let now = Instant::now();
    let gates = world.configure(&[server("a:1", ""), server("b:1", "")], now);
    assert_eq!(world.state("a:1", now), "initial");
    assert_eq!(routable(&gates), [true, true], "fail-open at start");
    assert_eq!(world.registry.report(now)["up"]["fail_open"], true);
    world.check("a:1", CheckState::Healthy, now);
    assert_eq!(routable(&gates), [true, false]);
    assert_eq!(world.registry.report(now)["up"]["fail_open"], false);
    world.check("a:1", CheckState::Unhealthy, now);
    assert_eq!(routable(&gates), [true, true], "nothing healthy: fail-open");
    world.check("b:1", CheckState::Healthy, now);
    assert_eq!(routable(&gates), [false, true]);
    assert_eq!(world.state("a:1", now), "unhealthy");
}

#[test]
fn without_a_policy_servers_are_unused_and_routable() {
    let world = World::new(None);
    let now = Instant::now();
    let gates = world.configure(&[server("a:1", ""), server("b:1", "down")], now);
    assert_eq!(world.state("a:1", now), "unused");
    assert_eq!(routable(&gates), [true, false]);
    assert!(world.registry.check_jobs().is_empty());
    // Removed without a policy: gone at once, nothing cut.
    let token = gates[0].cut_token();
    world.configure(&[server("b:1", "down")], now);
    assert_eq!(world.state("a:1", now), "absent");
    assert!(!token.is_cancelled());
}

#[test]
fn a_removed_server_drains_for_the_delay_then_is_cut_and_goes() {
    let world = World::new(Some(policy(2_000, 0)));
    let t0 = Instant::now();
    let gates = world.configure(&[server("a:1", ""), server("b:1", "")], t0);
    world.check("a:1", CheckState::Healthy, t0);
    world.check("b:1", CheckState::Healthy, t0);
    let token = gates[1].cut_token();
    let changes = world.registry.subscribe();
    world.configure(&[server("a:1", "")], t0);
    assert!(changes.has_changed().expect("open"));
    assert_eq!(world.state("b:1", t0), "draining");
    assert!(!gates[1].routable());
    assert_eq!(world.registry.draining("up"), ["b:1"]);
    let report = world.registry.report(t0 + Duration::from_millis(500));
    assert_eq!(report["up"]["servers"]["b:1"]["drain_seconds_left"], 1.5);
    assert_eq!(
        world.registry.check_jobs().len(),
        1,
        "no checks while draining"
    );
    world.registry.tick(t0 + Duration::from_millis(1_999));
    assert!(!token.is_cancelled());
    world.registry.tick(t0 + Duration::from_millis(2_000));
    assert!(token.is_cancelled(), "in-flight requests are cut");
    assert_eq!(world.state("b:1", t0), "absent");
    assert!(world.registry.draining("up").is_empty());
}

#[test]
fn down_and_disabled_zones_drain_and_come_back_initial() {
    let mut world = World::new(Some(policy(1_000, 0)));
    let t0 = Instant::now();
    let servers = [server("a:1", "zone=z1"), server("b:1", "zone=z2")];
    let gates = world.configure(&servers, t0);
    world.check("a:1", CheckState::Healthy, t0);
    world.check("b:1", CheckState::Healthy, t0);
    world.zones.insert("z2".to_owned());
    world.configure(&servers, t0);
    assert_eq!(world.state("b:1", t0), "draining");
    let reason = world.registry.report(t0)["up"]["servers"]["b:1"]["reason"].clone();
    assert!(
        reason
            .as_str()
            .expect("reason")
            .contains("zone z2 is disabled")
    );
    world.registry.tick(t0 + Duration::from_secs(1));
    assert_eq!(world.state("b:1", t0), "unused");
    assert!(gates[1].cut_token().is_cancelled());
    world.zones.clear();
    world.configure(&servers, t0 + Duration::from_secs(2));
    assert_eq!(world.state("b:1", t0), "initial");
    // The old checker's late report does not count: a new epoch began.
    world
        .registry
        .record_check(("up", "b:1", 0), CheckState::Healthy, "late".into(), t0);
    assert_eq!(world.state("b:1", t0), "initial");
    assert!(!gates[1].cut_token().is_cancelled(), "a fresh token");
    let down = [server("a:1", "zone=z1 down"), server("b:1", "zone=z2")];
    world.configure(&down, t0);
    assert_eq!(world.state("a:1", t0), "draining");
}

#[test]
fn slow_start_ramps_servers_added_later_but_not_at_start() {
    let world = World::new(Some(policy(0, 10_000)));
    let t0 = Instant::now();
    let gates = world.configure(&[server("a:1", "")], t0);
    world.check("a:1", CheckState::Healthy, t0);
    assert_eq!(
        gates[0].weight_permille(),
        1000,
        "no slow start at elb's start"
    );
    let gates = world.configure(&[server("a:1", ""), server("b:1", "")], t0);
    world.check("b:1", CheckState::Healthy, t0);
    assert_eq!(gates[1].weight_permille(), 0);
    let mut changes = world.registry.subscribe();
    world.registry.tick(t0 + Duration::from_millis(2_500));
    assert_eq!(gates[1].weight_permille(), 250);
    assert_eq!(routing::l4_step(gates[1].weight_permille()), 200);
    assert!(changes.has_changed().expect("open"), "an L4 step changed");
    changes.mark_unchanged();
    world.registry.tick(t0 + Duration::from_millis(2_600));
    assert!(!changes.has_changed().expect("open"), "same L4 step");
    world.registry.tick(t0 + Duration::from_secs(10));
    assert_eq!(gates[1].weight_permille(), 1000);
    assert_eq!(routing::l4_step(gates[1].weight_permille()), 1000);
}

#[test]
fn check_jobs_follow_policies() {
    let world = World::new(Some(policy(0, 0)));
    let now = Instant::now();
    world.configure(&[server("a:1", ""), server("b:1", "down")], now);
    let jobs = world.registry.check_jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].server, "a:1");
    assert_eq!(jobs[0].check, Policy::default().health_check);
}

#[test]
fn a_server_present_at_start_ramps_when_it_comes_back() {
    let world = World::new(Some(policy(0, 10_000)));
    let t0 = Instant::now();
    let gates = world.configure(&[server("a:1", ""), server("b:1", "")], t0);
    world.check("a:1", CheckState::Healthy, t0);
    world.check("b:1", CheckState::Healthy, t0);
    assert_eq!(gates[1].weight_permille(), 1000, "no slow start at start");
    world.check("b:1", CheckState::Unhealthy, t0);
    world.check("b:1", CheckState::Healthy, t0);
    assert_eq!(
        gates[1].weight_permille(),
        0,
        "back from unhealthy: it ramps"
    );
}
