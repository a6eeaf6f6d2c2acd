//! TCP services: accept on the VIP, pick the server the XDP program would,
//! connect (from the service's SNAT address when it has one) and relay
//! both ways with half-close. When the server's drain ends (its upstream
//! has a policy), both sockets are reset.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, DRAIN_TIMEOUT, drained,
    service::ServiceRuntime,
    stats::{ActiveFlow, add, bump},
    stopped,
};

/// Pending connections the kernel queues per VIP.
const BACKLOG: u32 = 1024;
/// Pause after an accept error (out of file descriptors, usually) so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot bind the SNAT address {snat}: {source}")]
    Snat { snat: IpAddr, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Binds the VIP. SO_REUSEADDR so a restarted elb can bind again while
/// old connections linger in TIME_WAIT.
pub fn bind(vip: SocketAddr) -> io::Result<TcpListener> {
    let socket = if vip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(vip)?;
    socket.listen(BACKLOG)
}

/// The VIP socket received in a takeover (the first; a userspace VIP has
/// one), else a fresh one.
pub fn bind_or_adopt(
    vip: SocketAddr,
    received: Vec<std::os::fd::OwnedFd>,
) -> io::Result<TcpListener> {
    match received.into_iter().next() {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        }
        None => bind(vip),
    }
}

/// Accepts until `stop` (service removed or changed) or shutdown. Flows
/// already relaying outlive a stop, as XDP connection-table entries do;
/// shutdown ends them.
pub async fn serve(
    listener: TcpListener,
    service: Arc<ServiceRuntime>,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => return,
            _ = stopped(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, client)) => accept(stream, client, &service, &ctx),
            Err(error) => {
                if let Some(suppressed) = service.drop_log.allow(Instant::now()) {
                    tracing::warn!(service = service.name, vip = %service.vip, %error, suppressed, "L4 userspace: accept failed");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn accept(
    stream: TcpStream,
    client: SocketAddr,
    service: &Arc<ServiceRuntime>,
    ctx: &Arc<Context>,
) {
    if ctx.acl.load().denies(client.ip()) {
        bump(&service.stats.acl_drops);
        tracing::debug!(service = service.name, %client, "L4 userspace: client denied by the ACL");
        // RST rather than FIN: the client is refused, not served.
        let _ = stream.set_zero_linger();
        return;
    }
    let route = service.route();
    let Some(pick) = service.pick(&route, client) else {
        bump(&service.stats.no_server_drops);
        if let Some(suppressed) = service.drop_log.allow(Instant::now()) {
            tracing::warn!(service = service.name, %client, suppressed, "L4 userspace: no usable server, connection closed");
        }
        let _ = stream.set_zero_linger();
        return;
    };
    let flow = Flow {
        client: stream,
        client_addr: client,
        server: pick.server,
        snat: route.snat,
        cut: pick.cut,
        active: ActiveFlow::start(Arc::clone(&service.stats), Arc::clone(&pick.stats)),
    };
    tokio::spawn(relay(flow, Arc::clone(service), Arc::clone(ctx)));
}

/// An accepted connection and where it goes.
struct Flow {
    client: TcpStream,
    client_addr: SocketAddr,
    server: SocketAddr,
    snat: Option<IpAddr>,
    /// The server's drain token: cancelled, the flow is cut.
    cut: Option<CancellationToken>,
    active: ActiveFlow,
}

async fn relay(flow: Flow, service: Arc<ServiceRuntime>, ctx: Arc<Context>) {
    let Flow {
        client,
        client_addr,
        server,
        snat,
        cut,
        active: flow,
    } = flow;
    let mut shutdown = ctx.shutdown.clone();
    // Not cut at shutdown: a connection accepted just before it (a
    // takeover, a SIGTERM) still gets its server, and then the drain below.
    let upstream = tokio::select! {
        connected = connect(server, snat, ctx.settings.connect_timeout) => connected,
        _ = drained(cut.as_ref()) => {
            let _ = client.set_zero_linger();
            bump(&service.stats.drain_cuts);
            return;
        }
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            bump(&service.stats.connect_failures);
            match service.connect_log.allow(Instant::now()) {
                Some(suppressed) => tracing::warn!(
                    service = service.name, %server, client = %client_addr, %error, suppressed,
                    "L4 userspace: cannot connect to the server; client connection closed"
                ),
                None => tracing::debug!(
                    service = service.name, %server, client = %client_addr, %error,
                    "L4 userspace: cannot connect to the server"
                ),
            }
            let _ = client.set_zero_linger();
            return;
        }
    };
    // Small writes (requests, interactive protocols) go out at once, as
    // they would through XDP.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut client = Counted::new(
        client,
        [&flow.service().bytes_from_client, &flow.server().bytes],
    );
    let mut upstream = Counted::new(
        upstream,
        [&flow.service().bytes_to_client, &flow.server().bytes],
    );
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = copied {
                tracing::debug!(service = service.name, %server, client = %client_addr, %error, "L4 userspace: connection ended with an error");
            }
        }
        // Shutdown: a short exchange in flight finishes; a long-lived
        // connection ends with this process (it is not handed over).
        () = async {
            stopped(&mut shutdown).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {}
        _ = drained(cut.as_ref()) => {
            // Resets rather than FINs: neither end should take the cut
            // for a complete exchange (as an NLB terminates connections
            // when a deregistration delay ends).
            let _ = client.stream.set_zero_linger();
            let _ = upstream.stream.set_zero_linger();
            bump(&service.stats.drain_cuts);
            tracing::debug!(service = service.name, %server, client = %client_addr, "L4 userspace: the server's drain is over, connection reset");
        }
    }
}

async fn connect(
    server: SocketAddr,
    snat: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(snat) = snat {
        socket
            .bind(SocketAddr::new(snat, 0))
            .map_err(|source| ConnectError::Snat { snat, source })?;
    }
    match tokio::time::timeout(timeout, socket.connect(server)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// A stream that adds the bytes read from it to counters.
struct Counted<'a> {
    stream: TcpStream,
    counters: [&'a AtomicU64; 2],
}

impl<'a> Counted<'a> {
    fn new(stream: TcpStream, counters: [&'a AtomicU64; 2]) -> Self {
        Self { stream, counters }
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len().saturating_sub(before) as u64;
            for counter in this.counters {
                add(counter, read);
            }
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_failures_are_errors_not_panics() {
        // A port nothing listens on, on loopback: refused at once.
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let error = connect(addr, None, Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert!(matches!(error, ConnectError::Io(_)), "{error}");
        // A SNAT address that is not local.
        let error = connect(
            addr,
            Some("192.0.2.1".parse().expect("ip")),
            Duration::from_secs(1),
        )
        .await
        .expect_err("not local");
        assert!(error.to_string().contains("192.0.2.1"), "{error}");
    }
}
