//! The admin API end to end on the embedded store: every endpoint, method,
//! body shape and status of the compatibility contract, error cases leaving
//! the state byte-identical, ERU ELB's Python client, and restarts.
use std::{process::Command, time::Duration};

use elb_tests::{
    backend::Backend,
    elb_process::ElbProcess,
    http,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
};
use serde_json::{Value, json};

fn start() -> (L7Elb, Cleanup) {
    let elb = L7Builder::new().start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// GET of both lists, as raw bytes.
fn state(elb: &L7Elb) -> (Vec<u8>, Vec<u8>) {
    let get = |endpoint| {
        http::admin(elb.addr, "GET", endpoint, None)
            .expect("GET")
            .body
    };
    (get("domain"), get("upstream"))
}

fn raw_admin(elb: &L7Elb, method: &str, endpoint: &str, body: &[u8]) -> http::HttpResponse {
    http::request(
        elb.addr,
        method,
        &format!("/__erulb__/{endpoint}"),
        &[],
        Some(body),
    )
    .expect("request")
}

#[test]
fn domain_endpoint_round_trip() {
    let (elb, _c) = start();
    assert_eq!(elb.admin_ok("GET", "domain", None), json!({}));
    let docs = json!({"a.example": backend_doc("up1"), "b.example": backend_doc("10.0.0.1:80")});
    assert_eq!(
        elb.admin_ok("PUT", "domain", Some(docs.clone())),
        json!({"msg": "OK"})
    );
    assert_eq!(elb.admin_ok("GET", "domain", None), docs);
    // PUT replaces one domain and leaves the others.
    let replaced = backend_doc("up2");
    elb.admin_ok("PUT", "domain", Some(json!({"a.example": replaced})));
    assert_eq!(elb.admin_ok("GET", "domain", None)["a.example"], replaced);
    assert_eq!(
        elb.admin_ok(
            "DELETE",
            "domain",
            Some(json!(["a.example", "never.example"]))
        ),
        json!({"msg": "OK"})
    );
    assert_eq!(
        elb.admin_ok("GET", "domain", None),
        json!({"b.example": backend_doc("10.0.0.1:80")})
    );
}

#[test]
fn upstream_endpoint_round_trip() {
    let (elb, _c) = start();
    assert_eq!(elb.admin_ok("GET", "upstream", None), json!({}));
    let body = json!({
        "up1": {"127.0.0.1:8088": "", "127.0.0.1:8089": ""},
        "up2": {"127.0.0.1:8089": "max_fails=2 weight=10"},
        "up3": {"localhost:9000": "weight=3 fail_timeout=5s backup", "localhost:9001": "down"},
    });
    assert_eq!(
        elb.admin_ok("PUT", "upstream", Some(body)),
        json!({"msg": "OK"})
    );
    let got = elb.admin_ok("GET", "upstream", None);
    // The shape of ERU ELB's README example.
    assert_eq!(
        got["up2"],
        json!([{"addr": "127.0.0.1:8089", "fail_timeout": 10, "max_fails": 2, "name": "127.0.0.1:8089", "weight": 10}])
    );
    assert_eq!(got["up1"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        got["up3"],
        json!([
            {"addr": "localhost:9000", "backup": true, "fail_timeout": 5, "max_fails": 1, "name": "localhost:9000", "weight": 3},
            {"addr": "localhost:9001", "down": true, "fail_timeout": 10, "max_fails": 1, "name": "localhost:9001", "weight": 1}
        ])
    );
    // PUT replaces an upstream whole: 8088 is gone.
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"up1": {"127.0.0.1:8090": "weight=2"}})),
    );
    let got = elb.admin_ok("GET", "upstream", None);
    assert_eq!(got["up1"][0]["name"], "127.0.0.1:8090");
    assert_eq!(got["up1"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        elb.admin_ok("DELETE", "upstream", Some(json!(["up1", "up2", "missing"]))),
        json!({"up1": true, "up2": true, "missing": false})
    );
    assert_eq!(
        elb.admin_ok("GET", "upstream", None)
            .as_object()
            .map(|o| o.len()),
        Some(1)
    );
}

