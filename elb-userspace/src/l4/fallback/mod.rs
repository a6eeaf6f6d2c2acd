//! The userspace L4 data plane, for when XDP cannot be attached: the same
//! services (`/$ELBNAME/services/<name>`), served by binding each VIP
//! locally and proxying TCP connections and UDP sessions. A new flow gets
//! the server the XDP program would pick (the same Maglev plan and flow
//! hash, [`crate::l4::plan`]); a configuration change swaps the plan at
//! once and leaves established flows on their server (until the server's
//! drain ends, when its upstream has a policy: then its flows are closed);
//! the deny-list refuses clients as XDP drops them.
//!
//! Pure parts: [`deny`] (deny-list lookup), [`sessions`] (UDP session
//! table), [`route`] (plan and picks), [`set::changes`] (what a snapshot
//! starts and stops), [`stats`]. I/O: [`tcp`], [`udp`], [`set`] and the
//! loop here.
pub mod deny;
pub mod l7_guard;
pub mod route;
pub mod service;
pub mod sessions;
pub mod set;
pub mod stats;
pub mod tcp;
pub mod udp;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use elb_common::l4::UDP_IDLE_NS;
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use self::{
    deny::DenyList, l7_guard::ListenerGuard, service::ServiceRuntime, set::ListenerSet,
    stats::ServiceCounters,
};
use crate::{
    config::{L4Proto, SnapshotHandle},
    l4::sync::Applied,
    takeover::HandoverSockets,
};

/// UDP sessions per service; each holds a socket (a file descriptor).
pub const DEFAULT_MAX_UDP_SESSIONS: usize = 16_384;
/// How often the snapshot is looked at even without a change notification.
const TICK: Duration = Duration::from_secs(1);
/// VIPs that could not be bound are tried again this often (in ticks).
const RETRY_TICKS: u32 = 2;
/// How long shutdown waits for flows to close; TCP relays end after it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error(
        "service {service:?}: cannot bind {proto} {vip} (in userspace mode the VIP must be \
         a local address): {source}"
    )]
    Bind {
        service: String,
        proto: L4Proto,
        vip: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct FallbackSettings {
    /// Server connect timeout (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// Idle UDP sessions end after this; the XDP program's UDP timeout.
    pub udp_idle_timeout: Duration,
    pub max_udp_sessions: usize,
    /// VIP sockets received in a takeover, and the registry for the next.
    pub sockets: HandoverSockets,
}

impl FallbackSettings {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            udp_idle_timeout: Duration::from_nanos(UDP_IDLE_NS),
            max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
            sockets: HandoverSockets::default(),
        }
    }

    /// VIPs come from (and are offered to) a takeover through `sockets`.
    pub fn with_handover(mut self, sockets: HandoverSockets) -> Self {
        self.sockets = sockets;
        self
    }
}

/// What every service task shares.
pub struct Context {
    settings: FallbackSettings,
    /// Also read by the HTTP listeners, through [`ListenerGuard`].
    acl: Arc<ArcSwap<DenyList>>,
    shutdown: watch::Receiver<bool>,
}

/// Waits until the channel says stop, or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Waits until a flow's server has drained (`token` cancelled); forever
/// for a flow without a token (its upstream has no policy).
async fn drained(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

type Published = Arc<ArcSwap<Vec<Arc<ServiceRuntime>>>>;

/// The running fallback data plane.
pub struct L4Userspace {
    stats: UserspaceStats,
    task: JoinHandle<()>,
    applied: watch::Receiver<Applied>,
}

/// A cheap, cloneable view of the fallback's statistics (for the admin
/// API), valid after shutdown too.
#[derive(Clone)]
pub struct UserspaceStats {
    services: Published,
    guard: ListenerGuard,
}

impl L4Userspace {
    /// Binds every service of the current snapshot (logging each one that
    /// cannot be), then follows the configuration: `changes` is
    /// [`crate::config::ConfigService::subscribe`]; the snapshot is also
    /// looked at every second. Runs until `shutdown` turns true.
    /// `health`: the target registry's generation; a gate change re-plans
    /// the services (health changes do not publish a snapshot).
    pub async fn start(
        snapshots: SnapshotHandle,
        mut changes: watch::Receiver<u64>,
        health: watch::Receiver<u64>,
        settings: FallbackSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let acl = Arc::new(ArcSwap::from_pointee(DenyList::default()));
        let guard = ListenerGuard::new(Arc::clone(&acl));
        let ctx = Arc::new(Context {
            settings,
            acl,
            shutdown: shutdown.clone(),
        });
        let mut set = ListenerSet::new(ctx);
        let generation = *changes.borrow_and_update();
        let applied = snapshots.load_full();
        set.apply(&applied).await;
        let services: Published = Arc::new(ArcSwap::from_pointee(set.runtimes()));
        let (applied_tx, applied_rx) = watch::channel(Applied {
            generation,
            error: None,
        });
        let task = tokio::spawn(follow(
            set,
            snapshots,
            Changes {
                config: changes,
                health,
                applied: applied_tx,
            },
            shutdown,
            Arc::clone(&services),
            applied,
        ));
        Self {
            stats: UserspaceStats { services, guard },
            task,
            applied: applied_rx,
        }
    }

    /// Which configuration generation the fallback serves.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    pub fn stats(&self) -> UserspaceStats {
        self.stats.clone()
    }

    /// The deny-list check for the HTTP listeners (XDP does it for them
    /// when it runs).
    pub fn listener_guard(&self) -> ListenerGuard {
        self.stats.guard.clone()
    }

    /// See [`UserspaceStats::stats_json`].
    pub fn stats_json(&self) -> Value {
        self.stats.stats_json()
    }

    /// After `shutdown` was sent: waits until every listener is closed and
    /// the flows have ended (at most a couple of seconds).
    pub async fn wait(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "L4 userspace data plane task failed");
        }
    }
}

