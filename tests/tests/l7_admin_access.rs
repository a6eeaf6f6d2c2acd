//! Admin access control with a real non-loopback client: elb in one network
//! namespace, the client in another, linked by a veth pair.
use std::{net::SocketAddr, time::Duration};

use elb_tests::{
    elb_process::ElbProcess,
    http,
    netns::{NetNs, unique_name, veth_pair},
    require_root_and_bpf,
};

const ELB: &str = "10.78.0.1:8080";

/// elb in `lb`; the returned directory (state, lock) is removed on drop.
fn start_elb(lb: &NetNs, extra: &[&str]) -> (ElbProcess, tempfile::TempDir) {
    let temp = tempfile::tempdir().expect("dir");
    let dir = temp.path();
    let state = dir.join("state.json");
    let name = unique_name("A");
    let mut args = vec![
        "run",
        "--name",
        &name,
        "--listen",
        "0.0.0.0:8080",
        "--state-file",
        state.to_str().expect("utf-8"),
        "--run-dir",
        dir.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let mut elb = ElbProcess::spawn(&args, Some(lb)).expect("spawn elb");
    elb.wait_until(Duration::from_secs(10), || {
        lb.enter(|| std::net::TcpStream::connect("127.0.0.1:8080").is_ok())
            .unwrap_or(false)
    })
    .expect("elb listens");
    (elb, temp)
}

fn admin_get_from(
    client: &NetNs,
    headers: &'static [(&'static str, &'static str)],
) -> http::HttpResponse {
    client
        .enter(move || {
            let addr: SocketAddr = ELB.parse().expect("addr");
            http::request(addr, "GET", "/__erulb__/domain", headers, None)
        })
        .expect("enter client namespace")
        .expect("request")
}

#[test]
fn non_loopback_clients_are_refused_unless_allowed() {
    require_root_and_bpf!();
    let lb = NetNs::new("elbal").expect("lb ns");
    let client = NetNs::new("elbac").expect("client ns");
    veth_pair(&lb, &["10.78.0.1/24"], &client, &["10.78.0.2/24"]).expect("veth");

    let (mut elb, dir) = start_elb(&lb, &[]);
    let refused = admin_get_from(&client, &[]);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("10.78.0.2"), "{}", refused.text());
    // Proxy traffic from the same client is not affected (404: no domain).
    let proxied = client
        .enter(|| http::get(ELB.parse().expect("addr"), "/", &[("Host", "x.example")]))
        .expect("enter")
        .expect("request");
    assert_eq!(proxied.status, 404);
    elb.stop().expect("stop");
    drop(dir);

    let (_elb, dir) = start_elb(
        &lb,
        &["--admin-allow", "10.78.0.0/24", "--admin-token", "t0k"],
    );
    assert_eq!(admin_get_from(&client, &[]).status, 401);
    let allowed = admin_get_from(&client, &[("Authorization", "Bearer t0k")]);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    drop(dir);
}
