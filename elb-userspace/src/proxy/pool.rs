//! Connections to upstream servers.
//!
//! HTTP/1.1: keep-alive connections, one idle list per server (and per
//! plaintext or TLS). A connection is handed out exclusively; it comes back
//! when the response body has been read to the end ([`PooledBody`]). hyper
//! may need a moment after that to be ready for the next request, so
//! whoever takes it next waits for readiness (it owns the connection by
//! then).
//!
//! HTTP/2 (`h2` servers): one multiplexed connection per server in this
//! worker, shared by every request; the first request opens it and the
//! requests that arrive meanwhile wait for that one (see [`H2Slot`]).
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    rt::{Read, Write},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::OnceCell};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{
    fast_map::FastMap,
    http_util::{Body, BoxError},
    limits::{UpstreamLimits, UpstreamPermit, upstream::AtLimit},
    targets::ServerGate,
    tls::{
        UpstreamTls,
        client::{Alpn, handshake_reason, negotiated_h2, refused_alpn},
    },
    upstream::ServerParams,
};

/// How elb speaks to one server: its `tls` and `h2` parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Transport {
    pub tls: bool,
    pub h2: bool,
}

impl Transport {
    pub fn of(params: &ServerParams) -> Self {
        Self {
            tls: params.tls,
            h2: params.h2,
        }
    }
}

/// An h2 connection pings its server when idle this long, and is closed
/// when the answer takes longer than this too: a silently dead server
/// would otherwise hold every request on the shared connection.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {server} timed out after {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("cannot connect to {server}: {source}")]
    Io {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {server} failed: {source}")]
    Handshake {
        server: String,
        #[source]
        source: hyper::Error,
    },
    /// The certificate was refused (unknown CA, wrong name, expired) or
    /// the handshake failed otherwise; `reason` is rustls's.
    #[error("TLS handshake with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error(
        "{server} did not choose HTTP/2 in the TLS handshake (ALPN h2): the server has `h2` \
         but does not speak HTTP/2 over TLS"
    )]
    NoH2 { server: String },
    #[error("the HTTP/2 connection to {server} closed as soon as it opened")]
    Closed { server: String },
    /// The failure of the connection attempt that this request waited for
    /// (h2: one attempt serves every request that arrives meanwhile).
    #[error("{0}")]
    Shared(Arc<ConnectError>),
    /// Not the server's failure: elb would go over a connection limit.
    #[error("no new connection to {server}: {limit}")]
    AtLimit { server: String, limit: AtLimit },
}

impl ConnectError {
    /// The failure itself, looking through [`ConnectError::Shared`].
    pub fn cause(&self) -> &ConnectError {
        match self {
            Self::Shared(inner) => inner.cause(),
            other => other,
        }
    }
}

pub type Sender = http1::SendRequest<Body>;
pub type H2Sender = http2::SendRequest<Body>;

/// The shared h2 connection to one server, or the attempt to open it that
/// the requests arriving meanwhile all wait for. A failed or closed one is
/// replaced by a fresh cell (the next request connects anew).
#[derive(Default)]
struct H2Slot {
    conn: Arc<OnceCell<Result<H2Sender, Arc<ConnectError>>>>,
    gate: Option<Arc<ServerGate>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
    /// The server's gate, when it is an upstream's: an idle connection to a
    /// server that may not take new requests (draining, unhealthy) closes.
    gate: Option<Arc<ServerGate>>,
}

pub struct Pool {
    /// Indexed by `tls as usize`: plaintext and TLS connections to one
    /// address are not interchangeable.
    idle: Mutex<[FastMap<String, Vec<Idle>>; 2]>,
    h2: Mutex<[FastMap<String, H2Slot>; 2]>,
    tls: Arc<UpstreamTls>,
    max_idle_per_server: usize,
    idle_timeout: Duration,
    /// Shared by every worker's pool: open connections per server and in all.
    limits: Arc<UpstreamLimits>,
}

