//! What the discovery tests share: backends on their own loopback
//! addresses, an upstream's addresses as the admin API lists them, who
//! answers through an elb, and elb nodes on one etcd with their election
//! role.
use std::net::SocketAddr;

use crate::{
    backend::Backend,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb, served_by},
};

/// A backend on its own loopback address (`127.0.0.<last>`).
pub fn loopback_backend(name: &str, last: u8) -> Backend {
    let addr: SocketAddr = format!("127.0.0.{last}:0").parse().expect("addr");
    Backend::start_on(name, addr).expect("backend")
}

/// The backends' addresses, sorted, as the admin API lists servers.
pub fn backend_addrs(backends: &[&Backend]) -> Vec<String> {
    let mut addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    addrs.sort();
    addrs
}

/// The addresses in `upstream` on `elb`, sorted.
pub fn upstream_addrs(elb: &L7Elb, upstream: &str) -> Vec<String> {
    let upstreams = elb.admin_ok("GET", "upstream", None);
    let mut addrs: Vec<String> = upstreams[upstream]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    addrs
}

/// Which backends answer the next `n` requests for `host` through `elb`,
/// sorted, each once.
pub fn answered_by(elb: &L7Elb, host: &str, n: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n)
        .map(|_| served_by(&elb.get(host, "/", None)))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An elb on `etcd` named `name`, with a discovery lease of `ttl`.
pub fn start_etcd_node(etcd: &Etcd, name: &str, ttl: &str) -> (L7Elb, Cleanup) {
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .arg("--discovery-lease-ttl")
        .arg(ttl)
        .start_named(name)
        .expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup)
}

/// `GET /__erulb__/discovery/leader` on `elb`, if it answers 200.
pub fn leader_report(elb: &L7Elb) -> Option<serde_json::Value> {
    let response = http::admin(elb.addr, "GET", "discovery/leader", None).ok()?;
    (response.status == 200)
        .then(|| response.json().ok())
        .flatten()
}

/// This node's discovery role (`leader` or `follower`), if it answers.
pub fn discovery_role(elb: &L7Elb) -> Option<String> {
    leader_report(elb).and_then(|report| report["role"].as_str().map(str::to_owned))
}

/// The backend answering one request for `host` through the elb at
/// `elb`, or None (no answer, not 200, no `server` field).
pub fn answering_backend(elb: SocketAddr, host: &str) -> Option<String> {
    let response = http::get(elb, "/", &[("Host", host)]).ok()?;
    (response.status == 200)
        .then(|| response.json().ok())
        .flatten()
        .and_then(|body| body["server"].as_str().map(str::to_owned))
}
