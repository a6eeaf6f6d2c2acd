//! Sending one request upstream: server choice, retries, passive health.
//!
//! A try fails on a connect error or timeout, a response timeout (504), a
//! broken connection, or a 502/504 answer; it is then retried on another
//! server, up to [`MAX_TRIES`]. Once a streamed body has been written
//! upstream it is gone, so after that point only idempotent requests
//! (RFC 9110 §9.2.2) are retried: body-less ones, and ones whose body of at
//! most [`REPLAY_BODY_LIMIT`] bytes was read whole before the first try. A
//! request that never left (connect failed, stale pooled connection) is
//! retried whatever its method.
//!
//! Passive health counts only what the server did wrong. A request body the
//! client sent malformed or truncated (400), or stalled past the client
//! body timeout (408), is the client's: no failure is reported, no other
//! server tried. The response timer runs only in the server's turn (see
//! [`BodyWatch`]), so a slow upload is no upstream timeout.
//!
//! A server whose drain ends (see [`crate::targets`]) has its requests
//! cut: one still waiting for its answer gets a 502, a response still
//! streaming ends with an error.
use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::TrySendError;

use super::{
    MAX_TRIES, Proxy,
    client_body::{BodyOutcome, BodyWatch, ClientBody},
    headers::{ClientAddr, add_forwarded, only_chunked_coding, strip_hop_by_hop, upgrade_protocol},
    pool::{Checkin, ConnectError, H2Sender, PooledBody, Sender, Transport},
    upgrade,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Snapshot, Upstream},
    http_util::{Body, empty, full, text},
    metrics::cells::{ActiveTry, ServerCells, bump},
    rules::BackendChoice,
    targets::ServerGate,
};

/// Where a backend rule sends requests.
enum Target<'a> {
    Upstream(&'a Arc<Upstream>),
    /// `servername` that is no upstream but a literal `host:port`.
    Literal(&'a str),
}

/// In a response's extensions when access logging is on: which upstream
/// and server it came from (or failed at), and how long the server took.
#[derive(Debug, Clone)]
pub struct UpstreamUsed {
    pub upstream: String,
    pub server: Option<String>,
    /// From the last try's start (connecting included) to its response head.
    pub upstream_time: Option<Duration>,
}

/// What the metrics need to know of how a request was forwarded.
#[derive(Default)]
pub struct Tally<'a> {
    upstream: Option<&'a Upstream>,
    /// The server of the last try.
    server: Option<usize>,
    /// The last try's time to its response head.
    upstream_time: Option<Duration>,
}

impl Tally<'_> {
    /// Counts the answer, given `elapsed` after the request's arrival,
    /// under its upstream and server (not for literal `host:port` targets,
    /// which have no upstream).
    pub fn record(&self, status: u16, elapsed: Duration) {
        let Some(upstream) = self.upstream else {
            return;
        };
        let level = &upstream.metrics.level;
        match self.server.and_then(|index| upstream.metrics.server(index)) {
            Some(server) => server.requests.record(status),
            None => level.no_server.record(status),
        }
        level.request_seconds.observe(elapsed);
        if let Some(time) = self.upstream_time {
            level.upstream_seconds.observe(time);
        }
    }
}

