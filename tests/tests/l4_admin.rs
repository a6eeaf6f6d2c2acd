//! The L4 service and deny-list (ACL) admin endpoints end to end, on the
//! embedded store and on a real etcd: every method and body shape, every
//! validation error leaving the state byte-identical, write-through,
//! `etcdctl` edits, `dump`, restarts and store failures.
use std::time::{Duration, Instant};

use elb_tests::{
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb},
};
use serde_json::{Value, json};

fn start() -> (L7Elb, Cleanup) {
    let elb = L7Builder::new().start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

fn start_on(etcd: &Etcd) -> (L7Elb, Cleanup) {
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// GET of services, ACL and upstreams, as raw bytes.
fn state(elb: &L7Elb) -> [Vec<u8>; 3] {
    ["service", "acl", "upstream"].map(|endpoint| {
        let response = http::admin(elb.addr, "GET", endpoint, None).expect("GET");
        assert_eq!(response.status, 200, "GET {endpoint}: {}", response.text());
        response.body
    })
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

/// A request that must fail with `status` and an error mentioning `needle`.
fn refused(elb: &L7Elb, method: &str, endpoint: &str, body: &[u8], status: u16, needle: &str) {
    let response = raw_admin(elb, method, endpoint, body);
    let what = format!(
        "{method} {endpoint} {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
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
}

fn web() -> Value {
    json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "web4", "snat": "10.0.0.100", "table_size": 251})
}

fn dns6() -> Value {
    json!({"vip": "[2001:db8::53]:53", "proto": "udp", "upstream": "dns6"})
}

/// `dns6()` as GET shows it: canonical, `table_size` filled in.
fn dns6_stored() -> Value {
    json!({"vip": "[2001:db8::53]:53", "proto": "udp", "upstream": "dns6", "table_size": 65537})
}

/// Polls `GET endpoint` until it equals `want`.
fn wait_for_get(elb: &L7Elb, endpoint: &str, want: &Value, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = elb.admin_ok("GET", endpoint, None);
        if &got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "GET {endpoint} is {got}, not {want}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn service_endpoint_round_trip() {
    let (elb, _c) = start();
    assert_eq!(elb.admin_ok("GET", "service", None), json!({}));
    assert_eq!(
        elb.admin_ok(
            "PUT",
            "service",
            Some(json!({"web": web(), "dns6": dns6()}))
        ),
        json!({"msg": "OK"})
    );
    assert_eq!(
        elb.admin_ok("GET", "service", None),
        json!({"web": web(), "dns6": dns6_stored()})
    );
    // Replacing a service by name on its own VIP is fine; others stay.
    let web2 =
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "other", "table_size": 65537});
    elb.admin_ok("PUT", "service", Some(json!({"web": web2})));
    assert_eq!(
        elb.admin_ok("GET", "service", None),
        json!({"web": web2, "dns6": dns6_stored()})
    );
    // The same VIP with the other protocol, or another port, is another service.
    elb.admin_ok(
        "PUT",
        "service",
        Some(json!({
            "web-udp": {"vip": "10.0.0.1:80", "proto": "udp", "upstream": "x"},
            "web-81": {"vip": "10.0.0.1:81", "proto": "tcp", "upstream": "x"},
        })),
    );
    assert_eq!(
        elb.admin_ok("GET", "service", None)
            .as_object()
            .map(|o| o.len()),
        Some(4)
    );
    // DELETE ignores unknown names, like domain DELETE.
    assert_eq!(
        elb.admin_ok(
            "DELETE",
            "service",
            Some(json!(["web", "web-udp", "web-81", "never"]))
        ),
        json!({"msg": "OK"})
    );
    assert_eq!(
        elb.admin_ok("GET", "service", None),
        json!({"dns6": dns6_stored()})
    );
    // A service may name an upstream that does not exist yet; the upstream
    // can then be created with servers of the VIP's family.
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"dns6": {"[2001:db8::1]:53": "", "[2001:db8::2]:53": "weight=2"}})),
    );
    elb.admin_ok("DELETE", "service", Some(json!(["dns6"])));
    assert_eq!(elb.admin_ok("GET", "service", None), json!({}));
}

