//! Keeps the configuration in step with etcd: list at start, then watch from
//! the listed revision + 1, applying every change live. On compaction or a
//! broken watch, list again and watch again. When etcd is unreachable at
//! start, serve the local snapshot of its last known state meanwhile.
use std::{path::Path, sync::Arc, time::Duration};

use etcd_client::EventType;

use crate::{
    config::ConfigService,
    store::{EtcdStore, KvOp, StoreError, file::read_state_file},
};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Loads the initial configuration and spawns the watch loop.
pub async fn start(
    config: Arc<ConfigService>,
    etcd: EtcdStore,
    snapshot_file: &Path,
    takeover: bool,
) -> anyhow::Result<()> {
    let revision = match etcd.load().await {
        Ok((kv, revision)) => {
            etcd.link().up();
            tracing::info!(
                endpoints = etcd.endpoints(),
                revision,
                keys = kv.len(),
                "loaded the configuration from etcd"
            );
            config.control().set_connected(true);
            log_skipped(&config.replace_from_store(kv, revision).await);
            Some(revision)
        }
        // Wrong credentials or TLS trust: serving a stale snapshot would
        // hide it, and retrying does not help.
        Err(err @ StoreError::EtcdAccess { .. }) => return Err(err.into()),
        Err(err) => {
            etcd.link().down(&err);
            match read_state_file(snapshot_file)? {
                Some(snapshot) => {
                    tracing::warn!(error = %err, snapshot = %snapshot_file.display(), revision = snapshot.revision,
                        "etcd is unreachable; serving the local snapshot of its last known state");
                    log_skipped(
                        &config
                            .replace_from_store(snapshot.kv, snapshot.revision)
                            .await,
                    );
                }
                // Taking over would replace a serving elb with an empty
                // one: better to leave it serving.
                None if takeover => anyhow::bail!(
                    "etcd is unreachable ({err}) and there is no local snapshot ({}): a takeover \
                     would serve an empty configuration; the running elb keeps serving",
                    snapshot_file.display()
                ),
                None => tracing::warn!(error = %err,
                    "etcd is unreachable and there is no local snapshot; serving an empty configuration until etcd answers"),
            }
            None
        }
    };
    tokio::spawn(watch_loop(config, etcd, revision));
    Ok(())
}

async fn watch_loop(config: Arc<ConfigService>, etcd: EtcdStore, mut listed: Option<i64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let revision = match listed.take() {
            Some(revision) => revision,
            None => match etcd.load().await {
                Ok((kv, revision)) => {
                    etcd.link().up();
                    config.control().set_connected(true);
                    tracing::info!(
                        revision,
                        keys = kv.len(),
                        "re-listed the configuration from etcd"
                    );
                    log_skipped(&config.replace_from_store(kv, revision).await);
                    revision
                }
                Err(err) => {
                    etcd.link().down(&err);
                    config.control().set_connected(false);
                    if matches!(err, StoreError::EtcdAccess { .. }) {
                        tracing::error!(error = %err, retry_in = ?backoff, "etcd refuses elb; still serving the last known configuration");
                    } else {
                        tracing::warn!(error = %err, retry_in = ?backoff, "etcd unreachable; still serving the last known configuration");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match watch_from(&config, &etcd, revision + 1).await {
            Ok(()) => tracing::warn!("etcd watch ended; re-listing"),
            Err(err) => {
                etcd.link().down(format!("watch broken: {err:#}"));
                config.control().set_connected(false);
                tracing::warn!(error = %err, retry_in = ?backoff, "etcd watch broken; re-listing");
                // The connection may be what broke (e.g. etcd's certificate
                // was rotated): connect afresh, re-reading the TLS files.
                etcd.reconnect_next_time().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        backoff = Duration::from_millis(100);
    }
}

/// Applies watch events until the watch is cancelled (compaction) or ends.
async fn watch_from(config: &ConfigService, etcd: &EtcdStore, start: i64) -> anyhow::Result<()> {
    let mut stream = etcd.watch(start).await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            tracing::warn!(
                compact_revision = response.compact_revision(),
                reason = response.cancel_reason(),
                "etcd cancelled the watch"
            );
            return Ok(());
        }
        let revision = response.header().map_or(0, |h| h.revision());
        let ops: Vec<KvOp> = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let key = kv.key_str().ok()?.to_owned();
                Some(match event.event_type() {
                    EventType::Put => KvOp::Put {
                        key,
                        value: kv.value_str().ok()?.to_owned(),
                    },
                    EventType::Delete => KvOp::Delete { key },
                })
            })
            .collect();
        if !ops.is_empty() {
            tracing::debug!(revision, events = ops.len(), "applying etcd changes");
            log_skipped(&config.apply_from_store(&ops, revision).await);
        }
    }
    Ok(())
}

fn log_skipped(skipped: &[crate::config::manager::EntryError]) {
    if !skipped.is_empty() {
        tracing::warn!(
            count = skipped.len(),
            "some stored entries were skipped (see errors above)"
        );
    }
}
