//! The fallback end to end on loopback (no privileges needed): real
//! sockets, a snapshot handle driven by the test.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::watch,
};

use super::*;
use crate::{
    cidr::Cidr,
    config::{L4Proto, L4Service, Snapshot, Upstream, policy::Policy},
    targets::{TargetRegistry, UpstreamConfig},
    upstream::{Server, parse_params},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn snapshot(
    services: &[(&str, SocketAddr, L4Proto)],
    servers: &[SocketAddr],
    acl: &[&str],
) -> Snapshot {
    let upstream = Arc::new(Upstream::new(
        "up".into(),
        servers
            .iter()
            .map(|s| Server::new(s.to_string(), parse_params("").expect("params")))
            .collect(),
    ));
    let services: BTreeMap<String, Arc<L4Service>> = services
        .iter()
        .map(|(name, vip, proto)| {
            let service = L4Service {
                name: (*name).into(),
                vip: *vip,
                proto: *proto,
                upstream: "up".into(),
                snat: None,
                table_size: 251,
            };
            ((*name).to_owned(), Arc::new(service))
        })
        .collect();
    let acl: Vec<Cidr> = acl.iter().map(|c| c.parse().expect("cidr")).collect();
    Snapshot::new([], [&upstream]).with_l4(Arc::new(services), acl.into())
}

/// A TCP server answering each read with `name`, and a UDP one likewise.
async fn id_server(name: &'static str) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let udp = UdpSocket::bind(addr).await.expect("bind udp");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(name.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(name.as_bytes(), peer).await;
        }
    });
    addr
}

async fn ask_tcp(vip: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(vip).await?;
    ask_again(&mut stream).await
}

struct Harness {
    snapshots: SnapshotHandle,
    generation: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    l4: L4Userspace,
}

impl Harness {
    async fn start(first: Snapshot) -> Self {
        // No target registry here: health never changes.
        Self::with_health(first, watch::channel(0).1).await
    }

    /// `health`: the target registry's generation.
    async fn with_health(first: Snapshot, health: watch::Receiver<u64>) -> Self {
        let snapshots: SnapshotHandle = Arc::new(ArcSwap::from_pointee(first));
        let (generation, changes) = watch::channel(0);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let l4 = L4Userspace::start(
            Arc::clone(&snapshots),
            changes,
            health,
            FallbackSettings::new(Duration::from_secs(1)),
            shutdown_rx,
        )
        .await;
        Self {
            snapshots,
            generation,
            shutdown,
            l4,
        }
    }

    async fn publish(&self, snapshot: Snapshot) {
        self.snapshots.store(Arc::new(snapshot));
        self.generation.send_modify(|g| *g += 1);
        // The follow loop applies it at once; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn stop(self) -> Value {
        let _ = self.shutdown.send(true);
        let stats = self.l4.stats();
        tokio::time::timeout(Duration::from_secs(5), self.l4.wait())
            .await
            .expect("stops in time");
        stats.stats_json()
    }
}

