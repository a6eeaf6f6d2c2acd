//! A real gRPC server and client for tests (tonic over HTTP/2).
//!
//! Two services: `elbtest.Echo` with a unary, a server-streaming and a
//! bidirectional-streaming call, and `elbtest.Mirror` (unary only), so a
//! routing table can send each service to its own upstream. The messages are
//! prost structs written here and the stubs come from build.rs
//! (`tonic_build::manual`): no `.proto` file, no `protoc`.
//!
//! The server records what it received, fails a call on request with a chosen
//! status, details and trailing metadata ([`failure_for`]), honours the
//! client's `grpc-timeout` by answering DEADLINE_EXCEEDED as gRPC servers do,
//! and counts unary calls whose stream was reset before they finished.
//! tonic's own `transport::Server` would race that DEADLINE_EXCEEDED with its
//! timeout layer, which answers CANCELLED, so the tonic services are served by
//! hyper's HTTP/2 server here (what `transport::Server` uses inside).
//!
//! A tonic `Channel` enforces `grpc-timeout` on its side too, until the
//! response headers arrive: a unary call past its deadline ends at the client
//! as CANCELLED ("Timeout expired") before the server's answer can come. A
//! server-streaming call has its headers early, so the server's
//! DEADLINE_EXCEEDED reaches the client in the trailers.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, runtime::Runtime, sync::mpsc, time::Instant};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{
    Code, Request, Response, Status, Streaming,
    metadata::{MetadataMap, MetadataValue},
    service::Routes,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// The generated stubs: `echo_client::EchoClient`, `echo_server::Echo`,
/// `mirror_client::MirrorClient`, `mirror_server::Mirror`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/elbtest.Echo.rs"));
    include!(concat!(env!("OUT_DIR"), "/elbtest.Mirror.rs"));
}

use proto::{
    echo_server::{Echo, EchoServer},
    mirror_server::{Mirror, MirrorServer},
};

/// The request of every call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    /// `Count`: how many replies to stream.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// How long the call works (unary: before its answer; `Count`: after its
    /// replies), within its deadline.
    #[prost(uint64, tag = "3")]
    pub sleep_ms: u64,
    /// Non-zero: fail with this gRPC status code (`Count`: after its
    /// replies, so the status travels in real HTTP/2 trailers).
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    #[prost(string, tag = "5")]
    pub fail_message: String,
}

/// The reply of every call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    /// The reply's position in its stream (0 for unary calls).
    #[prost(uint32, tag = "2")]
    pub seq: u32,
    /// The answering server's name: which upstream served the call.
    #[prost(string, tag = "3")]
    pub server: String,
}

/// Trailing metadata every failure carries (ASCII and binary).
pub const TRAILER: &str = "x-elb-test-trailer";
pub const TRAILER_BIN: &str = "x-elb-test-trailer-bin";

/// The status a call asked to fail with (`fail_code`, `fail_message`), with
/// details and trailing metadata derived from its text: the server sends it
/// and a test compares what arrived with it.
pub fn failure_for(request: &EchoRequest) -> Status {
    let mut metadata = MetadataMap::new();
    let ascii = format!("trailer for {}", request.text);
    if let Ok(value) = ascii.parse() {
        metadata.insert(TRAILER, value);
    }
    // Bytes no header value may carry as they are: base64 on the wire.
    let mut binary = vec![0u8, 0xff, b'\n', 0x80];
    binary.extend_from_slice(request.text.as_bytes());
    metadata.insert_bin(TRAILER_BIN, MetadataValue::from_bytes(&binary));
    let details = format!("details of {}\0\u{1}", request.text).into_bytes();
    Status::with_details_and_metadata(
        Code::from_i32(request.fail_code),
        request.fail_message.clone(),
        details.into(),
        metadata,
    )
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u,
/// n), as the gRPC over HTTP/2 protocol defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Which service a [`GrpcServer`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Echo,
    Mirror,
}

/// One call the server received.
#[derive(Clone, Debug)]
pub struct Call {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request metadata (HTTP/2 headers) whose values are ASCII.
    pub metadata: BTreeMap<String, String>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    calls: Mutex<Vec<Call>>,
    /// Request messages, over all calls.
    messages: AtomicU64,
    connections: AtomicU64,
    /// Unary calls dropped before they finished.
    cancelled: AtomicU64,
}

#[derive(Clone)]
struct Handler {
    name: Arc<str>,
    received: Arc<Received>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

impl Handler {
    fn record(&self, path: &str, metadata: &MetadataMap) {
        let metadata = metadata
            .clone()
            .into_headers()
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let call = Call {
            path: path.to_owned(),
            metadata,
        };
        self.received
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    fn reply(&self, text: String, seq: u32) -> EchoReply {
        EchoReply {
            text,
            seq,
            server: self.name.to_string(),
        }
    }

    async fn unary(
        &self,
        path: &str,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.record(path, request.metadata());
        self.received.messages.fetch_add(1, Ordering::Relaxed);
        let deadline = deadline_of(request.metadata());
        let message = request.into_inner();
        // Counts the call as cancelled if its future is dropped before the
        // end: the client (or a proxy on the way) reset the stream.
        let mut in_flight = InFlight(Some(Arc::clone(&self.received)));
        if message.sleep_ms > 0 {
            let work = tokio::time::sleep(Duration::from_millis(message.sleep_ms));
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout(deadline, work).await.is_err() {
                        in_flight.0 = None;
                        return Err(past_deadline(message.sleep_ms, deadline));
                    }
                }
                None => work.await,
            }
        }
        in_flight.0 = None;
        if message.fail_code != 0 {
            return Err(failure_for(&message));
        }
        Ok(Response::new(self.reply(message.text, 0)))
    }
}

