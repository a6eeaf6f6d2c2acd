//! Per-upstream request and error totals, for readers other than
//! Prometheus (the status page).
use crate::config::{Snapshot, SnapshotHandle};

/// One upstream's counts since its counters began (elb's start, or the
/// upstream's creation). Rates come from two readings over time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamTotals {
    pub upstream: String,
    /// Answered requests (response head sent), every status.
    pub requests: u64,
    /// Those answered with a 5xx.
    pub errors: u64,
}

/// Read access to the L7 counters of the live configuration.
#[derive(Clone)]
pub struct L7Metrics {
    snapshot: SnapshotHandle,
}

impl L7Metrics {
    pub fn new(snapshot: SnapshotHandle) -> Self {
        Self { snapshot }
    }

    /// Every configured upstream's totals, sorted by name. A deleted
    /// upstream is absent; a recreated one starts again from zero.
    pub fn upstream_totals(&self) -> Vec<UpstreamTotals> {
        upstream_totals(&self.snapshot.load())
    }
}

/// [`L7Metrics::upstream_totals`] of one snapshot.
pub fn upstream_totals(snapshot: &Snapshot) -> Vec<UpstreamTotals> {
    let mut totals: Vec<UpstreamTotals> = snapshot
        .upstreams()
        .map(|upstream| {
            let (requests, errors) = upstream.metrics.totals();
            UpstreamTotals {
                upstream: upstream.name.clone(),
                requests,
                errors,
            }
        })
        .collect();
    totals.sort_by(|a, b| a.upstream.cmp(&b.upstream));
    totals
}
