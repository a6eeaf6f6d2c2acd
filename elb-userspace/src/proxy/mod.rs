//! The L7 proxy: Host → rule document → backend decision → an upstream
//! server chosen by weight and health → streamed request and response.
mod client_body;
mod forward;
pub mod headers;
pub mod host;
pub mod pool;
mod upgrade;
pub mod via;

use std::{sync::Arc, time::Duration};

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use self::{headers::ClientAddr, host::RequestHost, pool::Pool, via::HopMarker};
use crate::{
    access_log::{AccessLog, Entry, LoggedBody},
    admin::AdminApi,
    config::SnapshotHandle,
    http_util::{Body, text},
    limits::{Throttle, UpstreamLimits},
    rules::{self, Decision, RuleRequest},
    statsd::StatsdClient,
    tls::UpstreamTls,
};

/// Timeouts and limits of the proxy towards upstreams.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// How long an upstream has to answer with response headers, counted
    /// while it is the upstream's turn: from the request being sent, or
    /// once its body has been, but not while the body waits for the client.
    pub response_timeout: Duration,
    /// The longest elb waits for the next piece of a request body from the
    /// client (408 after).
    pub client_body_timeout: Duration,
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
    /// This elb's `Via` entry (loop detection).
    pub hop: HopMarker,
    /// Open upstream connections, shared by every worker.
    pub upstream_limits: Arc<UpstreamLimits>,
    /// The TLS client for `tls` servers (`--upstream-ca` or system roots).
    pub upstream_tls: Arc<UpstreamTls>,
}

/// Tries per request: the first server plus up to two others.
pub const MAX_TRIES: usize = 3;

pub struct Proxy {
    snapshot: SnapshotHandle,
    admin: Arc<AdminApi>,
    statsd: Option<StatsdClient>,
    pool: Arc<Pool>,
    settings: ProxySettings,
    loops: Throttle,
    access_log: Option<AccessLog>,
}

impl Proxy {
    pub fn new(
        snapshot: SnapshotHandle,
        admin: Arc<AdminApi>,
        statsd: Option<StatsdClient>,
        settings: ProxySettings,
    ) -> Self {
        Self {
            snapshot,
            admin,
            statsd,
            pool: Pool::new(
                settings.max_idle_per_server,
                settings.idle_timeout,
                Arc::clone(&settings.upstream_limits),
                Arc::clone(&settings.upstream_tls),
            ),
            settings,
            loops: Throttle::new(Duration::from_secs(60)),
            access_log: None,
        }
    }

    /// Writes a line per request to `access_log`.
    pub fn with_access_log(mut self, access_log: Option<AccessLog>) -> Self {
        self.access_log = access_log;
        self
    }

    /// Closes idle upstream connections to servers whose gate closed.
    pub fn close_idle_unroutable(&self) {
        self.pool.close_unroutable();
    }

    pub async fn handle(&self, request: Request<Incoming>, client: &ClientAddr) -> Response<Body> {
        match &self.access_log {
            None => self.route(request, client).await,
            // Boxed: the entry does not grow every request's future.
            Some(log) => {
                Box::pin(async {
                    let started = std::time::Instant::now();
                    let entry = log_entry(&request, client);
                    let response = self.route(request, client).await;
                    logged(response, entry, log, started)
                })
                .await
            }
        }
    }

