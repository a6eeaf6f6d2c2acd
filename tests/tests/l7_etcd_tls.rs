//! elb on a real etcd that serves TLS, requires client certificates and has
//! authentication enabled (issue 12): it works; wrong credentials or a wrong
//! CA stop elb at start with a message naming what to check; certificates
//! rotate without restarting elb.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    elb_process::ElbProcess,
    etcd::Etcd,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
    netns::unique_name,
    pki::{Chain, ChainFiles},
    ports::free_port,
};
use serde_json::json;

/// elb's copies of the client files, which a test may overwrite (rotation).
struct ClientFiles {
    dir: tempfile::TempDir,
    files: ChainFiles,
}

impl ClientFiles {
    fn new(chain: &Chain) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = chain.write(dir.path()).expect("write chain");
        Self { dir, files }
    }

    fn password_file(&self, password: &str) -> PathBuf {
        let path = self.dir.path().join("password");
        std::fs::write(&path, format!("{password}\n")).expect("write password");
        path
    }

    fn tls_args(&self) -> Vec<String> {
        let arg = |flag: &str, path: &Path| [flag.to_owned(), path.display().to_string()];
        [
            arg("--etcd-ca", &self.files.ca),
            arg("--etcd-cert", &self.files.client_cert),
            arg("--etcd-key", &self.files.client_key),
        ]
        .concat()
    }
}

fn start_elb(etcd: &Etcd, name: &str, args: &[String]) -> (L7Elb, Cleanup) {
    let mut builder = L7Builder::new().etcd(&etcd.endpoint());
    for arg in args {
        builder = builder.arg(arg);
    }
    let elb = builder.start_named(name).expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// Routes `host` to `backend` through etcdctl (elb learns it by its watch).
fn route_in_etcd(etcd: &Etcd, name: &str, host: &str, backend: &Backend) {
    let upstream = format!("up-{host}");
    etcd.put(
        &format!("/{name}/upstreams/{upstream}/{}", backend.addr()),
        "",
    )
    .expect("put upstream");
    etcd.put(
        &format!("/{name}/rules/{host}"),
        &backend_doc(&upstream).to_string(),
    )
    .expect("put rule");
}

fn wait_until_served(elb: &L7Elb, host: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let response = elb.get(host, "/", None);
        if response.status == 200 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{host} not served within {limit:?}: {} {}\n{}",
            response.status,
            response.text(),
            elb.process.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs elb expecting it to refuse to start; returns its log.
fn start_fails(etcd: &Etcd, args: &[String]) -> String {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let name = unique_name("T");
    let listen = format!("127.0.0.1:{}", free_port());
    let state_file = state_dir.path().join("state.json").display().to_string();
    let run_dir = state_dir.path().display().to_string();
    let etcd_endpoint = etcd.endpoint();
    let mut all = vec![
        "run",
        "--name",
        &name,
        "--listen",
        &listen,
        "--state-file",
        &state_file,
        "--run-dir",
        &run_dir,
        "--etcd",
        &etcd_endpoint,
    ];
    all.extend(args.iter().map(String::as_str));
    let mut elb = ElbProcess::spawn(&all, None).expect("spawn elb");
    let status = elb
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("elb kept running: {e:#}\n{}", elb.log()));
    assert!(!status.success(), "elb exited 0:\n{}", elb.log());
    elb.log()
}

#[test]
fn tls_with_client_certificates_and_auth() {
    let chain = Chain::new("A").expect("chain");
    let mut etcd = Etcd::start_tls(&chain).expect("etcd");
    etcd.enable_auth("s3cret").expect("auth");
    let client = ClientFiles::new(&chain);
    let mut args = client.tls_args();
    args.extend([
        "--etcd-user".to_owned(),
        "root".to_owned(),
        "--etcd-password-file".to_owned(),
        client.password_file("s3cret").display().to_string(),
    ]);
    let backend = Backend::start("b1").expect("backend");
    route_in_etcd(&etcd, "TLSAUTH", "before.test", &backend);
    let (elb, _c) = start_elb(&etcd, "TLSAUTH", &args);
    // Loaded at start, then a live change through the watch.
    wait_until_served(&elb, "before.test", Duration::from_secs(5));
    route_in_etcd(&etcd, "TLSAUTH", "after.test", &backend);
    wait_until_served(&elb, "after.test", Duration::from_secs(5));
    // Admin writes go through to etcd.
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"admin.test": backend_doc("up-before.test")})),
    );
    let stored = etcd.get_prefix("/TLSAUTH/rules/admin.test").expect("get");
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[test]
fn a_wrong_password_stops_elb_at_start_and_says_so() {
    let mut etcd = Etcd::start().expect("etcd");
    etcd.enable_auth("s3cret").expect("auth");
    let client_dir = tempfile::tempdir().expect("tempdir");
    let password = client_dir.path().join("password");
    std::fs::write(&password, "wrong\n").expect("write");
    let log = start_fails(
        &etcd,
        &[
            "--etcd-user".into(),
            "root".into(),
            "--etcd-password-file".into(),
            password.display().to_string(),
        ],
    );
    assert!(
        log.contains("elb: error:") && log.contains("--etcd-password-file"),
        "{log}"
    );
    // No credentials at all against an etcd with auth: also refused.
    let log = start_fails(&etcd, &[]);
    assert!(log.contains("--etcd-user"), "{log}");
}

#[test]
fn a_wrong_ca_stops_elb_at_start_and_says_so() {
    let chain = Chain::new("A").expect("chain");
    let etcd = Etcd::start_tls(&chain).expect("etcd");
    let other = ClientFiles::new(&Chain::new("B").expect("chain"));
    let log = start_fails(&etcd, &other.tls_args());
    assert!(
        log.contains("elb: error:") && log.contains("--etcd-ca"),
        "{log}"
    );
}

#[test]
fn certificates_rotate_without_restarting_elb() {
    let chain_a = Chain::new("A").expect("chain");
    let mut etcd = Etcd::start_tls(&chain_a).expect("etcd");
    let client = ClientFiles::new(&chain_a);
    let backend = Backend::start("b1").expect("backend");
    route_in_etcd(&etcd, "ROTATE", "a.test", &backend);
    let (elb, _c) = start_elb(&etcd, "ROTATE", &client.tls_args());
    wait_until_served(&elb, "a.test", Duration::from_secs(5));
    let pid = elb.process.pid();

    // A whole new chain of trust: elb's files first, then etcd restarts
    // with it. The old CA does not trust the new etcd, nor the new etcd
    // the old client certificate.
    let chain_b = Chain::new("B").expect("chain");
    chain_b
        .write(client.dir.path())
        .expect("rotate elb's files");
    etcd.restart_with_chain(&chain_b).expect("restart etcd");
    route_in_etcd(&etcd, "ROTATE", "b.test", &backend);
    wait_until_served(&elb, "b.test", Duration::from_secs(15));
    assert_eq!(elb.process.pid(), pid, "elb was not restarted");
    // Writes use the new connection too.
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"c.test": backend_doc("up-a.test")})),
    );
    assert_eq!(
        etcd.get_prefix("/ROTATE/rules/c.test").expect("get").len(),
        1
    );
}
