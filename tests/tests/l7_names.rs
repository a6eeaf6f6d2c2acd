//! Upstream and domain names (issue 12, defect 7): `..`, `.` and `*` are no
//! names; internationalised domains are stored as IDNA punycode so they match
//! the Host a client sends; domains differing only in case are one domain.
use elb_tests::{
    backend::Backend,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc, served_by},
};
use serde_json::{Value, json};

fn start() -> (L7Elb, Cleanup) {
    let elb = L7Builder::new().start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// An admin write that must be refused with a 400 naming `name`.
fn refused(elb: &L7Elb, endpoint: &str, body: Value, name: &str) {
    let response = http::admin(elb.addr, "PUT", endpoint, Some(&body)).expect("PUT");
    assert_eq!(
        response.status,
        400,
        "{endpoint} {body}: {}",
        response.text()
    );
    assert!(
        response
            .text()
            .contains(&format!("{name:?}").replace('"', "\\\"")),
        "the error names {name:?}: {}",
        response.text()
    );
}

#[test]
fn path_components_and_wildcards_are_refused_as_names() {
    let (elb, _c) = start();
    for name in ["..", ".", "*"] {
        refused(&elb, "upstream", json!({ name: {"127.0.0.1:9": ""} }), name);
    }
    for name in ["..", ".", "*", "*.probe.test"] {
        refused(&elb, "domain", json!({ name: backend_doc("up1") }), name);
    }
    assert_eq!(elb.admin_ok("GET", "upstream", None), json!({}));
    assert_eq!(elb.admin_ok("GET", "domain", None), json!({}));
}

#[test]
fn internationalised_domains_are_stored_as_punycode_and_match_the_host() {
    let (elb, _c) = start();
    let backend = Backend::start("b1").expect("backend");
    elb.put_upstream("up1", &[(backend.addr(), "")]);
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"bücher.test": backend_doc("up1")})),
    );
    // GET shows the form a client's Host carries.
    assert_eq!(
        elb.admin_ok("GET", "domain", None),
        json!({"xn--bcher-kva.test": backend_doc("up1")})
    );
    assert_eq!(served_by(&elb.get("xn--bcher-kva.test", "/", None)), "b1");
    assert_eq!(
        served_by(&elb.get("XN--BCHER-KVA.test:80", "/", None)),
        "b1"
    );
    // Deleting by either spelling removes it.
    elb.admin_ok("DELETE", "domain", Some(json!(["bücher.test"])));
    assert_eq!(elb.admin_ok("GET", "domain", None), json!({}));
}

#[test]
fn domains_differing_only_in_case_are_one_domain() {
    let (elb, _c) = start();
    let b1 = Backend::start("b1").expect("backend");
    let b2 = Backend::start("b2").expect("backend");
    elb.put_upstream("up1", &[(b1.addr(), "")]);
    elb.put_upstream("up2", &[(b2.addr(), "")]);
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"Probe.TEST": backend_doc("up1")})),
    );
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"probe.test": backend_doc("up2")})),
    );
    // The second write replaced the first: one domain, the one that serves.
    assert_eq!(
        elb.admin_ok("GET", "domain", None),
        json!({"probe.test": backend_doc("up2")})
    );
    assert_eq!(served_by(&elb.get("PROBE.test", "/", None)), "b2");
    // Two spellings in one body are ambiguous: refused, naming both.
    let both = json!({"a.test": backend_doc("up1"), "A.test": backend_doc("up2")});
    let response = http::admin(elb.addr, "PUT", "domain", Some(&both)).expect("PUT");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("A.test") && response.text().contains("a.test"),
        "{}",
        response.text()
    );
    assert_eq!(
        elb.admin_ok("GET", "domain", None),
        json!({"probe.test": backend_doc("up2")})
    );
}

/// Names written to etcd by hand: bad ones are skipped (and logged), a
/// legacy spelling serves and is merged by the next admin write.
#[test]
fn bad_and_legacy_names_in_etcd() {
    let etcd = Etcd::start().expect("etcd");
    let b1 = Backend::start("b1").expect("backend");
    let b2 = Backend::start("b2").expect("backend");
    let name = "NAMES";
    let put = |key: &str, value: &str| etcd.put(&format!("/{name}/{key}"), value).expect("put");
    put(&format!("upstreams/../{}", b1.addr()), "");
    put(&format!("upstreams/*/{}", b1.addr()), "");
    put(&format!("upstreams/up1/{}", b1.addr()), "");
    put(&format!("upstreams/up2/{}", b2.addr()), "");
    put("rules/..", &backend_doc("up1").to_string());
    put("rules/Legacy.TEST", &backend_doc("up1").to_string());
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start_named(name)
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    let upstreams = elb.admin_ok("GET", "upstream", None);
    let names: Vec<&String> = upstreams.as_object().expect("object").keys().collect();
    assert_eq!(names, ["up1", "up2"]);
    assert_eq!(
        elb.admin_ok("GET", "domain", None),
        json!({"Legacy.TEST": backend_doc("up1")})
    );
    assert_eq!(served_by(&elb.get("legacy.test", "/", None)), "b1");
    // The admin write stores the canonical spelling and drops the legacy one.
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"legacy.test": backend_doc("up2")})),
    );
    let rules: Vec<String> = etcd
        .get_prefix(&format!("/{name}/rules/"))
        .expect("get")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        rules,
        [
            format!("/{name}/rules/.."),
            format!("/{name}/rules/legacy.test")
        ]
    );
    assert_eq!(served_by(&elb.get("Legacy.test", "/", None)), "b2");
    // A hand-written bad name can still be deleted by its spelling.
    elb.admin_ok("DELETE", "domain", Some(json!([".."])));
    assert_eq!(
        etcd.get_prefix(&format!("/{name}/rules/"))
            .expect("get")
            .len(),
        1
    );
}
