//! Active health checks, fail-open, draining, slow start and zones on the
//! L7 proxy: a real elb (embedded store), real loopback backends whose
//! `/health` answer is switched at run time, real HTTP.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    http,
    l7::{L7Elb, served_by, start_with},
};
use serde_json::{Value, json};

const HOST: &str = "probe.test";

/// interval 200 ms, timeout 100 ms, 2 passes to healthy, 2 failures to
/// unhealthy, HTTP /health.
fn fast_policy(extra: Value) -> Value {
    let mut policy = json!({"health_check": {"target": "HTTP/health", "interval": "200ms",
        "timeout": "100ms", "healthy_threshold": 2, "unhealthy_threshold": 2},
        "deregistration_delay": "2s"});
    if let (Some(policy), Some(extra)) = (policy.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            policy.insert(key.clone(), value.clone());
        }
    }
    policy
}

fn health(elb: &L7Elb) -> Value {
    elb.admin_ok("GET", "health", None)
}

fn state_of(elb: &L7Elb, server: &Backend) -> String {
    health(elb)["up"]["servers"][server.addr().to_string()]["state"]
        .as_str()
        .unwrap_or("absent")
        .to_owned()
}

/// Polls until `server` is in `state`; returns how long it took.
fn wait_state(elb: &L7Elb, server: &Backend, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if state_of(elb, server) == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} not {state} within {within:?}: {}",
            server.name(),
            health(elb)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends GETs in a loop on another thread until stopped; counts answers
/// that are not 200 (or fail).
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, errors, total) = (stop.clone(), errors.clone(), total.clone());
            std::thread::spawn(move || {
                // Bounded: at most 60 s, whatever happens.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ok =
                        http::get(addr, "/x", &[("Host", HOST)]).is_ok_and(|r| r.status == 200);
                    total.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            stop,
            errors,
            total,
            thread: Some(thread),
        }
    }

    /// Stops; returns (errors, total).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (
            self.errors.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_failing_server_is_taken_out_without_client_errors_and_comes_back() {
    let s = start_with(&[]);
    let (b1, b2) = checked_pair(&s.elb, fast_policy(json!({})), ["", ""]);
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(3));
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));

    let load = Load::start(s.elb.addr);
    std::thread::sleep(Duration::from_millis(200));
    b2.set_health_status(Some(503));
    // interval × unhealthy_threshold + timeout (500 ms), as the failure
    // may start just after a check: plus one jittered interval of phase
    // (≤ 660 ms in all), and slack for a loaded machine.
    let took = wait_state(&s.elb, &b2, "unhealthy", Duration::from_millis(1_000));
    let report = health(&s.elb);
    let b2_report = &report["up"]["servers"][b2.addr().to_string()];
    let reason = b2_report["reason"].as_str().expect("reason");
    assert!(reason.contains("503"), "{reason}");
    assert_eq!(b2_report["last_check"]["status"], 503);
    let hits_before = b2.hits();
    for _ in 0..20 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b1");
    }
    assert_eq!(
        b2.hits(),
        hits_before,
        "no request reaches an unhealthy server"
    );

    b2.set_health_status(None);
    wait_state(&s.elb, &b2, "healthy", Duration::from_millis(1_000));
    let (errors, total) = load.finish();
    assert_eq!(
        errors, 0,
        "{errors} of {total} idempotent GETs failed during the transition"
    );
    assert!(total > 50, "the load ran ({total} requests)");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(served_by(&s.elb.get(HOST, "/x", None)));
    }
    assert_eq!(seen.len(), 2, "b2 is back: {seen:?}");
    eprintln!("taken out after {took:?}");
}