/// Forwards the request; `tally` learns where it went, for the caller to
/// count its answer with [`Tally::record`].
pub async fn forward<'s>(
    proxy: &Proxy,
    snapshot: &'s Snapshot,
    request: Request<Incoming>,
    client: &ClientAddr,
    choice: &BackendChoice<'_>,
    tally: &mut Tally<'s>,
) -> Response<Body> {
    if !only_chunked_coding(request.headers()) {
        // RFC 9112 6.1: a transfer coding the server does not understand.
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "the request's transfer coding is not supported (only chunked)",
        );
    }
    let target = match snapshot.upstream(choice.servername) {
        Some(upstream) => {
            tally.upstream = Some(upstream);
            Target::Upstream(upstream)
        }
        None if looks_like_host_port(choice.servername) => Target::Literal(choice.servername),
        None => {
            tracing::warn!(
                upstream = choice.servername,
                listener = client.listener_name(),
                "backend rule names an upstream that does not exist"
            );
            return text(StatusCode::BAD_GATEWAY, "the upstream does not exist");
        }
    };

    let (mut parts, body) = request.into_parts();
    let client_version = parts.version;
    // An upgrade request with a body is served as a plain request, its
    // Upgrade dropped (RFC 9110 §7.8 lets a server ignore it; HAProxy and
    // Envoy do the same): its body is framed and forwarded as any other,
    // never mistaken for the bytes after a 101. An Upgrade in an HTTP/1.0
    // request is ignored (RFC 9110 §7.8 MUST).
    let protocol = upgrade_protocol(&parts.headers)
        .filter(|_| body.is_end_stream() && parts.version == http::Version::HTTP_11);
    // The one `TE` an h2 server may get (gRPC servers want it).
    let te_trailers = accepts_trailers(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, protocol.clone());
    add_forwarded(&mut parts.headers, client);
    proxy.settings.hop.append_to(&mut parts.headers);
    for (name, value) in choice.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.uri = match upstream_uri(&parts.uri, choice.rewritten_path.as_deref()) {
        Some(uri) => uri,
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                "the request path cannot be forwarded",
            );
        }
    };

    if protocol.is_some() {
        // Upgrade handshakes carry no body; the client's bytes follow the 101.
        let request = Request::from_parts(parts, empty());
        // Boxed, as the other rare steps below: an awaited future lives
        // inside every request's future, which is moved at least once.
        return Box::pin(upgrade::forward(proxy, &target_servers(&target), request)).await;
    }

    let idempotent = is_idempotent(&parts.method);
    let timeout = proxy.settings.client_body_timeout;
    let payload = match Payload::read(body, idempotent, timeout).await {
        Ok(payload) => payload,
        Err(fault) => return fault.response(),
    };
    // Only a replayable request can need its head (and held body) again
    // once it was sent.
    let spare = match &payload {
        Payload::Held(bytes) if idempotent => Some((clone_parts(&parts), bytes.clone())),
        _ => None,
    };
    // Only a streamed body can be the client's fault; the others skip the
    // watch and its allocation.
    let (body, watch) = match payload {
        Payload::Held(bytes) => (full(bytes), None),
        Payload::Streamed(body) => {
            let (body, watch) = ClientBody::new(body, timeout);
            (body.boxed(), Some(watch))
        }
    };
    let replayable = spare.is_some();
    let watch = watch.as_deref();
    let mut unsent = Some(Request::from_parts(parts, body));
    let mut tried = Vec::with_capacity(MAX_TRIES);
    let mut last_failure = None;
    let mut last_server = None;
    while tried.len() < MAX_TRIES {
        let request = match (unsent.take(), &spare) {
            (Some(request), _) => request,
            (None, Some((head, bytes))) => {
                Request::from_parts(clone_parts(head), replay_body(bytes))
            }
            (None, None) => break,
        };
        // Also the try's start, for the upstream time.
        let started_at = Instant::now();
        let Some((index, server, transport)) = pick(&target, &tried, started_at) else {
            break;
        };
        tried.push(index);
        let counted = tally.upstream;
        let cells = counted.and_then(|upstream| upstream.metrics.server(index));
        if tried.len() > 1
            && let Some(upstream) = counted
        {
            bump(&upstream.metrics.level.retries);
        }
        let lease = lease(&target, index);
        let mut request = request;
        shape(&mut request, server, transport, te_trailers);
        // Only the access log reads the upstream time from the response.
        let try_started = proxy.access_log.is_some().then_some(started_at);
        last_server = Some(server);
        tally.server = Some(index);
        tally.upstream_time = None;
        let attempt = {
            let _active = ActiveTry::start(cells);
            try_server(proxy, server, transport, request, watch, &lease).await
        };
        count_attempt(cells, &attempt);
        if let Attempt::Response(_) = &attempt {
            tally.upstream_time = Some(started_at.elapsed());
        }
        match attempt {
            Attempt::Response(response) if !is_gateway_failure(response.status()) => {
                report_success(&target, index);
                let response = used(proxy, response, choice, server, try_started);
                return close_after_trailers(response, watch, client_version);
            }
            Attempt::Response(response) => {
                let response = used(proxy, response, choice, server, try_started);
                report_failure(&target, index);
                tracing::warn!(
                    server,
                    listener = client.listener_name(),
                    status = response.status().as_u16(),
                    "upstream answered with a gateway error"
                );
                if !replayable || tried.len() == MAX_TRIES {
                    return close_after_trailers(response, watch, client_version);
                }
                last_failure = Some(Failure::Status(response.status()));
            }
            Attempt::NotSent(error, request) => {
                if let ConnectError::AtLimit { .. } = error.cause() {
                    // elb's own limit, not the server's failure; logged by
                    // the limit once per episode.
                    tracing::debug!(server, error = %error, "no upstream connection slot");
                } else {
                    report_failure(&target, index);
                    tracing::warn!(
                        server,
                        listener = client.listener_name(),
                        error = %error,
                        "upstream try failed before sending"
                    );
                }
                last_failure = Some(Failure::from_connect(&error));
                unsent = Some(request);
            }
            Attempt::Failed(failure) => {
                report_failure(&target, index);
                tracing::warn!(
                    server,
                    listener = client.listener_name(),
                    failure = ?failure,
                    "upstream try failed after sending"
                );
                last_failure = Some(failure);
            }
            Attempt::ClientFault(fault) => {
                tracing::debug!(server, fault = ?fault, "the client's request body failed");
                return fault.response();
            }
            // Not the server's failure, and not safe to replay elsewhere.
            Attempt::Cut => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the upstream server's drain ended before it answered",
                );
            }
        }
    }
    let response = if tried.is_empty() {
        text(StatusCode::BAD_GATEWAY, "no live upstream server")
    } else {
        match last_failure {
            Some(Failure::Timeout) => text(StatusCode::GATEWAY_TIMEOUT, "the upstream timed out"),
            Some(Failure::AtLimit) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the upstream servers are at elb's connection limit",
            ),
            Some(Failure::Status(status)) => text(status, "the upstream failed"),
            Some(Failure::Broken) | None => text(StatusCode::BAD_GATEWAY, "the upstream failed"),
        }
    };
    match last_server {
        Some(server) => used(proxy, response, choice, server, None),
        None => used_upstream(proxy, response, choice),
    }
}

