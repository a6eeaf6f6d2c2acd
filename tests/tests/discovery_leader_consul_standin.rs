//! Leader election end to end with one Consul discovery document: two real
//! elb processes on one real etcd, the Consul **stand-in**
//! (tests/src/consul_standin.rs) counting requests per client, real
//! backends on 127.0.0.x.
//!
//! Only the elected node queries the stand-in; every node builds the same
//! server list from what the leader wrote to etcd and routes traffic by it.
//! A killed leader is replaced within the lease TTL, a stopped one at once,
//! and the new leader's results reach every node. A node that no longer
//! leads cannot commit (the fence: its leader key in the transaction).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    consul_standin::{ConsulStandin, Instance},
    discovery::{
        answered_by, backend_addrs, discovery_role, loopback_backend, start_etcd_node,
        upstream_addrs,
    },
    etcd::Etcd,
    l7::{L7Elb, backend_doc},
    netns::unique_name,
};
use elb_userspace::{
    discovery::leader::{DiscoveryGate, ElectionSettings, election_name},
    store::{EtcdStore, KvOp, StoreError},
};
use serde_json::{Value, json};
use tokio::sync::watch;

const HOST: &str = "web.test";

fn instance(id: &str, backend: &Backend) -> Instance {
    Instance::new(id, "web", backend.addr())
}

/// Waits until exactly one node says it leads; returns its index.
fn one_leader(nodes: &[&L7Elb], limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let roles: Vec<Option<String>> = nodes.iter().map(|n| discovery_role(n)).collect();
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|&i| roles[i].as_deref() == Some("leader"))
            .collect();
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(started.elapsed() < limit, "no single leader: {roles:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(elb: &L7Elb, signal: i32) {
    let pid = elb.process.pid().expect("elb runs") as i32;
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(pid, signal) };
}

/// Hands upstream "web" to the stand-in (through one node: etcd carries it
/// to every node) and routes `HOST` to it.
fn follow(elb: &L7Elb, standin: &ConsulStandin) {
    elb.admin_ok("PUT", "domain", Some(json!({ HOST: backend_doc("web") })));
    let doc = json!({"provider": "consul", "address": standin.addr().to_string(),
        "service": "web", "params": "max_fails=2"});
    elb.admin_ok("PUT", "discovery", Some(json!({ "web": doc })));
}

/// The provider's report on `elb` (`null` where no provider runs).
fn provider_state(elb: &L7Elb) -> Value {
    elb.admin_ok("GET", "discovery", None)["web"]["state"].clone()
}

/// The local addresses of the TCP sockets process `pid` holds (IPv4:
/// elb reaches the stand-in on 127.0.0.1).
fn tcp_sockets_of(pid: u32) -> BTreeSet<SocketAddr> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !inodes.contains(*fields.get(9)?) {
                return None;
            }
            let (ip, port) = fields.get(1)?.split_once(':')?;
            // The kernel prints the address in host order (little endian).
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::from((ip, port)))
        })
        .collect()
}

/// Which node each of the stand-in's clients is: a client address is
/// matched to the elb process holding that socket. Sampled while polling:
/// a provider keeps its connection (a blocking query waits up to 60 s).
#[derive(Default)]
struct Clients {
    owner: BTreeMap<SocketAddr, String>,
}

impl Clients {
    fn sample(&mut self, nodes: &[(&str, &L7Elb)]) {
        for (name, elb) in nodes {
            let Some(pid) = elb.process.pid() else {
                continue;
            };
            for addr in tcp_sockets_of(pid) {
                self.owner.insert(addr, (*name).to_owned());
            }
        }
    }

    /// Requests per node name; `?` for clients no node was seen holding.
    fn requests(&self, standin: &ConsulStandin) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (peer, n) in standin.requests_by_peer() {
            let name = self.owner.get(&peer).cloned().unwrap_or_else(|| "?".into());
            *counts.entry(name).or_default() += n;
        }
        counts
    }
}