#[test]
fn acl_endpoint_round_trip() {
    let (elb, _c) = start();
    assert_eq!(elb.admin_ok("GET", "acl", None), json!([]));
    assert_eq!(
        elb.admin_ok(
            "PUT",
            "acl",
            Some(json!([
                "2001:DB8::/32",
                "10.0.0.0/8",
                "192.0.2.7",
                "10.0.0.0/8"
            ]))
        ),
        json!({"msg": "OK"})
    );
    // Canonical, sorted (IPv4 first), deduplicated.
    assert_eq!(
        elb.admin_ok("GET", "acl", None),
        json!(["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])
    );
    // PUT adds; entries already present are fine.
    elb.admin_ok(
        "PUT",
        "acl",
        Some(json!(["10.0.0.0/8", "::1", "0.0.0.0/0"])),
    );
    assert_eq!(
        elb.admin_ok("GET", "acl", None),
        json!([
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.0.2.7/32",
            "::1/128",
            "2001:db8::/32"
        ])
    );
    // DELETE ignores entries that are not in the list.
    assert_eq!(
        elb.admin_ok(
            "DELETE",
            "acl",
            Some(json!([
                "192.0.2.7/32",
                "203.0.113.0/24",
                "0.0.0.0/0",
                "::1"
            ]))
        ),
        json!({"msg": "OK"})
    );
    assert_eq!(
        elb.admin_ok("GET", "acl", None),
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    elb.admin_ok("PUT", "acl", Some(json!([])));
    elb.admin_ok("DELETE", "acl", Some(json!([])));
    assert_eq!(
        elb.admin_ok("GET", "acl", None).as_array().map(Vec::len),
        Some(2)
    );
}

/// Bad requests: the right status, a JSON error naming the problem, and
/// every GET byte-identical afterwards.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let (elb, _c) = start();
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"web4": {"127.0.0.1:8080": ""}, "names": {"localhost:8080": ""}})),
    );
    elb.admin_ok("PUT", "service", Some(json!({"web": web()})));
    elb.admin_ok("PUT", "acl", Some(json!(["10.0.0.0/8"])));
    let before = state(&elb);

    let svc = |name: &str, doc: Value| json!({ name: doc }).to_string().into_bytes();
    let with = |key: &str, value: Value| {
        let mut doc = json!({"vip": "10.0.0.2:80", "proto": "tcp", "upstream": "x"});
        doc[key] = value;
        doc
    };
    let too_many: Vec<String> = (0..65_537u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect();
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("PUT", "service", b"{not json".to_vec(), 400, "not valid JSON"),
        ("PUT", "service", b"[1]".to_vec(), 400, "JSON object"),
        ("PUT", "service", svc("s", json!("10.0.0.2:80")), 400, "\"s\""),
        ("PUT", "service", svc("a/b", with("vip", json!("10.0.0.2:80"))), 400, "service name \"a/b\""),
        ("PUT", "service", svc("", with("vip", json!("10.0.0.2:80"))), 400, "service name is empty"),
        ("PUT", "service", svc("s", with("vip", json!("10.0.0.2"))), 400, "\"vip\""),
        ("PUT", "service", svc("s", with("vip", json!("10.0.0.2:0"))), 400, "port 0"),
        ("PUT", "service", svc("s", with("vip", json!("::1:80"))), 400, "[::1]:80"),
        ("PUT", "service", svc("s", with("vip", json!("host.example:80"))), 400, "not IP:PORT"),
        ("PUT", "service", svc("s", with("proto", json!("sctp"))), 400, "\"proto\""),
        ("PUT", "service", svc("s", with("upstream", json!(""))), 400, "\"upstream\""),
        ("PUT", "service", svc("s", json!({"vip": "10.0.0.2:80", "proto": "tcp"})), 400, "\"upstream\" is missing"),
        ("PUT", "service", svc("s", with("snat", json!("2001:db8::1"))), 400, "\"snat\""),
        ("PUT", "service", svc("s", with("table_size", json!(1000))), 400, "prime"),
        ("PUT", "service", svc("s", with("table_size", json!(131101))), 400, "131071"),
        ("PUT", "service", svc("s", with("tablesize", json!(251))), 400, "unknown field \"tablesize\""),
        // Same (VIP, proto) as the existing service, and twice in one body.
        ("PUT", "service", svc("s", json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "x"})), 400, "services \"s\" and \"web\" both use tcp VIP 10.0.0.1:80"),
        (
            "PUT",
            "service",
            json!({"s1": with("vip", json!("10.0.0.9:80")), "s2": with("vip", json!("10.0.0.9:80"))}).to_string().into_bytes(),
            400,
            "both use tcp VIP 10.0.0.9:80",
        ),
        // Upstream servers must be IP literals of the VIP's family.
        ("PUT", "service", svc("s", json!({"vip": "[2001:db8::1]:80", "proto": "tcp", "upstream": "web4"})), 400, "server \"127.0.0.1:8080\": is IPv4 but the VIP [2001:db8::1]:80 is IPv6"),
        ("PUT", "service", svc("s", json!({"vip": "10.0.0.2:80", "proto": "tcp", "upstream": "names"})), 400, "server \"localhost:8080\": is not an IP:port literal"),
        // Half invalid: the valid one is not written either.
        (
            "PUT",
            "service",
            json!({"fine": with("vip", json!("10.0.0.3:80")), "zbad": with("proto", json!("icmp"))}).to_string().into_bytes(),
            400,
            "service \"zbad\", field \"proto\"",
        ),
        // An upstream a service uses must stay usable by it.
        ("PUT", "upstream", json!({"web4": {"127.0.0.1:8080": "", "[::1]:8080": ""}}).to_string().into_bytes(), 400, "server \"[::1]:8080\""),
        ("PUT", "upstream", json!({"web4": {"localhost:8080": ""}}).to_string().into_bytes(), 400, "service \"web\""),
        ("DELETE", "service", b"{\"web\": 1}".to_vec(), 400, "JSON array"),
        ("DELETE", "service", b"[\"web\", 7]".to_vec(), 400, "element 1"),
        ("PUT", "acl", b"{not json".to_vec(), 400, "not valid JSON"),
        ("PUT", "acl", b"{\"10.0.0.0/8\": \"\"}".to_vec(), 400, "JSON array"),
        ("PUT", "acl", b"[\"192.0.2.0/24\", 7]".to_vec(), 400, "element 1"),
        ("PUT", "acl", b"[\"192.0.2.0/24\", \"10.1.2.3/8\"]".to_vec(), 400, "ACL entry \"10.1.2.3/8\" is not a CIDR (like 10.0.0.0/8 or fd00::/8): host bits are set"),
        ("PUT", "acl", b"[\"10.0.0.0/33\"]".to_vec(), 400, "\"10.0.0.0/33\""),
        ("PUT", "acl", b"[\"2001:db8::/129\"]".to_vec(), 400, "prefix length"),
        ("PUT", "acl", b"[\"evil.example\"]".to_vec(), 400, "\"evil.example\""),
        ("PUT", "acl", json!(too_many).to_string().into_bytes(), 400, "at most 65536"),
        ("DELETE", "acl", b"[\"10.0.0.0/8\", \"nope\"]".to_vec(), 400, "\"nope\""),
        ("POST", "service", Vec::new(), 405, "POST"),
        ("PATCH", "acl", Vec::new(), 405, "PATCH"),
    ];
    for (method, endpoint, body, status, needle) in cases {
        refused(&elb, method, endpoint, &body, status, needle);
        assert_eq!(
            state(&elb),
            before,
            "{method} {endpoint} {} changed the state",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    for endpoint in ["service", "acl"] {
        let allow = raw_admin(&elb, "POST", endpoint, b"");
        assert_eq!(
            allow.header("allow"),
            Some("GET, PUT, DELETE"),
            "{endpoint}"
        );
    }
}

#[test]
fn the_acl_holds_at_most_65536_entries() {
    let (elb, _c) = start();
    let entries = |range: std::ops::Range<u32>| {
        json!(
            range
                .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff))
                .collect::<Vec<_>>()
        )
    };
    elb.admin_ok("PUT", "acl", Some(entries(0..65_000)));
    elb.admin_ok("PUT", "acl", Some(entries(64_000..65_536)));
    let before = state(&elb);
    assert_eq!(
        elb.admin_ok("GET", "acl", None).as_array().map(Vec::len),
        Some(65_536)
    );
    // Full: re-adding is fine, one more is not.
    elb.admin_ok("PUT", "acl", Some(entries(0..10)));
    refused(
        &elb,
        "PUT",
        "acl",
        json!(["192.0.2.1"]).to_string().as_bytes(),
        400,
        "would hold 65537 entries; at most 65536",
    );
    assert_eq!(state(&elb), before);
    elb.admin_ok("DELETE", "acl", Some(json!(["10.0.0.0"])));
    elb.admin_ok("PUT", "acl", Some(json!(["192.0.2.1"])));
}

