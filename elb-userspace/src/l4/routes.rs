//! The route watcher: XDP caches each flow's next hop (egress interface,
//! MACs) until the route generation changes, so every route, neighbour or
//! link notification from the kernel bumps it ([`Generations::bump_route`]).
//!
//! No fallback to a periodic bump when the notification socket cannot be
//! opened: the XDP data plane does not start then (see
//! [`crate::dataplane::XdpDataplane::start`]), because cached next hops
//! that never learn of a change would keep sending flows to a neighbour
//! that moved or a route that is gone. Opening the socket needs no
//! privilege XDP does not need already, so this fails only on a broken host.
use std::{io, time::Duration};

use tokio::{io::unix::AsyncFd, sync::watch, task::JoinHandle, time::Instant};

use super::generations::Generations;
use crate::sys::rtnetlink::RouteEvents;

/// Bursts (a link going down withdraws many routes) are coalesced: the
/// first notification bumps at once, later ones at most once per window,
/// and the last one is always followed by a bump.
pub const COALESCE: Duration = Duration::from_millis(5);
/// After the socket failed (it should not): how soon it is opened again.
/// Meanwhile the generation is bumped this often, so next hops are looked
/// up again at least this often.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// A source of change notifications.
pub(crate) trait Changes {
    /// Waits for at least one notification, consuming what is queued.
    async fn next(&mut self) -> io::Result<()>;
}

struct Netlink(AsyncFd<RouteEvents>);

impl Netlink {
    fn new(events: RouteEvents) -> io::Result<Self> {
        // SAFETY: RouteEvents owns its descriptor and always returns that
        // one; it is closed only when the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) };
        Ok(Self(fd?))
    }
}

impl Changes for Netlink {
    async fn next(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            let read = ready.try_io(|events| match events.get_ref().drain() {
                Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            });
            match read {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) => return Err(error),
                // Nothing queued after all: readiness cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

/// Bumps the route generation on every change `events` reports, until
/// `shutdown`. Bumps once at the start too: routes may have changed while
/// no watcher ran (before this elb, or between a takeover's processes).
/// Needs a tokio runtime; `events` stays in the network namespace it was
/// opened in.
pub fn spawn(
    events: RouteEvents,
    mut generations: Generations,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let mut changes = Netlink::new(events)?;
    Ok(tokio::spawn(async move {
        let mut failing = false;
        let mut bump = move || match generations.bump_route() {
            Ok(_) => {
                failing = false;
                true
            }
            Err(error) => {
                if !failing {
                    tracing::error!(%error, "cannot bump the route generation; retrying");
                }
                failing = true;
                false
            }
        };
        bump();
        let watch = async {
            loop {
                let error = follow(&mut changes, &mut bump, COALESCE).await;
                tracing::error!(
                    %error,
                    "reading route and neighbour notifications failed; XDP looks next hops \
                     up every {REOPEN_AFTER:?} until the socket is open again"
                );
                changes = loop {
                    bump();
                    tokio::time::sleep(REOPEN_AFTER).await;
                    match RouteEvents::open().and_then(Netlink::new) {
                        Ok(reopened) => break reopened,
                        Err(error) => tracing::error!(%error, "reopening the rtnetlink socket"),
                    }
                };
                bump();
            }
        };
        tokio::select! {
            () = watch => {}
            _ = shutdown.wait_for(|down| *down) => {}
        }
    }))
}

/// Calls `bump` for the changes `changes` reports: at once for the first,
/// then once per quiet `window` while more arrive, so a burst costs two or
/// three bumps and its last change is never left without one. A failed
/// bump (false) is retried after the window. Returns when `changes` fails.
pub(crate) async fn follow<C: Changes>(
    changes: &mut C,
    bump: &mut impl FnMut() -> bool,
    window: Duration,
) -> io::Error {
    loop {
        if let Err(error) = changes.next().await {
            return error;
        }
        let mut pending = !bump();
        loop {
            let quiet_until = Instant::now() + window;
            loop {
                tokio::select! {
                    next = changes.next() => match next {
                        Ok(()) => pending = true,
                        Err(error) => {
                            if pending {
                                bump();
                            }
                            return error;
                        }
                    },
                    () = tokio::time::sleep_until(quiet_until) => break,
                }
            }
            if !pending {
                break;
            }
            pending = !bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::mpsc;

    use super::*;

    struct Channel(mpsc::UnboundedReceiver<()>);

    impl Changes for Channel {
        async fn next(&mut self) -> io::Result<()> {
            match self.0.recv().await {
                Some(()) => Ok(()),
                None => Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
    }

    const WINDOW: Duration = Duration::from_millis(40);

    /// Runs `follow` over a channel; each bump records how many changes
    /// had been sent when it happened.
    /// The sender of changes, the count sent, the bumps, and the task.
    type Watcher = (
        mpsc::UnboundedSender<()>,
        Arc<AtomicUsize>,
        Arc<std::sync::Mutex<Vec<usize>>>,
        JoinHandle<io::Error>,
    );

    fn watcher(results: Vec<bool>) -> Watcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicUsize::new(0));
        let bumps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (sent, bumps) = (Arc::clone(&sent), Arc::clone(&bumps));
            async move {
                let mut results = results.into_iter();
                let mut bump = || {
                    let ok = results.next().unwrap_or(true);
                    if ok {
                        bumps
                            .lock()
                            .expect("bumps")
                            .push(sent.load(Ordering::SeqCst));
                    }
                    ok
                };
                follow(&mut Channel(rx), &mut bump, WINDOW).await
            }
        });
        (tx, sent, bumps, task)
    }

    fn send(tx: &mpsc::UnboundedSender<()>, sent: &AtomicUsize) {
        sent.fetch_add(1, Ordering::SeqCst);
        tx.send(()).expect("watcher alive");
    }

    #[tokio::test]
    async fn one_change_bumps_at_once_and_only_once() {
        let (tx, sent, bumps, task) = watcher(Vec::new());
        send(&tx, &sent);
        tokio::time::sleep(WINDOW / 4).await;
        assert_eq!(
            *bumps.lock().expect("bumps"),
            vec![1],
            "bumped before the window ends"
        );
        tokio::time::sleep(WINDOW * 3).await;
        assert_eq!(
            *bumps.lock().expect("bumps"),
            vec![1],
            "nothing more to bump for"
        );
        drop(tx);
        assert_eq!(task.await.expect("task").kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_burst_is_coalesced_and_its_last_change_bumped() {
        let (tx, sent, bumps, task) = watcher(Vec::new());
        for _ in 0..500 {
            send(&tx, &sent);
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(WINDOW * 4).await;
        let bumps = bumps.lock().expect("bumps").clone();
        assert!(
            (2..=6).contains(&bumps.len()),
            "500 changes in a burst: {bumps:?}"
        );
        assert_eq!(bumps.last(), Some(&500), "a bump after the last change");
        drop(tx);
        task.await.expect("task");
    }

    #[tokio::test]
    async fn a_failed_bump_is_retried() {
        let (tx, sent, bumps, task) = watcher(vec![false]);
        send(&tx, &sent);
        tokio::time::sleep(WINDOW * 3).await;
        assert_eq!(
            *bumps.lock().expect("bumps"),
            vec![1],
            "retried after the window"
        );
        drop(tx);
        task.await.expect("task");
    }
}
