//! The configuration: the store's keys (`keys`), compiled into an immutable
//! [`Snapshot`] that requests read through an `ArcSwap` (`snapshot`), by a
//! single [`ConfigManager`] that applies loads, watch events and admin writes
//! (`manager`). L4 services (`l4`) and the deny-list (`acl`) ride in the
//! same snapshot for the XDP data plane, which learns of new snapshots
//! through [`ConfigService::subscribe`].
pub mod acl;
pub mod discovery;
pub mod domain_name;
pub mod keys;
pub mod l4;
pub mod listener;
pub mod manager;
pub mod own_addrs;
pub mod policy;
pub mod service;
pub mod snapshot;
pub mod zones;

pub use keys::{KeyLayout, StoreKey};
pub use l4::{L4Proto, L4Service, L4ServiceError, SnatAddrs};
pub use listener::{Listener, ListenerError, ListenerProtocol};
pub use manager::ConfigManager;
pub use own_addrs::OwnAddrs;
pub use service::{ConfigService, WriteError};
pub use snapshot::{DomainEntry, Snapshot, SnapshotHandle, Upstream};