#[tokio::test]
async fn tcp_and_udp_are_relayed_counted_and_denied() {
    let server = id_server("s1").await;
    let vip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let services = [("web", vip, L4Proto::Tcp), ("dns", vip, L4Proto::Udp)];
    let h = Harness::start(snapshot(&services, &[server], &[])).await;

    assert_eq!(ask_tcp(vip).await.expect("tcp answer"), "s1");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    client.send_to(b"who", vip).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    eprintln!("{:#}", h.l4.stats_json());
    let mut buf = [0u8; 16];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .expect("udp answer in time")
        .expect("udp answer");
    assert_eq!((&buf[..n], from), (&b"s1"[..], vip));

    let stats = h.l4.stats_json();
    assert_eq!(stats["dataplane"], "userspace");
    assert_eq!(stats["services"]["web"]["listening"], true);
    assert_eq!(stats["services"]["web"]["new_flows"], 1);
    assert_eq!(stats["services"]["dns"]["new_flows"], 1);
    assert_eq!(stats["services"]["dns"]["active_flows"], 1);
    assert_eq!(stats["services"]["dns"]["bytes_to_client"], 2);
    assert_eq!(
        stats["services"]["web"]["servers"][server.to_string()]["new_flows"],
        1
    );

    // Deny loopback: TCP is refused, UDP dropped, both counted.
    h.publish(snapshot(&services, &[server], &["127.0.0.0/8"]))
        .await;
    assert!(ask_tcp(vip).await.is_err(), "denied client served");
    client.send_to(b"who", vip).await.expect("send");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf))
            .await
            .is_err(),
        "denied client answered"
    );
    h.publish(snapshot(&services, &[server], &[])).await;
    assert_eq!(ask_tcp(vip).await.expect("allowed again"), "s1");

    let stats = h.stop().await;
    assert_eq!(stats["services"]["web"]["acl_drops"], 1, "{stats:#}");
    assert_eq!(stats["services"]["dns"]["acl_drops"], 1, "{stats:#}");
    assert_eq!(stats["totals"]["active_flows"], 0, "{stats:#}");
}

#[tokio::test]
async fn unbindable_vips_are_reported_and_retried_and_removed_services_stop() {
    let server = id_server("s1").await;
    // Not a local address: the bind fails.
    let foreign: SocketAddr = ([192, 0, 2, 1], 80).into();
    let vip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let h = Harness::start(snapshot(
        &[("far", foreign, L4Proto::Tcp), ("web", vip, L4Proto::Tcp)],
        &[server],
        &[],
    ))
    .await;
    let stats = h.l4.stats_json();
    assert_eq!(stats["services"]["far"]["listening"], false);
    let error = stats["services"]["far"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("far") && error.contains("192.0.2.1:80"),
        "{error}"
    );
    assert_eq!(stats["services"]["web"]["listening"], true);

    // "web" moves to another port: the old one closes, the new one serves.
    let moved: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    h.publish(snapshot(&[("web", moved, L4Proto::Tcp)], &[server], &[]))
        .await;
    assert!(ask_tcp(vip).await.is_err(), "the old VIP still listens");
    assert_eq!(ask_tcp(moved).await.expect("new VIP"), "s1");
    let stats = h.l4.stats_json();
    assert!(stats["services"].get("far").is_none(), "{stats:#}");

    // No server: connections are closed and counted.
    h.publish(snapshot(&[("web", moved, L4Proto::Tcp)], &[], &[]))
        .await;
    assert!(ask_tcp(moved).await.is_err());
    let stats = h.stop().await;
    assert_eq!(stats["services"]["web"]["no_server_drops"], 1, "{stats:#}");
}

#[tokio::test]
async fn a_dead_server_is_a_connect_failure() {
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let vip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let h = Harness::start(snapshot(&[("web", vip, L4Proto::Tcp)], &[dead], &[])).await;
    assert!(ask_tcp(vip).await.is_err());
    let stats = h.stop().await;
    assert_eq!(stats["services"]["web"]["connect_failures"], 1, "{stats:#}");
    assert_eq!(stats["services"]["web"]["active_flows"], 0, "{stats:#}");
}

/// A target registry for upstreams "up" (with a policy: its servers drain
/// for a minute when removed) and "plain" (no policy), and the snapshots
/// built over its gates, as the configuration manager builds them.
struct Targets {
    registry: TargetRegistry,
    policies: BTreeMap<String, Arc<Policy>>,
}

/// How long a removed server of "up" drains; the test moves the
/// registry's clock past it rather than waiting.
const DRAIN: Duration = Duration::from_secs(60);

impl Targets {
    fn new() -> Self {
        let policy = Policy {
            deregistration_delay: DRAIN,
            ..Policy::default()
        };
        Self {
            registry: TargetRegistry::default(),
            policies: BTreeMap::from([("up".to_owned(), Arc::new(policy))]),
        }
    }

