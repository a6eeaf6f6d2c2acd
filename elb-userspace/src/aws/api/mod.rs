//! The AWS Classic ELB Query API (`--aws-api ADDR`), signed with SigV4:
//! see the README's "AWS ELB API". Requests are `Action=...&Version=
//! 2012-06-01` as a form body (POST) or a query string (GET); answers are
//! the documented XML, so boto3 and the AWS CLI parse them unchanged.
pub mod actions;
pub mod credentials;
pub mod error;
pub mod model;
pub mod query;
pub mod sigv4;
pub mod xml;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use self::{credentials::Credentials, error::ApiError, query::Params, sigv4::SignedRequest};
use crate::{
    admin::AdminApi,
    config::ConfigService,
    http_util::{Body, full},
    server::ListenerBoard,
    takeover::HandoverSockets,
};

/// The API version every request must name.
pub const VERSION: &str = "2012-06-01";
/// The SigV4 service name of the ELB API.
pub const SERVICE: &str = "elasticloadbalancing";
/// Larger request bodies are refused (a Query API request is small).
const MAX_BODY: usize = 1 << 20;
/// How long a write waits for the listeners it adds to open.
const OPEN_WAIT: Duration = Duration::from_secs(5);

pub struct AwsApi {
    config: Arc<ConfigService>,
    credentials: Credentials,
    ec2: crate::aws::Ec2Client,
    /// The IP load balancers' listeners and L4 services take: the
    /// `--aws-api` address's (its unspecified address stays so).
    bind: IpAddr,
    board: Option<ListenerBoard>,
    /// Its write gate (takeovers) and the L4 data plane's progress, shared
    /// with the admin API's writes.
    admin: Arc<AdminApi>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the AWS ELB API on {addr} (--aws-api)")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

impl AwsApi {
    pub fn new(
        config: Arc<ConfigService>,
        credentials: Credentials,
        ec2: crate::aws::Ec2Client,
        bind: IpAddr,
        board: Option<ListenerBoard>,
        admin: Arc<AdminApi>,
    ) -> Self {
        Self {
            config,
            credentials,
            ec2,
            bind,
            board,
            admin,
        }
    }

    /// Binds `addr` now (a bad address fails the start), or takes the
    /// socket a takeover handed over for it, then serves in the background
    /// (the socket kept for the next takeover while it serves).
    pub async fn listen(
        self: Arc<Self>,
        addr: SocketAddr,
        sockets: &HandoverSockets,
    ) -> Result<SocketAddr, BindError> {
        let (listener, registration) = sockets
            .tcp_listener(addr, "--aws-api")
            .await
            .map_err(|source| BindError { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        tokio::spawn(async move {
            let _handover = registration;
            self.serve(listener).await;
        });
        Ok(local)
    }

    async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an AWS API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let api = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let api = Arc::clone(&api);
                    async move { Ok::<_, std::convert::Infallible>(api.handle(request, peer).await) }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "AWS API connection ended");
                }
            });
        }
    }

    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let request_id = request_id();
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let error = ApiError::validation(format!(
                    "the request body could not be read (at most {MAX_BODY} bytes): {error}"
                ));
                return error_reply(&error, &request_id);
            }
        };
        let (action, result) = self.answer(&parts, &body).await;
        let response = match &result {
            Ok(result_xml) => {
                let text = xml::response(&action, result_xml, &request_id);
                reply(StatusCode::OK, text, &request_id)
            }
            Err(error) => error_reply(error, &request_id),
        };
        match &result {
            Ok(_) => tracing::info!(%peer, action, request_id, "AWS API request"),
            Err(error) => tracing::warn!(
                %peer, action, request_id, code = error.code, status = error.status,
                message = error.message, "AWS API request failed"
            ),
        }
        response
    }

    /// The action's name (for the response element) and its result XML.
    async fn answer(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> (String, Result<String, ApiError>) {
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        // HTTP/1.1 always has Host; keep the signature's view complete.
        if !headers.iter().any(|(name, _)| name == "host")
            && let Some(authority) = parts.uri.authority()
        {
            headers.push(("host".into(), authority.to_string()));
        }
        let query = parts.uri.query().unwrap_or_default();
        let method = parts.method.as_str();
        let signed = SignedRequest {
            method,
            path: parts.uri.path(),
            query,
            headers: &headers,
            body,
        };
        let verified = match sigv4::verify(
            &signed,
            |key| self.credentials.secret(key).map(str::to_owned),
            Some(SERVICE),
            SystemTime::now(),
        ) {
            Ok(verified) => verified,
            Err(error) => {
                let (code, status) = error.code_and_status();
                return (
                    String::new(),
                    Err(ApiError::new(code, status, error.to_string())),
                );
            }
        };
        let mut params = Params::parse(query);
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            params = params.merge(Params::parse(&String::from_utf8_lossy(body)));
        }
        let Some(action) = params.get("Action").map(str::to_owned) else {
            return (
                String::new(),
                Err(ApiError::new("MissingAction", 400, "Missing Action")),
            );
        };
        match params.get("Version") {
            Some(VERSION) => {}
            version => {
                let message = format!(
                    "Could not find operation {action} for version {}",
                    version.unwrap_or("NO_VERSION_SPECIFIED")
                );
                return (action, Err(ApiError::new("InvalidAction", 400, message)));
            }
        }
        let ctx = actions::Context {
            config: &self.config,
            ec2: &self.ec2,
            bind: self.bind,
            region: &verified.region,
        };
        // Writes hold the admin API's write gate: during a takeover they
        // are refused (the new elb has read the state already) rather than
        // lost.
        let writes = !action.starts_with("Describe");
        let _writing = if writes {
            match Arc::clone(&self.admin.write_gate()).try_read_owned() {
                Ok(writing) => Some(writing),
                Err(_) => {
                    let error = ApiError::new(
                        "ServiceUnavailable",
                        503,
                        "a new elb is taking over from this one: retry in a moment",
                    );
                    return (action, Err(error));
                }
            }
        } else {
            None
        };
        let mut result = actions::dispatch(&ctx, &action, &params).await;
        if writes && result.is_ok() {
            self.await_listeners().await;
            // A new TCP listener is an L4 service: answer once it forwards.
            if let Err(error) = self.admin.await_dataplane().await {
                result = Err(ApiError::internal(error.message()));
            }
        }
        (action, result)
    }

    /// After a write: waits until the server has acted on it, so a client
    /// may connect to a new listener right after the answer.
    async fn await_listeners(&self) {
        if let Some(board) = &self.board {
            let wanted = *self.config.subscribe().borrow();
            if !board.wait_applied(wanted, OPEN_WAIT).await {
                tracing::warn!("the listeners of an AWS API change were not opened within 5 s");
            }
        }
    }
}

fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
            .collect()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

fn reply(status: StatusCode, text: String, request_id: &str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

fn error_reply(error: &ApiError, request_id: &str) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    reply(status, xml::error_response(error, request_id), request_id)
}
