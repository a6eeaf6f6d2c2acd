//! The `tls` and `h2` server parameters on a real elb, with real TLS and
//! HTTP/2 backends (hyper behind tokio-rustls, certificates from a test
//! CA): verification against `--upstream-ca` or the system roots, SNI,
//! HTTP/2 by prior knowledge and by ALPN on one shared connection, and
//! `HTTPS:` health checks.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use elb_tests::{
    l7::{L7Elb, Setup, start_with},
    pki::Chain,
    proto_backend::{Proto, ProtoBackend},
};
use serde_json::{Map, Value, json};

const HOST: &str = "up.test";

/// A test CA and its files; the directory goes when dropped.
struct Ca {
    chain: Chain,
    ca_file: String,
    _dir: tempfile::TempDir,
}

fn ca(tag: &str) -> Ca {
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = Chain::new(tag).expect("test CA");
    let files = chain.write(dir.path()).expect("write PEM files");
    Ca {
        chain,
        ca_file: files.ca.to_string_lossy().into_owned(),
        _dir: dir,
    }
}

fn backend(name: &str, ca: Option<&Ca>, h2: bool) -> ProtoBackend {
    let tls = ca.map(|ca| (ca.chain.server_cert.clone(), ca.chain.server_key.clone()));
    ProtoBackend::start(
        name,
        Proto {
            tls,
            h2,
            ..Proto::default()
        },
    )
    .expect("start backend")
}

/// Upstream `up` with these `(server key, parameters)`, and `HOST` routed
/// to it.
fn route(elb: &L7Elb, servers: &[(String, &str)]) {
    let servers: Map<String, Value> = servers
        .iter()
        .map(|(server, params)| (server.clone(), Value::from(*params)))
        .collect();
    elb.admin_ok("PUT", "upstream", Some(json!({ "up": servers })));
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({ HOST: elb_tests::l7::backend_doc("up") })),
    );
}

fn get(elb: &L7Elb, path: &str) -> elb_tests::http::HttpResponse {
    elb.get(HOST, path, None)
}

/// The backend's JSON report of a request that must have been a 200.
fn report(response: &elb_tests::http::HttpResponse) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().expect("backend JSON")
}

fn localhost(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

fn start_trusting(ca: &Ca, extra: &[&str]) -> Setup {
    let mut args = vec!["--upstream-ca", ca.ca_file.as_str()];
    args.extend_from_slice(extra);
    start_with(&args)
}

#[test]
fn a_tls_server_is_reached_over_tls_verified_with_the_upstream_ca() {
    let ca = ca("up");
    let backend = backend("secure", Some(&ca), false);
    let s = start_trusting(&ca, &[]);
    route(&s.elb, &[(backend.addr().to_string(), "tls")]);
    let answer = report(&get(&s.elb, "/over-tls?x=1"));
    assert_eq!(answer["server"], "secure");
    assert_eq!(answer["version"], "HTTP/1.1");
    assert_eq!(answer["uri"], "/over-tls?x=1");
    assert_eq!(answer["headers"]["host"], HOST);
    // Kept alive and reused like a plaintext connection (one per worker
    // at most).
    for _ in 0..5 {
        report(&get(&s.elb, "/again"));
    }
    assert!(backend.connections() <= 2, "{}", backend.connections());
    // An IP address is verified as such, and sent as no SNI (RFC 6066).
    assert!(backend.sni_names().iter().all(Option::is_none));
    // The listing shows the flag.
    let upstreams = s.elb.admin_ok("GET", "upstream", None);
    assert!(
        upstreams.to_string().contains("\"tls\":true"),
        "{upstreams}"
    );
}

#[test]
fn sni_is_the_host_name_of_a_named_server() {
    let ca = ca("sni");
    let backend = backend("named", Some(&ca), false);
    let s = start_trusting(&ca, &[]);
    route(&s.elb, &[(localhost(backend.addr()), "tls")]);
    report(&get(&s.elb, "/"));
    assert_eq!(backend.sni_names(), vec![Some("localhost".to_owned())]);
}

#[test]
fn an_untrusted_certificate_is_a_502_with_the_reason_logged() {
    let ca = ca("unknown");
    let untrusted = backend("untrusted", Some(&ca), false);
    // No --upstream-ca: the system roots do not know the test CA.
    let mut s = start_with(&[]);
    route(&s.elb, &[(untrusted.addr().to_string(), "tls")]);
    let response = get(&s.elb, "/");
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(untrusted.hits(), 0);
    s.elb
        .process
        .wait_for_log(Duration::from_secs(5), "UnknownIssuer")
        .expect("the rustls reason in the log");
    let log = s.elb.process.plain_log();
    let line = log
        .lines()
        .find(|line| line.contains("UnknownIssuer"))
        .expect("log line");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&untrusted.addr().to_string()), "{line}");
}

