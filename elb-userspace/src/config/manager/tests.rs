//! Store → snapshot for L4 services and the ACL: bad and conflicting
//! entries from the store, sharing between snapshots, change notification.
use super::*;

const WEB: &str = "/ELB/services/web";
const API: &str = "/ELB/services/api";

fn manager() -> ConfigManager {
    ConfigManager::new(KeyLayout::new("ELB"))
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn del(key: &str) -> KvOp {
    KvOp::Delete { key: key.into() }
}

fn svc(vip: &str) -> String {
    serde_json::json!({"vip": vip, "proto": "tcp", "upstream": "up"}).to_string()
}

fn vips(manager: &ConfigManager) -> Vec<(String, String)> {
    let snapshot = manager.snapshot_handle().load_full();
    snapshot
        .services()
        .iter()
        .map(|(name, service)| (name.clone(), service.vip.to_string()))
        .collect()
}

fn acl_text(manager: &ConfigManager) -> Vec<String> {
    let snapshot = manager.snapshot_handle().load_full();
    snapshot.acl().iter().map(ToString::to_string).collect()
}

#[test]
fn services_from_the_store_are_published() {
    let mut m = manager();
    let skipped = m.apply(&[put(WEB, &svc("10.0.0.1:80")), put(API, &svc("[::1]:80"))]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(
        vips(&m),
        [
            ("api".to_owned(), "[::1]:80".to_owned()),
            ("web".to_owned(), "10.0.0.1:80".to_owned())
        ]
    );
    m.apply(&[del(API)]);
    assert_eq!(vips(&m), [("web".to_owned(), "10.0.0.1:80".to_owned())]);
}

#[test]
fn a_bad_service_from_the_store_keeps_its_previous_version() {
    let mut m = manager();
    m.apply(&[put(WEB, &svc("10.0.0.1:80"))]);
    let skipped = m.apply(&[put(
        WEB,
        r#"{"vip": "10.0.0.2:80", "proto": "sctp", "upstream": "up"}"#,
    )]);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].to_string().contains("sctp"), "{}", skipped[0]);
    assert_eq!(vips(&m), [("web".to_owned(), "10.0.0.1:80".to_owned())]);
    // A new bad service is simply absent; later changes do not report the
    // same bad entry again.
    let skipped = m.apply(&[put("/ELB/services/new", "{")]);
    assert_eq!(skipped.len(), 1);
    let skipped = m.apply(&[put(API, &svc("10.0.0.3:80"))]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(vips(&m).len(), 2);
}

#[test]
fn a_conflicting_vip_from_the_store_loses_to_the_serving_service() {
    let mut m = manager();
    m.apply(&[put(WEB, &svc("10.0.0.1:80")), put(API, &svc("10.0.0.2:80"))]);
    // `api` (first by name) moves onto web's VIP: web keeps it, api keeps
    // its previous version.
    let skipped = m.apply(&[put(API, &svc("10.0.0.1:80"))]);
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]
            .to_string()
            .contains("both use tcp VIP 10.0.0.1:80"),
        "{}",
        skipped[0]
    );
    assert_eq!(
        vips(&m),
        [
            ("api".to_owned(), "10.0.0.2:80".to_owned()),
            ("web".to_owned(), "10.0.0.1:80".to_owned())
        ]
    );
    // Once web leaves, the stored api definition takes the VIP.
    m.apply(&[put(WEB, &svc("10.0.0.9:80"))]);
    assert_eq!(
        vips(&m),
        [
            ("api".to_owned(), "10.0.0.1:80".to_owned()),
            ("web".to_owned(), "10.0.0.9:80".to_owned())
        ]
    );
    // Two new services on one VIP at load: the first by name wins.
    let mut m = manager();
    let skipped = m.replace_all(Kv::from([
        (WEB.to_owned(), svc("10.0.0.1:80")),
        (API.to_owned(), svc("10.0.0.1:80")),
    ]));
    assert_eq!(skipped.len(), 1);
    assert_eq!(vips(&m), [("api".to_owned(), "10.0.0.1:80".to_owned())]);
}

