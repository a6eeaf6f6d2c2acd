//! The L7 proxy end to end, on the embedded store: real elb, real backends,
//! real HTTP. Each spec semantic of the rule document gets a request here.
use std::{collections::HashMap, time::Duration};

use elb_tests::{
    backend::Backend,
    http,
    l7::{backend_doc, served_by, start_with as start},
};
use serde_json::{Value, json};

fn seed_rules(up1: &str, up2: &str) -> Value {
    json!({"init": "r1", "rules": {
        "r1": {"type": "ua", "args": {"pattern": "httpie(\\S+)$", "succ": "r4", "fail": "r3"}},
        "r2": {"type": "backend", "args": {"servername": up1}},
        "r3": {"type": "backend", "args": {"servername": up2}},
        "r4": {"type": "path", "args": {"regex": true, "pattern": "^\\/blog\\/(\\S+)$",
                                        "succ": "r2", "fail": "r3", "rewrite": false}}}})
}

#[test]
fn seed_document_routes_by_user_agent_then_path() {
    let s = start(&[]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    s.elb.put_upstream("upstream1", &[(b1.addr(), "")]);
    s.elb.put_upstream("upstream2", &[(b2.addr(), "")]);
    s.elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"example.com": seed_rules("upstream1", "upstream2")})),
    );

    // UA is lower-cased before matching; the pattern is not.
    let httpie = Some("HTTPie/0.9.9");
    assert_eq!(
        served_by(&s.elb.get("example.com", "/blog/a/b", httpie)),
        "b1"
    );
    // UA matches, path does not: fail branch of the path rule (not succ).
    assert_eq!(served_by(&s.elb.get("example.com", "/shop", httpie)), "b2");
    // UA does not match, or is missing.
    assert_eq!(
        served_by(&s.elb.get("example.com", "/blog/a", Some("curl/8"))),
        "b2"
    );
    assert_eq!(served_by(&s.elb.get("example.com", "/blog/a", None)), "b2");
    // Without rewrite the path (and query) reach the upstream unchanged.
    let response = s.elb.get("example.com", "/blog/a/b?x=1", httpie);
    assert_eq!(response.json().expect("json")["path"], "/blog/a/b?x=1");
}

#[test]
fn host_is_case_insensitive_and_may_carry_a_port() {
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    s.elb.put_upstream("up", &[(b1.addr(), "")]);
    let backend_only = backend_doc("up");
    s.elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"Example.COM": backend_only, "port.example:8080": backend_only})),
    );
    assert_eq!(served_by(&s.elb.get("example.com", "/", None)), "b1");
    assert_eq!(served_by(&s.elb.get("EXAMPLE.com:8080", "/", None)), "b1");
    // The exact value (with port) is tried first.
    assert_eq!(served_by(&s.elb.get("port.example:8080", "/", None)), "b1");
    assert_eq!(s.elb.get("port.example:9090", "/", None).status, 404);
    assert_eq!(s.elb.get("unknown.example", "/", None).status, 404);
}

#[test]
fn path_prefix_regex_rewrite_and_backend_headers() {
    let s = start(&[]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    s.elb.put_upstream("one", &[(b1.addr(), "")]);
    s.elb.put_upstream("two", &[(b2.addr(), "")]);
    let doc = json!({"init": "prefix", "rules": {
        "prefix": {"type": "path", "args": {"pattern": "/api", "succ": "rewrite", "fail": "two"}},
        "rewrite": {"type": "path", "args": {"regex": true, "rewrite": true,
                    "pattern": "^/api/v1/(.*)$", "succ": "one", "fail": "two"}},
        "one": {"type": "backend", "args": {"servername": "one", "expires": "30d", "x-level": 3}},
        "two": {"type": "backend", "args": {"servername": "two"}}}});
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"api.example": doc})));

    let rewritten = s.elb.get("api.example", "/api/v1/users/7?full=1", None);
    assert_eq!(served_by(&rewritten), "b1");
    let echo = rewritten.json().expect("json");
    assert_eq!(echo["path"], "/users/7?full=1", "first capture, query kept");
    assert_eq!(
        echo["headers"]["expires"], "30d",
        "backend args become headers"
    );
    assert_eq!(echo["headers"]["x-level"], "3");
    // Prefix matching is case-sensitive; "/API" is not "/api".
    assert_eq!(
        served_by(&s.elb.get("api.example", "/API/v1/x", None)),
        "b2"
    );
    assert_eq!(
        served_by(&s.elb.get("api.example", "/api/v2/x", None)),
        "b2"
    );
    // Percent-encoded paths are decoded before matching.
    assert_eq!(
        served_by(&s.elb.get("api.example", "/%61pi/v1/x", None)),
        "b1"
    );
}

#[test]
fn a_missing_branch_is_403() {
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    s.elb.put_upstream("up", &[(b1.addr(), "")]);
    let doc = json!({"init": "ua", "rules": {
        "ua": {"type": "ua", "args": {"pattern": "^mobile", "succ": "b"}},
        "b": {"type": "backend", "args": {"servername": "up"}}}});
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"m.example": doc})));
    assert_eq!(
        served_by(&s.elb.get("m.example", "/", Some("Mobile Safari"))),
        "b1"
    );
    assert_eq!(s.elb.get("m.example", "/", Some("desktop")).status, 403);
    assert_eq!(b1.hits(), 1, "a 403 never reaches the upstream");
}