#[test]
fn dump_is_accepted_with_or_without_a_body() {
    let (elb, _c) = start();
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"up": {"127.0.0.1:1": "weight=2"}})),
    );
    assert_eq!(elb.admin_ok("PUT", "dump", None), json!({"msg": "OK"}));
    let response = raw_admin(&elb, "PUT", "dump", b"ignored, not even JSON");
    assert_eq!(response.status, 200, "{}", response.text());
    let state = std::fs::read_to_string(elb.state_dir.join("state.json")).expect("state file");
    assert!(
        state.contains("weight=2 max_fails=1 fail_timeout=10s"),
        "canonical k=v form:\n{state}"
    );
}

/// Bad requests: the right status, a JSON error naming the problem, and
/// both GETs byte-identical afterwards.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let (elb, _c) = start();
    elb.admin_ok("PUT", "upstream", Some(json!({"up": {"127.0.0.1:1": ""}})));
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"ok.example": backend_doc("up")})),
    );
    let before = state(&elb);

    let rule = |rules: Value| json!({"fine.example": backend_doc("up"), "bad.example": {"init": "r1", "rules": rules}});
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "PUT",
            "domain",
            b"{not json".to_vec(),
            400,
            "not valid JSON",
        ),
        ("PUT", "domain", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "PUT",
            "domain",
            rule(json!({"r1": {"type": "geo", "args": {}}}))
                .to_string()
                .into_bytes(),
            400,
            "unknown type",
        ),
        (
            "PUT",
            "domain",
            json!({"bad.example": {"rules": {}}})
                .to_string()
                .into_bytes(),
            400,
            "init",
        ),
        (
            "PUT",
            "domain",
            rule(json!({"r1": {"type": "ua", "args": {"pattern": "x", "succ": "r9"}}}))
                .to_string()
                .into_bytes(),
            400,
            "r9",
        ),
        (
            "PUT",
            "domain",
            rule(json!({
            "r1": {"type": "ua", "args": {"pattern": "x", "succ": "r2", "fail": "b"}},
            "r2": {"type": "path", "args": {"pattern": "/", "succ": "r1", "fail": "b"}},
            "b": {"type": "backend", "args": {"servername": "up"}}}))
            .to_string()
            .into_bytes(),
            400,
            "cycle",
        ),
        (
            "PUT",
            "domain",
            rule(json!({"r1": {"type": "ua", "args": {"pattern": "(unclosed", "succ": "r1"}}}))
                .to_string()
                .into_bytes(),
            400,
            "regex",
        ),
        (
            "PUT",
            "domain",
            rule(json!({"r1": {"type": "backend", "args": {}}}))
                .to_string()
                .into_bytes(),
            400,
            "servername",
        ),
        (
            "PUT",
            "domain",
            json!({"a/b": backend_doc("up")}).to_string().into_bytes(),
            400,
            "domain name",
        ),
        (
            "DELETE",
            "domain",
            b"{\"a\": 1}".to_vec(),
            400,
            "JSON array",
        ),
        ("DELETE", "domain", b"[\"a\", 7]".to_vec(), 400, "element 1"),
        (
            "PUT",
            "upstream",
            json!({"up": {"127.0.0.1:2": "weight=5 slow_start=3s"}})
                .to_string()
                .into_bytes(),
            400,
            "slow_start",
        ),
        (
            "PUT",
            "upstream",
            json!({"up": {"127.0.0.1:2": "weight=0"}})
                .to_string()
                .into_bytes(),
            400,
            "weight",
        ),
        (
            "PUT",
            "upstream",
            json!({"up": {"not-an-address": ""}})
                .to_string()
                .into_bytes(),
            400,
            "not-an-address",
        ),
        (
            "PUT",
            "upstream",
            json!({"up": {"127.0.0.1:2": 5}}).to_string().into_bytes(),
            400,
            "string",
        ),
        (
            "PUT",
            "upstream",
            json!({"up": {}}).to_string().into_bytes(),
            400,
            "no servers",
        ),
        (
            "PUT",
            "upstream",
            json!({"ok": {"127.0.0.1:3": ""}, "up": {"127.0.0.1:2": "bogus"}})
                .to_string()
                .into_bytes(),
            400,
            "bogus",
        ),
        ("POST", "domain", Vec::new(), 405, "POST"),
        ("GET", "dump", Vec::new(), 405, "GET"),
        ("GET", "nothing", Vec::new(), 404, "/__erulb__/nothing"),
    ];
    for (method, endpoint, body, status, needle) in cases {
        let response = raw_admin(&elb, method, endpoint, &body);
        let what = format!("{method} {endpoint} {}", String::from_utf8_lossy(&body));
        assert_eq!(response.status, status, "{what}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let message = response.json().expect("json")["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
        assert_eq!(state(&elb), before, "{what} changed the state");
    }
    let allow = raw_admin(&elb, "POST", "domain", b"");
    assert_eq!(allow.header("allow"), Some("GET, PUT, DELETE"));
}

