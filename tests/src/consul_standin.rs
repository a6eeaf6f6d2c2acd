//! A Consul **stand-in** for tests: no Consul server is packaged for this
//! machine (Debian, PyPI, npm), so this small real HTTP server on loopback
//! implements the one endpoint elb uses, as Consul documents it:
//!
//! `GET /v1/health/service/<name>` with
//! - `passing` (only instances whose every check is `passing`),
//! - `tag=` (repeatable: every tag must be on the instance),
//! - `dc=` (another datacenter than the stand-in's is a 500, as Consul's
//!   "No path to datacenter"),
//! - blocking queries: `index=N` blocks while the stand-in's index is
//!   `<= N`, up to `wait` (default 5 min, at most 10 min, as Consul);
//!   every answer carries `X-Consul-Index`,
//! - `X-Consul-Token`: when a token is set, any other is a 403 ("ACL not
//!   found"),
//!
//! and answers Consul's JSON: `[{"Node": {..}, "Service": {..}, "Checks": [..]}]`.
//!
//! Controls for tests: register and deregister instances, set a check's
//! status or an instance's tags, fail every request with a status, count
//! requests (in all and per client address) and the ones blocked now. Every change bumps the index and
//! wakes the blocked queries.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, runtime::Runtime, sync::watch};

/// The stand-in's datacenter.
pub const DATACENTER: &str = "dc1";

/// One registered service instance (one node each).
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub node: String,
    pub node_address: IpAddr,
    /// None: the service has no address of its own (Consul then means the
    /// node's).
    pub address: Option<IpAddr>,
    pub port: u16,
    pub tags: Vec<String>,
    pub weight_passing: Option<u32>,
    /// The service check's status: `passing`, `warning` or `critical`.
    pub status: String,
}

impl Instance {
    /// An instance of `service` at `addr` (as the service address), passing.
    pub fn new(id: &str, service: &str, addr: SocketAddr) -> Self {
        Self {
            id: id.to_owned(),
            service: service.to_owned(),
            node: format!("node-{id}"),
            node_address: addr.ip(),
            address: Some(addr.ip()),
            port: addr.port(),
            tags: Vec::new(),
            weight_passing: None,
            status: "passing".to_owned(),
        }
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    pub fn weight(mut self, passing: u32) -> Self {
        self.weight_passing = Some(passing);
        self
    }

    pub fn status(mut self, status: &str) -> Self {
        self.status = status.to_owned();
        self
    }

    /// The address only on the node (the service's `Address` is empty).
    pub fn node_address_only(mut self) -> Self {
        self.address = None;
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "Node": {
                "ID": format!("00000000-0000-0000-0000-{:012}", self.node.len()),
                "Node": self.node,
                "Address": self.node_address.to_string(),
                "Datacenter": DATACENTER,
                "TaggedAddresses": {"lan": self.node_address.to_string()},
                "Meta": {},
                "CreateIndex": 1,
                "ModifyIndex": 1
            },
            "Service": {
                "ID": self.id,
                "Service": self.service,
                "Tags": self.tags,
                "Address": self.address.map(|a| a.to_string()).unwrap_or_default(),
                "Meta": {},
                "Port": self.port,
                "Weights": {"Passing": self.weight_passing.unwrap_or(1), "Warning": 1},
                "EnableTagOverride": false,
                "CreateIndex": 1,
                "ModifyIndex": 1
            },
            "Checks": [
                {"Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                 "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                 "ServiceID": "", "ServiceName": "", "ServiceTags": []},
                {"Node": self.node, "CheckID": format!("service:{}", self.id),
                 "Name": format!("Service '{}' check", self.service), "Status": self.status,
                 "Notes": "", "Output": "", "ServiceID": self.id, "ServiceName": self.service,
                 "ServiceTags": self.tags}
            ]
        })
    }

    fn passing(&self) -> bool {
        self.status == "passing"
    }
}

#[derive(Default)]
struct State {
    index: u64,
    instances: BTreeMap<String, Instance>,
    fail: Option<u16>,
    token: Option<String>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    /// Bumped on every change (and on `fail`): wakes blocked queries.
    changes: Arc<watch::Sender<u64>>,
    requests: Arc<AtomicU64>,
    blocked: Arc<AtomicU64>,
    /// Requests per client address (the connection's peer).
    by_peer: Arc<Mutex<BTreeMap<SocketAddr, u64>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        let index = {
            let mut state = self.lock();
            f(&mut state);
            state.index += 1;
            state.index
        };
        self.changes.send_replace(index);
    }
}

/// The running stand-in; stops when dropped.
pub struct ConsulStandin {
    addr: SocketAddr,
    shared: Shared,
    runtime: Option<Runtime>,
}

