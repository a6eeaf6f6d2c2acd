//! Zero-downtime restart (`elb run --takeover`): a real elb, two real
//! backends and real wrk at 50 connections. Five takeovers in a row lose
//! no request; the same load through a plain restart (SIGTERM, then a new
//! elb) does lose some, which shows the measurement can fail. A new elb
//! that fails before serving leaves the running one serving untouched.
use std::{
    net::SocketAddr,
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
    wrk::Wrk,
};

const HOST: &str = "takeover.example.com";

/// elb routing HOST over two backends.
fn start() -> (L7Elb, Cleanup, [Backend; 2]) {
    let elb = L7Builder::new().start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    let backends = [
        Backend::start("one").expect("backend"),
        Backend::start("two").expect("backend"),
    ];
    elb.route(
        HOST,
        "web",
        &[(backends[0].addr(), ""), (backends[1].addr(), "")],
    );
    (elb, cleanup, backends)
}

/// Starts `elb run --takeover` with the same name, port and state, waits
/// until it serves and the old one has exited; returns the new one.
fn take_over(old: &mut L7Elb) -> L7Elb {
    take_over_with(old, L7Builder::same_as(old))
}

/// [`take_over`] with a builder that carries the old elb's own flags.
fn take_over_with(old: &mut L7Elb, builder: L7Builder) -> L7Elb {
    let mut new = builder
        .arg("--takeover")
        .start()
        .expect("start the new elb");
    new.process
        .wait_for_log(Duration::from_secs(15), "takeover complete")
        .expect("the new elb took over");
    let status = old
        .process
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the old elb did not exit: {e:#}"));
    assert!(status.success(), "old elb: {status}\n{}", old.process.log());
    let log = old.process.plain_log();
    assert!(log.contains("taken over"), "{log}");
    new
}

#[test]
fn five_takeovers_under_wrk_lose_no_request() {
    let (mut elb, _cleanup, backends) = start();
    let wrk = Wrk::start(elb.addr, HOST, 50, Duration::from_secs(20)).expect("wrk");
    let started = Instant::now();
    let mut pids = vec![elb.process.pid().expect("pid")];
    for round in 1..=5u32 {
        // Spread over the run: at 2.5 s, 5.5 s, ... 14.5 s.
        let at = Duration::from_millis(2_500 + 3_000 * u64::from(round - 1));
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        elb = take_over(&mut elb);
        pids.push(elb.process.pid().expect("pid"));
    }
    let (summary, text) = wrk.finish().expect("wrk result");
    eprintln!("wrk across 5 takeovers (elb pids {pids:?}): {summary:?}\n{text}");
    assert!(summary.requests > 1_000, "{text}");
    assert_eq!(summary.socket_errors(), 0, "{text}");
    assert_eq!(summary.bad_status, 0, "{text}");
    for backend in &backends {
        assert!(
            backend.hits() > 100,
            "{} got {}",
            backend.name(),
            backend.hits()
        );
    }
    // The last elb is a normal one: it answers and stops on SIGTERM.
    assert_eq!(elb.get(HOST, "/", None).status, 200);
    let status = elb.process.stop().expect("stop");
    assert!(status.success(), "{}", elb.process.log());
}

/// The control: the same load through a plain restart (SIGTERM drains the
/// old elb, then a new one binds) loses requests, so the test above would
/// see it if the handover did not work.
#[test]
fn a_plain_restart_under_wrk_loses_requests() {
    let (mut elb, _cleanup, _backends) = start();
    let wrk = Wrk::start(elb.addr, HOST, 50, Duration::from_secs(4)).expect("wrk");
    std::thread::sleep(Duration::from_millis(1_500));
    let status = elb.process.stop().expect("stop");
    assert!(status.success());
    let restarted = L7Builder::same_as(&elb).start().expect("restart");
    let (summary, text) = wrk.finish().expect("wrk result");
    eprintln!("wrk across a plain restart: {summary:?}");
    assert!(
        summary.socket_errors() + summary.bad_status > 0,
        "a plain restart lost nothing?\n{text}"
    );
    drop(restarted);
}

/// Requests on fresh connections, one after another, until stopped;
/// counts the ones that did not get a 200.
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http::get(addr, "/", &[("Host", HOST)]) {
                        Ok(response) if response.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("status {}", response.status));
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{error:#}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                errors
            }
        });
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// (answered, failed, the failures).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .thread
            .take()
            .map(|t| t.join().expect("prober"))
            .unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `elb run --takeover` with `elb`'s name, port and run directory