#[test]
fn thresholds_timeouts_and_the_matcher_decide() {
    let s = start_with(&[]);
    let b1 = Backend::start("b1").expect("b1");
    let b2 = Backend::start("b2").expect("b2");
    let policy = fast_policy(
        json!({"health_check": {"target": "HTTP/health", "interval": "200ms",
        "timeout": "100ms", "healthy_threshold": 3, "unhealthy_threshold": 3, "matcher": "200,204"}}),
    );
    s.elb.admin_ok("PUT", "policy", Some(json!({"up": policy})));
    s.elb.route(HOST, "up", &[(b1.addr(), ""), (b2.addr(), "")]);
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    // 302 is outside "200,204".
    b2.set_health_status(Some(302));
    wait_state(&s.elb, &b2, "unhealthy", Duration::from_secs(2));
    let reason = health(&s.elb)["up"]["servers"][b2.addr().to_string()]["reason"].clone();
    assert!(reason.to_string().contains("302"), "{reason}");
    b2.set_health_status(Some(204));
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(2));
    // An answer slower than the timeout is a failure.
    b2.set_health_delay(Duration::from_millis(300));
    wait_state(&s.elb, &b2, "unhealthy", Duration::from_secs(2));
    let report = health(&s.elb);
    let last = &report["up"]["servers"][b2.addr().to_string()]["last_check"];
    assert_eq!(last["passed"], false, "{report}");
    assert!(last["reason"].to_string().contains("100ms"), "{last}");
    // Fewer failures in a row than the threshold keep a server healthy.
    b2.set_health_delay(Duration::ZERO);
    b2.set_health_status(None);
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(2));
    b1.set_health_status(Some(500));
    std::thread::sleep(Duration::from_millis(250));
    b1.set_health_status(None);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(state_of(&s.elb, &b1), "healthy", "{}", health(&s.elb));
}

#[test]
fn no_healthy_server_fails_open_at_start_and_later() {
    let s = start_with(&[]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    b1.set_health_status(Some(500));
    b2.set_health_status(Some(500));
    // A slow first check: at start every server is initial, yet traffic flows.
    let policy = fast_policy(
        json!({"health_check": {"target": "HTTP/health", "interval": "5s",
        "timeout": "1s", "healthy_threshold": 2, "unhealthy_threshold": 2}}),
    );
    s.elb.admin_ok("PUT", "policy", Some(json!({"up": policy})));
    s.elb.route(HOST, "up", &[(b1.addr(), ""), (b2.addr(), "")]);
    let report = health(&s.elb);
    assert_eq!(report["up"]["fail_open"], true, "{report}");
    assert_eq!(state_of(&s.elb, &b1), "initial");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(served_by(&s.elb.get(HOST, "/x", None)));
    }
    assert_eq!(seen.len(), 2, "fail-open routes to all: {seen:?}");
    // Both unhealthy: still fail-open.
    s.elb
        .admin_ok("PUT", "policy", Some(json!({"up": fast_policy(json!({}))})));
    wait_state(&s.elb, &b1, "unhealthy", Duration::from_secs(2));
    wait_state(&s.elb, &b2, "unhealthy", Duration::from_secs(2));
    assert_eq!(health(&s.elb)["up"]["fail_open"], true);
    assert_eq!(s.elb.get(HOST, "/x", None).status, 200);
    // One recovers: fail-open ends and only it gets traffic.
    b1.set_health_status(None);
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(2));
    assert_eq!(health(&s.elb)["up"]["fail_open"], false);
    for _ in 0..6 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b1");
    }
}

/// Backends b1 and b2 in upstream `up` (server parameters `params`) behind
/// `probe.test`, under `policy`.
fn checked_pair(elb: &L7Elb, policy: Value, params: [&str; 2]) -> (Backend, Backend) {
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    elb.admin_ok("PUT", "policy", Some(json!({ "up": policy })));
    elb.route(
        HOST,
        "up",
        &[(b1.addr(), params[0]), (b2.addr(), params[1])],
    );
    (b1, b2)
}

/// Sends `GET path` on its own thread; the answer's status (0: broken).
fn spawn_get(addr: std::net::SocketAddr, path: &'static str) -> std::thread::JoinHandle<u16> {
    std::thread::spawn(move || {
        http::get(addr, path, &[("Host", HOST)]).map_or(0, |response| response.status)
    })
}