/// Polls until every node in `nodes` has exactly `backends` in upstream
/// "web", sampling the stand-in's clients meanwhile.
fn wait_servers(
    nodes: &[(&str, &L7Elb)],
    clients: &mut Clients,
    backends: &[&Backend],
    within: Duration,
) {
    let wanted = backend_addrs(backends);
    let started = Instant::now();
    loop {
        clients.sample(nodes);
        let now: Vec<(&str, Vec<String>)> = nodes
            .iter()
            .map(|(n, e)| (*n, upstream_addrs(e, "web")))
            .collect();
        if now.iter().all(|(_, list)| *list == wanted) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "upstream web is {now:?}, not {wanted:?} everywhere, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samples the clients for `how_long`.
fn observe(nodes: &[(&str, &L7Elb)], clients: &mut Clients, how_long: Duration) {
    let started = Instant::now();
    while started.elapsed() < how_long {
        clients.sample(nodes);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `node` has sent the stand-in a request; returns how long
/// that took.
fn wait_queries(
    nodes: &[(&str, &L7Elb)],
    clients: &mut Clients,
    standin: &ConsulStandin,
    node: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        clients.sample(nodes);
        if clients.requests(standin).get(node).copied().unwrap_or(0) > 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{node} sent no request to the stand-in within {within:?}: {:?}",
            clients.requests(standin)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn consul_standin_only_the_leader_queries_and_a_killed_leader_is_replaced_within_the_ttl() {
    let etcd = Etcd::start().expect("etcd");
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2, b3) = (
        loopback_backend("b1", 71),
        loopback_backend("b2", 72),
        loopback_backend("b3", 73),
    );
    standin.register(instance("b1", &b1));
    standin.register(instance("b2", &b2));
    let name = unique_name("DL");
    let ttl = Duration::from_secs(3);
    let (a, _ca) = start_etcd_node(&etcd, &name, "3s");
    let (b, _cb) = start_etcd_node(&etcd, &name, "3s");
    let first = one_leader(&[&a, &b], Duration::from_secs(10));
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    let nodes = [("leader", leader), ("follower", follower)];
    let mut clients = Clients::default();

    // The document goes in through the follower: it still does not query.
    follow(follower, &standin);
    wait_servers(&nodes, &mut clients, &[&b1, &b2], Duration::from_secs(5));
    observe(&nodes, &mut clients, Duration::from_secs(2));
    let counts = clients.requests(&standin);
    assert!(counts.get("leader").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(
        counts.get("follower"),
        None,
        "only the leader queries the stand-in: {counts:?}"
    );
    assert_eq!(counts.get("?"), None, "every client is a node: {counts:?}");
    // Each node's own report agrees: a provider runs on the leader only.
    assert_eq!(provider_state(leader)["servers"], 2);
    assert!(provider_state(follower).is_null());
    // Both nodes route to the real backends.
    assert_eq!(answered_by(leader, HOST, 12), ["b1", "b2"]);
    assert_eq!(answered_by(follower, HOST, 12), ["b1", "b2"]);

    // kill -9: the follower takes over within the lease TTL, and queries.
    signal(leader, libc::SIGKILL);
    let killed = Instant::now();
    let took = wait_queries(&nodes, &mut clients, &standin, "follower", ttl * 3);
    eprintln!("first stand-in query by the new leader {took:?} after kill -9 (lease TTL {ttl:?})");
    assert!(
        took <= ttl + Duration::from_millis(1500),
        "the new leader queried after {took:?}, more than the TTL and a margin"
    );
    assert_eq!(discovery_role(follower).as_deref(), Some("leader"));
    assert!(killed.elapsed() < ttl * 3);

    // A node started now follows; a change in the stand-in reaches both.
    let (c, _cc) = start_etcd_node(&etcd, &name, "3s");
    let nodes = [("follower", follower), ("late", &c)];
    wait_servers(&nodes, &mut clients, &[&b1, &b2], Duration::from_secs(10));
    standin.register(instance("b3", &b3));
    standin.deregister("b1");
    wait_servers(&nodes, &mut clients, &[&b2, &b3], Duration::from_secs(3));
    observe(&nodes, &mut clients, Duration::from_secs(1));
    assert_eq!(discovery_role(&c).as_deref(), Some("follower"));
    let counts = clients.requests(&standin);
    assert_eq!(
        counts.get("late"),
        None,
        "the late node follows and does not query: {counts:?}"
    );
    assert_eq!(answered_by(follower, HOST, 12), ["b2", "b3"]);
    assert_eq!(answered_by(&c, HOST, 12), ["b2", "b3"]);
}

#[test]
fn consul_standin_a_stopped_leader_hands_the_queries_over_at_once() {
    let etcd = Etcd::start().expect("etcd");
    let standin = ConsulStandin::start().expect("stand-in");
    let (b1, b2) = (loopback_backend("b1", 74), loopback_backend("b2", 75));
    standin.register(instance("b1", &b1));
    let name = unique_name("DS");
    // The default TTL (10 s): only a resignation hands over quickly.
    let (a, _ca) = start_etcd_node(&etcd, &name, "10s");
    let (b, _cb) = start_etcd_node(&etcd, &name, "10s");
    let first = one_leader(&[&a, &b], Duration::from_secs(10));
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    let nodes = [("leader", leader), ("follower", follower)];
    let mut clients = Clients::default();
    follow(leader, &standin);
    wait_servers(&nodes, &mut clients, &[&b1], Duration::from_secs(5));
    observe(&nodes, &mut clients, Duration::from_secs(1));
    let counts = clients.requests(&standin);
    assert_eq!(counts.get("follower"), None, "{counts:?}");

    signal(leader, libc::SIGTERM);
    let took = wait_queries(
        &nodes,
        &mut clients,
        &standin,
        "follower",
        Duration::from_secs(3),
    );
    eprintln!("first stand-in query by the new leader {took:?} after SIGTERM (lease TTL 10s)");
    standin.register(instance("b2", &b2));
    wait_servers(
        &[("follower", follower)],
        &mut clients,
        &[&b1, &b2],
        Duration::from_secs(3),
    );
    assert_eq!(answered_by(follower, HOST, 12), ["b1", "b2"]);
}

/// One election candidate in this process.
fn candidate(etcd: &Etcd, elb_name: &str, identity: &str) -> (DiscoveryGate, watch::Sender<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let settings = ElectionSettings {
        endpoints: vec![format!("http://{}", etcd.endpoint())],
        access: Default::default(),
        name: election_name(elb_name),
        identity: identity.to_owned(),
        lease_ttl: Duration::from_secs(3),
    };
    let gate = DiscoveryGate::elect(settings, shutdown).expect("start the election");
    (gate, stop)
}

async fn until_leads(gate: &DiscoveryGate) {
    let mut may_run = gate.may_run.clone();
    tokio::time::timeout(Duration::from_secs(10), may_run.wait_for(|leads| *leads))
        .await
        .expect("elected within 10 s")
        .expect("the election runs");
}

fn stored_value(etcd: &Etcd, key: &str) -> Option<String> {
    let stored = etcd.get_prefix(key).expect("etcdctl get");
    stored.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The fence on a real etcd: a commit guarded by a leader key that is gone
/// (the old leader resigned, another leads) writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_fenced_by_a_former_leaders_key_does_not_land() {
    let etcd = Etcd::start().expect("etcd");
    let name = unique_name("DF");
    let endpoints = vec![format!("http://{}", etcd.endpoint())];
    let store = EtcdStore::connect(&endpoints, &format!("/{name}/"), &Default::default())
        .await
        .expect("store");
    let key = format!("/{name}/upstreams/web/127.0.0.1:8080");
    let put = |value: &str| {
        vec![KvOp::Put {
            key: key.clone(),
            value: value.to_owned(),
        }]
    };

    let (a, stop_a) = candidate(&etcd, &name, "node-a");
    until_leads(&a).await;
    let (b, _stop_b) = candidate(&etcd, &name, "node-b");
    let fence_a = a.fence.clone().expect("etcd has a fence");
    let guard_a = fence_a.current().expect("the leader has a guard");
    store
        .commit_guarded(&put("weight=1"), &guard_a)
        .await
        .expect("the leader's commit lands");

    // a stops (resigns); b leads.
    stop_a.send_replace(true);
    a.task.await.expect("a's election ends");
    assert!(fence_a.current().is_none(), "no guard once not leading");
    until_leads(&b).await;
    match store.commit_guarded(&put("weight=2"), &guard_a).await {
        Err(StoreError::Fenced { key, .. }) => assert_eq!(key, guard_a.key),
        other => panic!("a former leader's commit was not fenced: {other:?}"),
    }
    assert_eq!(stored_value(&etcd, &key).as_deref(), Some("weight=1"));
    let guard_b = b
        .fence
        .as_ref()
        .and_then(|f| f.current())
        .expect("b's guard");
    assert_ne!(guard_a, guard_b);
    store
        .commit_guarded(&put("weight=3"), &guard_b)
        .await
        .expect("the new leader's commit lands");
    assert_eq!(stored_value(&etcd, &key).as_deref(), Some("weight=3"));
}
