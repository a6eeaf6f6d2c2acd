//! Proxy loops: a server that is elb itself is refused when written (admin
//! API) or loaded (store), and a request that comes back around a loop
//! elb cannot see at write time is answered 508 thanks to its `Via` entry.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    elb_process::ElbProcess,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, backend_doc, start_with as start},
    netns::{NetNs, unique_name},
    require_root_and_bpf,
};
use serde_json::json;

fn admin_status(elb: SocketAddr, endpoint: &str, body: serde_json::Value) -> (u16, String) {
    let response = http::admin(elb, "PUT", endpoint, Some(&body)).expect("admin PUT");
    (response.status, response.text())
}

#[test]
fn a_server_that_is_elb_itself_is_refused_with_400() {
    let s = start(&[]);
    let addr = s.elb.addr;
    let port = addr.port();
    for server in [
        addr.to_string(),
        format!("localhost:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let (status, text) = admin_status(addr, "upstream", json!({"up1": {&server: ""}}));
        assert_eq!(status, 400, "{server}: {text}");
        assert!(
            text.contains(&format!("server \\\"{server}\\\"")) && text.contains("own listening"),
            "{server}: {text}"
        );
        // As a literal servername in a rule document.
        let (status, text) =
            admin_status(addr, "domain", json!({"probe.test": backend_doc(&server)}));
        assert_eq!(status, 400, "{server}: {text}");
        assert!(text.contains(&server), "{text}");
    }
    assert!(
        s.elb
            .admin_ok("GET", "upstream", None)
            .as_object()
            .expect("object")
            .is_empty()
    );
    assert!(
        s.elb
            .admin_ok("GET", "domain", None)
            .as_object()
            .expect("object")
            .is_empty()
    );
    // Another port of the same host is somebody else.
    let other = format!("127.0.0.1:{}", if port == 65535 { 1 } else { port + 1 });
    s.elb
        .admin_ok("PUT", "upstream", Some(json!({"up1": {other: ""}})));
}

#[test]
fn a_stored_server_that_is_elb_itself_is_skipped_at_load() {
    let mut elb = L7Builder::new().start().expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let backend = Backend::start("b1").expect("backend");
    elb.stop();
    // What a hand-edited store (or etcd) may hold: the loop is in the store.
    let name = elb.name.clone();
    let kv = json!({
        format!("/{name}/upstreams/up1/{}", elb.addr): "",
        format!("/{name}/upstreams/up2/{}", backend.addr()): "",
        format!("/{name}/rules/loop.test"): backend_doc("up1").to_string(),
        format!("/{name}/rules/self.test"): backend_doc(&elb.addr.to_string()).to_string(),
        format!("/{name}/rules/ok.test"): backend_doc("up2").to_string(),
    });
    let state = json!({"format": "elb-state/1", "revision": 0, "kv": kv});
    std::fs::write(elb.state_dir.join("state.json"), state.to_string()).expect("write state");

    let elb = L7Builder::same_as(&elb).start().expect("restart elb");
    let log = elb.process.plain_log();
    assert!(
        log.contains("skipping a bad entry") && log.contains(&format!("server \"{}\"", elb.addr)),
        "{log}"
    );
    assert!(log.contains("self.test"), "the rule is named: {log}");
    let upstreams = elb.admin_ok("GET", "upstream", None);
    assert!(upstreams.get("up1").is_none(), "{upstreams}");
    assert!(upstreams.get("up2").is_some(), "{upstreams}");
    assert_eq!(elb.get("ok.test", "/", None).status, 200);
    assert_eq!(
        elb.get("self.test", "/", None).status,
        404,
        "the rule is not served"
    );
    // up1 never existed: the rule cannot loop.
    assert_eq!(elb.get("loop.test", "/", None).status, 502);
}

/// elb bound to `0.0.0.0:8080` in a namespace of its own (loopback with
/// a 10.x address too), so that a wildcard bind stays off the host's network.
#[test]
fn a_wildcard_listener_refuses_every_address_of_the_host() {
    require_root_and_bpf!();
    let ns = NetNs::new("elblp").expect("namespace");
    // An address outside loopback's range, found only by listing the
    // host's addresses.
    ns.ip(&["addr", "add", "10.79.0.1/32", "dev", "lo"])
        .expect("address");
    let temp = tempfile::tempdir().expect("dir");
    let state = temp.path().join("state.json");
    let name = unique_name("W");
    let args = [
        "run",
        "--name",
        &name,
        "--listen",
        "0.0.0.0:8080",
        "--state-file",
        state.to_str().expect("utf-8"),
        "--run-dir",
        temp.path().to_str().expect("utf-8"),
    ];
    let mut elb = ElbProcess::spawn(&args, Some(&ns)).expect("spawn elb");
    elb.wait_until(Duration::from_secs(10), || {
        ns.enter(|| std::net::TcpStream::connect("127.0.0.1:8080").is_ok())
            .unwrap_or(false)
    })
    .expect("elb listens");
    let put = |server: &'static str| {
        ns.enter(move || {
            let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
            admin_status(addr, "upstream", json!({"up1": {server: ""}}))
        })
        .expect("enter namespace")
    };
    for server in [
        "127.0.0.1:8080",
        "127.3.4.5:8080",
        "10.79.0.1:8080",
        "0.0.0.0:8080",
    ] {
        let (status, text) = put(server);
        assert_eq!(status, 400, "{server}: {text}");
        assert!(text.contains("0.0.0.0:8080"), "names the listener: {text}");
    }
    for server in ["10.79.0.2:8080", "10.79.0.1:8081"] {
        let (status, text) = put(server);
        assert_eq!(status, 200, "{server}: {text}");
    }
    let _ = elb.stop();
}