/// A try's connect failure or timeout, on its server's cells.
fn count_attempt(cells: Option<&ServerCells>, attempt: &Attempt) {
    let Some(cells) = cells else {
        return;
    };
    match attempt {
        Attempt::NotSent(error, _) => match error.cause() {
            // elb's own limit: the server did nothing wrong.
            ConnectError::AtLimit { .. } => {}
            ConnectError::Timeout { .. } => {
                bump(&cells.connect_failures);
                bump(&cells.timeouts);
            }
            _ => bump(&cells.connect_failures),
        },
        Attempt::Failed(Failure::Timeout) => bump(&cells.timeouts),
        _ => {}
    }
}

/// Tags `response` with [`UpstreamUsed`] when access logging is on.
fn used(
    proxy: &Proxy,
    mut response: Response<Body>,
    choice: &BackendChoice<'_>,
    server: &str,
    try_started: Option<Instant>,
) -> Response<Body> {
    if proxy.access_log.is_some() {
        response.extensions_mut().insert(UpstreamUsed {
            upstream: choice.servername.to_owned(),
            server: Some(server.to_owned()),
            upstream_time: try_started.map(|started| started.elapsed()),
        });
    }
    response
}

/// [`used`] when no server was tried.
fn used_upstream(
    proxy: &Proxy,
    mut response: Response<Body>,
    choice: &BackendChoice<'_>,
) -> Response<Body> {
    if proxy.access_log.is_some() {
        response.extensions_mut().insert(UpstreamUsed {
            upstream: choice.servername.to_owned(),
            server: None,
            upstream_time: None,
        });
    }
    response
}

