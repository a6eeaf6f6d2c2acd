//! The HTTP listeners: accept, then serve each connection with hyper:
//! HTTP/1.1, or HTTP/2 (ALPN over TLS, prior knowledge on plaintext).
mod client_io;
mod dynamic;
mod entrance;
mod h2;
mod listeners;
mod refuse;

pub use dynamic::{DRAIN_BOUND, ListenerBoard, ListenerState, spawn_supervisor};
pub use entrance::Entrance;
pub use h2::{ABANDONED_MIN, MAX_CONCURRENT_STREAMS};
pub use listeners::{BindError, Listeners};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_util::task::TaskTracker;

use self::client_io::{ClientIo, Reclaimed, Sniffed, sniff_preface};
use crate::{
    l4::fallback::l7_guard::ListenerGuard,
    limits::{ClientLimit, ClientPermit, ClientSlot},
    proxy::{Proxy, headers::ClientAddr},
};

/// Limits on what clients may send.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Time a client has to send the complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes: from the request line through the
    /// empty line that ends the headers, CRLFs included. A head of exactly
    /// this size is accepted, one byte more is 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Open client connections, all workers together (`--max-connections`).
    pub clients: Arc<ClientLimit>,
    /// After shutdown began, how long connections have to finish their
    /// requests in flight (`--drain-timeout`).
    pub drain_timeout: Duration,
}

/// In an upgrade request's extensions when it came on a configured
/// listener: the tunnel that follows ends [`DRAIN_BOUND`] after the
/// listener is removed (a tunnel has no request boundary to wait for).
#[derive(Debug, Clone)]
pub struct ListenerStop(pub watch::Receiver<bool>);

impl ListenerStop {
    /// Resolves [`DRAIN_BOUND`] after the listener's removal.
    pub async fn drained(mut self) {
        stop_requested(Some(&mut self.0)).await;
        tokio::time::sleep(DRAIN_BOUND).await;
    }
}

/// A worker's orders from the configured-listener supervisor.
pub enum WorkerCommand {
    /// Serve this worker's socket of a listener until `stop` turns true,
    /// then drain its connections (see [`DRAIN_BOUND`]).
    Serve {
        name: String,
        listener: std::net::TcpListener,
        entrance: Arc<Entrance>,
        stop: watch::Receiver<bool>,
    },
}

/// The running workers: their threads, and a channel to each.
pub struct Workers {
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub control: Vec<mpsc::UnboundedSender<WorkerCommand>>,
}

/// Runs the data plane: one thread per worker's sockets in `listeners`,
/// each with a single-threaded runtime and its own [`Proxy`] (so its own
/// upstream connections). A request then never hops between threads, as in
/// nginx's one event loop per worker.
/// `guard`: the deny-list to apply at accept, when XDP does not.
/// `gate_changes`: the target registry's generation; each worker then
/// closes its idle connections to servers that may no longer take requests.
/// Each worker also serves the sockets sent through its `control` channel.
pub fn spawn_workers(
    listeners: Listeners,
    make_proxy: impl Fn() -> Proxy,
    settings: &ServerSettings,
    guard: Option<&ListenerGuard>,
    gate_changes: &watch::Receiver<u64>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Workers> {
    let per_worker = listeners.into_per_worker();
    let mut handles = Vec::with_capacity(per_worker.len());
    let mut control = Vec::with_capacity(per_worker.len());
    for (worker, listeners) in per_worker.into_iter().enumerate() {
        let (commands, mut orders) = mpsc::unbounded_channel();
        control.push(commands);
        let worker_context = Worker {
            proxy: Arc::new(make_proxy()),
            settings: settings.clone(),
            guard: guard.cloned(),
            shutdown: shutdown.clone(),
            connections: TaskTracker::new(),
        };
        let gate_changes = gate_changes.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = std::thread::Builder::new()
            .name(format!("elb-worker-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let context = worker_context;
                    tokio::spawn(close_idle_on_gate_changes(
                        Arc::clone(&context.proxy),
                        gate_changes,
                        context.shutdown.clone(),
                    ));
                    tokio::spawn({
                        let context = context.clone();
                        let mut shutdown = context.shutdown.clone();
                        async move {
                            loop {
                                let order = tokio::select! {
                                    order = orders.recv() => order,
                                    _ = shutdown.changed() => None,
                                };
                                let Some(WorkerCommand::Serve {
                                    name,
                                    listener,
                                    entrance,
                                    stop,
                                }) = order
                                else {
                                    return;
                                };
                                match TcpListener::from_std(listener) {
                                    Ok(listener) => {
                                        tokio::spawn(context.clone().serve(
                                            listener,
                                            entrance,
                                            Some(stop),
                                        ));
                                    }
                                    Err(err) => tracing::error!(
                                        worker,
                                        listener = name,
                                        error = %err,
                                        "cannot serve a configured listener"
                                    ),
                                }
                            }
                        }
                    });
                    let mut tasks = Vec::new();
                    let entrance = Arc::new(Entrance::static_http());
                    for listener in listeners {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => tasks.push(tokio::spawn(context.clone().serve(
                                listener,
                                Arc::clone(&entrance),
                                None,
                            ))),
                            Err(err) => {
                                tracing::error!(worker, error = %err, "cannot serve a listener")
                            }
                        }
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                    context.drain(worker).await;
                });
            })?;
        handles.push(handle);
    }
    Ok(Workers {
        threads: handles,
        control,
    })
}

