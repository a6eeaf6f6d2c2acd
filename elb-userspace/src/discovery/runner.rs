//! Runs the providers: follows the discovery documents (start, restart on
//! change, stop on delete), runs each provider in its own task, and writes
//! each result as the upstream's whole server list in one store commit.
//!
//! A provider error never touches the upstream: the last good list stays,
//! the error is recorded on the board and logged once per change. Removed
//! servers drain and added ones start `initial` by themselves: the target
//! registry sees the new list when the commit is applied.
use std::{collections::BTreeMap, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};

use super::{DiscoveredServer, DiscoveryBoard, Provider, plan};
use crate::config::{ConfigService, discovery::Discovery};

/// Starts the runner. `may_run`: whether this node runs providers (always
/// true with one node; leader election drives it with several): when it
/// turns false every provider stops, when true they start again.
/// Runs until `shutdown` turns true (or its sender is gone).
pub fn spawn(
    config: Arc<ConfigService>,
    board: DiscoveryBoard,
    may_run: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(config, board, may_run, shutdown))
}

struct Running {
    document: Arc<Discovery>,
    /// None: the provider cannot run in this build.
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn run(
    config: Arc<ConfigService>,
    board: DiscoveryBoard,
    mut may_run: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = config.subscribe();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let wanted = if *may_run.borrow_and_update() {
            config.read(|manager| manager.discovery().clone()).await
        } else {
            BTreeMap::new()
        };
        reconcile(&config, &board, &mut running, wanted);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            changed = may_run.changed() => if changed.is_err() {
                // No one decides any more: stay as we are until shutdown.
                let _ = shutdown.changed().await;
                break;
            },
            _ = shutdown.changed() => {}
        }
    }
    for (upstream, provider) in running {
        provider.stop();
        board.stopped(&upstream);
    }
}

/// Stops providers whose document is gone or changed, starts the missing.
fn reconcile(
    config: &Arc<ConfigService>,
    board: &DiscoveryBoard,
    running: &mut BTreeMap<String, Running>,
    wanted: BTreeMap<String, Arc<Discovery>>,
) {
    running.retain(|upstream, provider| {
        let keep = wanted
            .get(upstream)
            .is_some_and(|document| **document == *provider.document);
        if !keep {
            provider.stop();
            board.stopped(upstream);
            tracing::info!(upstream, provider = %provider.document.source, "discovery provider stopped");
        }
        keep
    });
    for (upstream, document) in wanted {
        if running.contains_key(&upstream) {
            continue;
        }
        let provider = match super::build(&document) {
            Ok(provider) => provider,
            Err(err) => {
                // Only a hand-written store gets here: admin PUT refuses it.
                tracing::error!(upstream, error = %err, "discovery provider cannot run; the upstream's servers stay as they are");
                board.not_running(&upstream, document.source.to_string(), err.to_string());
                running.insert(
                    upstream,
                    Running {
                        document,
                        task: None,
                    },
                );
                continue;
            }
        };
        tracing::info!(upstream, provider = %document.source, "discovery provider started");
        board.started(&upstream, document.source.to_string());
        let task = tokio::spawn(drive(
            Arc::clone(config),
            board.clone(),
            Arc::clone(&document),
            provider,
        ));
        running.insert(
            upstream,
            Running {
                document,
                task: Some(task),
            },
        );
    }
}

/// One provider's loop: each result applied, each error recorded.
async fn drive(
    config: Arc<ConfigService>,
    board: DiscoveryBoard,
    document: Arc<Discovery>,
    mut provider: Box<dyn Provider>,
) {
    let upstream = document.upstream.as_str();
    loop {
        let result = provider.next().await;
        let state = provider.state();
        let outcome = match result {
            Ok(servers) => apply(&config, &document, &servers).await,
            Err(err) => Err(err.to_string()),
        };
        match outcome {
            Ok(Some(count)) => {
                if board.report(upstream).is_some_and(|r| r["failing"] == true) {
                    tracing::info!(upstream, provider = %document.source, "discovery provider recovered");
                }
                board.success(upstream, count, state);
            }
            // The document changed under us: the runner restarts us.
            Ok(None) => {}
            Err(message) => {
                if board.error(upstream, message.clone(), state) {
                    tracing::warn!(upstream, provider = %document.source, error = message, "discovery provider failed; the upstream keeps its last servers");
                }
            }
        }
    }
}

/// Writes `servers` as the upstream's server list in one commit; the
/// upstream's server count, or None when `document` is no longer the one
/// in effect (nothing written).
async fn apply(
    config: &ConfigService,
    document: &Arc<Discovery>,
    servers: &[DiscoveredServer],
) -> Result<Option<usize>, String> {
    let upstream = &document.upstream;
    let entries = plan::server_entries(document, servers);
    config
        .write(|manager| {
            let current = manager.discovery().get(upstream);
            if current.is_none_or(|current| **current != **document) {
                return Ok((Vec::new(), None));
            }
            // A server that is elb's own listener would loop: leave it out.
            let entries = entries
                .into_iter()
                .filter(|(server, _)| match manager.own_addrs().check(server) {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::warn!(upstream, server, error = %err, "discovered server left out");
                        false
                    }
                })
                .collect();
            let ops = plan::replace_ops(manager.kv(), manager.layout(), upstream, &entries);
            Ok((ops, Some(entries.len())))
        })
        .await
        .map_err(|err| err.to_string())
}
