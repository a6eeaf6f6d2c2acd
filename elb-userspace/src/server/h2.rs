//! HTTP/2 to clients (ALPN `h2` over TLS, or h2c by prior knowledge), with
//! the limits that keep one connection's cost bounded.
//!
//! The 2023 "rapid reset" attack (CVE-2023-44487) opens streams and resets
//! them at once: each costs the client two frames but may cost elb a
//! routed, forwarded request. h2 itself caps resets of streams not yet
//! accepted; hyper accepts at once, so elb also counts streams the client
//! abandoned before their answer (the request's handler dropped
//! unfinished) and, like Envoy's premature-reset check, ends a connection
//! whose abandoned streams pass [`ABANDONED_MIN`] and are half or more of
//! its streams: GOAWAY, then the connection is closed after
//! [`ABANDON_CLOSE_BOUND`].
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Notify, watch},
};

use super::{ServerSettings, wind_down};
use crate::{
    http_util::Body,
    proxy::{Proxy, headers::ClientAddr},
};

/// Streams a client may have open at once on one connection (nginx's
/// `http2_max_concurrent_streams` default).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Abandoned streams a connection may have before the ratio is checked:
/// browsers cancel streams too, but not hundreds, and not most of them.
pub const ABANDONED_MIN: u64 = 100;
/// After the GOAWAY for a reset flood, how long the streams in flight have
/// before the connection is closed (the client may ignore the GOAWAY).
pub const ABANDON_CLOSE_BOUND: Duration = Duration::from_secs(1);

/// A connection's stream counts, shared by its streams' handlers.
#[derive(Debug, Default)]
struct StreamTally {
    started: AtomicU64,
    abandoned: AtomicU64,
    flood: Notify,
}

impl StreamTally {
    fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn abandoned(&self) {
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if is_flood(started, abandoned) {
            self.flood.notify_one();
        }
    }
}

/// Pure: whether a connection's abandoned streams make it a reset flood.
fn is_flood(started: u64, abandoned: u64) -> bool {
    abandoned >= ABANDONED_MIN && abandoned.saturating_mul(2) >= started
}

/// Counts a stream as abandoned when its handler is dropped unfinished:
/// hyper drops it when the client resets the stream (or the connection).
struct HandlerGuard {
    tally: Arc<StreamTally>,
    finished: bool,
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.tally.abandoned();
        }
    }
}

/// The proxy's handler with its [`HandlerGuard`].
struct Guarded<F> {
    inner: Pin<Box<F>>,
    guard: HandlerGuard,
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.inner.as_mut().poll(cx);
        if polled.is_ready() {
            self.guard.finished = true;
        }
        polled
    }
}

/// Serves one HTTP/2 connection until it ends, the listener is removed or
/// elb stops (GOAWAY, then see [`wind_down`]), or it floods resets.
pub async fn serve<S>(
    io: S,
    proxy: Arc<Proxy>,
    client: Arc<ClientAddr>,
    settings: &ServerSettings,
    mut stop: Option<watch::Receiver<bool>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tally = Arc::new(StreamTally::default());
    let peer = client.addr;
    let listener = client.listener.clone();
    let service = {
        let tally = Arc::clone(&tally);
        service_fn(move |request: http::Request<Incoming>| {
            tally.started();
            let proxy = Arc::clone(&proxy);
            let client = Arc::clone(&client);
            Guarded {
                inner: Box::pin(async move {
                    Ok::<http::Response<Body>, Infallible>(proxy.handle(request, &client).await)
                }),
                guard: HandlerGuard {
                    tally: Arc::clone(&tally),
                    finished: false,
                },
            }
        })
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // The same bound as an HTTP/1 head (h2 answers 431 past it).
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        served = connection.as_mut() => Some(served),
        bound = wind_down(stop.as_mut(), &mut shutdown, settings.drain_timeout) => {
            // GOAWAY: the streams open finish, no new ones.
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(bound, connection.as_mut()).await.ok()
        }
        () = tally.flood.notified() => {
            tracing::warn!(
                client = %peer,
                listener = listener.as_deref().unwrap_or("--listen"),
                started = tally.started.load(Ordering::Relaxed),
                abandoned = tally.abandoned.load(Ordering::Relaxed),
                "HTTP/2 client reset most of its streams (rapid reset): GOAWAY, connection closed"
            );
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(ABANDON_CLOSE_BOUND, connection.as_mut()).await.ok()
        }
    };
    if let Some(Err(err)) = ended {
        tracing::debug!(%peer, error = %err, "HTTP/2 client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_many_abandoned_streams_that_are_half_or_more() {
        assert!(!is_flood(10, 10), "a few cancels");
        assert!(!is_flood(1_000, ABANDONED_MIN), "a browser's share");
        assert!(is_flood(ABANDONED_MIN, ABANDONED_MIN));
        assert!(is_flood(2 * ABANDONED_MIN, ABANDONED_MIN));
        assert!(!is_flood(2 * ABANDONED_MIN + 1, ABANDONED_MIN));
    }

    #[tokio::test]
    async fn a_dropped_handler_counts_as_abandoned_and_a_finished_one_not() {
        let tally = Arc::new(StreamTally::default());
        for finish in [true, false] {
            tally.started();
            let mut guarded = Guarded {
                inner: Box::pin(async {}),
                guard: HandlerGuard {
                    tally: Arc::clone(&tally),
                    finished: false,
                },
            };
            if finish {
                (&mut guarded).await;
            }
            drop(guarded);
        }
        assert_eq!(tally.started.load(Ordering::Relaxed), 2);
        assert_eq!(tally.abandoned.load(Ordering::Relaxed), 1);
    }
}
