//! The client's request body on its way upstream, watched.
//!
//! [`ClientBody`] passes the body through and records in a shared
//! [`BodyWatch`] how it ended (complete, malformed or truncated, stalled
//! past the client body timeout) and whose turn it is: the client's (the
//! body waits for its next bytes) or the upstream side's (it has the latest
//! piece, or the whole body). The proxy reads the watch to tell the
//! client's faults from the server's, as passive health must count only the
//! server's, and to run the response timer only while it is the server's
//! turn.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http_util::BoxError;

/// Why the client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client's request body is malformed or incomplete: {0}")]
    Invalid(#[source] BoxError),
    #[error("the client sent nothing of its request body for {0:?}")]
    TimedOut(Duration),
}

/// How the client's body has ended so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyOutcome {
    Streaming = 0,
    Complete = 1,
    /// Malformed or truncated (the client closed or reset mid-body).
    Invalid = 2,
    /// No bytes from the client for the client body timeout.
    TimedOut = 3,
}

impl BodyOutcome {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Complete,
            2 => Self::Invalid,
            3 => Self::TimedOut,
            _ => Self::Streaming,
        }
    }
}

/// Marks "the body waits for the client" in [`BodyWatch::upstream_turn`].
const CLIENTS_TURN: u64 = u64::MAX;

/// What the proxy knows about a request body that hyper's connection task
/// is sending upstream. Release/Acquire so that what the body recorded is
/// seen once its error or end reached the proxy.
#[derive(Debug)]
pub struct BodyWatch {
    base: Instant,
    /// Nanoseconds after `base` since which it is the upstream side's turn
    /// (it got the latest piece, or nothing was asked of the client yet);
    /// [`CLIENTS_TURN`] while the body waits for the client.
    upstream_turn: AtomicU64,
    outcome: AtomicU8,
    /// The chunked body ended with trailer fields.
    trailers: AtomicBool,
}

impl BodyWatch {
    fn new(now: Instant) -> Self {
        Self {
            base: now,
            upstream_turn: AtomicU64::new(0),
            outcome: AtomicU8::new(BodyOutcome::Streaming as u8),
            trailers: AtomicBool::new(false),
        }
    }

    /// Whether the body carried trailer fields. hyper 1.12 ends trailer
    /// lines at CRLF only while httparse also ends them at a bare LF, so the
    /// bytes between a bare-LF trailer block's end and the next CRLFCRLF (a
    /// pipelined request) are swallowed; the proxy closes such connections
    /// after the answer rather than leave a client's request unanswered.
    pub fn had_trailers(&self) -> bool {
        self.trailers.load(Ordering::Acquire)
    }

    pub fn outcome(&self) -> BodyOutcome {
        BodyOutcome::from_u8(self.outcome.load(Ordering::Acquire))
    }

    /// Since when the upstream side has had its turn; None while the body
    /// waits for the client.
    pub fn upstream_turn_since(&self) -> Option<Instant> {
        match self.upstream_turn.load(Ordering::Acquire) {
            CLIENTS_TURN => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }

    /// The response timer of a try sent at `sent_at` went off at `now`:
    /// when it goes off next, or None when the upstream side has had its
    /// turn for all of `timeout` (a timeout, the server's). While the body
    /// waits for the client the timer does not run: the client body timeout
    /// covers that.
    pub fn response_deadline(
        &self,
        sent_at: Instant,
        now: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        match self.upstream_turn_since() {
            None => Some(now + timeout),
            Some(since) => {
                let deadline = since.max(sent_at) + timeout;
                (deadline > now).then_some(deadline)
            }
        }
    }

    fn upstreams_turn(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(CLIENTS_TURN - 1);
        self.upstream_turn.store(nanos, Ordering::Release);
    }

    fn clients_turn(&self) {
        self.upstream_turn.store(CLIENTS_TURN, Ordering::Release);
    }

    fn end(&self, outcome: BodyOutcome) {
        self.outcome.store(outcome as u8, Ordering::Release);
    }
}

/// The client's request body, recording into its [`BodyWatch`] and failing
/// with [`ClientBodyError::TimedOut`] when the client sends nothing for
/// `timeout` while elb waits for it.
pub struct ClientBody<B> {
    inner: B,
    watch: Arc<BodyWatch>,
    timeout: Duration,
    /// Whether the last poll of `inner` was pending (the client's turn).
    waiting: bool,
    /// Made at the first wait, re-armed at each new one.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, timeout: Duration) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::new(Instant::now()));
        let body = Self {
            inner,
            watch: Arc::clone(&watch),
            timeout,
            waiting: false,
            timer: None,
        };
        (body, watch)
    }