#[test]
fn acl_keys_are_parsed_deduplicated_and_sorted() {
    let mut m = manager();
    let skipped = m.apply(&[
        put("/ELB/acl/fd00::/8", ""),
        put("/ELB/acl/10.0.0.0/8", ""),
        put("/ELB/acl/192.0.2.7", ""),
        put("/ELB/acl/192.0.2.7/32", ""),
        put("/ELB/acl/10.1.2.3/8", ""),
        put("/ELB/acl/garbage", ""),
    ]);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|e| e.to_string().contains("host bits")));
    assert_eq!(acl_text(&m), ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    // One of two keys for the same entry goes: the entry stays.
    m.apply(&[del("/ELB/acl/192.0.2.7")]);
    assert_eq!(acl_text(&m).len(), 3);
    m.apply(&[del("/ELB/acl/192.0.2.7/32"), del("/ELB/acl/fd00::/8")]);
    assert_eq!(acl_text(&m), ["10.0.0.0/8"]);
}

#[test]
fn l4_state_is_shared_between_snapshots_until_it_changes() {
    let mut m = manager();
    m.apply(&[
        put(WEB, &svc("10.0.0.1:80")),
        put("/ELB/acl/10.0.0.0/8", ""),
    ]);
    let before = m.snapshot_handle().load_full();
    m.apply(&[put("/ELB/upstreams/up/10.1.0.1:80", "")]);
    let after = m.snapshot_handle().load_full();
    assert!(std::ptr::eq(before.services(), after.services()));
    assert!(std::ptr::eq(before.acl(), after.acl()));
    // Rewriting a service with an equal definition keeps the same map.
    m.apply(&[put(WEB, &format!(" {}", svc("10.0.0.1:80")))]);
    let rewritten = m.snapshot_handle().load_full();
    assert!(std::ptr::eq(before.services(), rewritten.services()));
    m.apply(&[put(WEB, &svc("10.0.0.2:80"))]);
    let changed = m.snapshot_handle().load_full();
    assert!(!std::ptr::eq(before.services(), changed.services()));
}

#[tokio::test]
async fn subscribers_see_every_publish() {
    let mut m = manager();
    let mut changes = m.subscribe();
    assert!(!changes.has_changed().expect("open"));
    m.apply(&[put("/ELB/acl/10.0.0.0/8", "")]);
    assert!(changes.has_changed().expect("open"));
    assert_eq!(*changes.borrow_and_update(), 1);
    assert_eq!(m.snapshot_handle().load().acl().len(), 1);
    // No-op writes and foreign keys publish nothing.
    m.apply(&[put("/ELB/acl/10.0.0.0/8", ""), put("/ELB/other", "x")]);
    assert!(!changes.has_changed().expect("open"));
    m.apply(&[put(WEB, &svc("10.0.0.1:80"))]);
    changes.changed().await.expect("open");
    assert_eq!(*changes.borrow_and_update(), 2);
}

