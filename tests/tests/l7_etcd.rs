//! elb on a real etcd: existing ERU ELB data and `etcdctl` edits (v3 `put`)
//! are served live; admin writes go through to etcd in one transaction;
//! etcd outages keep the last configuration serving.
use std::time::{Duration, Instant};

use elb_tests::{
    backend::Backend,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
};
use serde_json::{Value, json};

fn start_elb(etcd: &Etcd) -> (L7Elb, Cleanup) {
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// Polls until `host` is served by `server`; returns how long it took.
fn wait_for_server(elb: &L7Elb, host: &str, server: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let response = elb.get(host, "/", None);
        if response.status == 200 && response.json().is_ok_and(|j| j["server"] == server) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{host} not served by {server} within {limit:?}: {} {}",
            response.status,
            response.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn existing_eru_data_is_loaded_at_start() {
    let etcd = Etcd::start().expect("etcd");
    let b1 = Backend::start("b1").expect("backend");
    let name = "ERUDATA";
    etcd.put(
        &format!("/{name}/upstreams/up1/{}", b1.addr()),
        "max_fails=2 weight=10",
    )
    .expect("put");
    etcd.put(
        &format!("/{name}/rules/old.example"),
        &backend_doc("up1").to_string(),
    )
    .expect("put");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start_named(name)
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    assert_eq!(
        elb.get("old.example", "/", None).json().expect("json")["server"],
        "b1"
    );
    assert_eq!(
        elb.admin_ok("GET", "upstream", None)["up1"][0]["weight"],
        10
    );
}

#[test]
fn etcdctl_changes_are_served_within_a_second() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_elb(&etcd);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    let prefix = format!("/{}", elb.name);
    // The README's `etcdctl set` examples, with the v3 `put`.
    etcd.put(&format!("{prefix}/upstreams/up1/{}", b1.addr()), "")
        .expect("put");
    etcd.put(
        &format!("{prefix}/rules/live.example"),
        &backend_doc("up1").to_string(),
    )
    .expect("put");
    let took = wait_for_server(&elb, "live.example", "b1", Duration::from_secs(1));
    eprintln!("first etcd write visible after {took:?}");
    // Replace the server and see the switch.
    etcd.put(&format!("{prefix}/upstreams/up1/{}", b2.addr()), "weight=5")
        .expect("put");
    etcd.ctl(&["del", &format!("{prefix}/upstreams/up1/{}", b1.addr())])
        .expect("del");
    wait_for_server(&elb, "live.example", "b2", Duration::from_secs(1));
    // Deleting the rule: 404 within a second.
    etcd.ctl(&["del", &format!("{prefix}/rules/live.example")])
        .expect("del");
    let started = Instant::now();
    while elb.get("live.example", "/", None).status != 404 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "rule not removed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn admin_writes_go_through_to_etcd_all_or_nothing() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_elb(&etcd);
    let prefix = format!("/{}/", elb.name);
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"up": {"127.0.0.1:9": "weight=2"}})),
    );
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"a.example": backend_doc("up"), "b.example": backend_doc("up")})),
    );
    let stored = etcd.get_prefix(&prefix).expect("get");
    let keys: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}rules/a.example"),
            format!("{prefix}rules/b.example"),
            format!("{prefix}upstreams/up/127.0.0.1:9"),
        ]
    );
    // One bad domain in a multi-domain PUT: nothing is written.
    let response = http::admin(
        elb.addr,
        "PUT",
        "domain",
        Some(&json!({"c.example": backend_doc("up"), "d.example": {"init": "x", "rules": {}}})),
    )
    .expect("put");
    assert_eq!(response.status, 400);
    assert_eq!(etcd.get_prefix(&prefix).expect("get"), stored);
    elb.admin_ok("DELETE", "domain", Some(json!(["a.example"])));
    elb.admin_ok("DELETE", "upstream", Some(json!(["up"])));
    let keys: Vec<String> = etcd
        .get_prefix(&prefix)
        .expect("get")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, [format!("{prefix}rules/b.example")]);
}

#[test]
fn an_etcd_outage_keeps_traffic_flowing_and_changes_resume_after() {
    let mut etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_elb(&etcd);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    elb.route("o.example", "up", &[(b1.addr(), "")]);

    etcd.kill();
    let before = http::admin(elb.addr, "GET", "domain", None)
        .expect("get")
        .body;
    for _ in 0..50 {
        assert_eq!(
            elb.get("o.example", "/", None).json().expect("json")["server"],
            "b1"
        );
    }
    // Writes fail with 500 and change nothing.
    let response = http::admin(
        elb.addr,
        "PUT",
        "domain",
        Some(&json!({"new.example": backend_doc("up")})),
    )
    .expect("put");
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response.text().contains("nothing was changed"),
        "{}",
        response.text()
    );
    assert_eq!(
        http::admin(elb.addr, "GET", "domain", None)
            .expect("get")
            .body,
        before
    );

    etcd.restart().expect("restart etcd");
    etcd.put(
        &format!("/{}/upstreams/up/{}", elb.name, b2.addr()),
        "weight=1000",
    )
    .expect("put");
    etcd.ctl(&["del", &format!("/{}/upstreams/up/{}", elb.name, b1.addr())])
        .expect("del");
    // Re-listing after the broken watch backs off up to a few seconds.
    wait_for_server(&elb, "o.example", "b2", Duration::from_secs(10));
}