/// Asks hyper to close the client connection after `response` when the
/// request body carried trailers (see [`BodyWatch::had_trailers`]). A
/// server that answers before the client's trailers arrived escapes this;
/// such an early answer is rare, and trailers in requests are too.
/// HTTP/1 only: HTTP/2 frames its trailers, and has no `Connection`.
fn close_after_trailers(
    mut response: Response<Body>,
    watch: Option<&BodyWatch>,
    client_version: http::Version,
) -> Response<Body> {
    if client_version < http::Version::HTTP_2 && watch.is_some_and(BodyWatch::had_trailers) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Largest request body of an idempotent request that is read whole
/// before the first try, so that it can be sent to another server if that
/// one fails after receiving it (nginx buffers bodies for the same reason).
/// Larger bodies, and bodies of unknown length (chunked), stream.
pub const REPLAY_BODY_LIMIT: u64 = 64 * 1024;

/// The client's request body as it goes upstream.
enum Payload {
    /// Complete in memory: no body, or a small one of an idempotent request.
    Held(Bytes),
    Streamed(Incoming),
}

impl Payload {
    async fn read(
        body: Incoming,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Self, ClientFault> {
        if body.is_end_stream() {
            return Ok(Self::Held(Bytes::new()));
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|len| len <= REPLAY_BODY_LIMIT);
        if !(idempotent && small) {
            return Ok(Self::Streamed(body));
        }
        // Read through the watch: a malformed, cut or stalled body is the
        // client's fault (400 / 408), and no server is involved yet.
        let (watched, watch) = ClientBody::new(body, timeout);
        match watched.collect().await {
            Ok(collected) => Ok(Self::Held(collected.to_bytes())),
            Err(_) => {
                Err(ClientFault::of(Some(watch.as_ref())).unwrap_or(ClientFault::InvalidBody))
            }
        }
    }
}

/// The held body for another try (an empty one stays absent, as sent first).
fn replay_body(bytes: &Bytes) -> Body {
    if bytes.is_empty() {
        empty()
    } else {
        full(bytes.clone())
    }
}

#[derive(Debug)]
enum Failure {
    Timeout,
    /// A connection limit of elb's, not the server's failure.
    AtLimit,
    Broken,
    Status(StatusCode),
}

impl Failure {
    fn from_connect(error: &ConnectError) -> Self {
        match error.cause() {
            ConnectError::Timeout { .. } => Self::Timeout,
            ConnectError::AtLimit { .. } => Self::AtLimit,
            _ => Self::Broken,
        }
    }
}

/// The try broke because of the client's request body: neither a server
/// failure nor a reason to try another server.
#[derive(Debug)]
enum ClientFault {
    /// Malformed or truncated; also a client that closed mid-body, which
    /// then never reads the answer.
    InvalidBody,
    TimedOut,
}

impl ClientFault {
    fn of(watch: Option<&BodyWatch>) -> Option<Self> {
        match watch?.outcome() {
            BodyOutcome::Invalid => Some(Self::InvalidBody),
            BodyOutcome::TimedOut => Some(Self::TimedOut),
            BodyOutcome::Streaming | BodyOutcome::Complete => None,
        }
    }

    fn response(&self) -> Response<Body> {
        match self {
            Self::InvalidBody => text(
                StatusCode::BAD_REQUEST,
                "the request body is malformed or incomplete",
            ),
            Self::TimedOut => text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ),
        }
    }
}

enum Attempt {
    Response(Response<Body>),
    /// Nothing reached the server; the request comes back for the next try.
    NotSent(ConnectError, Request<Body>),
    Failed(Failure),
    ClientFault(ClientFault),
    /// The server's drain ended while the request waited for its answer.
    Cut,
}

/// What a try on one server carries along: the server's gate (its pooled
/// connection goes back only while the gate is open) and the token that
/// ends the request when the server's drain is over.
struct Lease {
    gate: Option<Arc<ServerGate>>,
    cut: Option<CancellationToken>,
}

fn lease(target: &Target<'_>, index: usize) -> Lease {
    match target {
        Target::Upstream(upstream) => {
            let gate = upstream.balancer.gate(index).cloned();
            let cut = gate.as_ref().and_then(|g| g.drain_token());
            Lease { gate, cut }
        }
        Target::Literal(_) => Lease {
            gate: None,
            cut: None,
        },
    }
}

async fn try_server(
    proxy: &Proxy,
    server: &str,
    transport: Transport,
    mut request: Request<Body>,
    watch: Option<&BodyWatch>,
    lease: &Lease,
) -> Attempt {
    let settings = &proxy.settings;
    if transport.h2 {
        // The shared connection may have closed (GOAWAY) since it was
        // looked at; a request it did not take is sent on a new one.
        for _ in 0..2 {
            let sender = match proxy
                .pool
                .h2_sender(
                    server,
                    transport.tls,
                    settings.connect_timeout,
                    lease.gate.as_ref(),
                )
                .await
            {
                Ok(sender) => sender,
                Err(error) => return Attempt::NotSent(error, request),
            };
            match send(
                proxy,
                server,
                transport,
                Conn::H2(sender),
                request,
                watch,
                lease,
            )
            .await
            {
                Sent::Done(attempt) => return attempt,
                Sent::Unsent(returned) => request = returned,
            }
        }
        return Attempt::Failed(Failure::Broken);
    }
    // A pooled connection may have been closed by the server meanwhile; if
    // the request was not written, it comes back and a fresh connection
    // gets it (not counted as a try).
    while let Some(sender) = proxy.pool.take_idle(server, transport.tls).await {
        match send(
            proxy,
            server,
            transport,
            Conn::H1(sender),
            request,
            watch,
            lease,
        )
        .await
        {
            Sent::Done(attempt) => return attempt,
            Sent::Unsent(returned) => request = returned,
        }
    }
    // Boxed: a new connection is the exception with keep-alive.
    match Box::pin(
        proxy
            .pool
            .connect(server, transport.tls, settings.connect_timeout, false),
    )
    .await
    {
        Ok(sender) => {
            match send(
                proxy,
                server,
                transport,
                Conn::H1(sender),
                request,
                watch,
                lease,
            )
            .await
            {
                Sent::Done(attempt) => attempt,
                Sent::Unsent(_) => Attempt::Failed(Failure::Broken),
            }
        }
        Err(error) => Attempt::NotSent(error, request),
    }
}

/// Fits a request to the protocol of the server it is tried on (a request
/// one server did not take may go to another that speaks otherwise).
fn shape(request: &mut Request<Body>, server: &str, transport: Transport, te_trailers: bool) {
    if transport.h2 {
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        // HTTP/2 frames the body itself (RFC 9113 §8.2.2).
        headers.remove(header::TRANSFER_ENCODING);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // HTTP/2 carries the target as :scheme, :authority and :path; the
        // authority is the Host the request came with (Host is kept, and
        // equal, as RFC 9113 §8.3.1 asks).
        let authority = request
            .headers()
            .get(header::HOST)
            .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok())
            .or_else(|| http::uri::Authority::try_from(server).ok());
        let scheme = if transport.tls { "https" } else { "http" };
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        if let Some(authority) = authority
            && let Ok(uri) = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(path)
                .build()
        {
            *request.uri_mut() = uri;
        }
        return;
    }
    // HTTP/1.1 keep-alive, whatever the client spoke.
    *request.version_mut() = http::Version::HTTP_11;
    if request.uri().scheme().is_some()
        && let Some(path) = request.uri().path_and_query().cloned()
    {
        *request.uri_mut() = Uri::from(path);
    }
    let unknown_length = !request.body().is_end_stream()
        && request.body().size_hint().exact().is_none()
        && !request.headers().contains_key(header::CONTENT_LENGTH);
    let headers = request.headers_mut();
    if te_trailers {
        // An earlier try on an h2 server may have set it.
        headers.remove(header::TE);
    }
    if unknown_length {
        // A body of unknown length (chunked) goes on chunked: hyper's
        // client would send a GET or HEAD one as no body at all.
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// Whether the client's `TE` lists `trailers`.
fn accepts_trailers(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            token
                .split(';')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("trailers"))
        })
}

