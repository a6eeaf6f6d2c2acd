//! Configured listeners (`/$ELBNAME/listeners/*`), opened and closed live.
//!
//! One supervisor task follows the configuration. A new listener is bound
//! like `--listen` (one `SO_REUSEPORT` socket per worker) and each worker is
//! sent its socket, to serve with its own `Proxy` and the shared limits. A
//! removed (or changed) listener is told to stop: its sockets close at once
//! and its connections drain within [`DRAIN_BOUND`]. A listener that cannot
//! bind is marked failed on the [`ListenerBoard`] and retried with a
//! backoff; the others are not affected.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{Entrance, Listeners, WorkerCommand};
use crate::{
    config::{Listener, SnapshotHandle},
    takeover::{HandoverSockets, Registration, SocketKind},
    tls::CertSource,
};

/// After a listener is removed, how long its connections have to finish
/// the request in flight before they are closed.
pub const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// The first retry of a listener that could not bind; doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A listener's live state, as `GET /__erulb__/listener` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerState {
    /// `serving`, `failed` or `starting` (not tried yet).
    pub status: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    address: SocketAddr,
    state: ListenerState,
}

/// Each configured listener's live state, by name; written by the
/// supervisor, read by the admin API.
#[derive(Debug, Clone)]
pub struct ListenerBoard {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// The configuration generation the supervisor last acted on.
    applied: Arc<watch::Sender<u64>>,
}

impl Default for ListenerBoard {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
            applied: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl ListenerBoard {
    /// Waits (at most `limit`) until the supervisor has acted on
    /// configuration generation `generation`: a listener written by then
    /// is listening, or failed. Returns whether it got there.
    pub async fn wait_applied(&self, generation: u64, limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        matches!(
            tokio::time::timeout(limit, applied.wait_for(|g| *g >= generation)).await,
            Ok(Ok(_))
        )
    }

    /// The state of listener `name` at `address`; `starting` if the
    /// supervisor has not acted on that address yet.
    pub fn state(&self, name: &str, address: SocketAddr) -> ListenerState {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(name) {
            Some(entry) if entry.address == address => entry.state.clone(),
            _ => ListenerState {
                status: "starting",
                error: None,
            },
        }
    }

    fn set(&self, name: &str, address: SocketAddr, state: ListenerState) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(name.to_owned(), Entry { address, state });
    }

    fn remove(&self, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(name);
    }
}

/// A listener being served: dropping (or sending true on) `stop` ends it.
struct Running {
    listener: Arc<Listener>,
    stop: watch::Sender<bool>,
    /// Its sockets as offered to a takeover, until it stops.
    _handover: Vec<Registration>,
}

/// A listener that could not bind, waiting for its next try.
struct Failing {
    listener: Arc<Listener>,
    next_try: Instant,
    delay: Duration,
    error: String,
}