#[test]
fn admin_access_and_body_limits_apply() {
    let elb = L7Builder::new()
        .arg("--admin-token")
        .arg("s3cret")
        .arg("--admin-max-body")
        .arg("1024")
        .start()
        .expect("start");
    let _c = Cleanup(elb.state_dir.clone());
    let auth = [("Authorization", "Bearer s3cret")];
    for endpoint in ["service", "acl"] {
        let path = format!("/__erulb__/{endpoint}");
        let response = http::request(elb.addr, "GET", &path, &[], None).expect("request");
        assert_eq!(response.status, 401, "{endpoint}");
        let response = http::request(elb.addr, "PUT", &path, &[], Some(b"[]")).expect("request");
        assert_eq!(response.status, 401, "{endpoint}");
        let big = json!(vec!["10.0.0.0/8"; 200]).to_string();
        let response =
            http::request(elb.addr, "PUT", &path, &auth, Some(big.as_bytes())).expect("request");
        assert_eq!(response.status, 413, "{endpoint}: {}", response.text());
        let response = http::request(elb.addr, "GET", &path, &auth, None).expect("request");
        assert_eq!(response.status, 200, "{endpoint}: {}", response.text());
    }
}

#[test]
fn services_and_acl_survive_a_restart_on_the_embedded_store() {
    let (mut elb, _c) = start();
    elb.admin_ok(
        "PUT",
        "service",
        Some(json!({"web": web(), "dns6": dns6()})),
    );
    elb.admin_ok("PUT", "acl", Some(json!(["10.0.0.0/8", "2001:db8::/32"])));
    let before = state(&elb);
    let text = std::fs::read_to_string(elb.state_dir.join("state.json")).expect("state file");
    assert!(
        text.contains(&format!("\"/{}/acl/2001:db8::/32\"", elb.name))
            && text.contains(&format!("\"/{}/services/web\"", elb.name)),
        "{text}"
    );
    elb.stop();
    let elb = L7Builder::same_as(&elb).start().expect("restart");
    assert_eq!(state(&elb), before);
    assert_eq!(elb.admin_ok("PUT", "dump", None), json!({"msg": "OK"}));
    assert_eq!(state(&elb), before);
}

