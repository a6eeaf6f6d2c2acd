//! The background service that runs the checks the target registry asks
//! for (one checker per configured, serving server of an upstream with a
//! policy), feeds their outcomes back, logs each state transition once, and
//! moves the registry's clock along (drain ends, slow start).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    checker::spawn_checker,
    state::{CheckRecord, TargetState},
};
use crate::{
    targets::{CheckJob, CheckState, TargetRegistry},
    tls::UpstreamTls,
};

/// How often drains and slow starts are looked at.
const TICK: Duration = Duration::from_millis(100);

struct Running {
    job: CheckJob,
    stop: watch::Sender<bool>,
}

/// Runs the monitor on a thread of its own with a single-threaded runtime,
/// until `shutdown`. Thousands of checks a second, each a short wake-up,
/// cost several times more CPU on a multi-threaded runtime, which wakes
/// its other workers (a cross-CPU interrupt each, dear on a VM) for work
/// that one thread does in a few microseconds.
pub fn spawn_monitor(
    registry: Arc<TargetRegistry>,
    tls: Arc<UpstreamTls>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("elb-health".into())
        .spawn(move || runtime.block_on(run_monitor(registry, tls, shutdown)))
}

/// The monitor itself: runs until `shutdown`, then stops every checker.
pub async fn run_monitor(
    registry: Arc<TargetRegistry>,
    tls: Arc<UpstreamTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut syncs = registry.subscribe_syncs();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    syncs.borrow_and_update();
    reconcile(&registry, &tls, &mut running);
    loop {
        tokio::select! {
            changed = syncs.changed() => {
                if changed.is_err() {
                    break;
                }
                syncs.borrow_and_update();
                reconcile(&registry, &tls, &mut running);
            }
            _ = tick.tick() => registry.tick(Instant::now()),
            _ = shutdown.changed() => break,
        }
    }
    for (_, checker) in running {
        let _ = checker.stop.send(true);
    }
}

/// Starts checkers for new jobs, restarts those whose check or epoch
/// changed, stops those no longer wanted.
fn reconcile(
    registry: &Arc<TargetRegistry>,
    tls: &Arc<UpstreamTls>,
    running: &mut HashMap<(String, String), Running>,
) {
    let mut wanted: HashMap<(String, String), CheckJob> = registry
        .check_jobs()
        .into_iter()
        .map(|job| ((job.upstream.clone(), job.server.clone()), job))
        .collect();
    running.retain(|key, checker| {
        let keep = wanted.get(key).is_some_and(|job| *job == checker.job);
        if keep {
            wanted.remove(key);
        } else {
            let _ = checker.stop.send(true);
        }
        keep
    });
    let started = wanted.len();
    for (key, job) in wanted {
        let (stop, stop_rx) = watch::channel(false);
        spawn_checker(
            job.server.clone(),
            job.check.clone(),
            Arc::clone(tls),
            reporter(Arc::clone(registry), job.clone()),
            stop_rx,
        );
        running.insert(key, Running { job, stop });
    }
    if started > 0 {
        tracing::info!(started, checked = running.len(), "health checkers started");
    }
}

/// Turns one server's outcomes into its check-driven state.
fn reporter(
    registry: Arc<TargetRegistry>,
    job: CheckJob,
) -> impl FnMut(super::CheckOutcome) + Send + 'static {
    let mut record = CheckRecord::new(Instant::now());
    move |outcome| {
        let now = Instant::now();
        let key = (job.upstream.as_str(), job.server.as_str(), job.epoch);
        let transition = record.record(&outcome, &job.check, now);
        if let Some(last) = record.last() {
            registry.record_last_check(key, last.clone());
        }
        let Some(transition) = transition else {
            return;
        };
        let state = match transition.to {
            TargetState::Healthy => CheckState::Healthy,
            TargetState::Unhealthy => CheckState::Unhealthy,
            _ => CheckState::Initial,
        };
        if state == CheckState::Unhealthy {
            tracing::warn!(upstream = job.upstream, server = job.server, from = %transition.from,
                reason = transition.reason, "server unhealthy");
        } else {
            tracing::info!(upstream = job.upstream, server = job.server, from = %transition.from,
                to = %transition.to, reason = transition.reason, "server health changed");
        }
        registry.record_check(key, state, transition.reason, now);
    }
}
