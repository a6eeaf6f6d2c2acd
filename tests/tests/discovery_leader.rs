//! Several elb nodes on one etcd: exactly one leads the discovery providers
//! (etcd's election API on a lease). A killed leader is replaced within the
//! lease TTL, a stopped one resigns and is replaced at once, and a leader
//! cut off from etcd stops believing it leads within half the TTL.
//!
//! The first tests drive the election code in-process on a real etcd; the
//! last ones run real elb processes and read each node's role from
//! `GET /__erulb__/discovery/leader`.
use std::time::{Duration, Instant};

use elb_tests::{
    discovery::{discovery_role, leader_report, start_etcd_node},
    etcd::Etcd,
    l7::{Cleanup, L7Builder, L7Elb},
    netns::unique_name,
};
use elb_userspace::discovery::leader::{
    DiscoveryGate, ElectionSettings, Role, election_name, node_identity,
};
use serde_json::Value;
use tokio::sync::watch;

/// One election candidate in this process, with its own shutdown signal.
struct Node {
    gate: DiscoveryGate,
    stop: watch::Sender<bool>,
    identity: String,
}

impl Node {
    fn start(etcd: &Etcd, elb_name: &str, identity: &str, ttl: Duration) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let settings = ElectionSettings {
            endpoints: vec![format!("http://{}", etcd.endpoint())],
            access: Default::default(),
            name: election_name(elb_name),
            identity: identity.to_owned(),
            lease_ttl: ttl,
        };
        let gate = DiscoveryGate::elect(settings, shutdown).expect("start the election");
        Self {
            gate,
            stop,
            identity: identity.to_owned(),
        }
    }

    fn leads(&self) -> bool {
        *self.gate.may_run.borrow()
    }
}

