//! elb's own metrics, in process, in OpenMetrics text for Prometheus.
//!
//! The request path bumps atomic cells hung on the configuration objects
//! ([`cells`]): no label lookup, map or lock per request. A scrape
//! ([`registry`]) walks the current snapshot for the L7 families ([`l7`]),
//! and reads the health model ([`health`]), the L4 data plane's statistics
//! ([`l4`]) and the control plane's state ([`control`]) at that moment.
//! Labels are configuration names only (domain, upstream, server, service),
//! so cardinality follows the configuration, never the clients.
pub mod cells;
pub mod control;
mod encode;
pub mod health;
pub mod histogram;
pub mod http;
pub mod l4;
pub mod l7;
pub mod registry;
pub mod totals;

pub use registry::{Format, Metrics};
pub use totals::{L7Metrics, UpstreamTotals, upstream_totals};