    async fn route(&self, mut request: Request<Incoming>, client: &ClientAddr) -> Response<Body> {
        let (host, from_target) =
            match host::request_host(request.version(), request.uri(), request.headers()) {
                Ok(RequestHost::Header(host)) => (host.to_owned(), false),
                Ok(RequestHost::Target(authority)) => (authority.to_owned(), true),
                Ok(RequestHost::None) => (String::new(), false),
                Err(err) => {
                    tracing::debug!(client = %client.addr, error = %err, "request refused");
                    return text(StatusCode::BAD_REQUEST, &err.to_string());
                }
            };
        if AdminApi::is_admin_path(request.uri().path()) {
            // Boxed: the admin API's future is as large as a proxied
            // request's and would double every request's.
            return Box::pin(self.admin.handle(request, client.addr.ip())).await;
        }
        let started = std::time::Instant::now();
        if self.settings.hop.seen_in(request.headers()) {
            return self.loop_detected(&request, started);
        }
        if host.is_empty() {
            return text(StatusCode::BAD_REQUEST, "the request has no Host");
        }
        if from_target {
            // Absolute-form: the upstream gets the host it was routed by
            // (a valid host is a valid header value).
            if let Ok(value) = http::HeaderValue::from_str(&host) {
                request.headers_mut().insert(header::HOST, value);
            }
        }
        // In-flight requests keep the snapshot they started with.
        let snapshot = self.snapshot.load_full();
        let Some(domain) = snapshot.lookup_host(&host) else {
            return text(StatusCode::NOT_FOUND, "no rules for this domain");
        };
        let path = rules::decode_path(request.uri().path());
        let rule_request = RuleRequest {
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .map(|v| v.as_bytes()),
            path: &path,
        };
        let choice = match domain.rules.evaluate(&rule_request) {
            Decision::Backend(choice) => choice,
            Decision::Forbidden { rule } => {
                tracing::debug!(host, rule, "rule has no branch for this request");
                return text(StatusCode::FORBIDDEN, "forbidden by the domain's rules");
            }
        };
        let mut tally = forward::Tally::default();
        let response =
            forward::forward(self, &snapshot, request, client, &choice, &mut tally).await;
        // One clock reading for every counter of the request.
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        domain.metrics.record(status, elapsed);
        tally.record(status, elapsed);
        if let Some(statsd) = &self.statsd {
            statsd.record_request(&host, client.listener.as_deref(), status, elapsed);
        }
        response
    }
}

/// The entry for `request`, before it is routed (its status, upstream and
/// times are filled in as it is answered).
fn log_entry(request: &Request<Incoming>, client: &ClientAddr) -> Entry {
    let header_text = |name| {
        request
            .headers()
            .get(name)
            .map(|value: &http::HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let host = header_text(header::HOST).or_else(|| {
        request
            .uri()
            .authority()
            .map(|authority| authority.as_str().to_owned())
    });
    Entry {
        time: std::time::SystemTime::now(),
        client: client.addr.ip(),
        listener: client.listener.as_deref().map(str::to_owned),
        method: request.method().as_str().to_owned(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_owned()),
        version: match request.version() {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        host,
        status: 0,
        bytes: 0,
        referer: header_text(header::REFERER),
        user_agent: header_text(header::USER_AGENT),
        upstream: None,
        server: None,
        request_time: Duration::ZERO,
        upstream_time: None,
    }
}

/// `response`, whose body writes `entry` to `log` when it ends.
fn logged(
    response: Response<Body>,
    mut entry: Entry,
    log: &AccessLog,
    started: std::time::Instant,
) -> Response<Body> {
    entry.status = response.status().as_u16();
    if let Some(used) = response.extensions().get::<forward::UpstreamUsed>() {
        entry.upstream = Some(used.upstream.clone());
        entry.server.clone_from(&used.server);
        entry.upstream_time = used.upstream_time;
    }
    response.map(|body| LoggedBody::new(body, log.clone(), entry, started).boxed())
}

impl Proxy {
    /// 508 for a request that already passed through this elb.
    fn loop_detected(
        &self,
        request: &Request<Incoming>,
        now: std::time::Instant,
    ) -> Response<Body> {
        if let Some(count) = self.loops.event(now) {
            tracing::warn!(
                host = ?request.headers().get(header::HOST),
                path = request.uri().path(),
                via = ?request.headers().get(header::VIA),
                requests = count,
                "a request came back to this elb (its Via entry is there): 508 Loop Detected; \
                 a server or a name in the configuration leads back to elb"
            );
        }
        text(
            StatusCode::LOOP_DETECTED,
            "the request came back to this elb: the configuration has a proxy loop",
        )
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'a Proxy, Request<Incoming>, &'a ClientAddr) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every request's future is moved at least once (into its task or
    /// box): the rare steps (admin API, upgrades, opening connections)
    /// are boxed so that it stays small. 11.4 KB before, in release.
    #[test]
    fn a_requests_future_stays_small() {
        let size = future_size(Proxy::handle);
        assert!(size <= 6 * 1024, "Proxy::handle's future is {size} bytes");
    }
}