enum Sent {
    Done(Attempt),
    Unsent(Request<Body>),
}

/// A connection a request goes on: an HTTP/1.1 one of its own, or the
/// shared HTTP/2 one.
enum Conn {
    H1(Sender),
    H2(H2Sender),
}

type Exchanged = Result<Response<Incoming>, TrySendError<Request<Body>>>;

async fn send(
    proxy: &Proxy,
    server: &str,
    transport: Transport,
    conn: Conn,
    request: Request<Body>,
    watch: Option<&BodyWatch>,
    lease: &Lease,
) -> Sent {
    let (result, h1) = match conn {
        Conn::H1(mut sender) => {
            let result = exchange(proxy, sender.try_send_request(request), watch, lease).await;
            (result, Some(sender))
        }
        Conn::H2(mut sender) => {
            let result = exchange(proxy, sender.try_send_request(request), watch, lease).await;
            (result, None)
        }
    };
    let result = match result {
        Ok(result) => result,
        Err(Stopped::Cut) => return Sent::Done(Attempt::Cut),
        Err(Stopped::TimedOut) => return Sent::Done(Attempt::Failed(Failure::Timeout)),
    };
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, None);
            let checkin = h1.map(|sender| Checkin {
                pool: proxy.pool.clone(),
                server: server.to_owned(),
                tls: transport.tls,
                sender,
                gate: lease.gate.clone(),
            });
            let body = PooledBody::new(body, checkin, lease.cut.clone());
            Sent::Done(Attempt::Response(Response::from_parts(parts, body.boxed())))
        }
        Err(mut error) => match error.take_message() {
            Some(request) => Sent::Unsent(request),
            // The body records its failure before hyper sees it, so the
            // watch already tells whether this was the client.
            None => match ClientFault::of(watch) {
                Some(fault) => Sent::Done(Attempt::ClientFault(fault)),
                None => {
                    tracing::debug!(server, error = %error.into_error(), "upstream connection broke");
                    Sent::Done(Attempt::Failed(Failure::Broken))
                }
            },
        },
    }
}