/// Counts a unary call dropped before it finished (see [`GrpcServer::cancelled`]).
struct InFlight(Option<Arc<Received>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(received) = self.0.take() {
            received.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The call's deadline from its `grpc-timeout`, if it has one.
fn deadline_of(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

fn past_deadline(sleep_ms: u64, deadline: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the call needed {sleep_ms} ms, past its {deadline:?} deadline"
    ))
}

#[tonic::async_trait]
impl Echo for Handler {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Handler::unary(self, "/elbtest.Echo/Unary", request).await
    }

    type CountStream = ReplyStream;

    /// Streams `count` replies, then waits `sleep_ms` within the call's
    /// deadline (past it: DEADLINE_EXCEEDED, in the trailers after the
    /// replies), then ends with OK or the requested failure.
    async fn count(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        self.record("/elbtest.Echo/Count", request.metadata());
        self.received.messages.fetch_add(1, Ordering::Relaxed);
        let deadline = deadline_of(request.metadata()).map(|d| (d, Instant::now() + d));
        let message = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let handler = self.clone();
        tokio::spawn(async move {
            for seq in 0..message.count {
                let reply = handler.reply(format!("{} #{seq}", message.text), seq);
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            if message.sleep_ms > 0 {
                let work = tokio::time::sleep(Duration::from_millis(message.sleep_ms));
                if let Some((timeout, at)) = deadline {
                    if tokio::time::timeout_at(at, work).await.is_err() {
                        let status = past_deadline(message.sleep_ms, timeout);
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                } else {
                    work.await;
                }
            }
            if message.fail_code != 0 {
                let _ = tx.send(Err(failure_for(&message))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ChatStream = ReplyStream;

    /// Echoes each message as it arrives, so a client can wait for each
    /// answer before it sends the next (nothing may be buffered on the way).
    async fn chat(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.record("/elbtest.Echo/Chat", request.metadata());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let handler = self.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while let Some(item) = inbound.next().await {
                let answer = match item {
                    Ok(message) => {
                        handler.received.messages.fetch_add(1, Ordering::Relaxed);
                        if message.fail_code != 0 {
                            let _ = tx.send(Err(failure_for(&message))).await;
                            return;
                        }
                        Ok(handler.reply(message.text, seq))
                    }
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
                seq += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Mirror for Handler {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Handler::unary(self, "/elbtest.Mirror/Unary", request).await
    }
}

/// A gRPC server on a loopback port, speaking HTTP/2 with prior knowledge
/// (h2c) or over TLS. Dropping it closes the listener and every connection.
pub struct GrpcServer {
    name: String,
    addr: SocketAddr,
    runtime: Option<Runtime>,
    received: Arc<Received>,
}

impl GrpcServer {
    pub fn start(name: &str, service: Service) -> Result<Self> {
        Self::start_with(name, service, None)
    }

    /// [`GrpcServer::start`] over TLS with this PEM certificate chain and
    /// key, offering ALPN `h2` only (as gRPC servers do).
    pub fn start_tls(name: &str, service: Service, cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(name, service, Some(tls_acceptor(cert_pem, key_pem)?))
    }

    fn start_with(name: &str, service: Service, tls: Option<TlsAcceptor>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("bind the gRPC server")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received::default());
        let handler = Handler {
            name: name.into(),
            received: Arc::clone(&received),
        };
        let routes = match service {
            Service::Echo => Routes::new(EchoServer::new(handler)),
            Service::Mirror => Routes::new(MirrorServer::new(handler)),
        };
        let counters = Arc::clone(&received);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let service = TowerToHyperService::new(routes.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => http2.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http2.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Ok(Self {
            name: name.to_owned(),
            addr,
            runtime: Some(runtime),
            received,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call received so far, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        self.received
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Request messages received so far, over all calls.
    pub fn messages(&self) -> u64 {
        self.received.messages.load(Ordering::Relaxed)
    }

    /// Unary calls whose stream was reset before they finished (the
    /// server dropped their work).
    pub fn cancelled(&self) -> u64 {
        self.received.cancelled.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.received.connections.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the gRPC server's certificate PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the gRPC server's key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client channel to `addr` over h2c (HTTP/2 with prior knowledge), with
/// `authority` as the `:authority` of its calls (the Host elb routes by).
pub async fn channel_h2c(addr: SocketAddr, authority: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .origin(format!("http://{authority}").parse()?)
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .with_context(|| format!("gRPC h2c connection to {addr}"))
}

/// A client channel to `addr` over TLS (ALPN h2), with `authority` as the
/// SNI name and `:authority`, trusting the CA `ca_pem`.
pub async fn channel_tls(addr: SocketAddr, authority: &str, ca_pem: &str) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(authority);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .origin(format!("https://{authority}").parse()?)
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .with_context(|| format!("gRPC TLS connection to {addr} as {authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_by_unit() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "1.5S", "-1S", "10é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