#[test]
fn a_verification_failure_counts_against_the_server_like_a_connect_failure() {
    let trusted = ca("trusted");
    let other = ca("other");
    let good = backend("good", Some(&trusted), false);
    let bad = backend("bad", Some(&other), false);
    let s = start_trusting(&trusted, &[]);
    route(
        &s.elb,
        &[
            (good.addr().to_string(), "tls max_fails=1 fail_timeout=30s"),
            (bad.addr().to_string(), "tls max_fails=1 fail_timeout=30s"),
        ],
    );
    for _ in 0..10 {
        // A try on the bad server fails before sending and is retried.
        assert_eq!(report(&get(&s.elb, "/"))["server"], "good");
    }
    // Taken out after its first failure: not tried again.
    assert_eq!(bad.connections(), 1);
    assert_eq!(bad.hits(), 0);
}

#[test]
fn a_bad_upstream_ca_file_stops_elb_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let missing = dir.path().join("missing.pem");
    for (file, reason) in [
        (&not_pem, "no PEM CERTIFICATE"),
        (&missing, "cannot read it"),
    ] {
        let file = file.to_string_lossy().into_owned();
        let mut process = elb_tests::elb_process::ElbProcess::spawn(
            &[
                "run",
                "--name",
                &elb_tests::netns::unique_name("L"),
                "--listen",
                "127.0.0.1:0",
                "--run-dir",
                &dir.path().to_string_lossy(),
                "--state-file",
                &dir.path().join("state.json").to_string_lossy(),
                "--upstream-ca",
                &file,
            ],
            None,
        )
        .expect("spawn elb");
        let status = process
            .wait_exit(Duration::from_secs(20))
            .expect("elb exits");
        assert!(!status.success());
        let log = process.plain_log();
        assert!(
            log.contains("--upstream-ca") && log.contains(&file) && log.contains(reason),
            "{log}"
        );
    }
}

#[test]
fn an_h2_server_gets_http2_on_one_shared_connection() {
    let backend = backend("h2c", None, true);
    let s = start_with(&["--workers", "1"]);
    route(&s.elb, &[(backend.addr().to_string(), "h2")]);
    concurrent_gets(&s.elb, 24);
    assert_eq!(
        backend.connections(),
        1,
        "one h2 connection for every request"
    );

    let response = elb_tests::http::get(
        s.elb.addr,
        "/first?q=1",
        &[("Host", HOST), ("TE", "trailers")],
    )
    .expect("GET");
    let answer = report(&response);
    assert_eq!(answer["version"], "HTTP/2.0");
    assert_eq!(answer["uri"], format!("http://{HOST}/first?q=1"));
    // gRPC servers want `te: trailers`; no other hop-by-hop header goes.
    assert_eq!(answer["headers"]["te"], "trailers");
    for hop in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(answer["headers"].get(hop).is_none(), "{answer}");
    }
    assert_eq!(backend.connections(), 1);
    assert_eq!(backend.hits(), 25);
}