#[test]
fn starts_from_the_local_snapshot_when_etcd_is_down() {
    let mut etcd = Etcd::start().expect("etcd");
    let (mut elb, _c) = start_elb(&etcd);
    let b1 = Backend::start("b1").expect("b1");
    elb.route("snap.example", "up", &[(b1.addr(), "")]);
    // The snapshot is written in the background right after a change.
    let snapshot = elb.state_dir.join("state.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains("snap.example")) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no snapshot written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    elb.stop();
    etcd.kill();
    let elb = L7Builder::same_as(&elb)
        .etcd(&etcd.endpoint())
        .start()
        .expect("restart elb");
    assert_eq!(
        elb.get("snap.example", "/", None).json().expect("json")["server"],
        "b1"
    );
    assert!(
        elb.process.log().contains("serving the local snapshot"),
        "{}",
        elb.process.log()
    );
}

#[test]
fn a_bad_document_in_etcd_is_skipped_and_the_previous_version_serves() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_elb(&etcd);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"one": {b1.addr().to_string(): ""}, "two": {b2.addr().to_string(): ""}})),
    );
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"bad.example": backend_doc("one")})),
    );
    let key = format!("/{}/rules/bad.example", elb.name);
    etcd.put(&key, r#"{"init": "loop", "rules": {"loop": {"type": "ua", "args": {"pattern": "x", "succ": "loop", "fail": "loop"}}}}"#).expect("put");
    etcd.put(
        &format!("/{}/rules/other.example", elb.name),
        &backend_doc("two").to_string(),
    )
    .expect("put");
    // The later, good write is applied, so the bad one was processed before it.
    wait_for_server(&elb, "other.example", "b2", Duration::from_secs(1));
    assert_eq!(
        elb.get("bad.example", "/", None).json().expect("json")["server"],
        "b1"
    );
    assert!(
        elb.process.log().contains("cycle"),
        "the skip is logged: {}",
        elb.process.log()
    );
    // A bad server entry keeps the upstream's previous version too.
    etcd.put(
        &format!("/{}/upstreams/one/{}", elb.name, b2.addr()),
        "weight=banana",
    )
    .expect("put");
    etcd.put(
        &format!("/{}/rules/third.example", elb.name),
        &backend_doc("two").to_string(),
    )
    .expect("put");
    wait_for_server(&elb, "third.example", "b2", Duration::from_secs(1));
    for _ in 0..5 {
        assert_eq!(
            elb.get("bad.example", "/", None).json().expect("json")["server"],
            "b1"
        );
    }
    // dump replaces the store's bad entries with what is serving.
    elb.admin_ok("PUT", "dump", None);
    let stored = etcd.get_prefix(&key).expect("get");
    assert_eq!(
        serde_json::from_str::<Value>(&stored[0].1).expect("json"),
        backend_doc("one")
    );
    let servers = etcd
        .get_prefix(&format!("/{}/upstreams/one/", elb.name))
        .expect("get");
    assert_eq!(
        servers,
        [(
            format!("/{}/upstreams/one/{}", elb.name, b1.addr()),
            "weight=1 max_fails=1 fail_timeout=10s".to_owned()
        )]
    );
}

#[test]
fn etcd_env_accepts_urls_and_lists() {
    let etcd = Etcd::start().expect("etcd");
    let endpoints = format!("http://{}, 127.0.0.1:1", etcd.endpoint());
    let elb = L7Builder::new()
        .etcd(&endpoints)
        .start()
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    elb.admin_ok("PUT", "upstream", Some(json!({"up": {"127.0.0.1:9": ""}})));
    assert_eq!(
        etcd.get_prefix(&format!("/{}/upstreams/", elb.name))
            .expect("get")
            .len(),
        1
    );
}

#[test]
fn a_bad_policy_in_etcd_is_skipped_and_the_previous_one_keeps_working() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_elb(&etcd);
    let key = format!("/{}/policies/up", elb.name);
    let good = json!({"health_check": {"target": "HTTP/health", "interval": "300ms",
        "timeout": "100ms"}});
    etcd.put(&key, &good.to_string()).expect("put");
    let wait_interval = |expected: &str| {
        let started = Instant::now();
        loop {
            let policies = elb.admin_ok("GET", "policy", None);
            if policies["up"]["health_check"]["interval"] == expected {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(3), "{policies}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_interval("300ms");
    etcd.put(&key, r#"{"health_check": {"interval": "1ms"}}"#)
        .expect("put");
    etcd.put(&key, "not json").expect("put");
    // A later good change still applies: the watch went on.
    std::thread::sleep(Duration::from_millis(300));
    wait_interval("300ms");
    let log = elb.process.log();
    assert!(
        log.contains("health_check.interval"),
        "the skip is logged: {log}"
    );
    assert!(log.contains("not valid JSON"), "{log}");
    etcd.put(
        &key,
        r#"{"health_check": {"interval": "400ms", "timeout": "100ms"}}"#,
    )
    .expect("put");
    wait_interval("400ms");
}