#[test]
fn a_removed_server_drains_its_requests_then_is_cut() {
    let s = start_with(&[]);
    let (b1, b2) = checked_pair(
        &s.elb,
        fast_policy(json!({"deregistration_delay": "3s"})),
        ["", ""],
    );
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(3));
    // Round robin: of two concurrent 2 s requests, one runs on b2; a third
    // request (6 s) outlives the drain.
    let long = [
        spawn_get(s.elb.addr, "/slow?delay_ms=2000"),
        spawn_get(s.elb.addr, "/slow?delay_ms=2000"),
    ];
    std::thread::sleep(Duration::from_millis(100));
    let (b2_before, b1_before) = (b2.hits(), b1.hits());
    assert_eq!((b1_before, b2_before), (1, 1), "one long request on each");
    let too_long = spawn_get(s.elb.addr, "/slow?delay_ms=6000");
    std::thread::sleep(Duration::from_millis(100));
    let on_b2 = b2.hits() > b2_before;
    s.elb.put_upstream("up", &[(b1.addr(), "")]);
    let report = health(&s.elb);
    let b2_report = &report["up"]["servers"][b2.addr().to_string()];
    assert_eq!(b2_report["state"], "draining", "{report}");
    let left = b2_report["drain_seconds_left"].as_f64().expect("time left");
    assert!(left > 2.0 && left <= 3.0, "{left}");
    // Nothing new reaches the draining server.
    let hits = b2.hits();
    for _ in 0..10 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b1");
    }
    assert_eq!(b2.hits(), hits);
    for request in long {
        assert_eq!(
            request.join().expect("thread"),
            200,
            "in-flight requests complete"
        );
    }
    wait_state(&s.elb, &b2, "absent", Duration::from_secs(3));
    let cut = too_long.join().expect("thread");
    if on_b2 {
        assert_ne!(
            cut, 200,
            "a request still running when the drain ends is cut"
        );
    } else {
        assert_eq!(cut, 200);
    }
}

#[test]
fn down_servers_and_disabled_zones_drain() {
    let s = start_with(&["--zone", "zone-a"]);
    let (b1, b2) = checked_pair(
        &s.elb,
        fast_policy(json!({"deregistration_delay": "1s"})),
        ["zone=zone-a", "zone=zone-b"],
    );
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    s.elb
        .admin_ok("PUT", "zones", Some(json!({"disabled": ["zone-b"]})));
    assert_eq!(
        s.elb.admin_ok("GET", "zones", None),
        json!({"disabled": ["zone-b"]})
    );
    assert_eq!(state_of(&s.elb, &b2), "draining");
    for _ in 0..6 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b1");
    }
    wait_state(&s.elb, &b2, "unused", Duration::from_secs(3));
    s.elb
        .admin_ok("PUT", "zones", Some(json!({"disabled": []})));
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    // `down` drains too.
    s.elb.put_upstream(
        "up",
        &[(b1.addr(), "zone=zone-a down"), (b2.addr(), "zone=zone-b")],
    );
    assert_eq!(state_of(&s.elb, &b1), "draining");
    for _ in 0..6 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b2");
    }
}

#[test]
fn without_cross_zone_the_own_zone_is_preferred_while_it_is_healthy() {
    let s = start_with(&["--zone", "zone-a"]);
    let (b1, b2) = checked_pair(
        &s.elb,
        fast_policy(json!({"cross_zone": false})),
        ["zone=zone-a", "zone=zone-b"],
    );
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(3));
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    for _ in 0..6 {
        assert_eq!(served_by(&s.elb.get(HOST, "/x", None)), "b1");
    }
    b1.set_health_status(Some(503));
    wait_state(&s.elb, &b1, "unhealthy", Duration::from_secs(2));
    for _ in 0..6 {
        assert_eq!(
            served_by(&s.elb.get(HOST, "/x", None)),
            "b2",
            "other zones when ours fails"
        );
    }
}