/// (`state_file`: instead of elb's), plus `extra`.
fn spawn_takeover(
    elb: &L7Elb,
    state_file: Option<&str>,
    extra: &[&str],
) -> elb_tests::elb_process::ElbProcess {
    let listen = elb.addr.to_string();
    let state_file = state_file.map_or_else(
        || {
            elb.state_dir
                .join("state.json")
                .to_string_lossy()
                .into_owned()
        },
        str::to_owned,
    );
    let run_dir = elb.state_dir.to_string_lossy().into_owned();
    let mut args = vec![
        "run",
        "--name",
        &elb.name,
        "--listen",
        &listen,
        "--state-file",
        &state_file,
        "--run-dir",
        &run_dir,
        "--takeover",
    ];
    args.extend_from_slice(extra);
    elb_tests::elb_process::ElbProcess::spawn(&args, None).expect("spawn")
}

/// Starts a takeover that must fail; returns its log.
fn failed_takeover(elb: &L7Elb, state_file: Option<&str>, extra: &[&str]) -> String {
    let mut new = spawn_takeover(elb, state_file, extra);
    let status = new
        .wait_exit(Duration::from_secs(15))
        .expect("the failing elb exits");
    assert!(!status.success(), "{}", new.log());
    new.plain_log()
}

/// While a new elb starts (here: waiting for an etcd that never answers),
/// the old one answers admin writes 503: the new one has read the state
/// already and would not see them. When the new one fails, writes work
/// again on the old one.
#[test]
fn admin_writes_pause_during_a_takeover_and_resume_when_it_fails() {
    let (mut elb, _cleanup, backends) = start();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let missing = elb.state_dir.join("no-such-snapshot.json");
    let mut new = spawn_takeover(
        &elb,
        Some(missing.to_str().expect("utf-8")),
        &["--etcd", &silent_addr],
    );
    elb.process
        .wait_for_log(
            Duration::from_secs(10),
            "takeover: a new elb asks for the sockets",
        )
        .expect("the takeover began");
    let body = serde_json::json!({"web": {backends[0].addr().to_string(): ""}});
    let refused = http::admin(elb.addr, "PUT", "upstream", Some(&body)).expect("admin");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("taking over"), "{}", refused.text());
    // Reads still work.
    let read = http::admin(elb.addr, "GET", "upstream", None).expect("admin");
    assert_eq!(read.status, 200);
    let status = new
        .wait_exit(Duration::from_secs(30))
        .expect("new elb exits");
    assert!(!status.success());
    assert!(
        new.plain_log().contains("no local snapshot"),
        "{}",
        new.log()
    );
    elb.process
        .wait_for_log(
            Duration::from_secs(5),
            "takeover failed before the new elb served",
        )
        .expect("the old elb noticed");
    elb.put_upstream("web", &[(backends[0].addr(), "")]);
    assert_eq!(elb.get(HOST, "/", None).status, 200);
    drop(silent);
}

#[test]
fn a_new_elb_that_fails_before_serving_leaves_the_old_one_serving() {
    let (mut elb, _cleanup, _backends) = start();
    let old_pid = elb.process.pid().expect("pid");
    let prober = Prober::start(elb.addr);
    std::thread::sleep(Duration::from_millis(300));

    // Fails after it received the sockets: an interface that does not
    // exist (the XDP start comes after the handover's first half).
    let log = failed_takeover(
        &elb,
        None,
        &["--xdp-iface", "nosuch0", "--l4-dataplane", "xdp"],
    );
    assert!(log.contains("received a listening socket"), "{log}");
    assert!(log.contains("nosuch0"), "{log}");
    // The store unreachable with no snapshot: refuses to serve empty.
    let missing = elb.state_dir.join("no-such-snapshot.json");
    let log = failed_takeover(
        &elb,
        Some(missing.to_str().expect("utf-8")),
        &["--etcd", "127.0.0.1:1"],
    );
    assert!(log.contains("no local snapshot"), "{log}");
    // Bad flags: refused before it even asks.
    let log = failed_takeover(&elb, None, &["--header-timeout", "soon"]);
    assert!(log.contains("soon"), "{log}");
    std::thread::sleep(Duration::from_millis(300));

    let (ok, failed, errors) = prober.finish();
    assert_eq!(
        failed, 0,
        "requests failed during the failed takeovers: {errors:?}"
    );
    assert!(ok > 20, "only {ok} requests");
    assert_eq!(elb.process.pid(), Some(old_pid), "the old elb still runs");
    let log = elb.process.plain_log();
    assert_eq!(
        log.matches("takeover failed before the new elb served")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("taken over"), "{log}");
    assert_eq!(elb.get(HOST, "/", None).status, 200);

    // The old one still offers the takeover, with its lock: a good one
    // goes through.
    let mut new = take_over(&mut elb);
    assert_eq!(new.get(HOST, "/", None).status, 200);
    new.stop();
}

