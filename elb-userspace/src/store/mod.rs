//! Where the configuration lives: etcd (shared by a fleet) or the embedded
//! state file (a single node). Both expose the same key/value view and apply
//! a batch of operations atomically.
pub mod etcd;
pub mod etcd_access;
pub mod file;
pub mod link;

use std::collections::BTreeMap;

use thiserror::Error;

pub use etcd::EtcdStore;
pub use file::FileStore;

/// Keys and values under the ELB prefix.
pub type Kv = BTreeMap<String, String>;

/// One operation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Put { key: String, value: String },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

impl KvOp {
    /// Applies the operation to an in-memory copy of the store.
    pub fn apply_to(&self, kv: &mut Kv) {
        match self {
            Self::Put { key, value } => {
                kv.insert(key.clone(), value.clone());
            }
            Self::Delete { key } => {
                kv.remove(key);
            }
            Self::DeletePrefix { prefix } => kv.retain(|key, _| !key.starts_with(prefix.as_str())),
        }
    }
}

/// A condition a commit is made on: `key` still exists with the create
/// revision it had. The discovery leader's commits name its election key,
/// so a node that no longer leads (its key resigned, deleted or expired
/// with its lease) writes nothing even if its request was already sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitGuard {
    pub key: String,
    pub create_revision: i64,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },
    /// etcd refused elb (credentials, TLS) or the access files are
    /// unusable: retrying does not help.
    #[error("etcd at {endpoints}: {message}")]
    EtcdAccess { endpoints: String, message: String },
    #[error("state file {path}: {message}")]
    File { path: String, message: String },
    /// A guarded commit whose guard no longer holds: nothing was written.
    #[error(
        "etcd at {endpoints}: not written: {key} (created at revision {create_revision}) is gone, \
         this node no longer leads"
    )]
    Fenced {
        endpoints: String,
        key: String,
        create_revision: i64,
    },
}

/// The configuration store in use.
pub enum Store {
    Etcd(Box<EtcdStore>),
    File(FileStore),
}

impl Store {
    /// Applies `ops` all together or not at all; returns the store revision
    /// after the commit (0 for the file store).
    pub async fn commit(&self, ops: &[KvOp]) -> Result<i64, StoreError> {
        match self {
            Self::Etcd(store) => store.commit(ops).await,
            Self::File(store) => store.commit(ops).await,
        }
    }

    /// [`Store::commit`] on the condition that `guard` holds; etcd checks it
    /// in the same transaction. The file store has no other writer (one
    /// node, no election) and commits as usual.
    pub async fn commit_guarded(
        &self,
        ops: &[KvOp],
        guard: &CommitGuard,
    ) -> Result<i64, StoreError> {
        match self {
            Self::Etcd(store) => store.commit_guarded(ops, guard).await,
            Self::File(store) => store.commit(ops).await,
        }
    }

    /// `etcd` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Etcd(_) => "etcd",
            Self::File(_) => "file",
        }
    }

    /// The endpoints or the file.
    pub fn location(&self) -> String {
        match self {
            Self::Etcd(store) => store.endpoints().to_owned(),
            Self::File(store) => store.path().display().to_string(),
        }
    }

    /// Whether elb is in touch with the store; the file store always is.
    pub fn link(&self) -> Option<&link::StoreLink> {
        match self {
            Self::Etcd(store) => Some(store.link()),
            Self::File(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Etcd(store) => format!("etcd {}", store.endpoints()),
            Self::File(store) => format!("state file {}", store.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_apply_in_order() {
        let mut kv = Kv::new();
        for op in [
            KvOp::Put {
                key: "/E/upstreams/a/1:1".into(),
                value: "".into(),
            },
            KvOp::Put {
                key: "/E/upstreams/ab/1:1".into(),
                value: "".into(),
            },
            KvOp::DeletePrefix {
                prefix: "/E/upstreams/a/".into(),
            },
            KvOp::Put {
                key: "/E/rules/x".into(),
                value: "{}".into(),
            },
            KvOp::Delete {
                key: "/E/rules/missing".into(),
            },
        ] {
            op.apply_to(&mut kv);
        }
        let keys: Vec<_> = kv.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/E/rules/x", "/E/upstreams/ab/1:1"]);
    }
}