#[test]
fn a_request_carrying_this_elbs_via_entry_gets_508() {
    let s = start(&[]);
    let backend = Backend::start("b1").expect("backend");
    s.elb.route("probe.test", "up1", &[(backend.addr(), "")]);
    let own = format!("1.1 elb-{}", s.elb.name);
    let get = |via: &str| {
        http::get(s.elb.addr, "/", &[("Host", "probe.test"), ("Via", via)]).expect("GET")
    };
    let looped = get(&format!("1.0 fred, {own}"));
    assert_eq!(looped.status, 508, "{}", looped.text());
    assert_eq!(backend.hits(), 0, "a looped request goes nowhere");
    // Other proxies' entries, even close to ours, pass; ours is appended.
    let passed = get(&format!("1.1 elb-{}2, 1.1 x{}", s.elb.name, &own[4..]));
    assert_eq!(passed.status, 200, "{}", passed.text());
    let seen = passed.json().expect("json")["headers"]["via"].clone();
    assert_eq!(
        seen,
        json!(format!(
            "1.1 elb-{}2, 1.1 x{}, {own}",
            s.elb.name,
            &own[4..]
        )),
        "{passed:?}"
    );
    let log = s.elb.process.plain_log();
    assert!(log.contains("508 Loop Detected"), "{log}");
}

/// Two elbs that send a domain to each other: neither server is its own
/// address, so only the hop marker can stop the loop. --max-connections
/// bounds the damage if it does not.
#[test]
fn a_loop_through_two_elbs_ends_with_508() {
    let a = start(&["--max-connections", "64"]);
    let b = start(&["--max-connections", "64"]);
    a.elb.route("loop.test", "to-b", &[(b.elb.addr, "")]);
    b.elb.route("loop.test", "to-a", &[(a.elb.addr, "")]);
    let response = a.elb.get("loop.test", "/", None);
    assert_eq!(response.status, 508, "{}", response.text());
    // The request went A → B → A once: each answered one request.
    assert!(a.elb.process.plain_log().contains("508 Loop Detected"));
    // Both still serve.
    for elb in [&a.elb, &b.elb] {
        assert_eq!(
            http::get(elb.addr, "/__erulb__/upstream", &[])
                .expect("GET")
                .status,
            200
        );
    }
}

/// The same from etcd, written behind elb's back: the bad server and the
/// bad rule are logged and skipped, the previous versions keep serving.
#[test]
fn a_server_that_is_elb_itself_from_etcd_is_skipped() {
    let etcd = Etcd::start().expect("etcd");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    elb.route("loop.test", "up1", &[(b1.addr(), "")]);
    let name = &elb.name;
    etcd.put(&format!("/{name}/upstreams/up1/{}", elb.addr), "")
        .expect("put");
    etcd.put(
        &format!("/{name}/rules/self.test"),
        &backend_doc(&format!("localhost:{}", elb.addr.port())).to_string(),
    )
    .expect("put");
    // A later good write that is served shows the bad ones were processed.
    elb.put_upstream("up2", &[(b2.addr(), "")]);
    etcd.put(
        &format!("/{name}/rules/later.test"),
        &backend_doc("up2").to_string(),
    )
    .expect("put");
    let deadline = Instant::now() + Duration::from_secs(5);
    while elb.get("later.test", "/", None).status != 200 {
        assert!(Instant::now() < deadline, "the later write was not served");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..4 {
        let response = elb.get("loop.test", "/", None);
        assert_eq!(
            response.json().expect("json")["server"],
            "b1",
            "{response:?}"
        );
    }
    assert_eq!(elb.get("self.test", "/", None).status, 404);
    let log = elb.process.plain_log();
    assert!(
        log.contains(&format!("server \"{}\"", elb.addr)) && log.contains("self.test"),
        "both skips are logged: {log}"
    );
}