/// Starts following the configured listeners. `workers`: each worker's
/// channel (see [`super::spawn_workers`]).
pub fn spawn_supervisor(
    snapshot: SnapshotHandle,
    mut changes: watch::Receiver<u64>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    board: ListenerBoard,
    sockets: HandoverSockets,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut supervisor = Supervisor {
            certs: Arc::clone(&snapshot) as Arc<dyn CertSource>,
            workers,
            board,
            sockets,
            running: BTreeMap::new(),
            failing: BTreeMap::new(),
        };
        loop {
            // Generation before snapshot: the snapshot is at least as new.
            let generation = *changes.borrow_and_update();
            let desired = Arc::clone(snapshot.load().listeners());
            supervisor.reconcile(&desired, Instant::now());
            supervisor.note_missing_certificates(&snapshot);
            supervisor.board.applied.send_replace(generation);
            let retry = supervisor.next_retry();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sleep_until(retry) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Supervisor {
    /// What https listeners read their certificates from, per handshake.
    certs: Arc<dyn CertSource>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    board: ListenerBoard,
    /// Sockets received in a takeover; the registry for the next one.
    sockets: HandoverSockets,
    running: BTreeMap<String, Running>,
    failing: BTreeMap<String, Failing>,
}

impl Supervisor {
    fn reconcile(&mut self, desired: &BTreeMap<String, Arc<Listener>>, now: Instant) {
        let wanted =
            |name: &str, listener: &Listener| desired.get(name).is_some_and(|d| **d == *listener);
        // Stop first: a listener moved to another name may take the address.
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| !wanted(name, &running.listener))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                let _ = running.stop.send(true);
                self.board.remove(&name);
                tracing::info!(
                    listener = name,
                    address = %running.listener.address,
                    drain_bound_secs = DRAIN_BOUND.as_secs(),
                    "listener closed; its connections drain"
                );
            }
        }
        self.failing.retain(|name, failing| {
            let keep = wanted(name, &failing.listener);
            if !keep {
                self.board.remove(name);
            }
            keep
        });
        for (name, listener) in desired {
            if self.running.contains_key(name) {
                continue;
            }
            if let Some(failing) = self.failing.get(name)
                && failing.next_try > now
            {
                continue;
            }
            self.start(name, listener, now);
        }
    }

    /// An https listener whose default certificate is not (or no longer)
    /// stored serves, but handshakes that match no certificate fail: GET
    /// shows it as the listener's `error`. (The admin API refuses both
    /// ways there; a hand-written store may still get here.)
    fn note_missing_certificates(&self, snapshot: &SnapshotHandle) {
        let certs = Arc::clone(snapshot.load().certs());
        for (name, running) in &self.running {
            let listener = &running.listener;
            let Some(default) = &listener.default_certificate else {
                continue;
            };
            let error = certs.get(default).is_none().then(|| {
                format!(
                    "default_certificate {default:?} does not exist: handshakes that match no \
                     certificate fail"
                )
            });
            self.board.set(
                name,
                listener.address,
                ListenerState {
                    status: "serving",
                    error,
                },
            );
        }
    }

    fn start(&mut self, name: &str, listener: &Arc<Listener>, now: Instant) {
        let opened = Entrance::for_listener(listener, Arc::clone(&self.certs))
            .map_err(|err| format!("cannot set up TLS: {err}"))
            .and_then(|entrance| {
                Listeners::open(&[listener.address], self.workers.len(), &self.sockets)
                    .map(|sockets| (sockets, Arc::new(entrance)))
                    .map_err(|err| err.to_string())
            });
        match opened {
            Ok((sockets, entrance)) => {
                let (stop, stopped) = watch::channel(false);
                let handover = sockets.register(&self.sockets, SocketKind::Listener, Some(name));
                for (group, worker) in sockets.into_per_worker().into_iter().zip(&self.workers) {
                    for socket in group {
                        let _ = worker.send(WorkerCommand::Serve {
                            name: name.to_owned(),
                            listener: socket,
                            entrance: Arc::clone(&entrance),
                            stop: stopped.clone(),
                        });
                    }
                }
                self.failing.remove(name);
                self.board.set(
                    name,
                    listener.address,
                    ListenerState {
                        status: "serving",
                        error: None,
                    },
                );
                tracing::info!(
                    listener = name,
                    address = %listener.address,
                    protocol = %listener.protocol,
                    http2 = listener.http2,
                    "listening"
                );
                self.running.insert(
                    name.to_owned(),
                    Running {
                        listener: Arc::clone(listener),
                        stop,
                        _handover: handover,
                    },
                );
            }
            Err(error) => {
                let previous = self.failing.remove(name);
                let delay = previous
                    .as_ref()
                    .map_or(RETRY_FIRST, |p| (p.delay * 2).min(RETRY_MAX));
                // Once per distinct error, not once per retry.
                if previous.as_ref().is_none_or(|p| p.error != error) {
                    tracing::warn!(
                        listener = name,
                        address = %listener.address,
                        error,
                        "cannot open listener; retrying every {}s",
                        RETRY_MAX.as_secs()
                    );
                } else {
                    tracing::debug!(listener = name, error, "listener still cannot open");
                }
                self.board.set(
                    name,
                    listener.address,
                    ListenerState {
                        status: "failed",
                        error: Some(error.clone()),
                    },
                );
                self.failing.insert(
                    name.to_owned(),
                    Failing {
                        listener: Arc::clone(listener),
                        next_try: now + delay,
                        delay,
                        error,
                    },
                );
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.failing.values().map(|f| f.next_try).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, address: SocketAddr) -> Arc<Listener> {
        Arc::new(Listener {
            name: name.to_owned(),
            address,
            protocol: crate::config::ListenerProtocol::Http,
            http2: false,
            default_certificate: None,
        })
    }

    fn supervisor(workers: usize) -> (Supervisor, Vec<mpsc::UnboundedReceiver<WorkerCommand>>) {
        let (senders, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let supervisor = Supervisor {
            certs: Arc::new(arc_swap::ArcSwap::from_pointee(
                crate::tls::CertSet::default(),
            )),
            workers: senders,
            board: ListenerBoard::default(),
            sockets: HandoverSockets::default(),
            running: BTreeMap::new(),
            failing: BTreeMap::new(),
        };
        (supervisor, receivers)
    }

    #[test]
    fn each_worker_gets_a_socket_and_removal_stops_them() {
        let (mut supervisor, mut workers) = supervisor(2);
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = probe.local_addr().expect("addr");
        drop(probe);
        let desired = BTreeMap::from([("web".to_owned(), listener("web", address))]);
        supervisor.reconcile(&desired, Instant::now());
        assert_eq!(supervisor.board.state("web", address).status, "serving");
        let mut stops = Vec::new();
        for worker in &mut workers {
            let Ok(WorkerCommand::Serve { listener, stop, .. }) = worker.try_recv() else {
                panic!("no socket for a worker");
            };
            assert_eq!(listener.local_addr().expect("addr"), address);
            stops.push(stop);
        }
        supervisor.reconcile(&BTreeMap::new(), Instant::now());
        assert!(stops.iter().all(|stop| *stop.borrow()), "told to stop");
        assert_eq!(supervisor.board.state("web", address).status, "starting");
    }

    #[test]
    fn a_taken_address_fails_with_the_reason_and_is_retried_later() {
        let (mut supervisor, _workers) = supervisor(1);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("addr");
        let desired = BTreeMap::from([("web".to_owned(), listener("web", address))]);
        let now = Instant::now();
        supervisor.reconcile(&desired, now);
        let state = supervisor.board.state("web", address);
        assert_eq!(state.status, "failed");
        let error = state.error.expect("a reason");
        assert!(error.contains("in use"), "{error}");
        assert_eq!(supervisor.next_retry(), Some(now + RETRY_FIRST));
        drop(taken);
        // Not before its time, then it serves.
        supervisor.reconcile(&desired, now);
        assert_eq!(supervisor.board.state("web", address).status, "failed");
        supervisor.reconcile(&desired, now + RETRY_FIRST);
        assert_eq!(supervisor.board.state("web", address).status, "serving");
        assert_eq!(supervisor.next_retry(), None);
    }
}