#[test]
fn policies_and_zones_from_the_store_route_and_bad_ones_keep_the_previous() {
    let mut m = manager();
    let skipped = m.apply(&[
        put("/ELB/upstreams/up/10.0.0.1:80", "zone=a"),
        put("/ELB/upstreams/up/10.0.0.2:80", "zone=b"),
        put(
            "/ELB/policies/up",
            r#"{"health_check": {"interval": "1s", "timeout": "500ms"}}"#,
        ),
    ]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(
        m.policies()["up"].health_check.interval,
        std::time::Duration::from_secs(1)
    );
    let bad = m.apply(&[put(
        "/ELB/policies/up",
        r#"{"health_check": {"interval": "1ms"}}"#,
    )]);
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].to_string().contains("health_check.interval"),
        "{}",
        bad[0]
    );
    assert_eq!(
        m.policies()["up"].health_check.interval,
        std::time::Duration::from_secs(1),
        "the previous policy keeps working"
    );
    // A disabled zone takes its servers out of rotation at once.
    assert!(
        m.apply(&[put("/ELB/zones", r#"{"disabled": ["b"]}"#)])
            .is_empty()
    );
    let snapshot = m.snapshot_handle().load_full();
    let upstream = snapshot.upstream("up").expect("up");
    let routable: Vec<bool> = upstream.gates().iter().map(|g| g.routable()).collect();
    assert_eq!(routable, [true, false]);
    let bad = m.apply(&[put("/ELB/zones", r#"{"disabled": "b"}"#)]);
    assert_eq!(bad.len(), 1);
    assert_eq!(
        m.zones().disabled.len(),
        1,
        "the previous zones document stays"
    );
    m.apply(&[del("/ELB/zones"), del("/ELB/policies/up")]);
    assert!(m.zones().disabled.is_empty());
    assert!(m.policies().is_empty());
}

#[test]
fn discovery_documents_from_the_store_and_bad_ones_keep_the_previous() {
    let mut m = manager();
    let good = r#"{"provider": "consul", "service": "web"}"#;
    assert!(m.apply(&[put("/ELB/discovery/up", good)]).is_empty());
    assert_eq!(
        m.discovery()["up"].source.to_string(),
        "consul (service \"web\")"
    );
    // Written by hand into etcd: an error naming the field, no crash, and
    // the previous document stays in effect.
    let bad = m.apply(&[put(
        "/ELB/discovery/up",
        r#"{"provider": "consul", "service": "web", "tags": "prod"}"#,
    )]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].to_string().contains("\"tags\""), "{}", bad[0]);
    assert_eq!(
        m.discovery()["up"].source.to_string(),
        "consul (service \"web\")"
    );
    let not_json = m.apply(&[put("/ELB/discovery/other", "{")]);
    assert_eq!(not_json.len(), 1, "{not_json:?}");
    assert!(!m.discovery().contains_key("other"));
    m.apply(&[del("/ELB/discovery/up")]);
    assert!(m.discovery().is_empty());
}

/// A manager whose elb listens on 127.0.0.1:18080.
fn listening_manager() -> ConfigManager {
    let listen = vec!["127.0.0.1:18080".parse().expect("addr")];
    manager().with_own_addrs(OwnAddrs::with_local(listen, Arc::new(|_| false)))
}

#[test]
fn a_stored_server_that_is_elb_itself_is_skipped() {
    let mut m = listening_manager();
    m.apply(&[put("/ELB/upstreams/up1/127.0.0.1:9001", "")]);
    let skipped = m.apply(&[put("/ELB/upstreams/up1/127.0.0.1:18080", "")]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let message = skipped[0].to_string();
    assert!(
        message.contains("\"127.0.0.1:18080\"") && message.contains("own listening address"),
        "{message}"
    );
    let servers: Vec<_> = m.upstreams()["up1"]
        .servers()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(servers, ["127.0.0.1:9001"], "the previous version serves");
}

#[test]
fn a_stored_rule_whose_servername_is_elb_itself_is_skipped() {
    let mut m = listening_manager();
    let doc = |servername: &str| {
        serde_json::json!({"init": "b", "rules": {"b": {"type": "backend",
            "args": {"servername": servername}}}})
        .to_string()
    };
    let skipped = m.apply(&[put("/ELB/rules/a.test", &doc("localhost:18080"))]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].to_string().contains("localhost:18080"),
        "{}",
        skipped[0]
    );
    assert!(m.domains().is_empty());
    assert!(m.apply(&[put("/ELB/rules/a.test", &doc("up1"))]).is_empty());
    assert!(m.domains().contains_key("a.test"));
}

fn cert_doc(names: &[&str]) -> String {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate");
    serde_json::json!({
        "cert": generated.cert.pem(),
        "key": generated.signing_key.serialize_pem(),
    })
    .to_string()
}

fn served_names(manager: &ConfigManager, sni: &str) -> Option<Vec<String>> {
    let snapshot = manager.snapshot_handle().load_full();
    snapshot
        .certs()
        .choose(Some(sni), "none")
        .map(|cert| cert.dns_names.clone())
}

#[test]
fn certificates_from_the_store_reach_the_snapshot_and_bad_ones_keep_the_previous() {
    let mut m = manager();
    let skipped = m.apply(&[put("/ELB/certs/main", &cert_doc(&["a.test"]))]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(served_names(&m, "a.test"), Some(vec!["a.test".to_owned()]));

    let bad = m.apply(&[put("/ELB/certs/main", r#"{"cert": "x", "key": "y"}"#)]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    let message = bad[0].to_string();
    assert!(
        message.contains("/ELB/certs/main") && message.contains("CERTIFICATE"),
        "{message}"
    );
    assert_eq!(
        served_names(&m, "a.test"),
        Some(vec!["a.test".to_owned()]),
        "the previous certificate keeps serving"
    );

    let bad_name = m.apply(&[put("/ELB/certs/..", &cert_doc(&["b.test"]))]);
    assert_eq!(bad_name.len(), 1, "{bad_name:?}");
    assert_eq!(served_names(&m, "b.test"), None);

    m.apply(&[put("/ELB/certs/main", &cert_doc(&["c.test"]))]);
    assert_eq!(served_names(&m, "a.test"), None);
    assert_eq!(served_names(&m, "c.test"), Some(vec!["c.test".to_owned()]));
    m.apply(&[del("/ELB/certs/main")]);
    assert!(m.certs().is_empty());
    assert_eq!(served_names(&m, "c.test"), None);
}

fn listener_doc(address: &str) -> String {
    serde_json::json!({"address": address, "protocol": "http"}).to_string()
}

fn listener_addrs(manager: &ConfigManager) -> Vec<(String, String)> {
    let snapshot = manager.snapshot_handle().load_full();
    snapshot
        .listeners()
        .iter()
        .map(|(name, listener)| (name.clone(), listener.address.to_string()))
        .collect()
}

#[test]
fn stored_listeners_are_published_and_bad_or_clashing_ones_skipped() {
    let mut m = listening_manager();
    let skipped = m.apply(&[put("/ELB/listeners/a", &listener_doc("127.0.0.1:9080"))]);
    assert!(skipped.is_empty(), "{skipped:?}");
    // A bad document keeps the previous version.
    let skipped = m.apply(&[put(
        "/ELB/listeners/a",
        r#"{"address": "x", "protocol": "http"}"#,
    )]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].to_string().contains("listener \"a\""),
        "{}",
        skipped[0]
    );
    // The static address and a taken one are not given to another.
    let skipped = m.apply(&[
        put("/ELB/listeners/b", &listener_doc("127.0.0.1:9080")),
        put("/ELB/listeners/c", &listener_doc("127.0.0.1:18080")),
    ]);
    let messages: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("listener \"a\"'s") || messages[1].contains("listener \"a\"'s"));
    assert!(
        messages.iter().any(|m| m.contains("--listen")),
        "{messages:?}"
    );
    assert_eq!(
        listener_addrs(&m),
        [("a".to_owned(), "127.0.0.1:9080".to_owned())]
    );
    // Once the address is free, the stored listener waiting for it gets it.
    m.apply(&[del("/ELB/listeners/a")]);
    assert_eq!(
        listener_addrs(&m),
        [("b".to_owned(), "127.0.0.1:9080".to_owned())]
    );
}

#[test]
fn a_configured_listener_is_one_of_elbs_own_addresses() {
    let mut m = listening_manager();
    m.apply(&[put("/ELB/listeners/a", &listener_doc("127.0.0.1:9080"))]);
    let skipped = m.apply(&[put("/ELB/upstreams/up1/127.0.0.1:9080", "")]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]
            .to_string()
            .contains("own listening address 127.0.0.1:9080"),
        "{}",
        skipped[0]
    );
    m.apply(&[del("/ELB/listeners/a")]);
    assert!(
        m.apply(&[put("/ELB/upstreams/up1/127.0.0.1:9080", "max_fails=1")])
            .is_empty()
    );
}

#[test]
fn a_deeper_key_under_an_upstream_is_no_server_and_deleting_the_servers_removes_it() {
    // Found by the etcd_snapshot fuzz target: a running elb and a restarted
    // one disagreed.
    let mut m = manager();
    m.apply(&[put("/ELB/upstreams/up1/127.0.0.1:8088", "weight=3")]);
    m.apply(&[put("/ELB/upstreams/up1/[::0]:80/web", "x")]);
    assert!(m.upstreams().contains_key("up1"));
    let errors = m.apply(&[KvOp::DeletePrefix {
        prefix: "/ELB/upstreams/up1/127.0.0.1:".to_owned(),
    }]);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        !m.upstreams().contains_key("up1"),
        "the deleted server serves on"
    );
    let mut restarted = manager();
    restarted.replace_all(m.kv().clone());
    assert!(!restarted.upstreams().contains_key("up1"));
}

#[test]
fn request_counters_survive_a_redefinition_and_leave_with_their_upstream() {
    let mut m = manager();
    m.apply(&[put("/ELB/upstreams/up/10.0.0.1:80", "")]);
    let count = |m: &ConfigManager| crate::metrics::upstream_totals(&m.snapshot_handle().load());
    m.upstreams()["up"].metrics.servers[0].requests.record(503);
    m.apply(&[put("/ELB/upstreams/up/10.0.0.2:80", "")]);
    let up = &m.upstreams()["up"];
    assert_eq!(up.servers().len(), 2);
    let totals = count(&m);
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].requests, totals[0].errors), (1, 1));
    m.apply(&[
        del("/ELB/upstreams/up/10.0.0.1:80"),
        del("/ELB/upstreams/up/10.0.0.2:80"),
    ]);
    assert!(count(&m).is_empty());
}
