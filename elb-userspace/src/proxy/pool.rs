//! Keep-alive connections to upstream servers, one idle list per server.
//!
//! A connection is handed out exclusively; it comes back when the response
//! body has been read to the end ([`PooledBody`]). hyper may need a moment
//! after that to be ready for the next request, so whoever takes it next
//! waits for readiness (it owns the connection by then).
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{
    http_util::{Body, BoxError},
    limits::{UpstreamLimits, UpstreamPermit, upstream::AtLimit},
    targets::ServerGate,
};

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
    /// Not the server's failure: elb would go over a connection limit.
    #[error("no new connection to {server}: {limit}")]
    AtLimit { server: String, limit: AtLimit },
}

pub type Sender = SendRequest<Body>;

struct Idle {
    sender: Sender,
    since: Instant,
    /// The server's gate, when it is an upstream's: an idle connection to a
    /// server that may not take new requests (draining, unhealthy) closes.
    gate: Option<Arc<ServerGate>>,
}

pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_server,
            idle_timeout,
            limits,
        })
    }

    /// An idle connection that is still open, if there is one.
    pub async fn take_idle(&self, server: &str) -> Option<Sender> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(server)?.pop()?
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
        timeout: Duration,
        upgrades: bool,
    ) -> Result<Sender, ConnectError> {
        let (sender, _slot) = self.open(server, timeout, upgrades).await?;
        Ok(sender)
    }

    /// [`Pool::connect`], also giving out the connection's slot: its driver
    /// task ends at an upgrade, and the tunnel that goes on with the
    /// descriptor must hold the slot then.
    pub async fn open(
        &self,
        server: &str,
        timeout: Duration,
        upgrades: bool,
    ) -> Result<(Sender, Arc<UpstreamPermit>), ConnectError> {
        // Held by the connection's driver task: the slot is taken as long
        // as the connection (and its descriptor) is open.
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
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
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

    /// Returns a connection whose previous response is fully read.
    fn give_back(&self, server: String, sender: Sender, gate: Option<Arc<ServerGate>>) {
        if sender.is_closed()
            || gate.as_ref().is_some_and(|g| !g.routable())
            || !self.limits.has_room(&server)
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(server).or_default();
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
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.values_mut() {
            list.retain(|conn| conn.gate.as_ref().is_none_or(|g| g.routable()));
        }
        idle.retain(|_, list| !list.is_empty());
    }
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
    pub sender: Sender,
    pub gate: Option<Arc<ServerGate>>,
}

impl PooledBody {
    pub fn new(inner: Incoming, checkin: Checkin, cut: Option<CancellationToken>) -> Self {
        let mut body = Self {
            inner,
            checkin: Some(checkin),
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
                .give_back(checkin.server, checkin.sender, checkin.gate);
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