/// Why waiting for the response head ended without one.
enum Stopped {
    /// The server's drain ended.
    Cut,
    TimedOut,
}

/// Waits for the response head within the response timeout (counted in
/// the server's turn only), or until the server's drain ends.
async fn exchange(
    proxy: &Proxy,
    exchange: impl std::future::Future<Output = Exchanged>,
    watch: Option<&BodyWatch>,
    lease: &Lease,
) -> Result<Exchanged, Stopped> {
    let timeout = proxy.settings.response_timeout;
    let sent_at = tokio::time::Instant::now();
    let mut exchange = pin!(exchange);
    let mut deadline = sent_at + timeout;
    loop {
        let timed = tokio::time::timeout_at(deadline, &mut exchange);
        let outcome = match &lease.cut {
            Some(cut) => tokio::select! {
                outcome = timed => outcome,
                _ = cut.cancelled() => return Err(Stopped::Cut),
            },
            None => timed.await,
        };
        match outcome {
            Ok(result) => return Ok(result),
            Err(_) => {
                // Without a body the whole time was the server's turn.
                let next = watch.and_then(|watch| {
                    watch.response_deadline(sent_at, tokio::time::Instant::now(), timeout)
                });
                match next {
                    Some(next) => deadline = next,
                    None => return Err(Stopped::TimedOut),
                }
            }
        }
    }
}

