//! Target health on the L4 data planes, end to end in network namespaces
//! (`elb_tests::l4_e2e`), each test once through XDP and once through the
//! userspace fallback:
//!
//! - a failing `TCP:9000` check steers new connections away from a server
//!   (established ones stay), and its recovery brings them back;
//! - with no healthy server the upstream fails open;
//! - an admin PUT of a service is live in the data plane when it answers;
//! - a removed server drains: its connections work for the deregistration
//!   delay, get nothing new, and are closed when it ends (userspace for
//!   now: the XDP data plane needs its connection-table sweep).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use elb_tests::{
    l4_e2e::{
        Conn, Dataplane, E2e, HEALTH_PORT, HealthListener, OK, VIP, client_xdp, connect,
        connect_to, upstream_doc,
    },
    require_root_and_bpf,
};
use serde_json::{Value, json};

/// Check settings: 200 ms apart, 100 ms to connect, 2 in a row to change.
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const THRESHOLD: u32 = 2;
/// How long a server's state may take to change: `THRESHOLD` checks at the
/// interval plus its 10 % jitter, the last check's timeout, and slack for a
/// loaded machine (the report is polled through `nsenter curl`).
const STATE_CHANGE: Duration = Duration::from_millis(2 * 220 + 100 + 460);
/// How long the XDP maps may take to follow a gate change.
const PLAN_CHANGE: Duration = Duration::from_secs(1);
/// New connections that must all avoid (or may reach) a server.
const NEW_CONNECTIONS: usize = 300;

/// The three servers' names and upstream keys, s1..s3.
const SERVERS: [&str; 3] = ["s1", "s2", "s3"];

fn server_key(index: usize) -> String {
    format!("10.6{}.0.2:8080", index + 1)
}

/// An E2e run with a health port beside each server and the service
/// `web` (VIP:80) over the upstream `web` (s1..s3, weight 1) with a
/// policy checking `TCP:9000`. Drops the listeners before elb and the
/// namespaces (field order).
struct Setup {
    health: [Option<HealthListener>; 3],
    e2e: E2e,
}

impl Setup {
    /// `extra`: more policy fields (e.g. the deregistration delay).
    fn start(dataplane: Dataplane, extra: Value) -> Self {
        let e2e = started(dataplane);
        let health = [0, 1, 2].map(|i| Some(Self::listener(&e2e, i)));
        let setup = Self { health, e2e };
        let e2e = &setup.e2e;
        assert_eq!(
            e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
            OK
        );
        let mut policy = json!({"health_check": {
            "target": format!("TCP:{HEALTH_PORT}"),
            "interval": format!("{}ms", INTERVAL.as_millis()),
            "timeout": format!("{}ms", TIMEOUT.as_millis()),
            "healthy_threshold": THRESHOLD, "unhealthy_threshold": THRESHOLD}});
        if let (Some(policy), Some(extra)) = (policy.as_object_mut(), extra.as_object()) {
            policy.extend(extra.clone());
        }
        assert_eq!(
            e2e.admin("PUT", "policy", &json!({"web": policy}).to_string()),
            OK
        );
        let service =
            format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
        assert_eq!(e2e.admin("PUT", "service", &service), OK);
        e2e.wait_serving();
        for i in 0..3 {
            setup.wait_state(i, "healthy", Duration::from_secs(3));
        }
        setup
    }

    fn listener(e2e: &E2e, index: usize) -> HealthListener {
        let addr: SocketAddr = format!("10.6{}.0.2:{HEALTH_PORT}", index + 1)
            .parse()
            .expect("addr");
        HealthListener::start(&e2e.net.servers[index], addr)
    }

    fn stop_health(&mut self, index: usize) {
        self.health[index] = None;
    }

    fn start_health(&mut self, index: usize) {
        self.health[index] = Some(Self::listener(&self.e2e, index));
    }

    /// `GET /__erulb__/health`'s upstream `web`.
    fn health(&self) -> Value {
        let body = self.e2e.admin("GET", "health", "");
        let report: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the health report is not JSON ({e}): {body}"));
        report["web"].clone()
    }