#[test]
fn admin_writes_go_through_to_etcd_all_or_nothing() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_on(&etcd);
    let prefix = format!("/{}/", elb.name);
    elb.admin_ok(
        "PUT",
        "service",
        Some(json!({"web": web(), "dns6": dns6()})),
    );
    elb.admin_ok("PUT", "acl", Some(json!(["10.0.0.0/8", "2001:db8::/32"])));
    let stored = etcd.get_prefix(&prefix).expect("get");
    let keys: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}acl/10.0.0.0/8"),
            format!("{prefix}acl/2001:db8::/32"),
            format!("{prefix}services/dns6"),
            format!("{prefix}services/web"),
        ]
    );
    assert_eq!(stored[0].1, "");
    assert_eq!(
        serde_json::from_str::<Value>(&stored[2].1).expect("json"),
        dns6_stored()
    );
    // Half-invalid PUTs write nothing.
    for (endpoint, body) in [
        (
            "service",
            json!({"ok": {"vip": "10.0.0.5:80", "proto": "tcp", "upstream": "u"},
                   "bad": {"vip": "10.0.0.6:80", "proto": "tcp", "upstream": "u", "snat": "::1"}}),
        ),
        ("acl", json!(["192.0.2.0/24", "192.0.2.1/24"])),
    ] {
        let response = http::admin(elb.addr, "PUT", endpoint, Some(&body)).expect("put");
        assert_eq!(response.status, 400, "{}", response.text());
        assert_eq!(etcd.get_prefix(&prefix).expect("get"), stored);
    }
    elb.admin_ok("DELETE", "service", Some(json!(["web"])));
    elb.admin_ok("DELETE", "acl", Some(json!(["10.0.0.0/8"])));
    let keys: Vec<String> = etcd
        .get_prefix(&prefix)
        .expect("get")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}acl/2001:db8::/32"),
            format!("{prefix}services/dns6")
        ]
    );
}

