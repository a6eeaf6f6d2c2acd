//! Port exhaustion, told in the log: XDP counts the new flows it drops for
//! want of a NAT port per server (`elb_nat_fail`); this watches the counts
//! and logs which service and server ran out, at most once per
//! (service, server) every [`LOG_INTERVAL`], however many SYNs it drops.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use super::{maps::StatsMaps, stats::StatsIndex};

/// Least time between two lines for one (service, server).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the counters are read.
const POLL: Duration = Duration::from_secs(1);

/// One line to log.
#[derive(Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub service: String,
    pub vip: SocketAddr,
    pub server: SocketAddr,
    /// New flows to the server dropped since this (service, server)'s last
    /// line (or since elb started watching).
    pub dropped: u64,
}

/// The rate limit's memory; pure (counts come in, lines go out).
#[derive(Debug, Default)]
pub struct ExhaustionLog {
    /// Per (service, server): the server's count at its last line, and
    /// when that was.
    logged: HashMap<(String, SocketAddr), (u64, Option<Instant>)>,
}

impl ExhaustionLog {
    /// The lines due at `now`, given each server id's failure count. A
    /// (service, server) seen for the first time only records its count:
    /// drops before elb started (pinned counters survive restarts) are not
    /// news.
    pub fn check(
        &mut self,
        now: Instant,
        index: &StatsIndex,
        mut failures: impl FnMut(u32) -> Option<u64>,
    ) -> Vec<Exhausted> {
        let mut lines = Vec::new();
        for service in &index.services {
            if service.id.is_none() {
                continue;
            }
            for &(server, server_id) in &service.servers {
                let Some(count) = failures(server_id) else {
                    continue;
                };
                let key = (service.name.clone(), server);
                let Some((last_count, last_at)) = self.logged.get_mut(&key) else {
                    self.logged.insert(key, (count, None));
                    continue;
                };
                // Below the last count: the id went to another server and
                // its counters were zeroed.
                if count < *last_count {
                    *last_count = count;
                    continue;
                }
                let due = last_at.is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
                if count > *last_count && due {
                    lines.push(Exhausted {
                        service: service.name.clone(),
                        vip: service.vip,
                        server,
                        dropped: count - *last_count,
                    });
                    *last_count = count;
                    *last_at = Some(now);
                }
            }
        }
        lines
    }
}

/// Watches the counters until `shutdown`.
pub async fn watch(
    maps: StatsMaps,
    index: Arc<ArcSwap<StatsIndex>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut log = ExhaustionLog::default();
    let mut ticks = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let index = index.load();
        let lines = log.check(Instant::now(), &index, |id| maps.nat_failures(id).ok());
        for line in lines {
            tracing::warn!(
                service = line.service,
                vip = %line.vip,
                server = %line.server,
                dropped = line.dropped,
                "no free NAT port: new flows to this server were dropped; widen --nat-ports, \
                 or give the service more SNAT addresses (\"snat\": [..])"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::L4Proto, l4::stats::IndexedService};

    fn index() -> StatsIndex {
        let service = |name: &str, vip: &str, servers: &[(&str, u32)]| IndexedService {
            name: name.into(),
            vip: vip.parse().expect("vip"),
            proto: L4Proto::Tcp,
            id: Some(0),
            servers: servers
                .iter()
                .map(|(addr, id)| (addr.parse().expect("server"), *id))
                .collect(),
        };
        StatsIndex {
            services: vec![
                service(
                    "web",
                    "10.0.0.1:80",
                    &[("10.1.0.1:8080", 3), ("10.1.0.2:8080", 4)],
                ),
                service("api", "10.0.0.2:80", &[("10.1.0.1:8080", 3)]),
            ],
        }
    }

    #[test]
    fn a_server_that_runs_out_is_logged_per_service_at_most_once_per_interval() {
        let index = index();
        let mut log = ExhaustionLog::default();
        let mut counts = HashMap::from([(3u32, 5u64), (4, 0)]);
        let t0 = Instant::now();
        assert!(
            log.check(t0, &index, |id| counts.get(&id).copied())
                .is_empty(),
            "drops from before the watch are not news"
        );
        counts.insert(3, 105);
        let lines = log.check(t0 + POLL, &index, |id| counts.get(&id).copied());
        let named: Vec<(&str, String, u64)> = lines
            .iter()
            .map(|l| (l.service.as_str(), l.server.to_string(), l.dropped))
            .collect();
        assert_eq!(
            named,
            [
                ("web", "10.1.0.1:8080".to_owned(), 100),
                ("api", "10.1.0.1:8080".to_owned(), 100)
            ]
        );
        assert_eq!(lines[0].vip, "10.0.0.1:80".parse().expect("vip"));

        // More drops within the interval: quiet; after it, one line with
        // everything since.
        counts.insert(3, 200);
        assert!(
            log.check(t0 + 2 * POLL, &index, |id| counts.get(&id).copied())
                .is_empty()
        );
        counts.insert(3, 250);
        let later = t0 + POLL + LOG_INTERVAL;
        let lines = log.check(later, &index, |id| counts.get(&id).copied());
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.dropped == 145));
        // No new drops: nothing, however long.
        assert!(
            log.check(later + 10 * LOG_INTERVAL, &index, |id| counts
                .get(&id)
                .copied())
                .is_empty()
        );
        // A reset counter (id reused) is a new baseline, not a negative.
        counts.insert(3, 1);
        assert!(
            log.check(later + 20 * LOG_INTERVAL, &index, |id| counts
                .get(&id)
                .copied())
                .is_empty()
        );
        counts.insert(3, 2);
        assert_eq!(
            log.check(later + 30 * LOG_INTERVAL, &index, |id| counts
                .get(&id)
                .copied())[0]
                .dropped,
            1
        );
    }
}
