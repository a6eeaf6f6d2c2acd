//! UDP services: one session per client address, holding a socket
//! connected to the server the first datagram picked (bound to the
//! service's SNAT address when it has one). The server's replies go back
//! to the client from the VIP socket. Sessions end after the XDP program's
//! UDP idle timeout, or when their server's drain ends (its upstream has a
//! policy); the client's next datagram then starts a new session.
use std::{
    cell::RefCell,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, drained,
    route::Pick,
    service::ServiceRuntime,
    sessions::{Clock, LastSeen, Session, SessionTable},
    stats::{ActiveFlow, ServerStats, add, bump},
    stopped,
};

/// Largest UDP payload (IPv4's is 65,507, IPv6 jumbograms aside).
const MAX_DATAGRAM: usize = 65_536;
/// How often idle sessions are looked for; a session lives at most this
/// much longer than the timeout.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a receive error so the loop does not spin on it.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

thread_local! {
    /// One receive buffer per worker thread for every session's replies,
    /// rather than 64 KiB per session: a reply is received and sent on
    /// without awaiting in between.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// A UDP socket driven by the reactor for reading only. Sends are direct
/// non-blocking calls, which work at once, where a new tokio `UdpSocket`
/// reports "would block" until the reactor has seen it writable (and
/// would drop a session's first datagram).
pub type Socket = AsyncFd<std::net::UdpSocket>;

pub fn bind(vip: SocketAddr) -> io::Result<Socket> {
    let socket = std::net::UdpSocket::bind(vip)?;
    socket.set_nonblocking(true)?;
    register(socket)
}

/// The VIP socket received in a takeover, else a fresh one.
pub fn bind_or_adopt(vip: SocketAddr, received: Vec<std::os::fd::OwnedFd>) -> io::Result<Socket> {
    match received.into_iter().next() {
        Some(fd) => {
            let socket = std::net::UdpSocket::from(fd);
            socket.set_nonblocking(true)?;
            register(socket)
        }
        None => bind(vip),
    }
}

fn register(socket: std::net::UdpSocket) -> io::Result<Socket> {
    // SAFETY: the socket owns its descriptor, which stays open and the
    // same until the AsyncFd (which owns the socket) is dropped.
    Ok(unsafe { AsyncFd::register(socket) }?)
}

/// The next datagram and its sender.
async fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        // Err: nothing to read after all; readiness is cleared, wait again.
        if let Ok(received) = ready.try_io(|socket| socket.get_ref().recv_from(buf)) {
            return received;
        }
    }
}

/// A client's session. Dropping it (expiry, service stop) ends the relay
/// task, closes the server socket and ends the flow's count.
#[derive(Debug)]
struct UdpSession {
    upstream: Arc<Socket>,
    server: SocketAddr,
    flow: ActiveFlow,
    relay: JoinHandle<()>,
    /// The server's drain token (see [`Pick::cut`]).
    cut: Option<CancellationToken>,
}

impl UdpSession {
    fn is_cut(&self) -> bool {
        self.cut
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }
}

impl Drop for UdpSession {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// What to do with a client's datagram.
#[derive(Debug)]
enum Decision<'a, V> {
    /// The client's session: its server, whatever the current plan says.
    Existing(&'a Session<V>),
    New(Pick),
    NoServer,
    Full,
}

/// Existing sessions first, so a plan change moves no session (as the XDP
/// connection table is consulted before the Maglev table).
fn decide<V>(
    table: &SessionTable<V>,
    client: SocketAddr,
    pick: impl FnOnce() -> Option<Pick>,
) -> Decision<'_, V> {
    if let Some(session) = table.get(&client) {
        return Decision::Existing(session);
    }
    if table.is_full() {
        return Decision::Full;
    }
    match pick() {
        Some(pick) => Decision::New(pick),
        None => Decision::NoServer,
    }
}