/// A configured listener's sockets are handed over too (labelled with its
/// name): requests on it never fail across two takeovers, and the new elb
/// serves it on the received sockets rather than binding anew.
#[test]
fn a_configured_listener_is_handed_over() {
    let (mut elb, _cleanup, _backends) = start();
    let port = elb_tests::ports::free_port();
    let extra: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    elb.admin_ok(
        "PUT",
        "listener",
        Some(serde_json::json!({"extra": {"address": extra.to_string(), "protocol": "http"}})),
    );
    let prober = Prober::start(extra);
    std::thread::sleep(Duration::from_millis(300));
    let mut logs = Vec::new();
    for _ in 0..2 {
        elb = take_over(&mut elb);
        std::thread::sleep(Duration::from_millis(300));
        logs.push(elb.process.plain_log());
    }
    let (ok, failed, errors) = prober.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 20, "only {ok} requests");
    for log in logs {
        assert!(
            log.contains(&format!("kind=Listener addr={extra} name=\"extra\"")),
            "{log}"
        );
        assert!(!log.contains("is not in this configuration"), "{log}");
    }
}

/// The `--metrics` and `--aws-api` listeners are not configuration, but a
/// takeover hands them over too: the new elb could not bind the addresses
/// the old one still holds, and the takeover would fail.
#[test]
fn the_metrics_and_aws_api_listeners_are_handed_over() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", elb_tests::ports::free_port())
        .parse()
        .expect("addr");
    let aws_api: SocketAddr = format!("127.0.0.1:{}", elb_tests::ports::free_port())
        .parse()
        .expect("addr");
    let credentials = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        credentials.path(),
        "[test]\naws_access_key_id = AKIDTEST\naws_secret_access_key = secret\n",
    )
    .expect("write credentials");
    let credentials_path = credentials.path().to_string_lossy().into_owned();
    let with_flags = |builder: L7Builder| {
        builder
            .arg("--metrics")
            .arg(&metrics.to_string())
            .arg("--aws-api")
            .arg(&aws_api.to_string())
            .arg("--aws-api-credentials")
            .arg(&credentials_path)
            // The SDK's region and credentials from nowhere but here: no
            // instance-metadata request leaves the machine.
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    };
    let mut elb = with_flags(L7Builder::new()).start().expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let answers = |elb: &L7Elb| {
        let scrape = http::get(metrics, "/metrics", &[]).expect("GET /metrics");
        assert_eq!(scrape.status, 200, "{}", scrape.text());
        // Unsigned: AWS's 403, from the API listener itself (it opens a
        // little after the HTTP listener: the SDK is set up first).
        let started = Instant::now();
        let api = loop {
            match http::get(aws_api, "/?Action=DescribeLoadBalancers", &[]) {
                Ok(api) => break api,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("GET API: {e:#}\n{}", elb.process.log()),
            }
        };
        assert_eq!(api.status, 403, "{}", api.text());
        assert!(
            api.text().contains("MissingAuthenticationToken"),
            "{}\n{}",
            api.text(),
            elb.process.log()
        );
    };
    answers(&elb);
    for _ in 0..2 {
        let builder = with_flags(L7Builder::same_as(&elb));
        elb = take_over_with(&mut elb, builder);
        answers(&elb);
        let log = elb.process.plain_log();
        for name in ["--metrics", "--aws-api"] {
            assert!(log.contains(&format!("name=\"{name}\"")), "{log}");
        }
    }
}