#[test]
fn slow_start_raises_a_new_servers_share_over_the_period() {
    let s = start_with(&[]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    s.elb.admin_ok(
        "PUT",
        "policy",
        Some(json!({"up": fast_policy(json!({"slow_start": "4s",
            "health_check": {"target": "HTTP/health", "interval": "100ms", "timeout": "50ms",
                             "healthy_threshold": 1, "unhealthy_threshold": 2}}))})),
    );
    s.elb.route(HOST, "up", &[(b1.addr(), "")]);
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(3));
    s.elb
        .put_upstream("up", &[(b1.addr(), ""), (b2.addr(), "")]);
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));
    // b2's share of new requests in four windows of about a second.
    let mut shares = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let mut on_b2 = 0u32;
        let mut total = 0u32;
        while started.elapsed() < Duration::from_millis(900) {
            total += 1;
            if served_by(&s.elb.get(HOST, "/x", None)) == "b2" {
                on_b2 += 1;
            }
        }
        shares.push(f64::from(on_b2) / f64::from(total));
    }
    eprintln!("b2's share per window: {shares:?}");
    assert!(shares[0] < 0.3, "{shares:?}");
    assert!(shares[3] > shares[0] + 0.15, "{shares:?}");
    std::thread::sleep(Duration::from_millis(500));
    let report = health(&s.elb);
    assert!(
        report["up"]["servers"][b2.addr().to_string()]
            .get("slow_start_weight_percent")
            .is_none(),
        "the ramp is over: {report}"
    );
}

#[test]
fn bad_policy_documents_are_refused_and_change_nothing() {
    let s = start_with(&[]);
    let good = fast_policy(json!({}));
    s.elb
        .admin_ok("PUT", "policy", Some(json!({"up": good.clone()})));
    let before = s.elb.admin_ok("GET", "policy", None);
    let state_file = s.elb.state_dir.join("state.json");
    let stored = std::fs::read(&state_file).expect("state file");
    for (doc, field) in [
        (
            json!({"health_check": {"interval": "10ms"}}),
            "health_check.interval",
        ),
        (
            json!({"health_check": {"timeout": "30s"}}),
            "health_check.timeout",
        ),
        (
            json!({"health_check": {"healthy_threshold": 11}}),
            "health_check.healthy_threshold",
        ),
        (
            json!({"health_check": {"matcher": "2xx"}}),
            "health_check.matcher",
        ),
        (
            json!({"health_check": {"target": "FTP:21"}}),
            "health_check.target",
        ),
        (json!({"cross_zone": 1}), "cross_zone"),
        (json!({"draining": "1s"}), "draining"),
    ] {
        // A good policy beside the bad one is not written either.
        let body = json!({"other": good.clone(), "up": doc});
        let response = http::admin(s.elb.addr, "PUT", "policy", Some(&body)).expect("PUT");
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        let error = response.json().expect("json")["error"].to_string();
        assert!(error.contains(field) && error.contains("up"), "{error}");
    }
    assert_eq!(s.elb.admin_ok("GET", "policy", None), before);
    assert_eq!(
        std::fs::read(&state_file).expect("state file"),
        stored,
        "byte-identical"
    );
    let response = http::admin(
        s.elb.addr,
        "PUT",
        "zones",
        Some(&json!({"disabled": ["a b"]})),
    )
    .expect("PUT");
    assert_eq!(response.status, 400, "{}", response.text());
    // DELETE removes; the canonical form fills in the defaults.
    let canonical = &before["up"];
    assert_eq!(canonical["health_check"]["matcher"], "200-399");
    assert_eq!(canonical["slow_start"], "0s");
    s.elb.admin_ok("DELETE", "policy", Some(json!(["up"])));
    assert_eq!(s.elb.admin_ok("GET", "policy", None), json!({}));
}