/// Receives on the VIP until `stop` (service removed or changed) or
/// shutdown; the sessions end with it.
pub async fn serve(
    socket: Socket,
    service: Arc<ServiceRuntime>,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let vip = Arc::new(socket);
    let clock = Clock::new();
    let idle_ms = u64::try_from(ctx.settings.udp_idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut table = SessionTable::new(ctx.settings.max_udp_sessions);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Sessions' reply tasks name their client here when its server's
    // drain ends.
    let (drained_tx, mut drained_rx) = mpsc::unbounded_channel();
    let sessions = Sessions {
        vip: &vip,
        drained: &drained_tx,
        clock,
    };
    loop {
        tokio::select! {
            received = recv_from(&vip, &mut buf) => match received {
                Ok((len, client)) => {
                    let data = buf.get(..len).unwrap_or_default();
                    datagram(data, client, &sessions, &mut table, &service, &ctx);
                }
                Err(error) => {
                    tracing::debug!(service = service.name, %error, "L4 userspace: UDP receive failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            },
            _ = sweep.tick() => {
                let expired = table.expire(clock.now_ms(), idle_ms);
                for (client, session) in &expired {
                    tracing::debug!(service = service.name, %client, server = %session.server, "L4 userspace: UDP session expired");
                }
                // Those whose reply task could not say so (its socket failed).
                for (client, session) in table.remove_where(|s| s.value.is_cut()) {
                    ended_by_drain(&client, &session, &service);
                }
            }
            Some(client) = drained_rx.recv() => end_if_cut(&mut table, client, &service),
            _ = stopped(&mut stop) => return,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// What a new session needs from its service's task.
struct Sessions<'a> {
    vip: &'a Arc<Socket>,
    drained: &'a mpsc::UnboundedSender<SocketAddr>,
    clock: Clock,
}

/// Ends `client`'s session if its server's drain is over (and not a newer
/// session of the same client).
fn end_if_cut(table: &mut SessionTable<UdpSession>, client: SocketAddr, service: &ServiceRuntime) {
    if !table.get(&client).is_some_and(|s| s.value.is_cut()) {
        return;
    }
    if let Some(session) = table.remove(&client) {
        ended_by_drain(&client, &session.value, service);
    }
}

fn ended_by_drain(client: &SocketAddr, session: &UdpSession, service: &ServiceRuntime) {
    bump(&service.stats.drain_cuts);
    tracing::debug!(service = service.name, %client, server = %session.server, "L4 userspace: the server's drain is over, UDP session ended");
}

fn datagram(
    data: &[u8],
    client: SocketAddr,
    sessions: &Sessions<'_>,
    table: &mut SessionTable<UdpSession>,
    service: &Arc<ServiceRuntime>,
    ctx: &Context,
) {
    // Checked on every datagram, so an established session is cut off too,
    // as XDP drops every packet of a denied source.
    if ctx.acl.load().denies(client.ip()) {
        bump(&service.stats.acl_drops);
        return;
    }
    // A session whose server has drained ends even if its reply task has
    // not said so yet; this datagram starts a new one.
    end_if_cut(table, client, service);
    let clock = sessions.clock;
    let now = clock.now_ms();
    let mut snat = None;
    let decision = decide(table, client, || {
        let route = service.route();
        snat = route.snat;
        service.pick(&route, client)
    });
    match decision {
        Decision::Existing(session) => {
            session.seen.touch(now);
            forward(data, &session.value, service);
        }
        Decision::Full => {
            bump(&service.stats.session_limit_drops);
            if let Some(suppressed) = service.drop_log.allow(Instant::now()) {
                tracing::warn!(
                    service = service.name, %client, sessions = table.capacity(), suppressed,
                    "L4 userspace: the UDP session table is full; datagrams of new clients are dropped until sessions expire"
                );
            }
        }
        Decision::NoServer => {
            bump(&service.stats.no_server_drops);
            if let Some(suppressed) = service.drop_log.allow(Instant::now()) {
                tracing::warn!(service = service.name, %client, suppressed, "L4 userspace: no usable server, datagram dropped");
            }
        }
        Decision::New(pick) => {
            let upstream = match open(pick.server, snat) {
                Ok(upstream) => Arc::new(upstream),
                Err(error) => {
                    bump(&service.stats.connect_failures);
                    if let Some(suppressed) = service.connect_log.allow(Instant::now()) {
                        tracing::warn!(
                            service = service.name, server = %pick.server, %client, snat = ?snat, %error, suppressed,
                            "L4 userspace: cannot open a UDP socket to the server; datagram dropped"
                        );
                    }
                    return;
                }
            };
            let seen = LastSeen::new(now);
            let relay = tokio::spawn(relay_replies(
                Reply {
                    upstream: Arc::clone(&upstream),
                    vip: Arc::clone(sessions.vip),
                    client,
                    seen: seen.clone(),
                    clock,
                    cut: pick.cut.clone(),
                    drained: sessions.drained.clone(),
                },
                Arc::clone(service),
                Arc::clone(&pick.stats),
            ));
            let session = UdpSession {
                upstream,
                server: pick.server,
                flow: ActiveFlow::start(Arc::clone(&service.stats), pick.stats),
                relay,
                cut: pick.cut,
            };
            forward(data, &session, service);
            if let Err(error) = table.insert(
                client,
                Session {
                    value: session,
                    seen,
                },
            ) {
                // decide() checked for room; kept for the record anyway.
                tracing::warn!(service = service.name, %client, %error, "L4 userspace: UDP session not kept");
            }
        }
    }
}

/// Sends a client's datagram to its server. A full socket buffer drops it,
/// as a congested link would, instead of stalling every other client.
fn forward(data: &[u8], session: &UdpSession, service: &ServiceRuntime) {
    match session.upstream.get_ref().send(data) {
        Ok(sent) => {
            add(&service.stats.bytes_from_client, sent as u64);
            add(&session.flow.server().bytes, sent as u64);
        }
        Err(error) => tracing::debug!(
            service = service.name, server = %session.server, %error,
            "L4 userspace: datagram to the server dropped"
        ),
    }
}

/// A socket for one session, connected to `server` so only its replies
/// arrive on it.
fn open(server: SocketAddr, snat: Option<IpAddr>) -> io::Result<Socket> {
    let source = snat.unwrap_or(if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let socket = std::net::UdpSocket::bind(SocketAddr::new(source, 0))?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    register(socket)
}

/// What a session's reply task works with.
struct Reply {
    upstream: Arc<Socket>,
    vip: Arc<Socket>,
    client: SocketAddr,
    seen: LastSeen,
    clock: Clock,
    /// The server's drain token: cancelled, the task stops relaying and
    /// names its client on `drained` so the session ends.
    cut: Option<CancellationToken>,
    drained: mpsc::UnboundedSender<SocketAddr>,
}

async fn relay_replies(reply: Reply, service: Arc<ServiceRuntime>, server: Arc<ServerStats>) {
    let Reply {
        upstream,
        vip,
        client,
        seen,
        clock,
        cut,
        drained: drained_tx,
    } = reply;
    loop {
        let readable = tokio::select! {
            readable = upstream.readable() => readable,
            _ = drained(cut.as_ref()) => {
                // The service's task may be gone (stopped): nothing to end.
                let _ = drained_tx.send(client);
                return;
            }
        };
        let mut ready = match readable {
            Ok(ready) => ready,
            Err(error) => {
                tracing::debug!(service = service.name, %client, %error, "L4 userspace: UDP session socket failed");
                return;
            }
        };
        let relayed = REPLY_BUF.with_borrow_mut(|buf| {
            // Err: nothing to read after all; readiness is cleared.
            let Ok(received) = ready.try_io(|socket| socket.get_ref().recv(buf)) else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let reply = buf.get(..received?).unwrap_or_default();
            vip.get_ref().send_to(reply, client)
        });
        match relayed {
            Ok(sent) => {
                seen.touch(clock.now_ms());
                add(&service.stats.bytes_to_client, sent as u64);
                add(&server.bytes, sent as u64);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            // ECONNREFUSED (the server's port is closed) and the like: the
            // session stays, the server may come back.
            Err(error) => tracing::debug!(
                service = service.name, %client, %error,
                "L4 userspace: UDP reply not relayed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::fallback::{
        route::{ServerRegistry, build_route},
        stats::ServerStats,
    };
    use crate::{
        config::{L4Proto, L4Service},
        upstream::{Server, parse_params},
    };

    fn service() -> L4Service {
        L4Service {
            name: "dns".into(),
            vip: "10.0.0.100:53".parse().expect("vip"),
            proto: L4Proto::Udp,
            upstream: "dns".into(),
            snat: None,
            table_size: 251,
        }
    }

    fn servers(names: &[&str]) -> Vec<Server> {
        names
            .iter()
            .map(|n| Server::new(*n, parse_params("").expect("params")))
            .collect()
    }

    #[test]
    fn a_plan_change_keeps_sessions_on_their_server() {
        let svc = service();
        let mut registry = ServerRegistry::default();
        let before = build_route(
            &svc,
            &servers(&["10.1.0.1:53", "10.1.0.2:53"]),
            &[],
            &mut registry,
        );
        let after = build_route(&svc, &servers(&["10.1.0.3:53"]), &[], &mut registry);
        let mut table: SessionTable<SocketAddr> = SessionTable::new(8);
        let client = SocketAddr::from(([10, 50, 0, 2], 5353));

        let Decision::New(first) = decide(&table, client, || before.pick(client, svc.vip, 17))
        else {
            panic!("a new client gets a new session");
        };
        assert_ne!(first.server.to_string(), "10.1.0.3:53");
        table
            .insert(
                client,
                Session {
                    value: first.server,
                    seen: LastSeen::new(0),
                },
            )
            .expect("room");

        // After the swap the known client stays; a new one gets the new plan.
        match decide(&table, client, || after.pick(client, svc.vip, 17)) {
            Decision::Existing(session) => assert_eq!(session.value, first.server),
            other => panic!("expected the existing session, got {other:?}"),
        }
        let other = SocketAddr::from(([10, 50, 0, 3], 5353));
        match decide(&table, other, || after.pick(other, svc.vip, 17)) {
            Decision::New(pick) => assert_eq!(pick.server.to_string(), "10.1.0.3:53"),
            other => panic!("expected a new session, got {other:?}"),
        }
    }

    #[test]
    fn full_table_and_no_server_are_told_apart() {
        let svc = service();
        let mut table: SessionTable<u8> = SessionTable::new(1);
        let a = SocketAddr::from(([10, 50, 0, 2], 1));
        let b = SocketAddr::from(([10, 50, 0, 2], 2));
        assert!(matches!(decide(&table, a, || None), Decision::NoServer));
        table
            .insert(
                a,
                Session {
                    value: 1,
                    seen: LastSeen::new(0),
                },
            )
            .expect("room");
        let stats = Arc::new(ServerStats::default());
        let pick = || {
            Some(Pick {
                server: svc.vip,
                stats: Arc::clone(&stats),
                cut: None,
            })
        };
        assert!(matches!(decide(&table, b, pick), Decision::Full));
        assert!(matches!(decide(&table, a, || None), Decision::Existing(_)));
    }

    #[tokio::test]
    async fn sessions_use_the_snat_address() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("server");
        let addr = server.local_addr().expect("addr");
        let socket = open(addr, Some("127.0.0.1".parse().expect("ip"))).expect("open");
        assert_eq!(
            socket
                .get_ref()
                .local_addr()
                .expect("local")
                .ip()
                .to_string(),
            "127.0.0.1"
        );
        assert!(open(addr, Some("192.0.2.1".parse().expect("ip"))).is_err());
    }
}