    /// Services over "up" and "plain", both upstreams with `servers`.
    fn snapshot(
        &self,
        services: &[(&str, SocketAddr, L4Proto, &str)],
        servers: &[SocketAddr],
    ) -> Snapshot {
        let servers: Vec<Server> = servers
            .iter()
            .map(|s| Server::new(s.to_string(), parse_params("").expect("params")))
            .collect();
        let upstreams: Vec<Arc<Upstream>> = ["up", "plain"]
            .into_iter()
            .map(|name| {
                let gates = self.registry.gates_for(name, &servers);
                Arc::new(Upstream::with_gates(name.into(), servers.clone(), gates))
            })
            .collect();
        self.registry.sync(
            upstreams.iter().map(|u| UpstreamConfig {
                name: &u.name,
                servers: u.servers(),
            }),
            &self.policies,
            &BTreeSet::new(),
            Instant::now(),
        );
        let services: BTreeMap<String, Arc<L4Service>> = services
            .iter()
            .map(|(name, vip, proto, upstream)| {
                let service = L4Service {
                    name: (*name).into(),
                    vip: *vip,
                    proto: *proto,
                    upstream: (*upstream).into(),
                    snat: None,
                    table_size: 251,
                };
                ((*name).to_owned(), Arc::new(service))
            })
            .collect();
        Snapshot::new([], &upstreams).with_l4(Arc::new(services), Arc::default())
    }
}

/// A connection kept open to ask its server's name again and again.
async fn open_tcp(vip: SocketAddr) -> TcpStream {
    TcpStream::connect(vip).await.expect("connect")
}

async fn ask_again(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"who").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn ask_udp(client: &UdpSocket, vip: SocketAddr) -> String {
    client.send_to(b"who", vip).await.expect("send");
    let mut buf = [0u8; 16];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .expect("udp answer in time")
        .expect("udp answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn flows_to_a_drained_server_are_closed_when_the_drain_ends_with_a_policy_only() {
    let (s1, s2) = (id_server("s1").await, id_server("s2").await);
    let vip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let plain_vip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let services = [
        ("web", vip, L4Proto::Tcp, "up"),
        ("dns", vip, L4Proto::Udp, "up"),
        ("plain", plain_vip, L4Proto::Tcp, "plain"),
    ];
    let targets = Targets::new();
    let h = Harness::with_health(
        targets.snapshot(&services, &[s1]),
        targets.registry.subscribe(),
    )
    .await;

    let mut web = open_tcp(vip).await;
    let mut plain = open_tcp(plain_vip).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    assert_eq!(ask_again(&mut web).await.expect("web"), "s1");
    assert_eq!(ask_again(&mut plain).await.expect("plain"), "s1");
    assert_eq!(ask_udp(&udp, vip).await, "s1");

    // s1 leaves both upstreams: "up"'s s1 drains, "plain"'s is just gone.
    h.publish(targets.snapshot(&services, &[s2])).await;
    assert_eq!(targets.registry.draining("up"), [s1.to_string()]);
    assert_eq!(ask_tcp(vip).await.expect("new flow"), "s2");
    assert_eq!(ask_again(&mut web).await.expect("web while draining"), "s1");
    assert_eq!(ask_udp(&udp, vip).await, "s1", "the session while draining");

    // The drain ends: "up"'s flows on s1 are closed, "plain"'s live on.
    targets
        .registry
        .tick(Instant::now() + DRAIN + Duration::from_secs(1));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), web.read(&mut buf))
        .await
        .expect("the connection is closed at once");
    match read {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF or a reset, got {other:?}"),
    }
    assert_eq!(ask_again(&mut plain).await.expect("plain after"), "s1");
    // The client's next datagram starts a session on the remaining server.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask_udp(&udp, vip).await, "s2");

    let stats = h.stop().await;
    for (service, cuts) in [("web", 1), ("dns", 1), ("plain", 0)] {
        assert_eq!(
            stats["services"][service]["drain_cuts"], cuts,
            "{service}: {stats:#}"
        );
    }
}