    fn state(&self, index: usize) -> String {
        self.health()["servers"][server_key(index)]["state"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    }

    /// Polls until server `index` is in `state`; returns how long it took.
    fn wait_state(&self, index: usize, state: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.state(index) == state {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{} not {state} within {within:?}: {:#}\nelb log:\n{}",
                SERVERS[index],
                self.health(),
                self.e2e.elb.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the data plane balances `web` over the servers
    /// `planned` (indexes); returns how long that took. The health report
    /// reads the gates, which the data plane follows as they change:
    /// - XDP: `/__erulb__/stats` names the servers of the maps' last write.
    ///   A gate change rewrites the service's 65,537-slot table, which
    ///   takes tens of milliseconds in a debug build (measured: new
    ///   connections reached an unhealthy server up to ~55 ms after the
    ///   report said so);
    /// - userspace: the fallback swaps its plan in-process at once and
    ///   shows no sign of it (measured: not one connection after the
    ///   report), so a short pause and None.
    fn wait_planned(&self, planned: &[usize]) -> Option<Duration> {
        let started = Instant::now();
        if self.e2e.dataplane == Dataplane::Userspace {
            std::thread::sleep(Duration::from_millis(50));
            return None;
        }
        let wanted: BTreeSet<String> = planned.iter().map(|i| server_key(*i)).collect();
        loop {
            let stats = self.e2e.stats();
            let listed: BTreeSet<String> = stats["services"]["web"]["servers"]
                .as_object()
                .map(|servers| servers.keys().cloned().collect())
                .unwrap_or_default();
            if listed == wanted {
                return Some(started.elapsed());
            }
            assert!(
                started.elapsed() < PLAN_CHANGE,
                "the XDP maps do not plan {wanted:?} within {PLAN_CHANGE:?}: {stats:#}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// New connections per server (s1..s3); every one must be answered.
    fn spread(&self, count: usize) -> [usize; 3] {
        let mut counts = [0; 3];
        for n in 0..count {
            let answer = connect(&self.e2e.net.client)
                .and_then(|mut conn| conn.ask())
                .unwrap_or_else(|e| {
                    panic!("new connection {n} failed: {e}\n{}", self.e2e.elb.log())
                });
            counts[index_of(&answer)] += 1;
        }
        counts
    }

    /// One open connection to each server of `wanted` (bounded tries).
    fn long_lived(&self, wanted: &[usize]) -> BTreeMap<usize, Conn> {
        let mut conns = BTreeMap::new();
        for _ in 0..200 {
            if wanted.iter().all(|i| conns.contains_key(i)) {
                return conns;
            }
            let mut conn = connect(&self.e2e.net.client).expect("connect");
            let index = index_of(&conn.ask().expect("first answer"));
            if wanted.contains(&index) {
                conns.entry(index).or_insert(conn);
            }
        }
        panic!("200 connections reached only {:?}", conns.keys());
    }
}

/// The namespaces, the servers and elb, on `dataplane` for sure.
fn started(dataplane: Dataplane) -> E2e {
    let mut e2e = E2e::start(dataplane);
    e2e.elb
        .wait_for_log(Duration::from_secs(5), dataplane.log_line())
        .expect("elb names its L4 data plane");
    e2e
}

fn index_of(answer: &str) -> usize {
    SERVERS
        .iter()
        .position(|s| *s == answer)
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"))
}

/// Test 1: s2's check fails → unhealthy in time, no new connection reaches
/// it, established connections (to every server, s2's too: health does
/// not cut flows) keep answering; its check passes again → healthy, new
/// connections reach it again.
fn health_steers_new_connections(dataplane: Dataplane) {
    let mut s = Setup::start(dataplane, json!({}));
    let mut conns = s.long_lived(&[0, 1, 2]);

    s.stop_health(1);
    let took = s.wait_state(1, "unhealthy", STATE_CHANGE);
    let report = s.health();
    assert_eq!(report["fail_open"], false, "{report:#}");
    assert_eq!(
        report["servers"][server_key(1)]["routable"],
        false,
        "{report:#}"
    );
    let lag = s.wait_planned(&[0, 2]);
    let counts = s.spread(NEW_CONNECTIONS);
    assert_eq!(
        counts[1], 0,
        "new connections reached the unhealthy s2: {counts:?}"
    );
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
    for (index, conn) in &mut conns {
        let answer = conn
            .ask()
            .unwrap_or_else(|e| panic!("the connection to {} broke: {e}", SERVERS[*index]));
        assert_eq!(answer, SERVERS[*index]);
    }

    s.start_health(1);
    let back = s.wait_state(1, "healthy", STATE_CHANGE);
    s.wait_planned(&[0, 1, 2]);
    let counts = s.spread(NEW_CONNECTIONS);
    assert!(
        counts[1] >= NEW_CONNECTIONS / 6,
        "s2 is healthy again but got {counts:?}"
    );
    for (index, conn) in &mut conns {
        assert_eq!(conn.ask().expect("still open"), SERVERS[*index]);
    }
    eprintln!(
        "{dataplane:?}: unhealthy after {took:?}{}, healthy again after {back:?}",
        lag.map(|lag| format!(" (the XDP maps {lag:?} later)"))
            .unwrap_or_default()
    );
}

#[test]
fn health_steers_new_connections_through_xdp() {
    require_root_and_bpf!();
    health_steers_new_connections(Dataplane::Xdp);
}

#[test]
fn health_steers_new_connections_through_the_userspace_fallback() {
    require_root_and_bpf!();
    health_steers_new_connections(Dataplane::Userspace);
}

/// Test 2: every check fails → every server unhealthy, the upstream fails
/// open and new connections still reach every server.
fn no_healthy_server_fails_open(dataplane: Dataplane) {
    let mut s = Setup::start(dataplane, json!({}));
    for i in 0..3 {
        s.stop_health(i);
    }
    for i in 0..3 {
        s.wait_state(i, "unhealthy", STATE_CHANGE);
    }
    let report = s.health();
    assert_eq!(report["fail_open"], true, "{report:#}");
    s.wait_planned(&[0, 1, 2]);
    let counts = s.spread(NEW_CONNECTIONS / 2);
    assert!(
        counts.iter().all(|c| *c > 0),
        "fail-open to every server: {counts:?}"
    );
}

#[test]
fn no_healthy_server_fails_open_through_xdp() {
    require_root_and_bpf!();
    no_healthy_server_fails_open(Dataplane::Xdp);
}

#[test]
fn no_healthy_server_fails_open_through_the_userspace_fallback() {
    require_root_and_bpf!();
    no_healthy_server_fails_open(Dataplane::Userspace);
}

/// Below the first SYN retransmission (1 s): a connection that took this
/// long was not carried by the data plane when it began.
const FIRST_SYN: Duration = Duration::from_millis(900);

/// Test 3: 100 times a service on a new port, connected to as soon as the
/// PUT answers (no sleep, no retry): every connection is answered, on its
/// first SYN. Before the L4 data plane reported what it applied, the XDP
/// maps were written up to 200 ms after the PUT's answer.
fn a_put_service_is_live_when_it_answers(dataplane: Dataplane) {
    let e2e = started(dataplane);
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    let mut failures = Vec::new();
    // Bounded: a broken data plane fails ten times, not a hundred
    // (each unanswered SYN costs a second).
    for i in 0..100u16 {
        if failures.len() >= 10 {
            break;
        }
        let port = 20_000 + i;
        let service =
            format!(r#"{{"fresh": {{"vip": "{VIP}:{port}", "proto": "tcp", "upstream": "web"}}}}"#);
        assert_eq!(e2e.admin("PUT", "service", &service), OK, "PUT {i}");
        let addr: SocketAddr = format!("{VIP}:{port}").parse().expect("addr");
        let started = Instant::now();
        let answer = connect_to(&e2e.net.client, addr).and_then(|mut conn| {
            let connected = started.elapsed();
            conn.ask().map(|_| connected)
        });
        match answer {
            // The LB's ICMP errors are rate-limited: a SYN the data plane
            // does not carry yet mostly goes unanswered and the client
            // sends it again a second later, which then succeeds.
            Ok(connected) if connected >= FIRST_SYN => failures.push((
                i,
                format!("connected after {connected:?}: the first SYN went unanswered"),
            )),
            Ok(_) => {}
            Err(error) => failures.push((i, error.to_string())),
        }
    }
    assert!(
        failures.is_empty(),
        "{dataplane:?}: {} connections right after the PUT failed (stopped at 10): {failures:?}",
        failures.len()
    );
}

#[test]
fn a_put_service_is_live_when_it_answers_through_xdp() {
    require_root_and_bpf!();
    a_put_service_is_live_when_it_answers(Dataplane::Xdp);
}

#[test]
fn a_put_service_is_live_when_it_answers_through_the_userspace_fallback() {
    require_root_and_bpf!();
    a_put_service_is_live_when_it_answers(Dataplane::Userspace);
}

/// The deregistration delay of the drain test.
const DRAIN: Duration = Duration::from_secs(2);

/// Test 4's body, for both data planes (needs a policy with the
/// deregistration delay [`DRAIN`]): s3 is removed from the upstream.
/// Its established connection answers through the delay while no new
/// connection reaches it, and is closed (EOF or reset) within a second
/// after the delay; the connection to s1 lives on.
fn removed_server_drains_then_its_connections_close(s: &Setup) {
    let mut conns = s.long_lived(&[0, 2]);
    let put_started = Instant::now();
    assert_eq!(
        s.e2e
            .admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1)])),
        OK
    );
    let put_done = Instant::now();
    assert_eq!(s.state(2), "draining", "{:#}", s.health());

    // During the delay (until 1.5 s in, leaving room for the last ask):
    // new connections avoid s3, its connection answers.
    let mut during = [0; 3];
    let mut asked = 0;
    let mut conn3 = conns.remove(&2).expect("a connection to s3");
    while put_started.elapsed() < DRAIN - Duration::from_millis(500)
        && during.iter().sum::<usize>() < 400
    {
        during = add(during, s.spread(10));
        assert_eq!(
            conn3.ask().expect("s3's connection while it drains"),
            "s3",
            "{:?} into the drain",
            put_started.elapsed()
        );
        asked += 1;
    }
    assert_eq!(
        during[2], 0,
        "new connections reached the draining s3: {during:?}"
    );
    assert!(
        asked >= 3,
        "asked s3's connection only {asked} times during the drain"
    );

    // After the delay: closed within a second.
    let deadline = put_done + DRAIN + Duration::from_secs(1);
    let closed = loop {
        match conn3.ask() {
            Ok(answer) => {
                assert_eq!(answer, "s3");
                assert!(
                    Instant::now() < deadline,
                    "s3's connection still answers {:?} after the PUT (delay {DRAIN:?})",
                    put_started.elapsed()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => break error,
        }
    };
    let at = put_started.elapsed();
    assert!(
        matches!(
            closed.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        ),
        "s3's connection was not closed but failed with {closed:?} ({at:?} after the PUT)"
    );
    assert!(
        // The drain began after `put_started`.
        at >= DRAIN && Instant::now() <= deadline + Duration::from_millis(100),
        "closed {at:?} after the PUT, the delay is {DRAIN:?}"
    );
    let mut conn1 = conns.remove(&0).expect("a connection to s1");
    assert_eq!(conn1.ask().expect("s1's connection lives on"), "s1");
    eprintln!(
        "{:?}: s3's connection closed {at:?} after the PUT; {during:?} new connections during the drain",
        s.e2e.dataplane
    );
}

fn add(a: [usize; 3], b: [usize; 3]) -> [usize; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

#[test]
fn a_removed_server_drains_then_its_connections_close_in_the_userspace_fallback() {
    require_root_and_bpf!();
    let delay = json!({"deregistration_delay": format!("{}s", DRAIN.as_secs())});
    let s = Setup::start(Dataplane::Userspace, delay);
    removed_server_drains_then_its_connections_close(&s);
    let stats = s.e2e.stats();
    assert_eq!(stats["services"]["web"]["drain_cuts"], 1, "{stats:#}");
    assert_eq!(s.state(2), "absent", "{:#}", s.health());
}

#[test]
fn a_removed_server_drains_then_its_connections_are_reset_through_xdp() {
    require_root_and_bpf!();
    let delay = json!({"deregistration_delay": format!("{}s", DRAIN.as_secs())});
    let s = Setup::start(Dataplane::Xdp, delay);
    // XDP answers the drained connection's next segment with a RST; on
    // veth, that frame needs an XDP program on the client's end to be
    // delivered (see `client_xdp`).
    let _client_xdp = client_xdp(&s.e2e.net.client);
    removed_server_drains_then_its_connections_close(&s);
    let stats = s.e2e.stats();
    assert!(
        stats["global"]["tcp_resets"].as_u64() >= Some(1),
        "the connection was reset by XDP: {stats:#}"
    );
    assert_eq!(s.state(2), "absent", "{:#}", s.health());
}

/// A server added to a live service, once healthy, gets a share of new
/// connections that grows over `slow_start` (the tables are rebuilt in
/// steps of 10%).
fn slow_start_raises_a_new_servers_share(dataplane: Dataplane) {
    let s = Setup::start(
        dataplane,
        json!({"slow_start": "4s", "deregistration_delay": "0s"}),
    );
    let e2e = &s.e2e;
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1)])),
        OK
    );
    s.wait_state(2, "absent", Duration::from_secs(2));
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    s.wait_state(2, "healthy", Duration::from_secs(3));
    let mut shares = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let mut counts = [0usize; 3];
        while started.elapsed() < Duration::from_millis(900) {
            counts = add(counts, s.spread(20));
        }
        let total: usize = counts.iter().sum();
        shares.push(counts[2] as f64 / total.max(1) as f64);
    }
    eprintln!("{dataplane:?}: s3's share per window: {shares:?}");
    assert!(shares[0] < 0.2, "{shares:?}");
    assert!(shares[3] > shares[0] + 0.1, "{shares:?}");
}

#[test]
fn slow_start_raises_a_new_servers_share_through_xdp() {
    require_root_and_bpf!();
    slow_start_raises_a_new_servers_share(Dataplane::Xdp);
}

#[test]
fn slow_start_raises_a_new_servers_share_through_the_userspace_fallback() {
    require_root_and_bpf!();
    slow_start_raises_a_new_servers_share(Dataplane::Userspace);
}
