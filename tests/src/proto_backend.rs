//! Upstream servers that speak TLS and/or HTTP/2, for the `tls` and `h2`
//! server parameters: hyper behind tokio-rustls (certificates from
//! [`crate::pki`]). Each answers with JSON naming itself, the HTTP version
//! it got, the SNI name of the handshake, the path and headers; `/health`
//! answers 200; `/trailers` answers a body then the trailers
//! `grpc-status: 0` and `grpc-message: fine` (as a gRPC server ends a call). It counts accepted connections (h2 multiplexing shows as
//! few of them).
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    runtime::Runtime,
};
use tokio_rustls::TlsAcceptor;

/// What a [`ProtoBackend`] speaks.
#[derive(Clone, Debug, Default)]
pub struct Proto {
    /// `(certificate chain PEM, key PEM)`: serve TLS with it.
    pub tls: Option<(String, String)>,
    /// HTTP/2 only (prior knowledge on plaintext, ALPN `h2` over TLS);
    /// otherwise HTTP/1.1 only (ALPN `http/1.1`).
    pub h2: bool,
    /// TLS without ALPN: the server chooses no protocol, whatever is offered.
    pub no_alpn: bool,
    /// Waits this long before each TLS handshake (a slow connection setup,
    /// during which more requests arrive).
    pub handshake_delay: std::time::Duration,
}

pub struct ProtoBackend {
    addr: SocketAddr,
    runtime: Option<Runtime>,
    connections: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

#[derive(Clone)]
struct State {
    name: String,
    hits: Arc<AtomicU64>,
}

impl ProtoBackend {
    pub fn start(name: &str, proto: Proto) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let acceptor = match &proto.tls {
            Some((cert, key)) => Some(acceptor(cert, key, &proto)?),
            None => None,
        };
        let connections = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let state = State {
            name: name.to_owned(),
            hits: Arc::clone(&hits),
        };
        let (counted, names) = (Arc::clone(&connections), Arc::clone(&sni));
        let (h2, handshake_delay) = (proto.h2, proto.handshake_delay);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let (state, acceptor, names) = (state.clone(), acceptor.clone(), names.clone());
                tokio::spawn(async move {
                    let Some(acceptor) = acceptor else {
                        serve(stream, state, None, h2).await;
                        return;
                    };
                    tokio::time::sleep(handshake_delay).await;
                    // A refused handshake (elb did not trust us) just ends.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let sni = stream.get_ref().1.server_name().map(str::to_owned);
                        if let Ok(mut names) = names.lock() {
                            names.push(sni.clone());
                        }
                        serve(stream, state, sni, h2).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            runtime: Some(runtime),
            connections,
            hits,
            sni,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests answered so far (`/health` included).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The SNI name of each completed TLS handshake (None: no SNI sent).
    pub fn sni_names(&self) -> Vec<Option<String>> {
        self.sni
            .lock()
            .map(|names| names.clone())
            .unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ProtoBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn acceptor(cert: &str, key: &str, proto: &Proto) -> Result<TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("backend certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).context("backend key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = match (proto.no_alpn, proto.h2) {
        (true, _) => Vec::new(),
        (false, true) => vec![b"h2".to_vec()],
        (false, false) => vec![b"http/1.1".to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve<S>(stream: S, state: State, sni: Option<String>, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let (state, sni) = (state.clone(), sni.clone());
        async move { Ok::<_, Infallible>(respond(request, &state, sni.as_deref()).await) }
    });
    let io = TokioIo::new(stream);
    if h2 {
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = http1::Builder::new().serve_connection(io, service).await;
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

async fn respond(request: Request<Incoming>, state: &State, sni: Option<&str>) -> Reply {
    state.hits.fetch_add(1, Ordering::Relaxed);
    if request.uri().path() == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"health\n")).boxed());
    }
    if request.uri().path() == "/trailers" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        trailers.insert(
            "grpc-message",
            hyper::header::HeaderValue::from_static("fine"),
        );
        let body = Full::new(Bytes::from_static(b"payload"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        return Response::new(body);
    }
    // `?delay_ms=N`: holds the answer (concurrent requests in flight).
    if let Some(ms) = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "server": state.name,
        "version": format!("{:?}", request.version()),
        "sni": sni,
        "uri": request.uri().to_string(),
        "headers": headers,
    });
    // Read the body, so a request with one completes.
    let _ = request.into_body().collect().await;
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
