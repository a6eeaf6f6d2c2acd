//! Consul discovery against the Consul **stand-in** (tests/src/consul_standin.rs:
//! Consul's documented `/v1/health/service` API with blocking queries; no
//! Consul server is packaged here): a real elb (embedded store), real
//! backends on 127.0.0.x, real HTTP end to end.
use std::time::{Duration, Instant};

use elb_tests::{
    backend::Backend,
    consul_standin::{ConsulStandin, Instance},
    discovery::{answered_by, backend_addrs, loopback_backend},
    http,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc, served_by, start_with},
};
use serde_json::{Value, json};

const HOST: &str = "web.test";

fn instance(id: &str, backend: &Backend) -> Instance {
    Instance::new(id, "web", backend.addr())
}

/// The discovery document for upstream "web" from the stand-in's "web".
fn consul_doc(standin: &ConsulStandin, extra: Value) -> Value {
    let mut doc = json!({"provider": "consul", "address": standin.addr().to_string(),
        "service": "web", "params": "max_fails=2"});
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            doc.insert(key.clone(), value.clone());
        }
    }
    doc
}

/// Points `HOST` at upstream "web" and hands "web" to the stand-in.
fn follow(elb: &L7Elb, standin: &ConsulStandin, extra: Value) {
    elb.admin_ok("PUT", "domain", Some(json!({ HOST: backend_doc("web") })));
    elb.admin_ok(
        "PUT",
        "discovery",
        Some(json!({"web": consul_doc(standin, extra)})),
    );
}

