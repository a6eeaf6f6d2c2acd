//! Runs the providers: follows the discovery documents (start, restart on
//! change, stop on delete), runs each provider in its own task, and writes
//! each result as the upstream's whole server list in one store commit.
//!
//! A provider error never touches the upstream: the last good list stays,
//! the error is recorded on the board and logged once per change. Removed
//! servers drain and added ones start `initial` by themselves: the target
//! registry sees the new list when the commit is applied.
use std::{collections::BTreeMap, sync::Arc};

use tokio::{
    sync::{RwLock, watch},
    task::JoinHandle,
};

use super::{DiscoveredServer, DiscoveryBoard, Provider, leader::Fence, plan};
use crate::{
    config::{ConfigService, WriteError, discovery::Discovery},
    store::StoreError,
};

/// What the runner works with.
pub struct Runner {
    pub config: Arc<ConfigService>,
    /// Where each provider's state goes (`GET /__erulb__/discovery`).
    pub board: DiscoveryBoard,
    /// The admin API's write gate, held shared for each commit: while a new
    /// elb takes over (it holds the gate), results are not written here
    /// (the new elb's providers write them).
    pub write_gate: Arc<RwLock<()>>,
    /// With etcd's election: each result is committed only while this node
    /// leads, checked by etcd in the same transaction (a result in flight
    /// when the gate closes does not land after another node took over).
    /// `None`: unconditional (the embedded store).
    pub fence: Option<Fence>,
}