/// `count` GETs at once, each held 300 ms by the server; all answered
/// over HTTP/2.
fn concurrent_gets(elb: &L7Elb, count: usize) {
    let addr = elb.addr;
    let started = Instant::now();
    let threads: Vec<_> = (0..count)
        .map(|_| {
            std::thread::spawn(move || {
                elb_tests::http::get(addr, "/slow?delay_ms=300", &[("Host", HOST)]).expect("GET")
            })
        })
        .collect();
    for thread in threads {
        let answer = report(&thread.join().expect("client thread"));
        assert_eq!(answer["version"], "HTTP/2.0");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn requests_that_come_while_the_h2_connection_opens_wait_for_it() {
    let ca = ca("slow");
    let slow = ProtoBackend::start(
        "slow-handshake",
        Proto {
            tls: Some((ca.chain.server_cert.clone(), ca.chain.server_key.clone())),
            h2: true,
            handshake_delay: Duration::from_millis(500),
            ..Proto::default()
        },
    )
    .expect("start backend");
    let s = start_trusting(&ca, &["--workers", "1"]);
    route(&s.elb, &[(slow.addr().to_string(), "tls h2")]);
    concurrent_gets(&s.elb, 16);
    assert_eq!(slow.connections(), 1, "one handshake served every request");
}

#[test]
fn h2_over_tls_is_chosen_by_alpn() {
    let ca = ca("h2");
    let h2 = backend("h2-tls", Some(&ca), true);
    let mut s = start_trusting(&ca, &["--workers", "1"]);
    route(&s.elb, &[(localhost(h2.addr()), "tls h2")]);
    for _ in 0..5 {
        let answer = report(&get(&s.elb, "/alpn"));
        assert_eq!(answer["version"], "HTTP/2.0");
        assert_eq!(answer["sni"], "localhost");
        assert_eq!(answer["uri"], format!("https://{HOST}/alpn"));
    }
    assert_eq!(h2.connections(), 1);

    // A server that does not choose h2 fails clearly, whether it refuses
    // the handshake (ALPN http/1.1 only) or completes it with no protocol.
    let refusing = backend("h1-tls", Some(&ca), false);
    let silent = ProtoBackend::start(
        "no-alpn",
        Proto {
            tls: Some((ca.chain.server_cert.clone(), ca.chain.server_key.clone())),
            no_alpn: true,
            ..Proto::default()
        },
    )
    .expect("start backend");
    for server in [&refusing, &silent] {
        route(&s.elb, &[(server.addr().to_string(), "tls h2")]);
        let response = get(&s.elb, "/");
        assert_eq!(response.status, 502, "{}", response.text());
        let needle = format!("{} did not choose HTTP/2", server.addr());
        s.elb
            .process
            .wait_for_log(Duration::from_secs(5), &needle)
            .expect("the reason in the log");
        assert_eq!(server.hits(), 0);
    }
}

fn health_state(elb: &L7Elb, server: &str) -> (String, String) {
    let report = elb.admin_ok("GET", "health", None);
    let entry = &report["up"]["servers"][server];
    (
        entry["state"].as_str().unwrap_or("absent").to_owned(),
        entry["reason"].as_str().unwrap_or("").to_owned(),
    )
}

fn wait_health(elb: &L7Elb, server: &str, state: &str) -> String {
    let started = Instant::now();
    loop {
        let (now, reason) = health_state(elb, server);
        if now == state {
            return reason;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{server} not {state}: {now} ({reason})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn https_health_checks_use_the_upstream_tls_client() {
    let trusted = ca("checked");
    let other = ca("stranger");
    let good = backend("good", Some(&trusted), false);
    let stranger = backend("stranger", Some(&other), false);
    let s = start_trusting(&trusted, &[]);
    let (good_key, stranger_key) = (localhost(good.addr()), localhost(stranger.addr()));
    route(
        &s.elb,
        &[(good_key.clone(), "tls"), (stranger_key.clone(), "tls")],
    );
    s.elb.admin_ok(
        "PUT",
        "policy",
        Some(
            json!({"up": {"health_check": {"target": "HTTPS/health", "interval": "500ms",
            "timeout": "400ms", "healthy_threshold": 2, "unhealthy_threshold": 2}}}),
        ),
    );
    wait_health(&s.elb, &good_key, "healthy");
    let reason = wait_health(&s.elb, &stranger_key, "unhealthy");
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(good.hits() >= 2, "the good server got its checks");
    assert_eq!(stranger.hits(), 0);
    assert!(
        good.sni_names()
            .iter()
            .all(|name| name.as_deref() == Some("localhost"))
    );
    // Traffic goes to the healthy one only.
    for _ in 0..4 {
        assert_eq!(report(&get(&s.elb, "/"))["server"], "good");
    }
}

#[test]
fn trailers_from_an_h2_server_reach_an_h2_client() {
    let backend = backend("grpc-like", None, true);
    let s = start_with(&[]);
    route(&s.elb, &[(backend.addr().to_string(), "h2")]);
    let h2c = SocketAddr::from(([127, 0, 0, 1], elb_tests::ports::free_port()));
    s.elb.admin_ok(
        "PUT",
        "listener",
        Some(json!({"clear": {"address": h2c.to_string(), "protocol": "http", "http2": true}})),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (body, trailers) = runtime.block_on(async {
        // The listener opens live: retry the connection for a moment.
        let started = Instant::now();
        let tcp = loop {
            match tokio::net::TcpStream::connect(h2c).await {
                Ok(tcp) => break tcp,
                Err(error) => {
                    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (sender, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut sender = sender.ready().await.expect("ready");
        let request = http::Request::get(format!("http://{HOST}/trailers"))
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, _) = sender.send_request(request, true).expect("send");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.expect("trailers");
        (bytes, trailers)
    });
    assert_eq!(body, b"payload");
    let trailers = trailers.expect("the server's trailers");
    assert_eq!(trailers.get("grpc-status").expect("grpc-status"), "0");
    assert_eq!(trailers.get("grpc-message").expect("grpc-message"), "fine");
}
