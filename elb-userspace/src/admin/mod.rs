//! The admin API under `/__erulb__/`, compatible with ERU ELB's: endpoints,
//! body shapes and status codes as in the compatibility contract. Writes go
//! through [`ConfigService::write`]: validated, one store transaction, then
//! applied.
pub mod access;
pub mod acl;
mod cert;
mod discovery;
pub mod domain;
mod dump;
mod listener;
mod policy;
mod service;
mod status;
pub mod upstream;

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use self::access::{AccessPolicy, Refusal};
use crate::{
    config::{ConfigService, WriteError, keys::validate_key_segment},
    discovery::leader::ElectionStatus,
    http_util::{Body, json, json_error},
    l4::{stats::L4StatsSource, sync::Applied},
    metrics::Metrics,
};
use tokio::sync::watch;

/// Every admin path starts with this.
pub const PREFIX: &str = "/__erulb__/";

pub struct AdminApi {
    config: Arc<ConfigService>,
    access: AccessPolicy,
    max_body: usize,
    /// Set once the L4 data plane is up.
    l4_stats: OnceLock<Arc<dyn L4StatsSource>>,
    /// What the L4 data plane has applied; writes answer once it carries
    /// them.
    l4_applied: OnceLock<watch::Receiver<Applied>>,
    /// The configured listeners' live state, once the server runs them.
    listener_board: OnceLock<crate::server::ListenerBoard>,
    /// For the status page's uptime.
    started: std::time::Instant,
    /// Each write holds it shared; a takeover holds it exclusively (see
    /// [`AdminApi::write_gate`]).
    write_gate: Arc<tokio::sync::RwLock<()>>,
    /// What `GET /__erulb__/metrics` serves.
    metrics: Option<Arc<Metrics>>,
    /// The discovery providers' state, written by the runner.
    discovery: crate::discovery::DiscoveryBoard,
    /// Who runs the discovery providers, once the election started.
    discovery_leader: OnceLock<ElectionStatus>,
}

/// How long a write waits for the L4 data plane to carry it.
const DATAPLANE_WAIT: Duration = Duration::from_secs(5);

/// An admin request that failed, with its status.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl AdminError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not supported on {path} (allowed: {allow})"),
            )
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = json_error(self.status, self.message);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<WriteError> for AdminError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Invalid(message) => Self::bad_request(message),
            WriteError::Store(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
}

type AdminResult = Result<Response<Body>, AdminError>;

impl AdminApi {
    pub fn new(config: Arc<ConfigService>, access: AccessPolicy, max_body: usize) -> Self {
        Self {
            config,
            access,
            max_body,
            l4_stats: OnceLock::new(),
            l4_applied: OnceLock::new(),
            listener_board: OnceLock::new(),
            started: std::time::Instant::now(),
            write_gate: Arc::default(),
            metrics: None,
            discovery: crate::discovery::DiscoveryBoard::default(),
            discovery_leader: OnceLock::new(),
        }
    }

    /// Where the discovery runner reports (`GET /__erulb__/discovery`).
    pub fn discovery_board(&self) -> crate::discovery::DiscoveryBoard {
        self.discovery.clone()
    }

    /// Writes hold this shared. A takeover takes it exclusively from the
    /// moment a new elb asks for the sockets (once the writes in progress
    /// are done): a write the new elb would not see (it has already read
    /// the state file) is then answered 503 instead of being lost.
    pub fn write_gate(&self) -> Arc<tokio::sync::RwLock<()>> {
        Arc::clone(&self.write_gate)
    }

    /// Serves `metrics` on `GET /__erulb__/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The L4 data plane's progress; the first call wins.
    pub fn set_l4_applied(&self, applied: watch::Receiver<Applied>) {
        let _ = self.l4_applied.set(applied);
    }

