//! EC2 `DescribeInstances` by instance IDs, over EC2's Query API.
//!
//! This is the one EC2 call elb makes, so elb speaks its protocol rather
//! than going through the generated SDK crate (`aws-sdk-ec2`): building
//! that crate took 363 of a debug build's 710 seconds and 179 of clippy's
//! 307 on a 2-core machine, on the critical path of both. What is easy to
//! get wrong stays in AWS's crates: credentials, region, endpoint, retry
//! and timeout settings from `aws-config`'s chain (as the SDK's clients
//! read them), SigV4 from `aws-sigv4`, XML from `aws-smithy-xml`.
mod query;

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

pub use query::ErrorAnswer;

use super::AwsError;

/// One EC2 instance as elb needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub instance_id: String,
    /// The primary private IPv4 address; `None` only for an instance that
    /// has none (terminated).
    pub private_ip: Option<IpAddr>,
    /// The first IPv6 address of the primary interface, where configured.
    pub ipv6: Option<Ipv6Addr>,
    /// The availability zone (`us-east-1a`).
    pub zone: Option<String>,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`,
    /// `terminated`.
    pub state: String,
}

/// EC2's side of [`super::AwsClients`].
#[derive(Clone)]
pub struct Ec2Client {
    credentials: Option<SharedCredentialsProvider>,
    region: Option<String>,
    /// The endpoint, or why there is none (no region, FIPS or dual stack
    /// asked for, which elb does not resolve): said on every call.
    endpoint: Result<String, String>,
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// Per attempt, and for the whole call (the SDK's two timeouts).
    attempt_timeout: Option<Duration>,
    call_timeout: Option<Duration>,
    /// The HTTPS client, or why there is none (said on every call).
    http: Result<HttpsClient, String>,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl std::fmt::Debug for Ec2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Client")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why a call failed, kept as the source of [`AwsError`].
#[derive(Debug, thiserror::Error)]
pub enum Ec2CallError {
    #[error("EC2 answered {status}: {} ({}){}", .answer.code, .answer.message,
        .answer.request_id.as_deref().map(|id| format!(", request {id}")).unwrap_or_default())]
    Service { status: u16, answer: ErrorAnswer },
    #[error("EC2 answered {status} without an error document: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Setup(String),
    #[error("credentials: {0}")]
    Credentials(#[source] aws_credential_types::provider::error::CredentialsError),
    #[error("signing the request: {0}")]
    Signing(String),
    #[error("sending the request to {endpoint}: {source}")]
    Send {
        endpoint: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer: {0}")]
    Read(#[source] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl Ec2Client {
    /// The client the SDK would build from `config`, for this one call.
    pub fn new(config: &SdkConfig) -> Self {
        let region = config.region().map(|r| r.as_ref().to_owned());
        let endpoint = endpoint(config, region.as_deref());
        let retry = config.retry_config();
        let timeouts = config.timeout_config();
        Self {
            credentials: config.credentials_provider(),
            region,
            endpoint,
            attempts: retry.map_or(3, |r| r.max_attempts()).max(1),
            initial_backoff: retry.map_or(Duration::from_secs(1), |r| r.initial_backoff()),
            max_backoff: retry.map_or(Duration::from_secs(20), |r| r.max_backoff()),
            attempt_timeout: timeouts.and_then(|t| t.operation_attempt_timeout()),
            call_timeout: timeouts.and_then(|t| t.operation_timeout()),
            http: https_client(timeouts.and_then(|t| t.connect_timeout())),
        }
    }

    /// One signed call with the SDK's retries: throttling, the service's
    /// own failures, timeouts, and connections that failed or broke off
    /// are tried again.
    async fn call(&self, body: String) -> Result<Bytes, Ec2CallError> {
        let attempts = async {
            let mut attempt = 1;
            loop {
                let result = match self.attempt_timeout {
                    Some(limit) => tokio::time::timeout(limit, self.attempt(&body))
                        .await
                        .unwrap_or(Err(Ec2CallError::Timeout(limit))),
                    None => self.attempt(&body).await,
                };
                let again = match &result {
                    Err(Ec2CallError::Service { status, answer }) => {
                        query::retryable(*status, Some(&answer.code))
                    }
                    Err(Ec2CallError::Status { status, .. }) => query::retryable(*status, None),
                    Err(
                        Ec2CallError::Send { .. }
                        | Ec2CallError::Read(_)
                        | Ec2CallError::Timeout(_),
                    ) => true,
                    _ => false,
                };
                if !again || attempt >= self.attempts {
                    return result;
                }
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
            }
        };
        match self.call_timeout {
            Some(limit) => tokio::time::timeout(limit, attempts)
                .await
                .unwrap_or(Err(Ec2CallError::Timeout(limit))),
            None => attempts.await,
        }
    }

    /// The SDK's exponential backoff with jitter: a random share of
    /// `initial × 2^(attempt − 1)`, at most `max_backoff`.
    fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::doubling(self.initial_backoff, self.max_backoff, attempt)
            .mul_f64(fastrand::f64())
    }

    async fn attempt(&self, body: &str) -> Result<Bytes, Ec2CallError> {
        let endpoint = self
            .endpoint
            .as_deref()
            .map_err(|why| Ec2CallError::Setup(why.clone()))?;
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| Ec2CallError::Setup("no credentials provider configured".into()))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(Ec2CallError::Credentials)?;
        let region = self
            .region
            .as_deref()
            .ok_or_else(|| Ec2CallError::Setup("no region configured".into()))?;
        let uri = format!("{}/", endpoint.trim_end_matches('/'));
        let mut request = http::Request::post(&uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| Ec2CallError::Setup(format!("endpoint {endpoint:?}: {e}")))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Ec2CallError::Signing(e.to_string()))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable =
            SignableRequest::new("POST", &uri, headers, SignableBody::Bytes(body.as_bytes()))
                .map_err(|e| Ec2CallError::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Ec2CallError::Signing(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);

        let http = self
            .http
            .as_ref()
            .map_err(|why| Ec2CallError::Setup(why.clone()))?;
        let answer = http
            .request(request)
            .await
            .map_err(|source| Ec2CallError::Send {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let status = answer.status().as_u16();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(Ec2CallError::Read)?
            .to_bytes();
        if status == 200 {
            return Ok(body);
        }
        Err(match query::parse_error(&body) {
            Some(answer) => Ec2CallError::Service { status, answer },
            None => Ec2CallError::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            },
        })
    }
}

/// HTTPS (HTTP/1.1, rustls on ring, the system's CAs), or plain HTTP for
/// an `http://` endpoint (moto in the tests).
fn https_client(connect_timeout: Option<Duration>) -> Result<HttpsClient, String> {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(connect_timeout);
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no TLS client: {e}"))?
        .with_root_certificates(crate::tls::client::system_roots(
            "the EC2 client",
            "HTTPS endpoints of EC2",
        ))
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The endpoint as the SDK's clients resolve it: the client-level
/// endpoint, else `AWS_ENDPOINT_URL_EC2` or the profile's `ec2` service
/// section, else `AWS_ENDPOINT_URL`, else the regional endpoint.
fn endpoint(config: &SdkConfig, region: Option<&str>) -> Result<String, String> {
    let configured = if config.get_origin("endpoint_url").is_client_config() {
        config.endpoint_url().map(str::to_owned)
    } else {
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("EC2")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .map_err(|e| e.to_string())?;
        config
            .service_config()
            .and_then(|conf| conf.load_config(key))
            .or_else(|| config.endpoint_url().map(str::to_owned))
    };
    if let Some(url) = configured {
        return Ok(url);
    }
    if config.use_fips() == Some(true) || config.use_dual_stack() == Some(true) {
        return Err(
            "FIPS and dual-stack EC2 endpoints are not resolved by elb: set AWS_ENDPOINT_URL_EC2"
                .into(),
        );
    }
    region
        .map(query::regional_endpoint)
        .ok_or_else(|| "no region configured (AWS_REGION, a profile, or --region)".into())
}

/// Describes exactly the instances `ids` (in EC2's order). An empty `ids`
/// asks nothing and returns nothing (EC2 would list every instance).
/// Unknown or malformed IDs give [`AwsError::UnknownInstances`].
pub async fn describe_instances(
    ec2: &Ec2Client,
    ids: &[String],
) -> Result<Vec<Ec2Instance>, AwsError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut instances = Vec::with_capacity(ids.len());
    let mut next_token: Option<String> = None;
    loop {
        let body = ec2
            .call(query::request_body(ids, next_token.as_deref()))
            .await
            .map_err(|err| match &err {
                Ec2CallError::Service { answer, .. }
                    if answer.code.starts_with("InvalidInstanceID") =>
                {
                    AwsError::UnknownInstances {
                        ids: ids.join(", "),
                        message: err.to_string(),
                        source: Box::new(err),
                    }
                }
                _ => AwsError::Call {
                    service: "EC2",
                    operation: "DescribeInstances",
                    message: err.to_string(),
                    source: Box::new(err),
                },
            })?;
        let page = query::parse_page(&body).map_err(|message| AwsError::BadAnswer {
            service: "EC2",
            operation: "DescribeInstances",
            message,
        })?;
        instances.extend(page.instances);
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => break,
        }
    }
    Ok(instances)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_config::{Region, retry::RetryConfig};
    use aws_credential_types::Credentials;
    use hyper::{body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    use super::*;

    const ANSWER: &str = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
        <instanceId>i-1</instanceId><privateIpAddress>10.0.0.1</privateIpAddress>\
        </item></instancesSet></item></reservationSet>NEXT</DescribeInstancesResponse>";

    fn error(code: &str) -> String {
        format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>no</Message></Error></Errors>\
             <RequestID>r-1</RequestID></Response>"
        )
    }

    /// A loopback EC2 stand-in answering with `script` in order; returns the
    /// client pointed at it and what each request carried (authorization
    /// header and body).
    async fn stand_in(
        script: Vec<(u16, String)>,
    ) -> (Ec2Client, Arc<Mutex<Vec<(String, String)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let (seen_by_server, script_of_server) = (seen.clone(), script.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, script) = (seen_by_server.clone(), script_of_server.clone());
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let (seen, script) = (seen.clone(), script.clone());
                    async move {
                        let auth = request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        seen.lock()
                            .expect("lock")
                            .push((auth, String::from_utf8_lossy(&body).into_owned()));
                        let (status, text) = script.lock().expect("lock").next().expect("script");
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(text)))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        let config = SdkConfig::builder()
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .endpoint_url(format!("http://{addr}"))
            .retry_config(RetryConfig::standard().with_initial_backoff(Duration::from_millis(1)))
            .build();
        (Ec2Client::new(&config), seen)
    }

    #[tokio::test]
    async fn throttling_is_tried_again_and_pages_are_followed() {
        let (client, seen) = stand_in(vec![
            (503, error("RequestLimitExceeded")),
            (200, ANSWER.replace("NEXT", "<nextToken>t+2</nextToken>")),
            (200, ANSWER.replace("NEXT", "")),
        ])
        .await;
        let ids = vec!["i-1".to_owned()];
        let found = describe_instances(&client, &ids).await.expect("described");
        assert_eq!(found.len(), 2, "one instance per page: {found:?}");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for (auth, _) in &seen {
            assert!(
                auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                    && auth.contains("/us-east-1/ec2/aws4_request"),
                "{auth}"
            );
        }
        let first = "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1";
        assert_eq!(seen[1].1, first);
        assert_eq!(seen[2].1, format!("{first}&NextToken=t%2B2"));
    }

    #[tokio::test]
    async fn unknown_ids_fail_at_once_and_other_errors_say_what_ec2_said() {
        let (client, seen) = stand_in(vec![
            (400, error("InvalidInstanceID.Malformed")),
            (403, error("AuthFailure")),
            (500, "not XML".to_owned()),
            (500, "not XML".to_owned()),
            (500, "not XML".to_owned()),
        ])
        .await;
        let ids = vec!["i-x".to_owned()];
        let err = describe_instances(&client, &ids)
            .await
            .expect_err("unknown");
        assert!(matches!(err, AwsError::UnknownInstances { .. }), "{err}");
        let err = describe_instances(&client, &ids).await.expect_err("auth");
        assert!(
            err.to_string()
                .contains("EC2 answered 403: AuthFailure (no), request r-1"),
            "{err}"
        );
        let err = describe_instances(&client, &ids).await.expect_err("500");
        assert!(
            err.to_string()
                .contains("500 without an error document: not XML"),
            "{err}"
        );
        // One try each for the first two, the standard three for the last.
        assert_eq!(seen.lock().expect("lock").len(), 5);
    }
}
