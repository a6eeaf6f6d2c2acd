//! Open upstream connections: per server (`max_conns=N` in the server's
//! parameters, else `--max-server-connections`) and all servers together
//! (the fd budget). Idle pooled connections count: they hold a descriptor
//! too.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use super::{Episode, client::low_water};

#[derive(Debug)]
pub struct UpstreamLimits {
    /// 0: no per-server cap, only the total.
    per_server: usize,
    total: usize,
    open: Mutex<Open>,
    /// Mirrors of `open.total` and "some server has a cap", written under
    /// the lock: [`UpstreamLimits::has_room`] runs on every response and,
    /// without caps, needs no lock.
    open_total: AtomicUsize,
    capped: AtomicBool,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_server: HashMap<String, usize>,
    total_episode: Episode,
    /// `max_conns` of the servers that have one, by address.
    caps: HashMap<String, usize>,
    /// Servers in an episode at their cap.
    server_episodes: HashMap<String, Episode>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AtLimit {
    #[error("the server has {0} open connections, its max_conns or --max-server-connections")]
    Server(usize),
    #[error("elb has {0} open upstream connections, all its file descriptors allow")]
    Total(usize),
}

/// One open upstream connection; dropping it frees the slot.
#[derive(Debug)]
pub struct UpstreamPermit {
    limits: Arc<UpstreamLimits>,
    server: String,
}

impl UpstreamLimits {
    pub fn new(per_server: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_server,
            total,
            open: Mutex::default(),
            open_total: AtomicUsize::new(0),
            capped: AtomicBool::new(per_server > 0),
        })
    }

    /// No limit at all (unit tests, tools).
    pub fn unlimited() -> Arc<Self> {
        Self::new(0, usize::MAX)
    }

    /// Replaces the servers' own caps (`max_conns`), by address; a server
    /// in two upstreams has the smaller one.
    pub fn set_caps(&self, caps: HashMap<String, usize>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.caps != caps {
            self.capped
                .store(self.per_server > 0 || !caps.is_empty(), Ordering::Release);
            open.caps = caps;
        }
    }

    pub fn try_acquire(self: &Arc<Self>, server: &str) -> Result<UpstreamPermit, AtLimit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let of_server = open.by_server.get(server).copied().unwrap_or(0);
        let cap = open.cap(server, self.per_server);
        let refused = if cap > 0 && of_server >= cap {
            Some(AtLimit::Server(cap))
        } else if open.total >= self.total {
            Some(AtLimit::Total(self.total))
        } else {
            None
        };
        if let Some(refused) = refused {
            let starts = match refused {
                AtLimit::Server(_) => open
                    .server_episodes
                    .entry(server.to_owned())
                    .or_default()
                    .refuse(),
                AtLimit::Total(_) => open.total_episode.refuse(),
            };
            drop(open);
            if starts {
                tracing::warn!(
                    server,
                    limit = %refused,
                    "upstream connection limit reached: requests that need a new connection get \
                     503 until some close"
                );
            }
            return Err(refused);
        }
        open.total += 1;
        self.open_total.store(open.total, Ordering::Release);
        match open.by_server.get_mut(server) {
            Some(count) => *count += 1,
            None => {
                open.by_server.insert(server.to_owned(), 1);
            }
        }
        Ok(UpstreamPermit {
            limits: Arc::clone(self),
            server: server.to_owned(),
        })
    }

    /// Open connections by server address, servers with none left out
    /// (for `/metrics`).
    pub fn open_by_server(&self) -> HashMap<String, usize> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.by_server.clone()
    }

    /// Whether one more connection to `server` would be allowed: a
    /// connection is pooled idle only then, so that idle ones never hold
    /// the slots other requests wait for.
    pub fn has_room(&self, server: &str) -> bool {
        if !self.capped.load(Ordering::Acquire) {
            return self.open_total.load(Ordering::Acquire) < self.total;
        }
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let of_server = open.by_server.get(server).copied().unwrap_or(0);
        let cap = open.cap(server, self.per_server);
        (cap == 0 || of_server < cap) && open.total < self.total
    }
}

impl Open {
    /// The server's cap; 0: none.
    fn cap(&self, server: &str, default: usize) -> usize {
        self.caps.get(server).copied().unwrap_or(default)
    }
}

impl Drop for UpstreamPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut open = limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        limits.open_total.store(open.total, Ordering::Release);
        let of_server = match open.by_server.get_mut(&self.server) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count
            }
            None => 0,
        };
        if of_server == 0 {
            open.by_server.remove(&self.server);
        }
        let cap = open.cap(&self.server, limits.per_server);
        let server_ended = (cap > 0 && of_server <= low_water(cap))
            .then(|| {
                let refused = open.server_episodes.get(&self.server)?.room();
                open.server_episodes.remove(&self.server);
                refused
            })
            .flatten();
        let total_ended = (open.total <= low_water(limits.total))
            .then(|| open.total_episode.room())
            .flatten();
        drop(open);
        if let Some(refused) = server_ended {
            tracing::info!(
                server = self.server,
                refused,
                "upstream server back under --max-server-connections"
            );
        }
        if let Some(refused) = total_ended {
            tracing::info!(refused, "upstream connections back under elb's total");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_server_and_total_caps() {
        let limits = UpstreamLimits::new(2, 3);
        let a1 = limits.try_acquire("a:1").expect("a1");
        let a2 = limits.try_acquire("a:1").expect("a2");
        assert_eq!(limits.try_acquire("a:1").err(), Some(AtLimit::Server(2)));
        assert!(!limits.has_room("a:1"));
        let b1 = limits.try_acquire("b:1").expect("b1");
        assert_eq!(limits.try_acquire("c:1").err(), Some(AtLimit::Total(3)));
        drop(a1);
        assert!(limits.has_room("a:1"));
        let a3 = limits.try_acquire("a:1").expect("a slot came back");
        drop((a2, a3, b1));
        let open = limits.open.lock().expect("lock");
        assert_eq!(open.total, 0);
        assert!(
            open.by_server.is_empty(),
            "no entry stays for a closed server"
        );
        assert!(open.server_episodes.is_empty());
    }

    #[test]
    fn a_servers_own_cap_comes_before_the_default() {
        let limits = UpstreamLimits::new(1, 100);
        limits.set_caps(HashMap::from([("big:1".to_owned(), 3)]));
        let big: Vec<_> = (0..3)
            .map(|_| limits.try_acquire("big:1").expect("within max_conns"))
            .collect();
        assert_eq!(limits.try_acquire("big:1").err(), Some(AtLimit::Server(3)));
        let small = limits.try_acquire("small:1").expect("first");
        assert_eq!(
            limits.try_acquire("small:1").err(),
            Some(AtLimit::Server(1))
        );
        drop((big, small));
    }

    #[test]
    fn no_per_server_cap_when_zero() {
        let limits = UpstreamLimits::new(0, 100);
        let permits: Vec<_> = (0..100)
            .map(|_| limits.try_acquire("a:1").expect("within the total"))
            .collect();
        assert!(limits.try_acquire("a:1").is_err());
        assert!(!limits.has_room("b:1"), "the total is reached");
        drop(permits);
        assert!(limits.has_room("a:1"));
        // A cap set later takes has_room off the lock-free path.
        limits.set_caps(HashMap::from([("a:1".to_owned(), 1)]));
        let one = limits.try_acquire("a:1").expect("first");
        assert!(!limits.has_room("a:1"));
        assert!(limits.has_room("b:1"));
        drop(one);
    }
}