    /// After a committed write: waits until the L4 data plane carries the
    /// configuration generation that includes it. The L7 snapshot already
    /// does when `write` returns.
    pub(crate) async fn await_dataplane(&self) -> Result<(), AdminError> {
        let Some(applied) = self.l4_applied.get() else {
            return Ok(());
        };
        let wanted = *self.config.subscribe().borrow();
        let mut applied = applied.clone();
        let reached = tokio::time::timeout(
            DATAPLANE_WAIT,
            applied.wait_for(|state| state.generation >= wanted),
        )
        .await;
        let stored = "the change is stored and serves HTTP, but";
        match reached {
            Ok(Ok(state)) => match &state.error {
                None => Ok(()),
                Some(error) => Err(AdminError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{stored} the L4 data plane could not apply it (elb retries): {error}"),
                )),
            },
            Ok(Err(_)) => Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{stored} the L4 data plane has stopped"),
            )),
            Err(_) => Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{stored} the L4 data plane has not applied it within {}s",
                    DATAPLANE_WAIT.as_secs()
                ),
            )),
        }
    }

    /// Where `GET /__erulb__/listener` reads each listener's state; the
    /// first call wins.
    /// `GET /__erulb__/discovery/leader` reports through it.
    pub fn set_discovery_leader(&self, status: ElectionStatus) {
        let _ = self.discovery_leader.set(status);
    }

    pub fn set_listener_board(&self, board: crate::server::ListenerBoard) {
        let _ = self.listener_board.set(board);
    }

    /// Where `/__erulb__/stats` reads from; the first call wins.
    pub fn set_l4_stats(&self, source: Arc<dyn L4StatsSource>) {
        if let Some(metrics) = &self.metrics {
            metrics.set_l4_stats(Arc::clone(&source));
        }
        let _ = self.l4_stats.set(source);
    }

    pub fn is_admin_path(path: &str) -> bool {
        path.starts_with(PREFIX)
    }

    pub async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        // The status page's HTML holds no data and a browser cannot send a
        // bearer token when it opens a page: only the address rule applies.
        // The JSON it fetches is checked like every other endpoint.
        let access = if status::is_page(request.method(), request.uri().path()) {
            self.access.check_address(peer)
        } else {
            self.access.check(peer, request.headers())
        };
        if let Err(refusal) = access {
            let error = match refusal {
                Refusal::Address(addr) => AdminError::new(
                    StatusCode::FORBIDDEN,
                    format!("the admin API is not open to {addr} (see --admin-allow)"),
                ),
                Refusal::Token => AdminError::new(
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs `Authorization: Bearer <token>` (see --admin-token)",
                ),
            };
            tracing::warn!(%peer, path = request.uri().path(), "admin request refused");
            return error.into_response();
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let writes = method == Method::PUT || method == Method::DELETE;
        let _writing = if writes {
            match Arc::clone(&self.write_gate).try_read_owned() {
                Ok(writing) => Some(writing),
                Err(_) => {
                    let error = AdminError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a new elb is taking over from this one: retry the write in a moment \
                         (the new elb takes it)",
                    );
                    tracing::warn!(%peer, %method, path, "admin write refused during a takeover");
                    return error.into_response();
                }
            }
        } else {
            None
        };
        let mut result = self.route(request).await;
        if writes
            && result.is_ok()
            && let Err(error) = self.await_dataplane().await
        {
            result = Err(error);
        }
        match result {
            // The status page polls every few seconds: not worth a line each.
            Ok(response) if method == Method::GET && path.starts_with(status::PAGE_PATH) => {
                tracing::debug!(%peer, %method, path, status = response.status().as_u16(), "admin request");
                response
            }
            Ok(response) => {
                tracing::info!(%peer, %method, path, status = response.status().as_u16(), "admin request");
                response
            }
            Err(error) => {
                tracing::warn!(%peer, %method, path, status = error.status.as_u16(), error = error.message, "admin request failed");
                error.into_response()
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> AdminResult {
        let path = request.uri().path().to_owned();
        let endpoint = path
            .strip_prefix(PREFIX)
            .unwrap_or_default()
            .trim_end_matches('/');
        let method = request.method().clone();
        let config = &self.config;
        match (endpoint, &method) {
            ("domain", &Method::GET) => domain::get(config).await,
            ("domain", &Method::PUT) => domain::put(config, self.json_body(request).await?).await,
            ("domain", &Method::DELETE) => {
                domain::delete(config, self.json_body(request).await?).await
            }
            ("domain", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("upstream", &Method::GET) => upstream::get(config).await,
            ("upstream", &Method::PUT) => {
                upstream::put(config, self.json_body(request).await?).await
            }
            ("upstream", &Method::DELETE) => {
                upstream::delete(config, self.json_body(request).await?).await
            }
            ("upstream", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("service", &Method::GET) => service::get(config).await,
            ("service", &Method::PUT) => service::put(config, self.json_body(request).await?).await,
            ("service", &Method::DELETE) => {
                service::delete(config, self.json_body(request).await?).await
            }
            ("service", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("listener", &Method::GET) => listener::get(config, self.listener_board.get()).await,
            ("listener", &Method::PUT) => {
                let body = self.json_body(request).await?;
                listener::put(config, self.listener_board.get(), body).await
            }
            ("listener", &Method::DELETE) => {
                let body = self.json_body(request).await?;
                listener::delete(config, self.listener_board.get(), body).await
            }
            ("listener", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("acl", &Method::GET) => acl::get(config).await,
            ("acl", &Method::PUT) => acl::put(config, self.json_body(request).await?).await,
            ("acl", &Method::DELETE) => acl::delete(config, self.json_body(request).await?).await,
            ("acl", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("policy", &Method::GET) => policy::get(config).await,
            ("policy", &Method::PUT) => policy::put(config, self.json_body(request).await?).await,
            ("policy", &Method::DELETE) => {
                policy::delete(config, self.json_body(request).await?).await
            }
            ("policy", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            // Exact paths: the leader report before the documents.
            ("discovery/leader", &Method::GET) => match self.discovery_leader.get() {
                Some(status) => Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(status.report().await).unwrap_or_default(),
                )),
                None => Err(AdminError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the discovery election has not started yet",
                )),
            },
            ("discovery/leader", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            ("discovery", &Method::GET) => discovery::get(config, &self.discovery).await,
            ("discovery", &Method::PUT) => {
                discovery::put(config, self.json_body(request).await?).await
            }
            ("discovery", &Method::DELETE) => {
                discovery::delete(config, self.json_body(request).await?).await
            }
            ("discovery", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("cert", &Method::GET) => cert::get(config).await,
            ("cert", &Method::PUT) => cert::put(config, self.json_body(request).await?).await,
            ("cert", &Method::DELETE) => cert::delete(config, self.json_body(request).await?).await,
            ("cert", _) => Err(AdminError::method_not_allowed(
                &method,
                &path,
                "GET, PUT, DELETE",
            )),
            ("zones", &Method::GET) => policy::get_zones(config).await,
            ("zones", &Method::PUT) => {
                policy::put_zones(config, self.json_body(request).await?).await
            }
            ("zones", _) => Err(AdminError::method_not_allowed(&method, &path, "GET, PUT")),
            ("health", &Method::GET) => policy::health(config).await,
            ("health", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            ("dump", &Method::PUT) => {
                // The body is ignored, but read so the connection stays usable.
                self.body(request).await?;
                dump::put(config).await
            }
            ("dump", _) => Err(AdminError::method_not_allowed(&method, &path, "PUT")),
            ("status", &Method::GET) => Ok(crate::status::page::response()),
            ("status", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            ("status.json", &Method::GET) => Ok(json(StatusCode::OK, &self.status().await)),
            ("status.json", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            ("stats", &Method::GET) => self.stats(),
            ("stats", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            ("metrics", &Method::GET) => match &self.metrics {
                Some(metrics) => {
                    Ok(crate::metrics::http::response(metrics, request.headers()).await)
                }
                None => Err(AdminError::new(
                    StatusCode::NOT_FOUND,
                    "metrics are not collected by this elb",
                )),
            },
            ("metrics", _) => Err(AdminError::method_not_allowed(&method, &path, "GET")),
            _ => Err(AdminError::new(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {path}"),
            )),
        }
    }

    /// `GET /__erulb__/status.json`.
    async fn status(&self) -> Value {
        let l4 = match self.l4_stats.get() {
            Some(source) => source.stats_json().map_err(|e| e.to_string()),
            None => Err("the L4 data plane is still starting".to_owned()),
        };
        let input = status::gather(
            &self.config,
            self.listener_board.get(),
            l4,
            self.started.elapsed(),
        )
        .await;
        crate::status::assemble(&input)
    }

    fn stats(&self) -> AdminResult {
        let source = self.l4_stats.get().ok_or_else(|| {
            AdminError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the L4 data plane is still starting",
            )
        })?;
        let stats = source
            .stats_json()
            .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(json(StatusCode::OK, &stats))
    }

    async fn body(&self, request: Request<Incoming>) -> Result<Bytes, AdminError> {
        match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds {} bytes", self.max_body),
            )),
            Err(err) => Err(AdminError::bad_request(format!(
                "cannot read the request body: {err}"
            ))),
        }
    }

    async fn json_body(&self, request: Request<Incoming>) -> Result<Value, AdminError> {
        let bytes = self.body(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            AdminError::bad_request(format!("the request body is not valid JSON: {e}"))
        })
    }
}

/// 200 with whatever `view` makes of the current state (the GETs).
async fn get_view(
    config: &ConfigService,
    view: impl FnOnce(&crate::config::ConfigManager) -> Value,
) -> AdminResult {
    let body = config.read(view).await;
    Ok(json(StatusCode::OK, &body))
}

/// `{name: document}` for named documents (services, policies).
fn named<'a, T: 'a>(
    items: impl IntoIterator<Item = (&'a String, &'a T)>,
    to_json: impl Fn(&T) -> Value,
) -> Value {
    Value::Object(
        items
            .into_iter()
            .map(|(name, item)| (name.clone(), to_json(item)))
            .collect(),
    )
}

/// `{"msg": "OK"}`, ERU ELB's success body.
fn ok() -> AdminResult {
    Ok(json(StatusCode::OK, &serde_json::json!({ "msg": "OK" })))
}

/// Deletes the stored key of every name that has one, in one transaction;
/// names with no key are ignored (ERU ELB's DELETE of an unknown domain).
async fn delete_existing(
    config: &ConfigService,
    names: &[String],
    key_of: fn(&crate::config::KeyLayout, &str) -> String,
) -> AdminResult {
    config
        .write(|manager| {
            let keys = names.iter().map(|name| key_of(manager.layout(), name));
            Ok((delete_ops(manager, keys), ()))
        })
        .await?;
    ok()
}

/// Deletions of those of `keys` that are stored (unknown names are
/// ignored, as ERU ELB did).
fn delete_ops(
    manager: &crate::config::ConfigManager,
    keys: impl IntoIterator<Item = String>,
) -> Vec<crate::store::KvOp> {
    keys.into_iter()
        .filter(|key| manager.kv().contains_key(key))
        .map(|key| crate::store::KvOp::Delete { key })
        .collect()
}

/// The body as a JSON object, or a 400 naming what was expected.
pub fn expect_object<'v>(
    body: &'v Value,
    what: &str,
) -> Result<&'v serde_json::Map<String, Value>, AdminError> {
    body.as_object()
        .ok_or_else(|| AdminError::bad_request(format!("the body must be a JSON object of {what}")))
}

/// The body as a JSON array of strings, or a 400 naming the bad element.
pub fn expect_string_list(body: &Value, what: &str) -> Result<Vec<String>, AdminError> {
    let items = body.as_array().ok_or_else(|| {
        AdminError::bad_request(format!("the body must be a JSON array of {what}"))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_owned).ok_or_else(|| {
                AdminError::bad_request(format!("element {i} of the body is not a string: {item}"))
            })
        })
        .collect()
}