/// What every listener of one worker serves with.
#[derive(Clone)]
struct Worker {
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    /// The deny-list to apply at accept, when XDP does not.
    guard: Option<ListenerGuard>,
    shutdown: watch::Receiver<bool>,
    /// The worker's open client connections.
    connections: TaskTracker,
}

async fn close_idle_on_gate_changes(
    proxy: Arc<Proxy>,
    mut changes: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => match changed {
                Ok(()) => proxy.close_idle_unroutable(),
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

impl Worker {
    /// Serves connections until `shutdown` turns true, or `stop` (a
    /// configured listener's) does: then the socket is closed at once and
    /// each connection drains (see [`wind_down`]).
    async fn serve(
        self,
        listener: TcpListener,
        entrance: Arc<Entrance>,
        stop: Option<watch::Receiver<bool>>,
    ) {
        let Self {
            proxy,
            settings,
            guard,
            mut shutdown,
            connections,
        } = self;
        let mut stopped = stop.clone();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
                () = stop_requested(stopped.as_mut()) => return,
            };
            if guard.as_ref().is_some_and(|g| g.refuses(peer.ip())) {
                tracing::debug!(%peer, "HTTP client denied by the ACL");
                // RST rather than FIN, as the L4 fallback refuses clients.
                let _ = stream.set_zero_linger();
                continue;
            }
            let Some(permit) = settings.clients.try_acquire() else {
                if let Some(refusal) = settings.clients.try_refuse() {
                    tokio::spawn(refuse::answer_busy(stream, refusal));
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                peer,
                proxy: Arc::clone(&proxy),
                settings: settings.clone(),
                slot: Arc::new(permit),
                stop: stop.clone(),
                shutdown: shutdown.clone(),
                entrance: Arc::clone(&entrance),
            };
            // No span per connection: entering it on every poll cost more
            // than naming the listener in the few log lines that need it.
            connections.spawn(connection.serve(stream));
        }
    }

    /// Shutdown: no listener accepts any more; the open connections finish
    /// what is in flight (see [`wind_down`]) and close themselves at the
    /// drain timeout. The wait here is only a backstop past that.
    async fn drain(&self, worker: usize) {
        self.connections.close();
        let limit = self.settings.drain_timeout + Duration::from_secs(1);
        if tokio::time::timeout(limit, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker,
                connections = self.connections.len(),
                "drain timeout: closing the connections still open"
            );
        }
    }
}

/// Resolves when `stop` turns true or its sender is gone (the listener was
/// removed); never without one (a static listener).
async fn stop_requested(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
        None => std::future::pending().await,
    }
}

/// One accepted client connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    /// The client's slot (`--max-connections`): held until `serve`
    /// returns (a 408's linger included); an upgraded tunnel keeps its own
    /// clone until it ends.
    slot: Arc<ClientPermit>,
    stop: Option<watch::Receiver<bool>>,
    /// elb is shutting down (SIGTERM).
    shutdown: watch::Receiver<bool>,
    entrance: Arc<Entrance>,
}

/// Resolves when a connection must wind down: its listener was removed
/// (it then has [`DRAIN_BOUND`]) or elb is shutting down (`drain_timeout`).
/// Returns the time it has to finish its request in flight.
pub(crate) async fn wind_down(
    stop: Option<&mut watch::Receiver<bool>>,
    shutdown: &mut watch::Receiver<bool>,
    drain_timeout: Duration,
) -> Duration {
    tokio::select! {
        // Shutdown first: it also ends the listener supervisor, which
        // drops every listener's `stop` sender.
        biased;
        // A dropped sender is a shutdown too.
        _ = shutdown.wait_for(|down| *down) => drain_timeout,
        () = stop_requested(stop) => DRAIN_BOUND,
    }
}

