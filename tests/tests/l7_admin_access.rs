//! Admin access control with a real non-loopback client: elb in one network
//! namespace, the client in another, linked by a veth pair.
use std::net::SocketAddr;

use elb_tests::{
    elb_process::{ElbProcess, spawn_in_netns},
    http,
    netns::{NetNs, veth_pair},
    require_root_and_bpf,
};

const ELB: &str = "10.78.0.1:8080";

/// elb in `lb`; the returned directory (state, lock) is removed on drop.
fn start_elb(lb: &NetNs, extra: &[&str]) -> (ElbProcess, tempfile::TempDir) {
    spawn_in_netns(lb, "A", extra, 8080)
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
