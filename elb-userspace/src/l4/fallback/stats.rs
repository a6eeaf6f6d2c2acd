//! The fallback's counters (atomics shared by every flow of a service) and
//! their JSON form for `/__erulb__/stats`.
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// Per service; every field only grows except `active_flows`.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub new_flows: AtomicU64,
    pub active_flows: AtomicU64,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub acl_drops: AtomicU64,
    pub connect_failures: AtomicU64,
    /// New flows dropped because the service had no usable server.
    pub no_server_drops: AtomicU64,
    /// New UDP flows dropped because the session table was full.
    pub session_limit_drops: AtomicU64,
    /// Flows closed because their server's drain ended.
    pub drain_cuts: AtomicU64,
}

/// Per server of a service.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub new_flows: AtomicU64,
    pub active_flows: AtomicU64,
    /// Both directions.
    pub bytes: AtomicU64,
}

/// A point-in-time copy of [`ServiceStats`], summable into totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCounters {
    pub new_flows: u64,
    pub active_flows: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub acl_drops: u64,
    pub connect_failures: u64,
    pub no_server_drops: u64,
    pub session_limit_drops: u64,
    pub drain_cuts: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounters {
    pub new_flows: u64,
    pub active_flows: u64,
    pub bytes: u64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ServiceStats {
    pub fn counters(&self) -> ServiceCounters {
        ServiceCounters {
            new_flows: get(&self.new_flows),
            active_flows: get(&self.active_flows),
            bytes_from_client: get(&self.bytes_from_client),
            bytes_to_client: get(&self.bytes_to_client),
            acl_drops: get(&self.acl_drops),
            connect_failures: get(&self.connect_failures),
            no_server_drops: get(&self.no_server_drops),
            session_limit_drops: get(&self.session_limit_drops),
            drain_cuts: get(&self.drain_cuts),
        }
    }
}

impl ServerStats {
    pub fn counters(&self) -> ServerCounters {
        ServerCounters {
            new_flows: get(&self.new_flows),
            active_flows: get(&self.active_flows),
            bytes: get(&self.bytes),
        }
    }
}

impl std::ops::AddAssign for ServiceCounters {
    fn add_assign(&mut self, other: Self) {
        self.new_flows += other.new_flows;
        self.active_flows += other.active_flows;
        self.bytes_from_client += other.bytes_from_client;
        self.bytes_to_client += other.bytes_to_client;
        self.acl_drops += other.acl_drops;
        self.connect_failures += other.connect_failures;
        self.no_server_drops += other.no_server_drops;
        self.session_limit_drops += other.session_limit_drops;
        self.drain_cuts += other.drain_cuts;
    }
}

/// Counts a flow as active (service and server) for as long as it lives,
/// including when its task is aborted.
#[derive(Debug)]
pub struct ActiveFlow {
    service: Arc<ServiceStats>,
    server: Arc<ServerStats>,
}

impl ActiveFlow {
    /// Counts a new flow to `server`.
    pub fn start(service: Arc<ServiceStats>, server: Arc<ServerStats>) -> Self {
        bump(&service.new_flows);
        bump(&service.active_flows);
        bump(&server.new_flows);
        bump(&server.active_flows);
        Self { service, server }
    }

    pub fn service(&self) -> &ServiceStats {
        &self.service
    }

    pub fn server(&self) -> &ServerStats {
        &self.server
    }
}

impl Drop for ActiveFlow {
    fn drop(&mut self) {
        self.service.active_flows.fetch_sub(1, Ordering::Relaxed);
        self.server.active_flows.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets one message of a kind through per interval and counts the rest,
/// so a dead server or a flood does not flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(LimiterState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log now, mentioning the `n` messages held back since the
    /// last one. `None`: hold this one back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_flows_go_down_when_the_flow_ends() {
        let service = Arc::new(ServiceStats::default());
        let server = Arc::new(ServerStats::default());
        {
            let _a = ActiveFlow::start(Arc::clone(&service), Arc::clone(&server));
            let _b = ActiveFlow::start(Arc::clone(&service), Arc::clone(&server));
            assert_eq!(service.counters().active_flows, 2);
            assert_eq!(server.counters().active_flows, 2);
        }
        assert_eq!(service.counters().active_flows, 0);
        assert_eq!(service.counters().new_flows, 2);
        assert_eq!(server.counters().new_flows, 2);
        assert_eq!(server.counters().active_flows, 0);
    }

    #[test]
    fn counters_sum() {
        let mut total = ServiceCounters::default();
        let one = ServiceCounters {
            new_flows: 2,
            acl_drops: 1,
            bytes_to_client: 10,
            ..ServiceCounters::default()
        };
        total += one;
        total += one;
        assert_eq!(total.new_flows, 4);
        assert_eq!(total.acl_drops, 2);
        assert_eq!(total.bytes_to_client, 20);
    }

    #[test]
    fn limiter_lets_one_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(11)), None);
    }
}
