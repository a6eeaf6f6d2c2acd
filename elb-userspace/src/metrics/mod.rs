//! elb's own metrics, in process. The request path bumps atomic cells hung
//! on the configuration objects ([`cells`]); scrapes read them, the health
//! model, the L4 data plane's counters and the control plane's state, and
//! encode OpenMetrics text.
pub mod cells;
pub mod histogram;
pub mod totals;

pub use totals::{L7Metrics, UpstreamTotals, upstream_totals};