#[test]
fn etcdctl_services_and_acl_are_visible_within_a_second() {
    let etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_on(&etcd);
    let prefix = format!("/{}", elb.name);
    etcd.put(&format!("{prefix}/services/web"), &web().to_string())
        .expect("put");
    etcd.put(&format!("{prefix}/acl/10.0.0.0/8"), "")
        .expect("put");
    // Hand-written, not canonical: a bare address.
    etcd.put(&format!("{prefix}/acl/192.0.2.7"), "")
        .expect("put");
    let took = wait_for_get(
        &elb,
        "service",
        &json!({"web": web()}),
        Duration::from_secs(1),
    );
    eprintln!("etcd service visible after {took:?}");
    wait_for_get(
        &elb,
        "acl",
        &json!(["10.0.0.0/8", "192.0.2.7/32"]),
        Duration::from_secs(1),
    );
    // Bad entries are logged and skipped; the previous version serves.
    etcd.put(
        &format!("{prefix}/services/web"),
        r#"{"vip": "10.0.0.1:80", "proto": "sctp", "upstream": "web4"}"#,
    )
    .expect("put");
    etcd.put(&format!("{prefix}/acl/10.1.2.3/8"), "")
        .expect("put");
    etcd.put(&format!("{prefix}/services/dns6"), &dns6().to_string())
        .expect("put");
    // The later, good write is applied, so the bad ones were processed before it.
    wait_for_get(
        &elb,
        "service",
        &json!({"web": web(), "dns6": dns6_stored()}),
        Duration::from_secs(1),
    );
    assert_eq!(
        elb.admin_ok("GET", "acl", None),
        json!(["10.0.0.0/8", "192.0.2.7/32"])
    );
    let log = elb.process.log();
    assert!(log.contains("sctp") && log.contains("host bits"), "{log}");
    // Deleting a hand-written key through the admin API finds it.
    elb.admin_ok("DELETE", "acl", Some(json!(["192.0.2.7/32"])));
    assert!(
        etcd.get_prefix(&format!("{prefix}/acl/192.0.2.7"))
            .expect("get")
            .is_empty()
    );
    etcd.ctl(&["del", &format!("{prefix}/services/web")])
        .expect("del");
    wait_for_get(
        &elb,
        "service",
        &json!({"dns6": dns6_stored()}),
        Duration::from_secs(1),
    );
}