impl Pool {
    pub fn new(
        max_idle_per_server: usize,
        idle_timeout: Duration,
        limits: Arc<UpstreamLimits>,
        tls: Arc<UpstreamTls>,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            h2: Mutex::default(),
            tls,
            max_idle_per_server,
            idle_timeout,
            limits,
        })
    }

    /// An idle connection that is still open, if there is one.
    pub async fn take_idle(&self, server: &str, tls: bool) -> Option<Sender> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle[usize::from(tls)].get_mut(server)?.pop()?
            };
            if conn.since.elapsed() >= self.idle_timeout
                || conn.sender.is_closed()
                || conn.gate.as_ref().is_some_and(|g| !g.routable())
            {
                continue;
            }
            let mut sender = conn.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Opens a new connection and spawns its driver task.
    pub async fn connect(
        &self,
        server: &str,
        tls: bool,
        timeout: Duration,
        upgrades: bool,
    ) -> Result<Sender, ConnectError> {
        let (sender, _slot) = self.open(server, tls, timeout, upgrades).await?;
        Ok(sender)
    }

    /// [`Pool::connect`], also giving out the connection's slot: its driver
    /// task ends at an upgrade, and the tunnel that goes on with the
    /// descriptor must hold the slot then.
    pub async fn open(
        &self,
        server: &str,
        tls: bool,
        timeout: Duration,
        upgrades: bool,
    ) -> Result<(Sender, Arc<UpstreamPermit>), ConnectError> {
        let (permit, stream) = self.dial(server, timeout).await?;
        if !tls {
            return start_http1(server, TokioIo::new(stream), permit, upgrades).await;
        }
        let stream = self
            .tls_handshake(stream, server, Alpn::Http1, timeout)
            .await?;
        start_http1(server, TokioIo::new(stream), permit, upgrades).await
    }

    /// A slot under the connection limits and a TCP connection, within
    /// `timeout`. The slot is held by the connection's driver task: it is
    /// taken as long as the connection (and its descriptor) is open.
    async fn dial(
        &self,
        server: &str,
        timeout: Duration,
    ) -> Result<(Arc<UpstreamPermit>, TcpStream), ConnectError> {
        let permit = self
            .limits
            .try_acquire(server)
            .map_err(|limit| ConnectError::AtLimit {
                server: server.to_owned(),
                limit,
            })
            .map(Arc::new)?;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(server))
            .await
            .map_err(|_| ConnectError::Timeout {
                server: server.to_owned(),
                timeout,
            })?
            .map_err(|source| ConnectError::Io {
                server: server.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok((permit, stream))
    }

    /// The TLS handshake, within `timeout` (the connect timeout again).
    async fn tls_handshake(
        &self,
        stream: TcpStream,
        server: &str,
        alpn: Alpn,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        tokio::time::timeout(timeout, self.tls.connect(stream, server, alpn))
            .await
            .map_err(|_| ConnectError::Timeout {
                server: server.to_owned(),
                timeout,
            })?
            .map_err(|error| {
                if alpn == Alpn::H2 && refused_alpn(&error) {
                    ConnectError::NoH2 {
                        server: server.to_owned(),
                    }
                } else {
                    ConnectError::Tls {
                        server: server.to_owned(),
                        reason: handshake_reason(&error),
                    }
                }
            })
    }

    /// The h2 connection to `server`, opened by the first request that
    /// needs it; the requests that come meanwhile wait for that attempt
    /// and share its outcome.
    pub async fn h2_sender(
        &self,
        server: &str,
        tls: bool,
        timeout: Duration,
        gate: Option<&Arc<ServerGate>>,
    ) -> Result<H2Sender, ConnectError> {
        // A closed connection found in the slot is replaced once.
        for _ in 0..2 {
            let cell = {
                let mut slots = self.h2.lock().unwrap_or_else(|e| e.into_inner());
                let map = &mut slots[usize::from(tls)];
                // Looked up first: no key allocated per request.
                match map.get(server) {
                    Some(slot) => Arc::clone(&slot.conn),
                    None => {
                        let slot = H2Slot {
                            conn: Arc::default(),
                            gate: gate.cloned(),
                        };
                        let conn = Arc::clone(&slot.conn);
                        map.insert(server.to_owned(), slot);
                        conn
                    }
                }
            };
            let outcome = cell
                // Boxed: opening the connection (TLS included) is most of
                // this future, and only the first request of a connection
                // runs it; the others would carry it in theirs.
                .get_or_init(|| {
                    Box::pin(async { self.open_h2(server, tls, timeout).await.map_err(Arc::new) })
                })
                .await;
            match outcome {
                Ok(sender) if !sender.is_closed() => return Ok(sender.clone()),
                Ok(_) => self.forget_h2(server, tls, &cell),
                Err(error) => {
                    let error = ConnectError::Shared(Arc::clone(error));
                    self.forget_h2(server, tls, &cell);
                    return Err(error);
                }
            }
        }
        Err(ConnectError::Closed {
            server: server.to_owned(),
        })
    }

    /// Drops the slot's cell if it is still `cell` (a newer one stays).
    fn forget_h2(
        &self,
        server: &str,
        tls: bool,
        cell: &Arc<OnceCell<Result<H2Sender, Arc<ConnectError>>>>,
    ) {
        let mut slots = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut slots[usize::from(tls)];
        if map
            .get(server)
            .is_some_and(|slot| Arc::ptr_eq(&slot.conn, cell))
        {
            map.remove(server);
        }
    }

    async fn open_h2(
        &self,
        server: &str,
        tls: bool,
        timeout: Duration,
    ) -> Result<H2Sender, ConnectError> {
        let (permit, stream) = self.dial(server, timeout).await?;
        if !tls {
            // Prior knowledge (RFC 9113 §3.3).
            return start_http2(server, TokioIo::new(stream), permit).await;
        }
        let stream = self
            .tls_handshake(stream, server, Alpn::H2, timeout)
            .await?;
        if !negotiated_h2(&stream) {
            return Err(ConnectError::NoH2 {
                server: server.to_owned(),
            });
        }
        start_http2(server, TokioIo::new(stream), permit).await
    }

    /// Returns a connection whose previous response is fully read.
    fn give_back(&self, server: String, tls: bool, sender: Sender, gate: Option<Arc<ServerGate>>) {
        if sender.is_closed()
            || gate.as_ref().is_some_and(|g| !g.routable())
            || !self.limits.has_room(&server)
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle[usize::from(tls)].entry(server).or_default();
        if list.len() < self.max_idle_per_server {
            list.push(Idle {
                sender,
                since: Instant::now(),
                gate,
            });
        }
    }

    /// Closes the idle connections to servers whose gate closed (a drain
    /// began, or the server turned unhealthy); called on gate changes.
    pub fn close_unroutable(&self) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            for map in idle.iter_mut() {
                for list in map.values_mut() {
                    list.retain(|conn| conn.gate.as_ref().is_none_or(|g| g.routable()));
                }
                map.retain(|_, list| !list.is_empty());
            }
        }
        // An h2 connection closes once its requests in flight have ended
        // and the last handle to it is gone.
        let mut slots = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        for map in slots.iter_mut() {
            map.retain(|_, slot| slot.gate.as_ref().is_none_or(|g| g.routable()));
        }
    }
}