    /// `inner` has nothing yet: start or go on waiting for the client, and
    /// fail once it has sent nothing for `timeout`.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.waiting {
            self.waiting = true;
            self.watch.clients_turn();
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        self.watch.end(BodyOutcome::TimedOut);
        let error = ClientBodyError::TimedOut(self.timeout);
        tracing::debug!(error = %error, "client request body failed");
        Poll::Ready(Some(Err(error.into())))
    }

    fn progressed(&mut self) {
        self.waiting = false;
        self.watch.upstreams_turn(Instant::now());
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed();
                if frame.is_trailers() {
                    this.watch.trailers.store(true, Ordering::Release);
                }
                // hyper stops polling once the body says it is at its end
                // (all of a Content-Length is in): that is the end too.
                if this.inner.is_end_stream() {
                    this.watch.end(BodyOutcome::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.progressed();
                this.watch.end(BodyOutcome::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.watch.end(BodyOutcome::Invalid);
                let error = ClientBodyError::Invalid(error.into());
                tracing::debug!(error = %error, "client request body failed");
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => this.poll_wait(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// A request body fed by the test, as hyper's would be by a client.
    struct Fed(mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|item| item.map(|result| result.map(Frame::data)))
        }
    }

    fn fed(
        timeout: Duration,
    ) -> (
        mpsc::Sender<Result<Bytes, std::io::Error>>,
        ClientBody<Fed>,
        Arc<BodyWatch>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        let (body, watch) = ClientBody::new(Fed(rx), timeout);
        (tx, body, watch)
    }

    async fn next(body: &mut ClientBody<Fed>) -> Option<Result<Bytes, BoxError>> {
        body.frame()
            .await
            .map(|frame| frame.map(|frame| frame.into_data().unwrap_or_else(|_| Bytes::new())))
    }

    const LONG: Duration = Duration::from_secs(30);

    /// Frames given up front: data, then optionally trailers.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    async fn drained_watch(frames: Vec<Frame<Bytes>>) -> Arc<BodyWatch> {
        let (body, watch) = ClientBody::new(Frames(frames.into()), LONG);
        body.collect().await.expect("a complete body");
        watch
    }

    #[tokio::test]
    async fn trailers_are_recorded_and_a_plain_body_has_none() {
        let data = || Frame::data(Bytes::from_static(b"hello"));
        let mut fields = http::HeaderMap::new();
        fields.insert("x-t", http::HeaderValue::from_static("1"));
        assert!(!drained_watch(vec![data()]).await.had_trailers());
        let watch = drained_watch(vec![data(), Frame::trailers(fields)]).await;
        assert!(watch.had_trailers());
        assert_eq!(watch.outcome(), BodyOutcome::Complete);
    }

    #[tokio::test]
    async fn a_complete_body_passes_through_and_is_recorded() {
        let (tx, mut body, watch) = fed(LONG);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.expect("send");
        assert_eq!(next(&mut body).await.expect("frame").expect("data"), "abc");
        assert_eq!(watch.outcome(), BodyOutcome::Streaming);
        drop(tx);
        assert!(next(&mut body).await.is_none());
        assert_eq!(watch.outcome(), BodyOutcome::Complete);
        assert!(watch.upstream_turn_since().is_some());
    }

    #[tokio::test]
    async fn a_client_error_is_invalid_and_says_so() {
        let (tx, mut body, watch) = fed(LONG);
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut");
        tx.send(Err(cut)).await.expect("send");
        let error = next(&mut body).await.expect("item").expect_err("error");
        assert!(matches!(
            error.downcast_ref::<ClientBodyError>(),
            Some(ClientBodyError::Invalid(_))
        ));
        assert_eq!(watch.outcome(), BodyOutcome::Invalid);
    }

    #[tokio::test]
    async fn a_stall_times_out_and_is_the_clients_turn() {
        let (_tx, mut body, watch) = fed(Duration::from_millis(50));
        let started = Instant::now();
        let error = next(&mut body).await.expect("item").expect_err("error");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            error.downcast_ref::<ClientBodyError>(),
            Some(ClientBodyError::TimedOut(_))
        ));
        assert_eq!(watch.outcome(), BodyOutcome::TimedOut);
        assert_eq!(watch.upstream_turn_since(), None);
    }

    #[tokio::test]
    async fn each_piece_restarts_the_client_body_timer() {
        let (tx, mut body, watch) = fed(Duration::from_millis(200));
        let feeder = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(Ok(Bytes::from_static(b"x"))).await.expect("send");
            }
        });
        // 6 pieces over ~360 ms, longer than the 200 ms timeout in all.
        for _ in 0..6 {
            next(&mut body).await.expect("frame").expect("data");
        }
        assert!(next(&mut body).await.is_none());
        assert_eq!(watch.outcome(), BodyOutcome::Complete);
        feeder.await.expect("feeder");
    }

    #[test]
    fn the_response_timer_runs_only_in_the_upstreams_turn() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let watch = BodyWatch::new(t0);
        // Nothing asked of the client yet: the server's turn since sending.
        let sent = t0 + Duration::from_secs(1);
        assert_eq!(watch.response_deadline(sent, sent + timeout, timeout), None);
        // Waiting for the client: the timer goes on without running out.
        watch.clients_turn();
        let now = t0 + Duration::from_secs(100);
        assert_eq!(
            watch.response_deadline(sent, now, timeout),
            Some(now + timeout)
        );
        // The body ended at 150 s: the server has until 210 s.
        watch.upstreams_turn(t0 + Duration::from_secs(150));
        let end = t0 + Duration::from_secs(210);
        assert_eq!(
            watch.response_deadline(sent, now + timeout, timeout),
            Some(end)
        );
        assert_eq!(watch.response_deadline(sent, end, timeout), None);
    }
}