#[test]
fn forwarding_headers_and_hop_by_hop() {
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    s.elb.route("h.example", "up", &[(b1.addr(), "")]);
    let response = http::get(
        s.elb.addr,
        "/",
        &[
            ("Host", "h.example"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Keep", "yes"),
        ],
    )
    .expect("request");
    let echo = response.json().expect("json");
    let headers = &echo["headers"];
    assert_eq!(headers["host"], "h.example", "Host passed through");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-keep"], "yes");
    assert!(
        headers.get("x-drop-me").is_none(),
        "named by Connection: {headers}"
    );
    assert!(headers.get("keep-alive").is_none(), "hop-by-hop: {headers}");
}

#[test]
fn a_literal_host_port_servername_needs_no_upstream() {
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    let doc = json!({"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": b1.addr().to_string()}}}});
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"lit.example": doc})));
    assert_eq!(served_by(&s.elb.get("lit.example", "/", None)), "b1");
    // A name that is neither an upstream nor host:port: 502.
    let doc = json!({"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": "nowhere"}}}});
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"none.example": doc})));
    assert_eq!(s.elb.get("none.example", "/", None).status, 502);
}

#[test]
fn weights_1_to_10_split_within_5_percent() {
    let s = start(&[]);
    let (light, heavy) = (
        Backend::start("light").expect("b"),
        Backend::start("heavy").expect("b"),
    );
    s.elb.put_upstream(
        "up",
        &[(light.addr(), "weight=1"), (heavy.addr(), "weight=10")],
    );
    let doc = backend_doc("up");
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"w.example": doc})));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..2000 {
        *counts
            .entry(served_by(&s.elb.get("w.example", "/", None)))
            .or_default() += 1;
    }
    let heavy_share = f64::from(counts["heavy"]) / 2000.0;
    assert!(
        (heavy_share - 10.0 / 11.0).abs() <= 0.05,
        "heavy got {heavy_share:.3} of requests: {counts:?}"
    );
}

#[test]
fn a_stopped_server_is_marked_down_and_gets_requests_retried() {
    let s = start(&[]);
    let (mut gone, alive) = (
        Backend::start("gone").expect("b"),
        Backend::start("alive").expect("b"),
    );
    s.elb.put_upstream(
        "up",
        &[
            (gone.addr(), "max_fails=2 fail_timeout=30s"),
            (alive.addr(), ""),
        ],
    );
    let doc = backend_doc("up");
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"f.example": doc})));
    gone.stop();
    // Every GET succeeds: the failed try moves on to the next server.
    for i in 0..20 {
        let response = s.elb.get("f.example", "/", None);
        assert_eq!(served_by(&response), "alive", "request {i}");
    }
    // max_fails=2: after two failures the stopped server is not tried again.
    let tries_before = alive.hits();
    for _ in 0..10 {
        served_by(&s.elb.get("f.example", "/", None));
    }
    assert_eq!(alive.hits() - tries_before, 10);
    let log = s.elb.process.log();
    let failed_tries = log.matches("upstream try failed").count();
    assert_eq!(
        failed_tries, 2,
        "only max_fails tries hit the dead server:\n{log}"
    );
}

#[test]
fn no_live_server_is_502_and_a_slow_one_is_504() {
    let s = start(&["--upstream-timeout", "300ms"]);
    let (mut dead, slow) = (
        Backend::start("dead").expect("b"),
        Backend::start("slow").expect("b"),
    );
    s.elb.put_upstream("dead", &[(dead.addr(), "")]);
    s.elb.put_upstream("slow", &[(slow.addr(), "")]);
    dead.stop();
    slow.set_delay(Duration::from_secs(2));
    let doc = backend_doc;
    s.elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"dead.example": doc("dead"), "slow.example": doc("slow")})),
    );
    assert_eq!(s.elb.get("dead.example", "/", None).status, 502);
    // Marked down now (max_fails=1): still 502, without trying.
    assert_eq!(s.elb.get("dead.example", "/", None).status, 502);
    let started = std::time::Instant::now();
    assert_eq!(s.elb.get("slow.example", "/", None).status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn backup_servers_take_over_only_when_primaries_are_down() {
    let s = start(&[]);
    let (mut primary, backup) = (
        Backend::start("primary").expect("b"),
        Backend::start("backup").expect("b"),
    );
    s.elb
        .put_upstream("up", &[(primary.addr(), ""), (backup.addr(), "backup")]);
    let doc = backend_doc("up");
    s.elb
        .admin_ok("PUT", "domain", Some(json!({"bk.example": doc})));
    for _ in 0..5 {
        assert_eq!(served_by(&s.elb.get("bk.example", "/", None)), "primary");
    }
    primary.stop();
    for _ in 0..5 {
        assert_eq!(served_by(&s.elb.get("bk.example", "/", None)), "backup");
    }
    // A server marked `down` is never used.
    s.elb.put_upstream("up", &[(backup.addr(), "down")]);
    assert_eq!(s.elb.get("bk.example", "/", None).status, 502);
}

#[test]
fn post_bodies_stream_through() {
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    s.elb.route("p.example", "up", &[(b1.addr(), "")]);
    let body = vec![b'x'; 3 << 20];
    let response = http::request(
        s.elb.addr,
        "POST",
        "/upload",
        &[("Host", "p.example")],
        Some(&body),
    )
    .expect("post");
    let echo = response.json().expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], body.len());
}

#[test]
fn upgrade_requests_are_tunnelled() {
    use std::io::{Read, Write};
    let s = start(&[]);
    let b1 = Backend::start("b1").expect("b1");
    s.elb.route("ws.example", "up", &[(b1.addr(), "")]);
    let mut stream = std::net::TcpStream::connect(s.elb.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping over the tunnel").expect("send");
    let mut echoed = [0u8; 20];
    stream.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[test]
fn oversized_request_heads_are_refused() {
    let s = start(&["--max-headers", "20"]);
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("X-H{i}"), "v".to_owned()))
        .collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(("Host", "x.example"));
    let response = http::get(s.elb.addr, "/", &headers).expect("request");
    assert_eq!(response.status, 431, "{}", response.text());
}
