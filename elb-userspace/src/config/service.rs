//! The one path every configuration change takes: admin writes (validated,
//! committed to the store in one transaction, then applied) and store
//! events (applied). Serialised by one lock, so the in-memory state always
//! equals "what was committed", and published as a new snapshot.
use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, watch};

use super::{ConfigManager, SnapshotHandle, manager::EntryError};
use crate::{
    metrics::control::ControlPlane,
    store::{CommitGuard, Kv, KvOp, Store, StoreError, file::write_state_file},
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request is invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The store refused or was unreachable; nothing changed in memory.
    #[error("the configuration store failed, nothing was changed: {0}")]
    Store(#[from] StoreError),
}

pub struct ConfigService {
    manager: Mutex<ConfigManager>,
    store: Store,
    snapshot: SnapshotHandle,
    /// A receiver of the manager's generation counter, cloned per subscriber
    /// so subscribing does not wait for the manager's lock.
    generation: watch::Receiver<u64>,
    persist: Option<watch::Sender<(i64, Arc<Kv>)>>,
    /// What `/metrics` reports of the control plane.
    control: Arc<ControlPlane>,
}

impl ConfigService {
    /// `snapshot_file`: where to keep a local copy of the store's state (for
    /// etcd, to start when etcd is unreachable); written in the background.
    pub fn new(manager: ConfigManager, store: Store, snapshot_file: Option<PathBuf>) -> Arc<Self> {
        let snapshot = manager.snapshot_handle();
        let generation = manager.subscribe();
        let persist = snapshot_file.map(spawn_snapshot_writer);
        // A file store is always there; etcd counts once the sync loaded it.
        let control = Arc::new(ControlPlane::new(matches!(store, Store::File(_))));
        Arc::new(Self {
            control,
            manager: Mutex::new(manager),
            store,
            snapshot,
            generation,
            persist,
        })
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn snapshot(&self) -> &SnapshotHandle {
        &self.snapshot
    }

    /// Change notification: a counter bumped after every snapshot published
    /// (admin write, store event, re-list), after the snapshot is visible.
    /// The current value counts as seen, so: subscribe, load the snapshot,
    /// then loop on `changed().await` and load again. Bursts may coalesce
    /// into one notification; the latest snapshot is what counts.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut receiver = self.generation.clone();
        receiver.mark_unchanged();
        receiver
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads the current state.
    pub async fn read<R>(&self, f: impl FnOnce(&ConfigManager) -> R) -> R {
        f(&*self.manager.lock().await)
    }

    /// Plans a change against the current state, commits it in one store
    /// transaction, then applies it. `plan` returns the operations and the
    /// reply; an empty plan commits nothing.
    pub async fn write<R>(
        &self,
        plan: impl FnOnce(&ConfigManager) -> Result<(Vec<KvOp>, R), String>,
    ) -> Result<R, WriteError> {
        self.write_guarded(None, plan).await
    }

    /// [`ConfigService::write`], committed only while `guard` holds (see
    /// [`Store::commit_guarded`]); `None` commits unconditionally.
    pub async fn write_guarded<R>(
        &self,
        guard: Option<&CommitGuard>,
        plan: impl FnOnce(&ConfigManager) -> Result<(Vec<KvOp>, R), String>,
    ) -> Result<R, WriteError> {
        let mut manager = self.manager.lock().await;
        let (ops, reply) = plan(&manager).map_err(WriteError::Invalid)?;
        if ops.is_empty() {
            return Ok(reply);
        }
        let revision = match guard {
            Some(guard) => self.store.commit_guarded(&ops, guard).await?,
            None => self.store.commit(&ops).await?,
        };
        let skipped = manager.apply(&ops);
        // Validation compiles exactly what apply compiles, so this is a bug.
        for err in &skipped {
            tracing::error!(error = %err, "a validated admin write did not apply");
        }
        self.control.applied(revision, skipped.len());
        self.persist(revision, &manager);
        Ok(reply)
    }

    /// Applies events that came from the store (etcd watch).
    pub async fn apply_from_store(&self, ops: &[KvOp], revision: i64) -> Vec<EntryError> {
        let mut manager = self.manager.lock().await;
        let skipped = manager.apply(ops);
        self.control.applied(revision, skipped.len());
        self.persist(revision, &manager);
        skipped
    }

    /// Replaces everything with a fresh listing of the store.
    pub async fn replace_from_store(&self, kv: Kv, revision: i64) -> Vec<EntryError> {
        let mut manager = self.manager.lock().await;
        let skipped = manager.replace_all(kv);
        self.control.applied(revision, skipped.len());
        self.persist(revision, &manager);
        skipped
    }

    fn persist(&self, revision: i64, manager: &ConfigManager) {
        if let Some(persist) = &self.persist {
            persist.send_replace((revision, Arc::new(manager.kv().clone())));
        }
    }
}

/// Writes the latest state to `path` whenever it changes; bursts of changes
/// collapse into one write.
fn spawn_snapshot_writer(path: PathBuf) -> watch::Sender<(i64, Arc<Kv>)> {
    let (sender, mut receiver) = watch::channel((0, Arc::new(Kv::new())));
    receiver.mark_unchanged();
    tokio::spawn(async move {
        while receiver.changed().await.is_ok() {
            let (revision, kv) = receiver.borrow_and_update().clone();
            let path = path.clone();
            let result =
                tokio::task::spawn_blocking(move || write_state_file(&path, revision, &kv)).await;
            match result {
                Ok(Ok(())) => tracing::debug!(revision, "local snapshot written"),
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot write the local snapshot"),
                Err(err) => tracing::warn!(error = %err, "snapshot writer failed"),
            }
        }
    });
    sender
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::KeyLayout, store::FileStore};

    #[tokio::test]
    async fn subscribers_are_told_after_a_write_is_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FileStore::open(dir.path().join("state.json")).expect("open");
        let config = ConfigService::new(
            ConfigManager::new(KeyLayout::new("ELB")),
            Store::File(store),
            None,
        );
        // An earlier publish does not count for a later subscriber.
        config.replace_from_store(Kv::new(), 0).await;
        let mut changes = config.subscribe();
        assert!(!changes.has_changed().expect("open"));
        config
            .write(|manager| {
                Ok((
                    vec![KvOp::Put {
                        key: manager.layout().acl_prefix().to_owned() + "10.0.0.0/8",
                        value: String::new(),
                    }],
                    (),
                ))
            })
            .await
            .expect("write");
        changes.changed().await.expect("open");
        assert_eq!(config.snapshot().load().acl().len(), 1);
    }
}