impl crate::l4::stats::L4StatsSource for UserspaceStats {
    fn stats_json(&self) -> Result<Value, crate::l4::stats::L4StatsError> {
        Ok(UserspaceStats::stats_json(self))
    }
}

impl UserspaceStats {
    /// `{"dataplane": "userspace", "totals": {...}, "services": {name:
    /// {"vip", "proto", "listening", ["error",] "new_flows", "active_flows",
    /// "bytes_from_client", "bytes_to_client", "acl_drops",
    /// "connect_failures", "no_server_drops", "session_limit_drops",
    /// "drain_cuts", "servers": {"IP:PORT": {"new_flows", "active_flows",
    /// "bytes"}}}},
    /// "l7_acl_drops"}`; the last counts HTTP connections refused by the
    /// deny-list.
    pub fn stats_json(&self) -> Value {
        let services = self.services.load();
        let mut totals = ServiceCounters::default();
        let mut listening = 0usize;
        let mut by_name = serde_json::Map::new();
        for service in services.iter() {
            let counters = service.counters();
            totals += counters;
            let json = service.stats_json(counters);
            if json.get("listening") == Some(&Value::Bool(true)) {
                listening += 1;
            }
            by_name.insert(service.name.clone(), json);
        }
        json!({
            "dataplane": "userspace",
            "totals": totals,
            "services_listening": listening,
            "services_total": services.len(),
            "services": by_name,
            "l7_acl_drops": self.guard.refused(),
        })
    }
}

fn active_flows(services: &Published) -> u64 {
    services
        .load()
        .iter()
        .map(|s| s.counters().active_flows)
        .sum()
}

/// What the fallback follows, and where it says what it applied.
struct Changes {
    config: watch::Receiver<u64>,
    health: watch::Receiver<u64>,
    applied: watch::Sender<Applied>,
}

async fn follow(
    mut set: ListenerSet,
    snapshots: SnapshotHandle,
    mut changes: Changes,
    mut shutdown: watch::Receiver<bool>,
    published: Published,
    mut applied: Arc<crate::config::Snapshot>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut notified, mut health_open) = (true, true);
    let mut ticks: u32 = 0;
    loop {
        let mut gates_changed = false;
        tokio::select! {
            changed = changes.config.changed(), if notified => {
                // Without a notifier the tick still polls the snapshot.
                notified = changed.is_ok();
            }
            changed = changes.health.changed(), if health_open => {
                health_open = changed.is_ok();
                gates_changed = health_open;
            }
            _ = tick.tick() => ticks = ticks.wrapping_add(1),
            _ = stopped(&mut shutdown) => break,
        }
        let generation = *changes.config.borrow_and_update();
        let current = snapshots.load_full();
        if !Arc::ptr_eq(&current, &applied) || gates_changed {
            set.apply(&current).await;
            published.store(Arc::new(set.runtimes()));
            applied = current;
        } else if set.has_unbound() && ticks.is_multiple_of(RETRY_TICKS) {
            set.retry_unbound();
        }
        changes.applied.send_if_modified(|last| {
            let newer = last.generation != generation;
            last.generation = generation;
            newer
        });
    }
    set.shutdown().await;
    // A little past the relays' own bound, so that they end first.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT + Duration::from_millis(500);
    while active_flows(&published) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = active_flows(&published);
    if left > 0 {
        tracing::warn!(flows = left, "L4 userspace: flows still open at shutdown");
    } else {
        tracing::info!("L4 userspace data plane stopped");
    }
}

#[cfg(test)]
mod tests;