/// The HTTP/1.1 handshake over `io`, and the connection's driver task,
/// which holds `permit`.
async fn start_http1<I>(
    server: &str,
    io: I,
    permit: Arc<UpstreamPermit>,
    upgrades: bool,
) -> Result<(Sender, Arc<UpstreamPermit>), ConnectError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Handshake {
            server: server.to_owned(),
            source,
        })?;
    let server = server.to_owned();
    let slot = Arc::clone(&permit);
    tokio::spawn(async move {
        let _permit = permit;
        let result = if upgrades {
            connection.with_upgrades().await
        } else {
            connection.await
        };
        if let Err(err) = result {
            tracing::debug!(server, error = %err, "upstream connection ended with an error");
        }
    });
    Ok((sender, slot))
}

/// The HTTP/2 handshake over `io`, and the connection's driver task,
/// which holds `permit`.
async fn start_http2<I>(
    server: &str,
    io: I,
    permit: Arc<UpstreamPermit>,
) -> Result<H2Sender, ConnectError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Handshake {
            server: server.to_owned(),
            source,
        })?;
    let server = server.to_owned();
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(err) = connection.await {
            tracing::debug!(server, error = %err, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream response body that returns its connection to the pool when
/// it ends. Dropped early (client went away), the connection is dropped.
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    /// Ends the body with an error when the server's drain is over.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// Where a connection goes back when its response is read.
pub struct Checkin {
    pub pool: Arc<Pool>,
    pub server: String,
    pub tls: bool,
    pub sender: Sender,
    pub gate: Option<Arc<ServerGate>>,
}

impl PooledBody {
    /// `checkin` is None for an h2 stream: its connection stays shared.
    /// Every frame passes through, trailers (gRPC's status) included.
    pub fn new(inner: Incoming, checkin: Option<Checkin>, cut: Option<CancellationToken>) -> Self {
        let mut body = Self {
            inner,
            checkin,
            cut: cut.map(|token| Box::pin(token.cancelled_owned())),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(checkin) = self.checkin.take() {
            checkin
                .pool
                .give_back(checkin.server, checkin.tls, checkin.sender, checkin.gate);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = &mut self.cut
            && cut.as_mut().poll(cx).is_ready()
        {
            self.checkin = None;
            self.cut = None;
            return Poll::Ready(Some(Err(BoxError::from(
                "the upstream server's drain ended; its response is cut",
            ))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
