//! The configuration: the store's keys (`keys`), compiled into an immutable
//! [`Snapshot`] that requests read through an `ArcSwap` (`snapshot`), by a
//! single [`ConfigManager`] that applies loads, watch events and admin writes
//! (`manager`).
pub mod keys;
pub mod manager;
pub mod service;
pub mod snapshot;

pub use keys::{KeyLayout, StoreKey};
pub use manager::ConfigManager;
pub use service::{ConfigService, WriteError};
pub use snapshot::{DomainEntry, Snapshot, SnapshotHandle, Upstream};
