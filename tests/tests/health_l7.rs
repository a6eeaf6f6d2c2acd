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
    l7::{Cleanup, L7Builder, L7Elb},
};
use serde_json::{Value, json};

const HOST: &str = "probe.test";

struct Setup {
    elb: L7Elb,
    _cleanup: Cleanup,
}

fn start(extra: &[&str]) -> Setup {
    let mut builder = L7Builder::new();
    for arg in extra {
        builder = builder.arg(arg);
    }
    let elb = builder.start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    Setup {
        elb,
        _cleanup: cleanup,
    }
}

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

fn served_by(response: &http::HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().expect("json")["server"]
        .as_str()
        .expect("server")
        .to_owned()
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
    let s = start(&[]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    s.elb
        .admin_ok("PUT", "policy", Some(json!({"up": fast_policy(json!({}))})));
    s.elb.route(HOST, "up", &[(b1.addr(), ""), (b2.addr(), "")]);
    wait_state(&s.elb, &b1, "healthy", Duration::from_secs(3));
    wait_state(&s.elb, &b2, "healthy", Duration::from_secs(3));

    let load = Load::start(s.elb.addr);
    std::thread::sleep(Duration::from_millis(200));
    b2.set_health_status(Some(503));
    // interval × unhealthy_threshold + timeout, plus one interval of
    // phase and jitter.
    let took = wait_state(&s.elb, &b2, "unhealthy", Duration::from_millis(800));
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
    let s = start(&[]);
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
    let s = start(&[]);
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