#[test]
fn an_oversized_body_is_413() {
    let elb = L7Builder::new()
        .arg("--admin-max-body")
        .arg("1024")
        .start()
        .expect("start");
    let _c = Cleanup(elb.state_dir.clone());
    let before = state(&elb);
    let big = json!({"x.example": {"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": "u", "pad": "p".repeat(4096)}}}}});
    let response = raw_admin(&elb, "PUT", "domain", big.to_string().as_bytes());
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response.json().expect("json")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1024")
    );
    assert_eq!(state(&elb), before);
}

#[test]
fn the_token_is_required_when_configured() {
    let elb = L7Builder::new()
        .arg("--admin-token")
        .arg("s3cret")
        .start()
        .expect("start");
    let _c = Cleanup(elb.state_dir.clone());
    let response = http::admin(elb.addr, "GET", "domain", None).expect("request");
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    let wrong = http::request(
        elb.addr,
        "GET",
        "/__erulb__/domain",
        &[("Authorization", "Bearer nope")],
        None,
    )
    .expect("request");
    assert_eq!(wrong.status, 401);
    let right = http::request(
        elb.addr,
        "GET",
        "/__erulb__/domain",
        &[("Authorization", "Bearer s3cret")],
        None,
    )
    .expect("request");
    assert_eq!(right.status, 200, "{}", right.text());
}

#[test]
fn configuration_survives_a_restart_on_the_embedded_store() {
    let (mut elb, _c) = start();
    let b1 = Backend::start("b1").expect("backend");
    elb.route("keep.example", "up", &[(b1.addr(), "weight=4")]);
    let before = state(&elb);
    elb.stop();
    let elb = L7Builder::same_as(&elb).start().expect("restart");
    assert_eq!(state(&elb), before);
    let response = elb.get("keep.example", "/", None);
    assert_eq!(response.json().expect("json")["server"], "b1");
}

/// Each worker listens with SO_REUSEPORT, which would let a second elb (any
/// other name) bind the same address and quietly take part of its clients.
#[test]
fn a_second_elb_on_the_same_address_is_refused() {
    let (elb, _c) = start();
    let listen = elb.addr.to_string();
    let state_file = elb.state_dir.join("second.json");
    let run_dir = elb.state_dir.to_string_lossy().into_owned();
    let mut second = ElbProcess::spawn(
        &[
            "run",
            "--name",
            "SECOND",
            "--listen",
            &listen,
            "--state-file",
            &state_file.to_string_lossy(),
            "--run-dir",
            &run_dir,
        ],
        None,
    )
    .expect("spawn");
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second elb exits");
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains(&format!("cannot listen on {listen}: ")),
        "{log}"
    );
    assert_eq!(elb.get("nowhere.example", "/", None).status, 404);
}

#[test]
fn the_eru_python_client_works_unchanged() {
    let (elb, _c) = start();
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/eru_client_compat.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(elb.addr.to_string())
        .arg(b1.addr().to_string())
        .arg(b2.addr().to_string())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("eru client compatibility: OK"));
}
