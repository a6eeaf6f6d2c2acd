//! The counters the request path bumps: atomics hung on the configuration
//! objects (an upstream's servers, a domain), so a request reaches its
//! cells through the snapshot it already holds, with no label lookup, map
//! or lock. A scrape walks the current snapshot, so the series of removed
//! upstreams, servers and domains are gone with them.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::histogram::Histogram;
use crate::upstream::Server;

/// Status classes `1xx` to `5xx`, the `code` label.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`]; anything outside 100..=599 counts as 5xx
/// (hyper produces no such status, but the count must go somewhere).
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

/// Requests by status class.
#[derive(Debug, Default)]
pub struct ByClass([AtomicU64; STATUS_CLASSES.len()]);

impl ByClass {
    pub fn record(&self, status: u16) {
        if let Some(cell) = self.0.get(status_class(status)) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> [u64; STATUS_CLASSES.len()] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// One server of one upstream.
#[derive(Debug, Default)]
pub struct ServerCells {
    /// Final answers of requests whose last try was on this server.
    pub requests: ByClass,
    /// Connections that could not be opened (refused, timed out, TLS).
    pub connect_failures: AtomicU64,
    /// Tries that timed out: connecting or waiting for the response head.
    pub timeouts: AtomicU64,
    /// Tries under way (connecting, sending, waiting for the head).
    pub active: AtomicU64,
}

/// Per upstream, whatever the server.
#[derive(Debug, Default)]
pub struct UpstreamLevel {
    /// Answers given without any server tried (none live, an upgrade that
    /// found none).
    pub no_server: ByClass,
    /// Tries after the first.
    pub retries: AtomicU64,
    /// From the request's arrival to its response head.
    pub request_seconds: Histogram,
    /// The last try's time to the response head, connecting included.
    pub upstream_seconds: Histogram,
}

/// An upstream's cells: its own, and one per server in the upstream's
/// server order (the balancer's indexes).
#[derive(Debug, Default, Clone)]
pub struct UpstreamCells {
    pub level: Arc<UpstreamLevel>,
    pub servers: Vec<Arc<ServerCells>>,
}

impl UpstreamCells {
    /// Cells for a (new or changed) definition: servers that were already
    /// there keep theirs, so counters survive unrelated edits.
    pub fn carry(
        previous: Option<&UpstreamCells>,
        previous_servers: &[Server],
        servers: &[Server],
    ) -> Self {
        let kept = |name: &str| {
            let previous = previous?;
            let index = previous_servers.iter().position(|s| s.name == name)?;
            previous.servers.get(index).cloned()
        };
        Self {
            level: previous.map(|p| Arc::clone(&p.level)).unwrap_or_default(),
            servers: servers
                .iter()
                .map(|server| kept(&server.name).unwrap_or_default())
                .collect(),
        }
    }

    pub fn server(&self, index: usize) -> Option<&ServerCells> {
        self.servers.get(index).map(Arc::as_ref)
    }

    /// Total requests and 5xx answers, over every server and none.
    pub fn totals(&self) -> (u64, u64) {
        let mut requests = 0;
        let mut errors = 0;
        let classes = self
            .servers
            .iter()
            .map(|s| s.requests.get())
            .chain(std::iter::once(self.level.no_server.get()));
        for by_class in classes {
            requests += by_class.iter().sum::<u64>();
            errors += by_class[4];
        }
        (requests, errors)
    }
}

/// One domain's requests, whatever upstream they went to.
#[derive(Debug, Default)]
pub struct DomainCells {
    pub requests: ByClass,
    pub request_seconds: Histogram,
}

impl DomainCells {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests.record(status);
        self.request_seconds.observe(elapsed);
    }
}

/// Counts a try as active until dropped.
pub struct ActiveTry<'a>(Option<&'a ServerCells>);

impl<'a> ActiveTry<'a> {
    pub fn start(cells: Option<&'a ServerCells>) -> Self {
        if let Some(cells) = cells {
            cells.active.fetch_add(1, Ordering::Relaxed);
        }
        Self(cells)
    }
}

impl Drop for ActiveTry<'_> {
    fn drop(&mut self) {
        if let Some(cells) = self.0 {
            cells.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ServerParams;

    fn servers(names: &[&str]) -> Vec<Server> {
        names
            .iter()
            .map(|n| Server::new(*n, ServerParams::default()))
            .collect()
    }

    #[test]
    fn classes() {
        assert_eq!(status_class(101), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(308), 2);
        assert_eq!(status_class(404), 3);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(0), 4);
        assert_eq!(status_class(700), 4);
    }

    #[test]
    fn kept_servers_keep_their_counts_and_new_ones_start_at_zero() {
        let old_servers = servers(&["a:1", "b:1"]);
        let old = UpstreamCells::carry(None, &[], &old_servers);
        old.servers[1].requests.record(200);
        old.level.no_server.record(502);
        let new_servers = servers(&["b:1", "c:1"]);
        let new = UpstreamCells::carry(Some(&old), &old_servers, &new_servers);
        assert_eq!(new.servers[0].requests.get()[1], 1);
        assert_eq!(new.servers[1].requests.get(), [0; 5]);
        assert_eq!(new.totals(), (2, 1));
    }

    #[test]
    fn active_tries_count_while_alive() {
        let cells = ServerCells::default();
        {
            let _a = ActiveTry::start(Some(&cells));
            let _b = ActiveTry::start(Some(&cells));
            assert_eq!(cells.active.load(Ordering::Relaxed), 2);
        }
        assert_eq!(cells.active.load(Ordering::Relaxed), 0);
    }
}
