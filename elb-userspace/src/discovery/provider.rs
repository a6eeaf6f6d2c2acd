//! What a discovery provider is: something that, asked again and again,
//! waits for and returns the next full list of an upstream's servers.
//!
//! A provider is built from its document by [`super::build`] (cheap, no
//! I/O) and driven by the runner, one task per upstream:
//!
//! ```text
//! loop { let result = provider.next().await; /* apply or record */ }
//! ```
//!
//! Rules for implementations:
//! - `next` returns the **whole** current list each time (not a delta). The
//!   runner replaces the upstream with it; an `Ok(vec![])` empties it.
//! - An API failure is an `Err`: the runner keeps the last good list.
//! - The provider paces itself: a poller sleeps its interval between
//!   calls, a blocking-query client blocks; after an error it backs off
//!   before asking again. The runner calls `next` again right away.
//! - `next` must be cancel-safe enough to be dropped at any `.await`: the
//!   runner aborts the task when the document changes or is deleted.
use std::{future::Future, net::SocketAddr, pin::Pin};

use serde_json::{Map, Value};

/// One server a provider found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredServer {
    /// Becomes the server key `ip:port` (`[v6]:port`).
    pub addr: SocketAddr,
    /// Becomes `zone=` (an AWS availability zone); replaces the document's.
    pub zone: Option<String>,
    /// Becomes `weight=` (Consul's passing weight); replaces the document's.
    pub weight: Option<u32>,
}

/// Why a provider has no result this time. The text is what the admin API
/// and the log show: say what failed and where (the URL, the file, the
/// AWS call).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// The future [`Provider::next`] returns.
pub type NextResult<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<DiscoveredServer>, ProviderError>> + Send + 'a>>;

/// A source of server lists for one upstream.
pub trait Provider: Send {
    /// Waits for and returns the next full result. Implement as
    /// `Box::pin(self.poll_once())` over an `async fn`.
    fn next(&mut self) -> NextResult<'_>;

    /// Provider-specific state that `GET /__erulb__/discovery` adds to the
    /// provider's report, e.g. `{"index": 1234}` for Consul. Read after
    /// each `next`.
    fn state(&self) -> Map<String, Value> {
        Map::new()
    }
}
