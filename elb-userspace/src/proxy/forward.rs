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

use super::{
    MAX_TRIES, Proxy,
    client_body::{BodyOutcome, BodyWatch, ClientBody},
    headers::{ClientAddr, add_forwarded, only_chunked_coding, strip_hop_by_hop, upgrade_protocol},
    pool::{Checkin, ConnectError, PooledBody, Sender},
    upgrade,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Snapshot, Upstream},
    http_util::{Body, empty, full, text},
    rules::BackendChoice,
    targets::ServerGate,
};

/// Where a backend rule sends requests.
enum Target<'a> {
    Upstream(&'a Arc<Upstream>),
    /// `servername` that is no upstream but a literal `host:port`.
    Literal(&'a str),
}

pub async fn forward(
    proxy: &Proxy,
    snapshot: &Snapshot,
    request: Request<Incoming>,
    client: &ClientAddr,
    choice: &BackendChoice<'_>,
) -> Response<Body> {
    if !only_chunked_coding(request.headers()) {
        // RFC 9112 6.1: a transfer coding the server does not understand.
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "the request's transfer coding is not supported (only chunked)",
        );
    }
    let target = match snapshot.upstream(choice.servername) {
        Some(upstream) => Target::Upstream(upstream),
        None if looks_like_host_port(choice.servername) => Target::Literal(choice.servername),
        None => {
            tracing::warn!(
                upstream = choice.servername,
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
        return upgrade::forward(proxy, &target_servers(&target), request).await;
    }

    // Upstream connections are HTTP/1.1 keep-alive, whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        // A body of unknown length (chunked) goes on chunked: hyper's
        // client would send a GET or HEAD one as no body at all.
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
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
    while tried.len() < MAX_TRIES {
        let request = match (unsent.take(), &spare) {
            (Some(request), _) => request,
            (None, Some((head, bytes))) => {
                Request::from_parts(clone_parts(head), replay_body(bytes))
            }
            (None, None) => break,
        };
        let Some((index, server)) = pick(&target, &tried) else {
            break;
        };
        tried.push(index);
        let lease = lease(&target, index);
        match try_server(proxy, server, request, watch, &lease).await {
            Attempt::Response(response) if !is_gateway_failure(response.status()) => {
                report_success(&target, index);
                return close_after_trailers(response, watch, client_version);
            }
            Attempt::Response(response) => {
                report_failure(&target, index);
                tracing::warn!(
                    server,
                    status = response.status().as_u16(),
                    "upstream answered with a gateway error"
                );
                if !replayable || tried.len() == MAX_TRIES {
                    return close_after_trailers(response, watch, client_version);
                }
                last_failure = Some(Failure::Status(response.status()));
            }
            Attempt::NotSent(error, request) => {
                if let ConnectError::AtLimit { .. } = error {
                    // elb's own limit, not the server's failure; logged by
                    // the limit once per episode.
                    tracing::debug!(server, error = %error, "no upstream connection slot");
                } else {
                    report_failure(&target, index);
                    tracing::warn!(server, error = %error, "upstream try failed before sending");
                }
                last_failure = Some(Failure::from_connect(&error));
                unsent = Some(request);
            }
            Attempt::Failed(failure) => {
                report_failure(&target, index);
                tracing::warn!(server, failure = ?failure, "upstream try failed after sending");
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
    if tried.is_empty() {
        return text(StatusCode::BAD_GATEWAY, "no live upstream server");
    }
    match last_failure {
        Some(Failure::Timeout) => text(StatusCode::GATEWAY_TIMEOUT, "the upstream timed out"),
        Some(Failure::AtLimit) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream servers are at elb's connection limit",
        ),
        Some(Failure::Status(status)) => text(status, "the upstream failed"),
        Some(Failure::Broken) | None => text(StatusCode::BAD_GATEWAY, "the upstream failed"),
    }
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
        match error {
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
    mut request: Request<Body>,
    watch: Option<&BodyWatch>,
    lease: &Lease,
) -> Attempt {
    // A pooled connection may have been closed by the server meanwhile; if
    // the request was not written, it comes back and a fresh connection
    // gets it (not counted as a try).
    while let Some(sender) = proxy.pool.take_idle(server).await {
        match send(proxy, server, sender, request, watch, lease).await {
            Sent::Done(attempt) => return attempt,
            Sent::Unsent(returned) => request = returned,
        }
    }
    let settings = &proxy.settings;
    match proxy
        .pool
        .connect(server, settings.connect_timeout, false)
        .await
    {
        Ok(sender) => match send(proxy, server, sender, request, watch, lease).await {
            Sent::Done(attempt) => attempt,
            Sent::Unsent(_) => Attempt::Failed(Failure::Broken),
        },
        Err(error) => Attempt::NotSent(error, request),
    }
}

enum Sent {
    Done(Attempt),
    Unsent(Request<Body>),
}

async fn send(
    proxy: &Proxy,
    server: &str,
    mut sender: Sender,
    request: Request<Body>,
    watch: Option<&BodyWatch>,
    lease: &Lease,
) -> Sent {
    let timeout = proxy.settings.response_timeout;
    let sent_at = tokio::time::Instant::now();
    let result = {
        let mut exchange = pin!(sender.try_send_request(request));
        let mut deadline = sent_at + timeout;
        loop {
            let timed = tokio::time::timeout_at(deadline, &mut exchange);
            let outcome = match &lease.cut {
                Some(cut) => tokio::select! {
                    outcome = timed => outcome,
                    _ = cut.cancelled() => return Sent::Done(Attempt::Cut),
                },
                None => timed.await,
            };
            match outcome {
                Ok(result) => break result,
                Err(_) => {
                    // Without a body the whole time was the server's turn.
                    let next = watch.and_then(|watch| {
                        watch.response_deadline(sent_at, tokio::time::Instant::now(), timeout)
                    });
                    match next {
                        Some(next) => deadline = next,
                        None => return Sent::Done(Attempt::Failed(Failure::Timeout)),
                    }
                }
            }
        }
    };
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, None);
            let checkin = Checkin {
                pool: proxy.pool.clone(),
                server: server.to_owned(),
                sender,
                gate: lease.gate.clone(),
            };
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

fn pick<'a>(target: &'a Target<'_>, tried: &[usize]) -> Option<(usize, &'a str)> {
    match target {
        Target::Upstream(upstream) => {
            let index = upstream.balancer.pick(Instant::now(), tried)?;
            let server = upstream.servers().get(index)?;
            Some((index, server.name.as_str()))
        }
        Target::Literal(server) => tried.is_empty().then_some((0, *server)),
    }
}

/// The servers an upgrade may go to, in balancing order.
fn target_servers(target: &Target<'_>) -> Vec<String> {
    let mut tried = Vec::new();
    let mut servers = Vec::new();
    while tried.len() < MAX_TRIES {
        let Some((index, server)) = pick(target, &tried) else {
            break;
        };
        tried.push(index);
        servers.push(server.to_owned());
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
    if rewritten_path.is_none() && origin_form {
        // The usual case: the request line's target goes upstream as it is.
        return Some(original.clone());
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
    }

    #[test]
    fn only_safe_methods_are_replayed() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