#[test]
fn dump_rewrites_services_and_acl_in_canonical_form() {
    let etcd = Etcd::start().expect("etcd");
    let name = "L4DUMP";
    etcd.put(&format!("/{name}/services/dns6"), &dns6().to_string())
        .expect("put");
    etcd.put(&format!("/{name}/services/bad"), "{")
        .expect("put");
    etcd.put(&format!("/{name}/acl/192.0.2.7"), "")
        .expect("put");
    etcd.put(&format!("/{name}/acl/2001:DB8::/32"), "x")
        .expect("put");
    etcd.put(&format!("/{name}/acl/10.1.2.3/8"), "")
        .expect("put");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start_named(name)
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    assert_eq!(
        elb.admin_ok("GET", "service", None),
        json!({"dns6": dns6_stored()})
    );
    assert_eq!(
        elb.admin_ok("GET", "acl", None),
        json!(["192.0.2.7/32", "2001:db8::/32"])
    );
    elb.admin_ok("PUT", "dump", None);
    let stored = etcd.get_prefix(&format!("/{name}/")).expect("get");
    assert_eq!(
        stored,
        [
            (format!("/{name}/acl/192.0.2.7/32"), String::new()),
            (format!("/{name}/acl/2001:db8::/32"), String::new()),
            (format!("/{name}/services/dns6"), dns6_stored().to_string()),
        ]
    );
}

#[test]
fn a_store_failure_is_500_and_changes_nothing() {
    let mut etcd = Etcd::start().expect("etcd");
    let (elb, _c) = start_on(&etcd);
    elb.admin_ok("PUT", "service", Some(json!({"web": web()})));
    elb.admin_ok("PUT", "acl", Some(json!(["10.0.0.0/8"])));
    let before = state(&elb);
    etcd.kill();
    for (method, endpoint, body) in [
        ("PUT", "service", json!({"dns6": dns6()})),
        ("DELETE", "service", json!(["web"])),
        ("PUT", "acl", json!(["192.0.2.0/24"])),
        ("DELETE", "acl", json!(["10.0.0.0/8"])),
    ] {
        let response = http::admin(elb.addr, method, endpoint, Some(&body)).expect("request");
        assert_eq!(
            response.status,
            500,
            "{method} {endpoint}: {}",
            response.text()
        );
        assert!(
            response.text().contains("nothing was changed"),
            "{}",
            response.text()
        );
        assert_eq!(state(&elb), before, "{method} {endpoint}");
    }
}

/// SNAT pools: a list stays a list on GET (a string stays a string, as
/// `web()` shows); a bad pool is refused naming the field and the index,
/// and changes nothing.
#[test]
fn snat_pools_round_trip_and_bad_ones_name_the_index() {
    let (elb, _c) = start();
    let pool = json!({"vip": "10.0.0.2:80", "proto": "tcp", "upstream": "web4",
                      "snat": ["10.0.0.100", "10.0.0.101"], "table_size": 251});
    elb.admin_ok("PUT", "service", Some(json!({"pool": pool, "web": web()})));
    assert_eq!(
        elb.admin_ok("GET", "service", None),
        json!({"pool": pool, "web": web()})
    );
    let before = state(&elb);
    let twice = json!({"p2": {"vip": "10.0.0.3:80", "proto": "tcp", "upstream": "u",
                              "snat": ["10.0.0.100", "10.0.0.100"]}});
    refused(
        &elb,
        "PUT",
        "service",
        twice.to_string().as_bytes(),
        400,
        "[1]",
    );
    let mixed = json!({"p3": {"vip": "10.0.0.4:80", "proto": "tcp", "upstream": "u",
                              "snat": ["10.0.0.100", "2001:db8::1"]}});
    refused(
        &elb,
        "PUT",
        "service",
        mixed.to_string().as_bytes(),
        400,
        "\"snat\"",
    );
    assert_eq!(state(&elb), before);
}