impl Connection {
    /// TLS first when the listener is https, then HTTP/2 or HTTP/1.1.
    async fn serve(self, stream: TcpStream) {
        let client = Arc::new(
            ClientAddr::new(self.peer)
                .on_listener(self.entrance.listener.clone(), self.entrance.tls.is_some()),
        );
        // The handshake gets the time a request head gets.
        let limit = self.settings.header_read_timeout;
        match self.entrance.tls.clone() {
            Some(acceptor) => {
                let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    self.serve_http2(tls, client).await;
                } else {
                    self.serve_http1(tls, Bytes::new(), client).await;
                }
            }
            None if self.entrance.http2 => {
                let mut stream = stream;
                match sniff_preface(&mut stream, limit).await {
                    Sniffed::Http2(preface) => {
                        self.serve_http2(ClientIo::with_replay(stream, preface).0, client)
                            .await;
                    }
                    Sniffed::Http1(read) => self.serve_http1(stream, read, client).await,
                    Sniffed::Nothing => {
                        tracing::debug!(peer = %self.peer, "client sent nothing before the header timeout");
                    }
                }
            }
            None => self.serve_http1(stream, Bytes::new(), client).await,
        }
    }

    async fn serve_http2<S>(self, io: S, client: Arc<ClientAddr>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        h2::serve(
            io,
            self.proxy,
            client,
            &self.settings,
            self.stop,
            self.shutdown,
        )
        .await;
        drop(self.slot);
    }

    /// `replay`: bytes already read from `stream` (see [`sniff_preface`]).
    async fn serve_http1<S>(self, stream: S, replay: Bytes, client: Arc<ClientAddr>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            proxy,
            settings,
            slot,
            mut stop,
            mut shutdown,
            entrance: _,
        } = self;
        let (io, mut reclaimed) = ClientIo::with_replay(stream, replay);
        let tunnel_slot = Arc::clone(&slot);
        let tunnel_stop = stop.clone().map(ListenerStop);
        let closing = Arc::new(AtomicBool::new(false));
        let closing_service = Arc::clone(&closing);
        let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            if request.headers().contains_key(http::header::UPGRADE) {
                request
                    .extensions_mut()
                    .insert(ClientSlot(Arc::clone(&tunnel_slot)));
                if let Some(stop) = &tunnel_stop {
                    request.extensions_mut().insert(stop.clone());
                }
            }
            let proxy = Arc::clone(&proxy);
            let client = Arc::clone(&client);
            let closing = Arc::clone(&closing_service);
            async move {
                let mut response = proxy.handle(request, &client).await;
                if closing.load(Ordering::Relaxed) {
                    // hyper closes the connection after this response.
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            // The read buffer only bounds a head roughly (one read may fill it
            // past its size, and a head that arrived whole is then taken);
            // max_header_size counts the parsed head exactly.
            .max_buf_size(settings.max_header_bytes.max(MIN_READ_BUFFER))
            .max_header_size(settings.max_header_bytes)
            .max_headers(settings.max_headers)
            .keep_alive(true);
        let served = {
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => served,
                bound = wind_down(stop.as_mut(), &mut shutdown, settings.drain_timeout) => {
                    // The listener was removed or elb is stopping (SIGTERM
                    // or a takeover). Every response from now on says
                    // `Connection: close`. A busy client, between two
                    // requests right now, has IDLE_GRACE to send its next
                    // one, which is answered: closing at once would race
                    // it (the client would see its request fail). Then
                    // hyper finishes the request in flight, closing an
                    // idle connection at once.
                    closing.store(true, Ordering::Relaxed);
                    let started = tokio::time::Instant::now();
                    let grace = IDLE_GRACE.min(bound);
                    let served = tokio::time::timeout(grace, connection.as_mut()).await;
                    if let Ok(served) = served {
                        served
                    } else {
                    connection.as_mut().graceful_shutdown();
                    let left = bound.saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, connection.as_mut()).await {
                        Ok(served) => served,
                        Err(_) => {
                            tracing::debug!(%peer, "connection closed at the drain bound");
                            Ok(())
                        }
                    }
                    }
                }
            }
        };
        // The connection, and with it the socket, has been dropped by now.
        match served {
            Err(err) if err.is_timeout() => match reclaimed.try_recv() {
                Ok(Reclaimed {
                    stream,
                    request_started: true,
                }) => {
                    tracing::debug!(%peer, "request head timed out: 408");
                    client_io::answer_header_timeout(stream).await;
                }
                // Nothing of a request came (a new or idle keep-alive
                // connection): no request to answer, and an unasked 408 could
                // race a request the client is sending right now.
                _ => tracing::debug!(%peer, "idle client connection timed out"),
            },
            Err(err) => {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
            Ok(()) => {}
        }
        drop(slot);
    }
}

/// At shutdown, how long an idle keep-alive connection has to bring its
/// next request (answered with `Connection: close`) before it is closed.
/// A busy client is idle only for a round trip between two requests.
const IDLE_GRACE: Duration = Duration::from_millis(300);

/// hyper's smallest read buffer (it panics below it).
const MIN_READ_BUFFER: usize = 8192;