/// The servers of upstream "web", sorted, as `addr -> weight`.
fn servers(elb: &L7Elb) -> Vec<(String, u64)> {
    let upstreams = elb.admin_ok("GET", "upstream", None);
    let mut servers: Vec<(String, u64)> = upstreams["web"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["addr"].as_str().unwrap_or_default().to_owned(),
                        s["weight"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    servers.sort();
    servers
}

/// Polls until upstream "web" holds exactly `backends`.
fn wait_servers(elb: &L7Elb, backends: &[&Backend], within: Duration) {
    let wanted = backend_addrs(backends);
    let started = Instant::now();
    loop {
        let now: Vec<String> = servers(elb).into_iter().map(|(a, _)| a).collect();
        if now == wanted {
            return;
        }
        assert!(
            started.elapsed() < within,
            "upstream web is {now:?}, not {wanted:?}, after {within:?}; discovery: {}",
            elb.admin_ok("GET", "discovery", None)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The provider's report in `GET /__erulb__/discovery`.
fn state(elb: &L7Elb) -> Value {
    elb.admin_ok("GET", "discovery", None)["web"]["state"].clone()
}

/// Polls until `check` holds of the provider's report.
fn wait_state(elb: &L7Elb, within: Duration, what: &str, check: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let report = state(elb);
        if check(&report) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what} not within {within:?}: {report}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `error` of an admin error reply.
fn error(response: &http::HttpResponse) -> String {
    response.json().expect("JSON error")["error"]
        .as_str()
        .expect("error text")
        .to_owned()
}

#[test]
fn consul_standin_upstream_follows_registrations_end_to_end() {
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2, b3) = (
        loopback_backend("b1", 21),
        loopback_backend("b2", 22),
        loopback_backend("b3", 23),
    );
    standin.register(instance("b1", &b1).weight(5));
    standin.register(instance("b2", &b2).node_address_only());
    let s = start_with(&[]);
    follow(&s.elb, &standin, json!({}));
    wait_servers(&s.elb, &[&b1, &b2], Duration::from_secs(5));
    // Weight from Consul's passing weight; the document's other params.
    let weights: Vec<u64> = servers(&s.elb).into_iter().map(|(_, w)| w).collect();
    assert_eq!(weights, [5, 1]);
    let upstream = s.elb.admin_ok("GET", "upstream", None);
    assert_eq!(upstream["web"][0]["max_fails"], 2, "{upstream}");
    assert_eq!(answered_by(&s.elb, HOST, 12), ["b1", "b2"]);
    // Scale out, then in: each result replaces the list.
    standin.register(instance("b3", &b3));
    wait_servers(&s.elb, &[&b1, &b2, &b3], Duration::from_secs(2));
    standin.deregister("b1");
    standin.deregister("b2");
    wait_servers(&s.elb, &[&b3], Duration::from_secs(2));
    assert_eq!(answered_by(&s.elb, HOST, 5), ["b3"]);
    let report = state(&s.elb);
    assert_eq!(report["provider"], "consul (service \"web\")", "{report}");
    assert_eq!(report["servers"], 1, "{report}");
    assert_eq!(report["index"], standin.index(), "{report}");
    assert!(report["last_success"].is_string(), "{report}");
    assert!(report["last_error"].is_null(), "{report}");
}

#[test]
fn consul_standin_tags_and_passing_only_filter() {
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2, b3) = (
        loopback_backend("b1", 31),
        loopback_backend("b2", 32),
        loopback_backend("b3", 33),
    );
    standin.register(instance("b1", &b1).tags(&["prod", "v2"]));
    standin.register(instance("b2", &b2).tags(&["dev"]));
    standin.register(instance("b3", &b3).tags(&["prod"]).status("warning"));
    let s = start_with(&[]);
    follow(
        &s.elb,
        &standin,
        json!({"tags": ["prod"], "only_passing": true, "datacenter": "dc1"}),
    );
    wait_servers(&s.elb, &[&b1], Duration::from_secs(5));
    assert_eq!(answered_by(&s.elb, HOST, 5), ["b1"]);
    // b3 passes its check: it joins; b1 goes critical: it leaves.
    standin.set_status("b3", "passing");
    wait_servers(&s.elb, &[&b1, &b3], Duration::from_secs(2));
    standin.set_status("b1", "critical");
    wait_servers(&s.elb, &[&b3], Duration::from_secs(2));
    standin.set_tags("b2", &["prod"]);
    wait_servers(&s.elb, &[&b2, &b3], Duration::from_secs(2));
    // Every tag must be there.
    s.elb.admin_ok(
        "PUT",
        "discovery",
        Some(json!({"web": consul_doc(&standin, json!({"tags": ["prod", "v2"], "only_passing": false}))})),
    );
    wait_servers(&s.elb, &[&b1], Duration::from_secs(2));
}

#[test]
fn consul_standin_blocking_query_woken_by_a_change_reaches_traffic_within_a_second() {
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2) = (loopback_backend("b1", 41), loopback_backend("b2", 42));
    standin.register(instance("b1", &b1));
    let s = start_with(&[]);
    follow(&s.elb, &standin, json!({}));
    wait_servers(&s.elb, &[&b1], Duration::from_secs(5));
    assert_eq!(answered_by(&s.elb, HOST, 3), ["b1"]);
    // elb is now parked in a blocking query, not polling.
    let started = Instant::now();
    while standin.blocked() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no blocking query"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let requests = standin.requests();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        standin.requests(),
        requests,
        "a blocking query, not polling"
    );
    // One change: b2 in, b1 out. b1 drains (no new requests), so the first
    // answer from b2 is the change reaching traffic.
    let changed = Instant::now();
    standin.replace_all(vec![instance("b2", &b2)]);
    loop {
        let response = http::get(s.elb.addr, "/", &[("Host", HOST)]).expect("GET");
        if response.status == 200 && served_by(&response) == "b2" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "b2 never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = changed.elapsed();
    eprintln!("Consul change to traffic: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn consul_standin_errors_keep_the_last_list_and_are_reported() {
    let mut standin = ConsulStandin::start().expect("stand-in");
    let b1 = loopback_backend("b1", 51);
    standin.register(instance("b1", &b1));
    let s = start_with(&[]);
    follow(&s.elb, &standin, json!({}));
    wait_servers(&s.elb, &[&b1], Duration::from_secs(5));
    standin.set_fail(Some(500));
    wait_state(&s.elb, Duration::from_secs(3), "an error", |report| {
        report["failing"] == true
            && report["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("500") && m.contains("/v1/health/service/web"))
    });
    assert_eq!(servers(&s.elb).len(), 1, "the last list stays");
    assert_eq!(answered_by(&s.elb, HOST, 3), ["b1"]);
    // Back-off, not a retry storm: a few requests in a second at most.
    let requests = standin.requests();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        standin.requests() - requests <= 4,
        "{} requests",
        standin.requests() - requests
    );
    standin.set_fail(None);
    wait_state(&s.elb, Duration::from_secs(5), "recovery", |report| {
        report["failing"] == false
    });
    // The stand-in gone entirely: connection refused, the list stays.
    standin.stop();
    wait_state(
        &s.elb,
        Duration::from_secs(5),
        "a connect error",
        |report| report["failing"] == true,
    );
    assert_eq!(answered_by(&s.elb, HOST, 3), ["b1"]);
    // A healthy API with no instances: applied, the upstream is empty.
    let standin = ConsulStandin::start().expect("stand-in");
    s.elb.admin_ok(
        "PUT",
        "discovery",
        Some(json!({"web": consul_doc(&standin, json!({}))})),
    );
    wait_servers(&s.elb, &[], Duration::from_secs(3));
    wait_state(
        &s.elb,
        Duration::from_secs(3),
        "an empty success",
        |report| report["servers"] == 0 && report["failing"] == false,
    );
}

#[test]
fn consul_standin_token_file_is_sent_and_a_wrong_one_reported() {
    let standin = ConsulStandin::start().expect("stand-in");
    standin.set_token(Some("s3cret"));
    let b1 = loopback_backend("b1", 61);
    standin.register(instance("b1", &b1));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("consul.token");
    std::fs::write(&token_file, "wrong\n").expect("token");
    let s = start_with(&[]);
    follow(
        &s.elb,
        &standin,
        json!({"token_file": token_file.to_string_lossy()}),
    );
    wait_state(&s.elb, Duration::from_secs(3), "a 403", |report| {
        report["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("403"))
    });
    assert!(servers(&s.elb).is_empty());
    // Read again on each request: the right token is picked up.
    std::fs::write(&token_file, "s3cret\n").expect("token");
    wait_servers(&s.elb, &[&b1], Duration::from_secs(35));
    std::fs::remove_file(&token_file).expect("rm");
    standin.set_tags("b1", &["x"]);
    wait_state(
        &s.elb,
        Duration::from_secs(3),
        "a token_file error",
        |report| {
            report["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("token_file") && m.contains("consul.token"))
        },
    );
    assert_eq!(servers(&s.elb).len(), 1, "the last list stays");
}

#[test]
fn consul_standin_owned_upstream_refuses_admin_writes_with_409() {
    let standin = ConsulStandin::start().expect("stand-in");
    let b1 = loopback_backend("b1", 71);
    standin.register(instance("b1", &b1));
    let s = start_with(&[]);
    follow(&s.elb, &standin, json!({}));
    wait_servers(&s.elb, &[&b1], Duration::from_secs(5));
    let body = json!({"web": {"127.0.0.99:80": ""}});
    for (method, body) in [("PUT", body), ("DELETE", json!(["web"]))] {
        let response = http::admin(s.elb.addr, method, "upstream", Some(&body)).expect("admin");
        assert_eq!(response.status, 409, "{method}: {}", response.text());
        assert!(
            error(&response).contains(
                r#"upstream "web" is owned by discovery provider consul (service "web")"#
            ),
            "{method}: {}",
            response.text()
        );
    }
    assert_eq!(servers(&s.elb).len(), 1);
    // Other upstreams are the admin's as before.
    s.elb.put_upstream("other", &[(b1.addr(), "")]);
    // Without the document the upstream is the admin's again; its servers
    // stay as the provider left them.
    s.elb.admin_ok("DELETE", "discovery", Some(json!(["web"])));
    assert_eq!(servers(&s.elb).len(), 1);
    s.elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"web": {"127.0.0.99:80": ""}})),
    );
    assert_eq!(servers(&s.elb), [("127.0.0.99:80".to_owned(), 1)]);
}

#[test]
fn consul_standin_removed_server_drains_and_new_one_starts_initial() {
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2) = (loopback_backend("b1", 81), loopback_backend("b2", 82));
    standin.register(instance("b1", &b1));
    let s = start_with(&[]);
    s.elb.admin_ok(
        "PUT",
        "policy",
        Some(
            json!({"web": {"health_check": {"target": "HTTP/health", "interval": "200ms",
            "timeout": "100ms", "healthy_threshold": 2, "unhealthy_threshold": 2},
            "deregistration_delay": "5s"}}),
        ),
    );
    follow(&s.elb, &standin, json!({}));
    wait_servers(&s.elb, &[&b1], Duration::from_secs(5));
    let server_state = |backend: &Backend| {
        s.elb.admin_ok("GET", "health", None)["web"]["servers"][backend.addr().to_string()]["state"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    };
    let started = Instant::now();
    while server_state(&b1) != "healthy" {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "b1 never healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    standin.replace_all(vec![instance("b2", &b2)]);
    wait_servers(&s.elb, &[&b2], Duration::from_secs(2));
    let report = s.elb.admin_ok("GET", "health", None);
    assert_eq!(
        report["web"]["servers"][b1.addr().to_string()]["state"],
        "draining",
        "{report}"
    );
    let b2_state = server_state(&b2);
    assert!(
        b2_state == "initial" || b2_state == "healthy",
        "b2 is {b2_state}"
    );
    let hits = b1.hits();
    assert_eq!(answered_by(&s.elb, HOST, 5), ["b2"]);
    assert_eq!(b1.hits(), hits, "nothing new reaches the draining server");
}

#[test]
fn consul_standin_provider_resumes_after_a_restart_with_the_embedded_store() {
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2) = (loopback_backend("b1", 91), loopback_backend("b2", 92));
    standin.register(instance("b1", &b1));
    let mut elb = L7Builder::new().start().expect("elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    follow(&elb, &standin, json!({}));
    wait_servers(&elb, &[&b1], Duration::from_secs(5));
    elb.stop();
    // Changed while elb was down: the restarted elb's provider (from the
    // state file) catches up.
    standin.replace_all(vec![instance("b2", &b2)]);
    let elb = L7Builder::same_as(&elb).start().expect("restart");
    wait_servers(&elb, &[&b2], Duration::from_secs(5));
    assert_eq!(answered_by(&elb, HOST, 3), ["b2"]);
    assert_eq!(
        elb.admin_ok("GET", "discovery", None)["web"]["service"],
        "web"
    );
}

#[test]
fn consul_standin_bad_documents_are_400s_naming_the_field() {
    let s = start_with(&[]);
    for (doc, wanted) in [
        (
            json!({"provider": "consul", "service": "web", "tags": "prod"}),
            "\"tags\"",
        ),
        (json!({"provider": "consul"}), "\"service\" is required"),
        (
            json!({"provider": "consul", "service": "web", "colour": 1}),
            "unknown field \"colour\"",
        ),
        (
            json!({"provider": "etcd", "service": "web"}),
            "unknown provider \"etcd\"",
        ),
        (
            json!({"provider": "consul", "service": "web", "params": "weight=0"}),
            "\"params\"",
        ),
        (
            json!({"provider": "aws_asg", "group": "g", "port": 70000}),
            "\"port\"",
        ),
        (
            json!({"provider": "aws_asg", "group": "g", "port": 80, "interval": "1ms"}),
            "\"interval\"",
        ),
        (
            json!({"provider": "aws_asg", "group": "g", "port": 80, "ip": "ipv5"}),
            "\"ip\"",
        ),
    ] {
        let response =
            http::admin(s.elb.addr, "PUT", "discovery", Some(&json!({"web": doc}))).expect("PUT");
        assert_eq!(response.status, 400, "{doc}: {}", response.text());
        let message = error(&response);
        assert!(
            message.contains(wanted) && message.contains("upstream \"web\""),
            "{doc}: {message} (wanted {wanted})"
        );
    }
    assert_eq!(s.elb.admin_ok("GET", "discovery", None), json!({}));
}

#[test]
fn consul_standin_with_etcd_results_are_written_to_etcd_and_bad_stored_documents_are_errors() {
    let etcd = elb_tests::etcd::Etcd::start().expect("etcd");
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2) = (loopback_backend("b1", 101), loopback_backend("b2", 102));
    standin.register(instance("b1", &b1));
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let prefix = format!("/{}", elb.name);
    // Written into etcd by hand, not through the admin API.
    etcd.put(
        &format!("{prefix}/rules/{HOST}"),
        &backend_doc("web").to_string(),
    )
    .expect("put");
    etcd.put(
        &format!("{prefix}/discovery/web"),
        &consul_doc(&standin, json!({})).to_string(),
    )
    .expect("put");
    wait_servers(&elb, &[&b1], Duration::from_secs(5));
    assert_eq!(answered_by(&elb, HOST, 3), ["b1"]);
    // The servers are in etcd, for every node to build the same list.
    let stored = etcd
        .get_prefix(&format!("{prefix}/upstreams/web/"))
        .expect("get");
    assert_eq!(
        stored,
        [(
            format!("{prefix}/upstreams/web/{}", b1.addr()),
            "weight=1 max_fails=2 fail_timeout=10s".to_owned()
        )]
    );
    // A bad document by hand: an error in the log, no crash; the previous
    // document stays in effect and its provider keeps following Consul.
    etcd.put(
        &format!("{prefix}/discovery/web"),
        r#"{"provider": "consul", "service": "web", "tags": "prod"}"#,
    )
    .expect("put");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        elb.admin_ok("GET", "discovery", None)["web"]["address"],
        standin.addr().to_string()
    );
    standin.register(instance("b2", &b2));
    wait_servers(&elb, &[&b1, &b2], Duration::from_secs(3));
    assert_eq!(
        etcd.get_prefix(&format!("{prefix}/upstreams/web/"))
            .expect("get")
            .len(),
        2
    );
}
