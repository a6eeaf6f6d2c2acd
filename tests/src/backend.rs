//! Real upstream HTTP servers for tests. Each answers with JSON naming
//! itself and echoing what it received (method, path, headers, body size),
//! can be slowed down or made to fail, echoes bytes after an `Upgrade`, and
//! closes every socket when stopped.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener, runtime::Runtime};

#[derive(Clone, Debug, Default)]
struct Behaviour {
    delay: Duration,
    status: Option<u16>,
    /// `/health` only: its status and delay, so health checks can fail
    /// while traffic still works (and the other way round).
    health_status: Option<u16>,
    health_delay: Duration,
}

pub struct Backend {
    name: String,
    addr: SocketAddr,
    runtime: Option<Runtime>,
    hits: Arc<AtomicU64>,
    health_hits: Arc<AtomicU64>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Backend {
    pub fn start(name: &str) -> Result<Self> {
        Self::start_on(name, "127.0.0.1:0".parse()?)
    }

    pub fn start_on(name: &str, addr: SocketAddr) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let health_hits = Arc::new(AtomicU64::new(0));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let state = State {
            name: name.to_owned(),
            hits: Arc::clone(&hits),
            health_hits: Arc::clone(&health_hits),
            behaviour: Arc::clone(&behaviour),
        };
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(request, &state).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self {
            name: name.to_owned(),
            addr,
            runtime: Some(runtime),
            hits,
            health_hits,
            behaviour,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Waits this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Answers every request with this status.
    pub fn set_status(&self, status: Option<u16>) {
        self.lock().status = status;
    }

    /// Answers `GET /health` with this status (default 200).
    pub fn set_health_status(&self, status: Option<u16>) {
        self.lock().health_status = status;
    }

    /// Waits this long before answering `/health`.
    pub fn set_health_delay(&self, delay: Duration) {
        self.lock().health_delay = delay;
    }

    /// Health checks answered so far.
    pub fn health_hits(&self) -> u64 {
        self.health_hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct State {
    name: String,
    hits: Arc<AtomicU64>,
    health_hits: Arc<AtomicU64>,
    behaviour: Arc<Mutex<Behaviour>>,
}

async fn respond(mut request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let behaviour = state
        .behaviour
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    if request.uri().path() == "/health" {
        state.health_hits.fetch_add(1, Ordering::Relaxed);
        if !behaviour.health_delay.is_zero() {
            tokio::time::sleep(behaviour.health_delay).await;
        }
        return Response::builder()
            .status(behaviour.health_status.unwrap_or(200))
            .body(Full::new(Bytes::from_static(b"health\n")))
            .unwrap_or_default();
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    let name = &state.name;
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    // `?delay_ms=N` slows this one request down (a long request in flight).
    if let Some(ms) = query_delay_ms(request.uri().query()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if request.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
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
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let body_len = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let body = serde_json::json!({
        "server": name, "method": method, "path": path, "headers": headers, "body_len": body_len,
    });
    Response::builder()
        .status(behaviour.status.unwrap_or(200))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn query_delay_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok())
}