impl ConsulStandin {
    /// Listens on `127.0.0.1:<free port>`; the index starts at 10.
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            state: Arc::new(Mutex::new(State {
                index: 10,
                ..State::default()
            })),
            changes: Arc::new(watch::Sender::new(10)),
            requests: Arc::default(),
            blocked: Arc::default(),
            by_peer: Arc::default(),
        };
        let serving = shared.clone();
        runtime.spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        *shared
                            .by_peer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(peer)
                            .or_default() += 1;
                        async move { Ok::<_, Infallible>(respond(request, &shared).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current `X-Consul-Index`.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Adds or replaces an instance (by id).
    pub fn register(&self, instance: Instance) {
        self.shared.change(|state| {
            state.instances.insert(instance.id.clone(), instance);
        });
    }

    /// Several changes as one (one index bump, one wake-up).
    pub fn replace_all(&self, instances: Vec<Instance>) {
        self.shared.change(|state| {
            state.instances = instances.into_iter().map(|i| (i.id.clone(), i)).collect();
        });
    }

    pub fn deregister(&self, id: &str) {
        self.shared.change(|state| {
            state.instances.remove(id);
        });
    }

    /// The service check's status: `passing`, `warning`, `critical`.
    pub fn set_status(&self, id: &str, status: &str) {
        self.shared.change(|state| {
            if let Some(instance) = state.instances.get_mut(id) {
                instance.status = status.to_owned();
            }
        });
    }

    pub fn set_tags(&self, id: &str, tags: &[&str]) {
        self.shared.change(|state| {
            if let Some(instance) = state.instances.get_mut(id) {
                instance.tags = tags.iter().map(|t| (*t).to_owned()).collect();
            }
        });
    }

    /// Answers every request with this status (None: serve again). Wakes
    /// the blocked queries, which then answer it.
    pub fn set_fail(&self, status: Option<u16>) {
        self.shared.change(|state| state.fail = status);
    }

    /// Requires `X-Consul-Token: token` (None: no ACLs).
    pub fn set_token(&self, token: Option<&str>) {
        self.shared
            .change(|state| state.token = token.map(str::to_owned));
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests received so far per client address (`IP:port` of the
    /// connection they came on).
    pub fn requests_by_peer(&self) -> BTreeMap<SocketAddr, u64> {
        self.shared
            .by_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocking queries waiting right now.
    pub fn blocked(&self) -> u64 {
        self.shared.blocked.load(Ordering::Relaxed)
    }

    /// Stops serving: the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ConsulStandin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(status: u16, index: Option<u64>, body: String) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    if let Some(index) = index {
        builder = builder
            .header("Content-Type", "application/json")
            .header("X-Consul-Index", index.to_string())
            .header("X-Consul-Knownleader", "true")
            .header("X-Consul-Lastcontact", "0");
    } else {
        builder = builder.header("Content-Type", "text/plain; charset=utf-8");
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Consul's `wait`: `10s`, `100ms`, `5m`; default 5 min, at most 10 min.
fn parse_wait(text: Option<&str>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(300);
    let Some(text) = text else { return DEFAULT };
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse().ok().map(Duration::from_secs)
    } else if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60))
    } else {
        None
    };
    parsed.unwrap_or(DEFAULT).min(Duration::from_secs(600))
}

/// Percent-decoding of one query value (`%20`, `+` left alone as Consul).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path().to_owned();
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return reply(404, None, format!("stand-in: no endpoint {path}"));
    };
    let service = decode(service);
    let mut passing = false;
    let mut tags = Vec::new();
    let mut dc = None;
    let mut index = 0u64;
    let mut wait = None;
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "passing" => passing = value.is_empty() || value == "true" || value == "1",
            "tag" => tags.push(decode(value)),
            "dc" => dc = Some(decode(value)),
            "index" => index = value.parse().unwrap_or(0),
            "wait" => wait = Some(value.to_owned()),
            _ => {}
        }
    }
    let token = request
        .headers()
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut changes = shared.changes.subscribe();
    if index > 0 {
        // Blocks while nothing newer than the client's index exists (and
        // no failure was switched on meanwhile).
        let deadline = tokio::time::Instant::now() + parse_wait(wait.as_deref());
        shared.blocked.fetch_add(1, Ordering::Relaxed);
        loop {
            {
                let state = shared.lock();
                if state.index > index || state.fail.is_some() {
                    break;
                }
            }
            if state_changed_before(&mut changes, deadline).await.is_err() {
                break;
            }
        }
        shared.blocked.fetch_sub(1, Ordering::Relaxed);
    }
    let state = shared.lock();
    if let Some(status) = state.fail {
        return reply(status, None, "stand-in: failing on purpose".to_owned());
    }
    if let Some(expected) = &state.token
        && token.as_ref() != Some(expected)
    {
        return reply(403, None, "ACL not found".to_owned());
    }
    if let Some(dc) = dc
        && dc != DATACENTER
    {
        return reply(500, None, format!("No path to datacenter {dc:?}"));
    }
    let entries: Vec<Value> = state
        .instances
        .values()
        .filter(|i| i.service == service)
        .filter(|i| tags.iter().all(|t| i.tags.contains(t)))
        .filter(|i| !passing || i.passing())
        .map(Instance::to_json)
        .collect();
    reply(200, Some(state.index), Value::Array(entries).to_string())
}

/// Waits for a change until `deadline`; Err when the deadline passed.
async fn state_changed_before(
    changes: &mut watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> Result<(), ()> {
    match tokio::time::timeout_at(deadline, changes.changed()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
