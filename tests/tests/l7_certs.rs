//! TLS certificates as configuration on a real elb: `/__erulb__/cert`
//! validates what it stores (chain, key match, validity), lists DNS names,
//! expiry and key type but never a key, leaves state unchanged on a 400,
//! survives `dump` and a restart, and skips a bad document from etcd.
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use elb_tests::{
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb},
};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

/// A certificate document, `{"cert", "key"}`, from rcgen (ECDSA P-256).
fn rcgen_doc(names: &[&str]) -> Value {
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    signed(params, KeyPair::generate().expect("key"))
}

fn signed(params: CertificateParams, key: KeyPair) -> Value {
    let cert = params.self_signed(&key).expect("self-signed");
    json!({"cert": cert.pem(), "key": key.serialize_pem()})
}

/// An RSA 2048 certificate made by the `openssl` CLI (PKCS#8 key).
fn openssl_rsa_doc(dir: &Path, name: &str) -> Value {
    let (cert, key) = (dir.join("rsa.crt"), dir.join("rsa.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .output()
        .expect("run openssl");
    assert!(
        status.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    json!({
        "cert": std::fs::read_to_string(cert).expect("cert"),
        "key": std::fs::read_to_string(key).expect("key"),
    })
}

fn start() -> (L7Elb, Cleanup) {
    let elb = L7Builder::new().start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// A PUT that must be refused with 400; returns the error text.
fn refused(elb: &L7Elb, body: Value) -> String {
    let response = http::admin(elb.addr, "PUT", "cert", Some(&body)).expect("PUT cert");
    assert_eq!(response.status, 400, "{}", response.text());
    response.text()
}

/// The base64 body of a PEM block: what must never leave elb.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn certificates_are_validated_listed_without_keys_and_kept() {
    let (elb, _cleanup) = start();
    assert_eq!(elb.admin_ok("GET", "cert", None), json!({}));

    let main = rcgen_doc(&["a.example.com", "*.Example.com"]);
    let rsa = openssl_rsa_doc(&elb.state_dir, "rsa.example.org");
    elb.admin_ok(
        "PUT",
        "cert",
        Some(json!({"main": main.clone(), "rsa": rsa.clone()})),
    );
    let listed = elb.admin_ok("GET", "cert", None);
    assert_eq!(
        listed["main"]["dns_names"],
        json!(["a.example.com", "*.example.com"])
    );
    assert_eq!(listed["main"]["key_type"], "ECDSA P-256");
    assert_eq!(listed["main"]["not_after"], "4096-01-01T00:00:00Z");
    assert_eq!(listed["rsa"]["dns_names"], json!(["rsa.example.org"]));
    assert_eq!(listed["rsa"]["key_type"], "RSA 2048");
    let not_after = listed["rsa"]["not_after"].as_str().expect("not_after");
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z') && not_after.as_bytes()[10] == b'T',
        "RFC 3339: {not_after}"
    );
    let text = listed.to_string();
    for doc in [&main, &rsa] {
        let key = doc["key"].as_str().expect("key");
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains(&pem_body(key)[..40]),
            "GET shows a private key: {text}"
        );
    }

    // Every refusal names the certificate and the reason; nothing changes.
    let (a, b) = (rcgen_doc(&["x.test"]), rcgen_doc(&["y.test"]));
    let mut expired = CertificateParams::new(vec!["old.test".to_owned()]).expect("params");
    expired.not_before = rcgen::date_time_ymd(2000, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let mut future = CertificateParams::new(vec!["new.test".to_owned()]).expect("params");
    future.not_before = rcgen::date_time_ymd(3000, 1, 1);
    for (body, expected) in [
        (
            json!({"crossed": {"cert": a["cert"], "key": b["key"]}}),
            "certificate \\\"crossed\\\": the private key does not match",
        ),
        (
            json!({"old": signed(expired, KeyPair::generate().expect("key"))}),
            "certificate \\\"old\\\": the certificate expired on 2001-01-01",
        ),
        (
            json!({"new": signed(future, KeyPair::generate().expect("key"))}),
            "not valid before 3000-01-01",
        ),
        (
            json!({"junk": {"cert": "not PEM", "key": a["key"]}}),
            "certificate \\\"junk\\\": the \\\"cert\\\" field has no CERTIFICATE block",
        ),
        (
            json!({"nokey": {"cert": a["cert"], "key": ""}}),
            "no usable PEM private key",
        ),
        // All or nothing: the good one in the batch is not stored either,
        // and `main` is not replaced.
        (
            json!({"good": b, "main": {"cert": a["cert"], "key": b["key"]}}),
            "certificate \\\"main\\\"",
        ),
        (json!({"*": a}), "contains '*'"),
        (json!(["main"]), "JSON object"),
    ] {
        let error = refused(&elb, body);
        assert!(error.contains(expected), "{expected}: {error}");
        assert_eq!(elb.admin_ok("GET", "cert", None), listed, "after {error}");
    }

    // Kept in the state file (owner-only: it holds the keys), by dump and
    // across a restart.
    let state_file = elb.state_dir.join("state.json");
    let mode = std::fs::metadata(&state_file)
        .expect("state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "state file mode {mode:o}");
    elb.admin_ok("DELETE", "cert", Some(json!(["rsa", "unknown"])));
    elb.admin_ok("PUT", "dump", None);
    let state = std::fs::read_to_string(&state_file).expect("state");
    assert!(
        state.contains(&format!("/{}/certs/main", elb.name)),
        "{state}"
    );
    assert!(!state.contains("/certs/rsa"), "{state}");
    let mut elb = elb;
    elb.stop();
    let elb = L7Builder::same_as(&elb).start().expect("restart elb");
    let after = elb.admin_ok("GET", "cert", None);
    assert_eq!(after, json!({"main": listed["main"]}));
}

#[test]
fn a_bad_certificate_in_etcd_is_skipped_and_the_previous_one_keeps_serving() {
    let etcd = Etcd::start().expect("etcd");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    elb.admin_ok(
        "PUT",
        "cert",
        Some(json!({"main": rcgen_doc(&["main.test"])})),
    );
    let key = format!("/{}/certs/main", elb.name);
    let stored = etcd.get_prefix(&key).expect("get");
    assert_eq!(stored.len(), 1, "written through to etcd");

    etcd.put(&key, r#"{"cert": "garbage", "key": "garbage"}"#)
        .expect("put");
    etcd.put(
        &format!("/{}/certs/later", elb.name),
        &rcgen_doc(&["later.test"]).to_string(),
    )
    .expect("put");
    // The later, good write is applied, so the bad one was processed first.
    let started = Instant::now();
    let listed = loop {
        let listed = elb.admin_ok("GET", "cert", None);
        if listed.get("later").is_some() {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "etcd's certificate not served: {listed}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(listed["main"]["dns_names"], json!(["main.test"]));
    assert!(
        elb.process.log().contains("no CERTIFICATE block"),
        "the skip is logged: {}",
        elb.process.log()
    );
    // dump puts the serving version back into etcd.
    elb.admin_ok("PUT", "dump", None);
    assert_eq!(etcd.get_prefix(&key).expect("get"), stored);
}