/// Starts the runner. `may_run`: whether this node runs providers (always
/// true with one node; leader election drives it with several): when it
/// turns false every provider stops (its task is aborted at once, and its
/// commits are fenced by [`Runner::fence`]), when true they start again.
/// Runs until `shutdown` turns true (or its sender is gone).
pub fn spawn(
    runner: Runner,
    may_run: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(Arc::new(runner), may_run, shutdown))
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
    runner: Arc<Runner>,
    mut may_run: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = &runner.config;
    let board = &runner.board;
    let mut changes = config.subscribe();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let wanted = if *may_run.borrow_and_update() {
            let documents = config.read(|manager| manager.discovery().clone()).await;
            // The read may wait for a commit in progress; the gate may have
            // closed meanwhile: start nothing then.
            if *may_run.borrow() {
                documents
            } else {
                BTreeMap::new()
            }
        } else {
            BTreeMap::new()
        };
        reconcile(&runner, &mut running, wanted);
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
    runner: &Arc<Runner>,
    running: &mut BTreeMap<String, Running>,
    wanted: BTreeMap<String, Arc<Discovery>>,
) {
    let board = &runner.board;
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
        let task = tokio::spawn(drive(Arc::clone(runner), Arc::clone(&document), provider));
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
async fn drive(runner: Arc<Runner>, document: Arc<Discovery>, mut provider: Box<dyn Provider>) {
    let board = &runner.board;
    let upstream = document.upstream.as_str();
    loop {
        let result = provider.next().await;
        let state = provider.state();
        let servers = match result {
            Ok(servers) => servers,
            Err(err) => {
                report_error(&runner, &document, err.to_string(), state);
                continue;
            }
        };
        // The store refused (etcd unreachable): the same result again
        // after a pause, since the provider may have nothing new for long
        // (a blocking query answers only on a change).
        let mut failures = 0u32;
        loop {
            let Ok(writing) = Arc::clone(&runner.write_gate).try_read_owned() else {
                tracing::info!(
                    upstream,
                    "a new elb is taking over: its provider writes this result"
                );
                break;
            };
            match apply(&runner, &document, &servers).await {
                Ok(Some(count)) => {
                    if board.success(upstream, count, state) {
                        tracing::info!(upstream, provider = %document.source, "discovery provider recovered");
                    }
                    break;
                }
                // The document changed under us (the runner restarts us),
                // or this node no longer leads (the runner stops us).
                Ok(None) => break,
                Err(message) => {
                    report_error(&runner, &document, message, state.clone());
                    failures = failures.saturating_add(1);
                    drop(writing);
                    tokio::time::sleep(STORE_RETRY.saturating_mul(failures.min(30))).await;
                }
            }
        }
    }
}

/// The pause before writing a result again, times the failures so far
/// (up to 30).
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Records an error; logs it when it is news.
fn report_error(
    runner: &Runner,
    document: &Discovery,
    message: String,
    state: serde_json::Map<String, serde_json::Value>,
) {
    if runner
        .board
        .error(&document.upstream, message.clone(), state)
    {
        tracing::warn!(upstream = document.upstream, provider = %document.source, error = message, "discovery provider failed; the upstream keeps its last servers");
    }
}

/// Writes `servers` as the upstream's server list in one commit; the
/// upstream's server count, or None when `document` is no longer the one
/// in effect or this node no longer leads (nothing written).
async fn apply(
    runner: &Runner,
    document: &Arc<Discovery>,
    servers: &[DiscoveredServer],
) -> Result<Option<usize>, String> {
    let upstream = &document.upstream;
    let guard = match &runner.fence {
        Some(fence) => match fence.current() {
            Some(guard) => Some(guard),
            // The gate just closed: the runner is stopping this provider.
            None => {
                tracing::debug!(upstream, "not the discovery leader: result not written");
                return Ok(None);
            }
        },
        None => None,
    };
    let entries = plan::server_entries(document, servers);
    let written = runner
        .config
        .write_guarded(guard.as_ref(), |manager| {
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
        .await;
    match written {
        Ok(count) => Ok(count),
        Err(WriteError::Store(err @ StoreError::Fenced { .. })) => {
            tracing::info!(upstream, error = %err, "discovery result not written");
            Ok(None)
        }
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::{ConfigManager, KeyLayout},
        store::{FileStore, KvOp, Store},
    };

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 2 s");
    }

    /// Providers start and stop with their documents and with the gate;
    /// shutdown ends the runner. The provider's Consul is a closed port on
    /// loopback, so it only records errors.
    #[tokio::test]
    async fn providers_follow_documents_and_the_gate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FileStore::open(dir.path().join("state.json")).expect("open");
        let config = ConfigService::new(
            ConfigManager::new(KeyLayout::new("ELB")),
            Store::File(store),
            None,
        );
        let board = DiscoveryBoard::default();
        let (gate, may_run) = watch::channel(true);
        let (stop, shutdown) = watch::channel(false);
        let task = spawn(
            Runner {
                config: Arc::clone(&config),
                board: board.clone(),
                write_gate: Arc::default(),
                fence: None,
            },
            may_run,
            shutdown,
        );
        let put = |doc: &'static str| KvOp::Put {
            key: "/ELB/discovery/web".into(),
            value: doc.into(),
        };
        let doc = r#"{"provider":"consul","address":"127.0.0.1:1","service":"web"}"#;
        config
            .write(|_| Ok((vec![put(doc)], ())))
            .await
            .expect("write");
        until("start", || board.report("web").is_some()).await;
        until("an error", || {
            board.report("web").is_some_and(|r| r["failing"] == true)
        })
        .await;
        // The gate closes: the provider stops; it opens: it starts again.
        gate.send_replace(false);
        until("stop", || board.report("web").is_none()).await;
        gate.send_replace(true);
        until("restart", || board.report("web").is_some()).await;
        // A changed document restarts it (a fresh report).
        let other = r#"{"provider":"consul","address":"127.0.0.1:1","service":"api"}"#;
        config
            .write(|_| Ok((vec![put(other)], ())))
            .await
            .expect("write");
        until("restart with the new document", || {
            board
                .report("web")
                .is_some_and(|r| r["provider"] == "consul (service \"api\")")
        })
        .await;
        config
            .write(|_| {
                Ok((
                    vec![KvOp::Delete {
                        key: "/ELB/discovery/web".into(),
                    }],
                    (),
                ))
            })
            .await
            .expect("delete");
        until("stop on delete", || board.report("web").is_none()).await;
        // An upstream's servers are never touched by a failing provider.
        assert!(config.read(|m| m.upstreams().is_empty()).await);
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the runner stops on shutdown")
            .expect("no panic");
    }
}