/// Polls `ready` every 10 ms; returns how long it took to hold.
async fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Waits for exactly one leader; returns its index.
async fn one_leader(nodes: &[&Node], limit: Duration) -> usize {
    wait_until(limit, "a leader elected", || {
        nodes.iter().filter(|n| n.leads()).count() == 1
    })
    .await;
    nodes.iter().position(|n| n.leads()).expect("a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_on_one_etcd_elect_exactly_one_leader() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    let ttl = Duration::from_secs(3);
    let a = Node::start(&etcd, &name, "node-a", ttl);
    let b = Node::start(&etcd, &name, "node-b", ttl);
    let leader = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let (leader, follower) = if leader == 0 { (&a, &b) } else { (&b, &a) };
    // Longer than a TTL: keep-alives hold the lease, nobody else leads.
    let started = Instant::now();
    while started.elapsed() < ttl + Duration::from_secs(1) {
        assert!(leader.leads(), "the leader stopped leading");
        assert!(!follower.leads(), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in [leader, follower] {
        let report = node.gate.status.report().await;
        assert_eq!(
            report.leader.as_deref(),
            Some(leader.identity.as_str()),
            "{report:?}"
        );
        assert_eq!(report.this_node, node.identity);
        assert_eq!(report.election, "etcd");
        assert_eq!(report.lease_ttl_seconds, Some(3));
        assert!(report.lease_id.is_some(), "{report:?}");
    }
    assert_eq!(leader.gate.status.report().await.role, Role::Leader);
    assert_eq!(follower.gate.status.report().await.role, Role::Follower);
    // One key per candidate, beside the configuration's `/$ELBNAME/`.
    let config = etcd.get_prefix(&format!("/{name}/")).expect("etcdctl get");
    assert!(config.is_empty(), "{config:?}");
    let keys = etcd
        .get_prefix(&format!("{}/", election_name(&name)))
        .expect("etcdctl get");
    assert_eq!(keys.len(), 2, "one key per candidate: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_resigns_and_the_other_takes_over_at_once() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    // A long TTL: only a resignation hands over this fast.
    let ttl = Duration::from_secs(10);
    let a = Node::start(&etcd, &name, "node-a", ttl);
    let b = Node::start(&etcd, &name, "node-b", ttl);
    let leader = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let (leader, follower) = if leader == 0 { (a, b) } else { (b, a) };
    leader.stop.send_replace(true);
    let took = wait_until(Duration::from_secs(2), "the follower takes over", || {
        follower.leads()
    })
    .await;
    assert!(!leader.leads(), "the old leader still believes it leads");
    eprintln!("handover after a resignation: {took:?} (lease TTL {ttl:?})");
    tokio::time::timeout(Duration::from_secs(5), leader.gate.task)
        .await
        .expect("the election task ends after shutdown")
        .expect("task");
    let report = follower.gate.status.report().await;
    assert_eq!(
        report.leader.as_deref(),
        Some(follower.identity.as_str()),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_leading_within_half_the_ttl() {
    let mut etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    let ttl = Duration::from_secs(4);
    let a = Node::start(&etcd, &name, "node-a", ttl);
    let b = Node::start(&etcd, &name, "node-b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let leader = if first == 0 { &a } else { &b };
    etcd.kill();
    let took = wait_until(ttl, "the leader stops leading without etcd", || {
        !leader.leads()
    })
    .await;
    eprintln!("leader dropped {took:?} after etcd stopped (lease TTL {ttl:?})");
    assert!(
        took <= ttl / 2 + Duration::from_millis(500),
        "dropped after {took:?}, later than half the TTL"
    );
    // Nobody leads while etcd is down.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) {
        assert!(!a.leads() && !b.leads(), "a leader without etcd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.restart().expect("restart etcd");
    let back = Instant::now();
    one_leader(&[&a, &b], ttl * 3).await;
    eprintln!("a leader again {:?} after etcd restarted", back.elapsed());
    // And only one, for a while.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            [&a, &b].iter().filter(|n| n.leads()).count(),
            1,
            "not exactly one leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_etcd_hangs_stops_leading_within_half_the_ttl() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    let ttl = Duration::from_secs(6);
    let a = Node::start(&etcd, &name, "node-a", ttl);
    let b = Node::start(&etcd, &name, "node-b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let leader = if first == 0 { &a } else { &b };
    // Connections stay open but nothing answers: only the missing
    // keep-alive answers tell.
    etcd.pause();
    let took = wait_until(ttl, "the leader stops leading", || !leader.leads()).await;
    eprintln!("leader dropped {took:?} after etcd hung (lease TTL {ttl:?})");
    assert!(
        took <= ttl / 2 + Duration::from_millis(500),
        "dropped after {took:?}, later than half the TTL"
    );
    etcd.resume();
    let back = Instant::now();
    one_leader(&[&a, &b], ttl * 2).await;
    eprintln!("a leader again {:?} after etcd resumed", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_key_is_deleted_stops_leading_and_campaigns_again() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    let ttl = Duration::from_secs(10);
    let alone = Node::start(&etcd, &name, "node-a", ttl);
    one_leader(&[&alone], Duration::from_secs(10)).await;
    // No other candidate: nobody else's key takes over, only the deletion
    // itself tells.
    etcd.ctl(&["del", "--prefix", &format!("{}/", election_name(&name))])
        .expect("etcdctl del");
    let took = wait_until(Duration::from_secs(2), "the leader stops leading", || {
        !alone.leads()
    })
    .await;
    eprintln!("leader dropped {took:?} after its key was deleted");
    let again = wait_until(ttl, "the node leads again", || alone.leads()).await;
    eprintln!("leading again {again:?} later (a new lease and key)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_leader_lease_runs_out_and_the_other_takes_over() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LE");
    let ttl = Duration::from_secs(3);
    let a = Node::start(&etcd, &name, "node-a", ttl);
    let b = Node::start(&etcd, &name, "node-b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    // Like a killed process: no resignation, no more keep-alives.
    leader.gate.task.abort();
    let took = wait_until(ttl * 2, "the follower takes over", || follower.leads()).await;
    eprintln!("takeover after the leader vanished: {took:?} (lease TTL {ttl:?})");
    assert!(
        took <= ttl + Duration::from_millis(1500),
        "took {took:?}, more than the TTL"
    );
}

// Real elb processes.

/// Waits until exactly one of `nodes` reports `leader` and every node
/// names it; returns its index.
fn one_leading_elb(nodes: &[&L7Elb], limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let reports: Vec<Option<Value>> = nodes.iter().map(|n| leader_report(n)).collect();
        let leaders: Vec<usize> = reports
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r["role"] == "leader"))
            .map(|(i, _)| i)
            .collect();
        if let [leader] = leaders[..] {
            let identity = &reports[leader].as_ref().expect("report")["this_node"];
            if reports
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| &r["leader"] == identity))
            {
                return leader;
            }
        }
        assert!(
            started.elapsed() < limit,
            "not exactly one leader within {limit:?}: {reports:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(elb: &L7Elb, signal: i32) {
    let pid = elb.process.pid().expect("elb runs") as i32;
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(pid, signal) };
}

#[test]
fn a_killed_leader_elb_is_replaced_within_the_lease_ttl() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LK");
    let ttl = Duration::from_secs(3);
    let (a, _ca) = start_etcd_node(&etcd, &name, "3s");
    let (b, _cb) = start_etcd_node(&etcd, &name, "3s");
    let first = one_leading_elb(&[&a, &b], Duration::from_secs(10));
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    let report = leader_report(leader).expect("report");
    assert_eq!(report["lease_ttl_seconds"], 3, "{report}");
    let identity = report["this_node"].as_str().expect("identity").to_owned();
    assert!(
        identity.contains(&format!("pid {}", leader.process.pid().expect("pid"))),
        "{identity}"
    );
    // The election leaves the configuration's keys alone (tests and tools
    // compare them exactly).
    let config = etcd.get_prefix(&format!("/{name}/")).expect("etcdctl get");
    assert!(config.is_empty(), "{config:?}");
    // The follower stays one while the leader lives.
    std::thread::sleep(ttl);
    assert_eq!(discovery_role(follower).as_deref(), Some("follower"));
    signal(leader, libc::SIGKILL);
    let killed = Instant::now();
    while discovery_role(follower).as_deref() != Some("leader") {
        assert!(
            killed.elapsed() < ttl * 3,
            "no takeover within {:?}:\n{}",
            ttl * 3,
            follower.process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = killed.elapsed();
    eprintln!("takeover after kill -9 of the leader elb: {took:?} (lease TTL {ttl:?})");
    assert!(
        took <= ttl + Duration::from_millis(1500),
        "takeover took {took:?}, more than the TTL and a margin"
    );
    let report = leader_report(follower).expect("report");
    assert_eq!(report["leader"], report["this_node"], "{report}");
    assert!(
        follower.process.log().contains("became discovery leader"),
        "{}",
        follower.process.log()
    );
}

#[test]
fn a_stopped_leader_elb_resigns_and_the_other_takes_over_at_once() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("LS");
    // The default TTL (10 s): only a resignation hands over quickly.
    let a = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start_named(&name)
        .expect("start elb");
    let _ca = Cleanup(a.state_dir.clone());
    let b = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start_named(&name)
        .expect("start elb");
    let _cb = Cleanup(b.state_dir.clone());
    let first = one_leading_elb(&[&a, &b], Duration::from_secs(10));
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        leader_report(leader).expect("report")["lease_ttl_seconds"],
        10
    );
    signal(leader, libc::SIGTERM);
    let stopped = Instant::now();
    while discovery_role(follower).as_deref() != Some("leader") {
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "no takeover within 3 s of SIGTERM:\n{}",
            follower.process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "takeover after SIGTERM of the leader elb: {:?} (lease TTL 10s)",
        stopped.elapsed()
    );
}

#[test]
fn with_the_embedded_store_the_node_runs_the_providers_itself() {
    let elb = L7Builder::new().start().expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    let report = leader_report(&elb).expect("report");
    assert_eq!(report["role"], "leader", "{report}");
    assert_eq!(report["election"], "none", "{report}");
    assert_eq!(report["leader"], report["this_node"], "{report}");
    let expected = node_identity(Some(elb.addr));
    let this_node = report["this_node"].as_str().expect("identity");
    // Same host and address; the pid is elb's.
    assert!(
        this_node.ends_with(&elb.addr.to_string())
            && this_node.split(" pid ").next() == expected.split(" pid ").next(),
        "{this_node} vs {expected}"
    );
}