fn pick<'a>(
    target: &'a Target<'_>,
    tried: &[usize],
    now: Instant,
) -> Option<(usize, &'a str, Transport)> {
    match target {
        Target::Upstream(upstream) => {
            let index = upstream.balancer.pick(now, tried)?;
            let server = upstream.servers().get(index)?;
            Some((index, server.name.as_str(), Transport::of(&server.params)))
        }
        // A literal `host:port` is plaintext HTTP/1.1.
        Target::Literal(server) => tried
            .is_empty()
            .then_some((0, *server, Transport::default())),
    }
}

/// The servers an upgrade may go to, in balancing order, and whether each
/// takes TLS.
fn target_servers(target: &Target<'_>) -> Vec<(String, bool)> {
    let mut tried = Vec::new();
    let mut servers = Vec::new();
    while tried.len() < MAX_TRIES {
        let Some((index, server, transport)) = pick(target, &tried, Instant::now()) else {
            break;
        };
        tried.push(index);
        servers.push((server.to_owned(), transport.tls));
    }
    servers
}

fn report_success(target: &Target<'_>, index: usize) {
    if let Target::Upstream(upstream) = target {
        upstream.balancer.report_success(index);
    }
}

fn report_failure(target: &Target<'_>, index: usize) {
    if let Target::Upstream(upstream) = target {
        upstream.balancer.report_failure(index, Instant::now());
    }
}

fn is_gateway_failure(status: StatusCode) -> bool {
    status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn clone_parts(parts: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// Origin-form URI for the upstream: the (possibly rewritten) path and the
/// original query.
fn upstream_uri(original: &Uri, rewritten_path: Option<&str>) -> Option<Uri> {
    let origin_form = original.scheme().is_none() && original.authority().is_none();
    if rewritten_path.is_none() {
        if origin_form {
            // The usual case: the request line's target goes upstream as it is.
            return Some(original.clone());
        }
        // Absolute-form, and every HTTP/2 request (:scheme and :authority):
        // the path and query as they came, shared rather than re-parsed.
        if let Some(path_and_query) = original.path_and_query()
            && path_and_query.as_str().starts_with('/')
        {
            return Some(Uri::from(path_and_query.clone()));
        }
    }
    let path = rewritten_path.unwrap_or_else(|| original.path());
    let path_and_query = match original.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    path_and_query.parse().ok()
}

fn looks_like_host_port(servername: &str) -> bool {
    crate::upstream::validate_server_address(servername).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keeps_the_query_and_applies_the_rewrite() {
        let original: Uri = "/blog/a/b?x=1".parse().expect("uri");
        assert_eq!(upstream_uri(&original, None).expect("uri"), "/blog/a/b?x=1");
        assert_eq!(
            upstream_uri(&original, Some("/a/b")).expect("uri"),
            "/a/b?x=1"
        );
        let absolute: Uri = "http://a.com/p".parse().expect("uri");
        assert_eq!(upstream_uri(&absolute, None).expect("uri"), "/p");
        let absolute: Uri = "http://a.com/p?q=1".parse().expect("uri");
        assert_eq!(upstream_uri(&absolute, None).expect("uri"), "/p?q=1");
        let plain: Uri = "/p?q=1".parse().expect("uri");
        assert_eq!(upstream_uri(&plain, None).expect("uri"), "/p?q=1");
        let no_path: Uri = "http://a.com".parse().expect("uri");
        assert_eq!(upstream_uri(&no_path, None).expect("uri"), "/");
        let rewritten: Uri = "http://a.com/blog/p?q=1".parse().expect("uri");
        assert_eq!(upstream_uri(&rewritten, Some("/p")).expect("uri"), "/p?q=1");
        // What an HTTP/2 request's target looks like to the proxy.
        let h2 = Uri::builder()
            .scheme("https")
            .authority("a.com")
            .path_and_query("/p?q=1")
            .build()
            .expect("uri");
        let upstream = upstream_uri(&h2, None).expect("uri");
        assert_eq!(upstream, "/p?q=1");
        assert!(upstream.scheme().is_none() && upstream.authority().is_none());
    }

    #[test]
    fn only_safe_methods_are_replayed() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
