//! The running elb's side: offers its sockets on `<run-dir>/<name>.sock`
//! and steps down once a new elb serves.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Mutex, OwnedMutexGuard, RwLock, mpsc};

use super::{
    Message, PROTOCOL, SocketRegistry,
    fdpass::{Channel, ChannelListener, MAX_FDS},
};

/// How long a new process has to say hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new process has, from receiving the sockets, to serve. The
/// XDP maps are not written meanwhile; after it, the old one resumes.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the old process waits for the new one to close the
/// connection after `stopping` before it drains anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks whether it was closed.
const POLL: Duration = Duration::from_millis(200);

/// A takeover went through: the new process (this pid) serves; stop.
#[derive(Debug, Clone, Copy)]
pub struct TakeoverStart {
    pub pid: u32,
}

struct Shared {
    closed: AtomicBool,
    handed_over: AtomicBool,
}

/// The takeover socket of a running elb.
pub struct TakeoverServer {
    shared: Arc<Shared>,
    path: PathBuf,
}

/// What the old process hands over and guards.
pub struct Offer {
    pub registry: SocketRegistry,
    /// The instance-lock file (its open file description carries the lock).
    pub lock: OwnedFd,
    /// Held around every XDP map write; the takeover holds it from hello
    /// until the new process serves (or gives up), so that only one
    /// process writes the maps at any time.
    pub map_writer: Option<Arc<Mutex<()>>>,
    /// The admin API's write gate, held likewise: no configuration write
    /// here that the new process would miss.
    pub admin_writes: Arc<RwLock<()>>,
    /// To wait for the admin write gate from the takeover thread.
    pub runtime: tokio::runtime::Handle,
}

impl TakeoverServer {
    /// Listens on `path`; each successful takeover is sent on `stop`.
    pub fn start(
        path: PathBuf,
        offer: Offer,
        stop: mpsc::UnboundedSender<TakeoverStart>,
    ) -> io::Result<Self> {
        let listener = ChannelListener::bind(&path)?;
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("elb-takeover".into())
            .spawn(move || accept_loop(&listener, &offer, &thread_shared, &stop))?;
        Ok(Self { shared, path })
    }

    /// Shutdown began: no takeover any more, and the socket file goes
    /// unless a new process (which replaced it with its own) took over.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if !self.shared.handed_over.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn readable(listener: &ChannelListener) -> bool {
    let mut pollfd = libc::pollfd {
        fd: listener.raw(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut pollfd, 1, POLL.as_millis() as libc::c_int) };
    ready > 0
}

fn accept_loop(
    listener: &ChannelListener,
    offer: &Offer,
    shared: &Shared,
    stop: &mpsc::UnboundedSender<TakeoverStart>,
) {
    while !shared.closed.load(Ordering::SeqCst) {
        if !readable(listener) {
            continue;
        }
        let channel = match listener.accept() {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%error, "takeover socket: accept failed");
                std::thread::sleep(POLL);
                continue;
            }
        };
        match hand_over(&channel, offer, shared) {
            Ok(Some(start)) => {
                shared.handed_over.store(true, Ordering::SeqCst);
                let _ = stop.send(start);
                return;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(
                "takeover failed before the new elb served: {error}; this elb keeps serving \
                 and writing the XDP maps"
            ),
        }
    }
}

fn io_error(step: &str) -> impl Fn(io::Error) -> String + '_ {
    move |error| format!("{step}: {error}")
}

fn receive(channel: &Channel, step: &str) -> Result<Message, String> {
    let (body, _) = channel.recv().map_err(io_error(step))?;
    if body.is_empty() {
        return Err(format!(
            "{step}: the new elb closed the connection (it exited?)"
        ));
    }
    Message::decode(&body).map_err(|e| format!("{step}: not a takeover message: {e}"))
}

/// One takeover attempt. `Ok(None)`: refused, nothing changed.
fn hand_over(
    channel: &Channel,
    offer: &Offer,
    shared: &Shared,
) -> Result<Option<TakeoverStart>, String> {
    let send = |message: &Message, fds: &[i32], step: &str| {
        channel.send(&message.encode(), fds).map_err(io_error(step))
    };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let uid = channel
        .peer_uid()
        .map_err(io_error("reading the peer's uid"))?;
    if uid != euid && uid != 0 {
        tracing::warn!(uid, "takeover refused: another user connected");
        return Ok(None);
    }
    channel
        .set_timeout(HELLO_TIMEOUT)
        .map_err(io_error("setting a timeout"))?;
    let new_pid = match receive(channel, "waiting for hello")? {
        Message::Hello { pid, protocol } if protocol == PROTOCOL => pid,
        Message::Hello { protocol, .. } => {
            let reason = format!("takeover protocol {protocol} is not {PROTOCOL}");
            send(&Message::Refused { reason }, &[], "refusing")?;
            return Ok(None);
        }
        other => return Err(format!("expected hello, got {other:?}")),
    };
    if shared.closed.load(Ordering::SeqCst) {
        let reason = "the running elb is already stopping".to_owned();
        send(&Message::Refused { reason }, &[], "refusing")?;
        return Ok(None);
    }
    tracing::info!(
        pid = new_pid,
        xdp_map_writes_paused = offer.map_writer.is_some(),
        "takeover: a new elb asks for the sockets"
    );
    // Waits for the writes in progress (a write also waits for the map
    // writer, so the order admin gate first, map writer second is kept
    // by both).
    let admin_writes = offer
        .runtime
        .block_on(Arc::clone(&offer.admin_writes).write_owned());
    let writer: Option<OwnedMutexGuard<()>> = offer
        .map_writer
        .as_ref()
        .map(|writer| Arc::clone(writer).blocking_lock_owned());
    let sockets = offer
        .registry
        .snapshot()
        .map_err(io_error("duplicating the sockets"))?;
    let fd_messages = 1 + sockets.len().div_ceil(MAX_FDS);
    let tags = sockets.iter().map(|(tag, _)| tag.clone()).collect();
    let own_pid = std::process::id();
    send(
        &Message::Sockets {
            pid: own_pid,
            sockets: tags,
            fd_messages,
        },
        &[],
        "sending the socket list",
    )?;
    send(
        &Message::Fds { count: 1 },
        &[offer.lock.as_raw_fd()],
        "sending the lock",
    )?;
    let raw: Vec<i32> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    for chunk in raw.chunks(MAX_FDS) {
        send(
            &Message::Fds { count: chunk.len() },
            chunk,
            "sending the sockets",
        )?;
    }
    drop(sockets);
    tracing::info!(
        pid = new_pid,
        sockets = raw.len(),
        "takeover: sockets sent; waiting for the new elb to serve"
    );
    channel
        .set_timeout(HANDOVER_TIMEOUT)
        .map_err(io_error("setting a timeout"))?;
    match receive(channel, "waiting for the new elb to serve")? {
        Message::Serving { pid } if pid == new_pid => {}
        other => return Err(format!("expected serving, got {other:?}")),
    }
    send(
        &Message::Stopping { pid: own_pid },
        &[],
        "confirming the stop",
    )?;
    // This process never writes the maps, nor takes configuration
    // writes, again: the new one does.
    std::mem::forget(writer);
    std::mem::forget(admin_writes);
    // The new process closes the connection once systemd knows it as the
    // main process (see crate::sd_notify): this one must not exit before,
    // or systemd would take the main process's exit for the service's.
    let _ = channel.set_timeout(RELEASE_TIMEOUT);
    let _ = channel.recv();
    Ok(Some(TakeoverStart { pid: new_pid }))
}
