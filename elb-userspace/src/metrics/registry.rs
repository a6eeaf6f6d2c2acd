//! The registry a scrape encodes: one prometheus-client collector that
//! reads every source at scrape time.
use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, registry::Registry};

use super::{control::ControlPlane, encode::gauges, health, l4, l7};
use crate::{
    config::SnapshotHandle, l4::stats::L4StatsSource, limits::UpstreamLimits,
    targets::TargetRegistry,
};

/// The two text formats a scrape can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, what Prometheus asks for.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for clients that do not ask for
    /// OpenMetrics (curl, `promtool check metrics`).
    Prometheus,
}

impl Format {
    /// From a request's `Accept` header.
    pub fn negotiate(accept: Option<&[u8]>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept
                .windows(b"application/openmetrics-text".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// For the families of one series.
const NO_LABELS: [(&str, &str); 0] = [];

/// What a scrape reads.
struct Sources {
    snapshot: SnapshotHandle,
    targets: Arc<TargetRegistry>,
    control: Arc<ControlPlane>,
    upstream_limits: Arc<UpstreamLimits>,
    /// Set once the L4 data plane is up.
    l4: OnceLock<Arc<dyn L4StatsSource>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// elb's metrics registry, shared by the admin API and `--metrics`.
pub struct Metrics {
    registry: Registry,
    sources: Arc<Sources>,
}

impl Metrics {
    pub fn new(
        snapshot: SnapshotHandle,
        targets: Arc<TargetRegistry>,
        control: Arc<ControlPlane>,
        upstream_limits: Arc<UpstreamLimits>,
    ) -> Self {
        let sources = Arc::new(Sources {
            snapshot,
            targets,
            control,
            upstream_limits,
            l4: OnceLock::new(),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collected(Arc::clone(&sources))));
        Self { registry, sources }
    }

    /// Where the L4 families come from; the first call wins.
    pub fn set_l4_stats(&self, source: Arc<dyn L4StatsSource>) {
        let _ = self.sources.l4.set(source);
    }

    /// Everything, read now, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut text = String::with_capacity(64 * 1024);
        // Writing to a String fails only if a collector fails, which ours
        // do not (an L4 reading error becomes a metric).
        let encoded = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
        };
        if let Err(error) = encoded {
            tracing::error!(%error, "encoding the metrics failed");
        }
        text
    }
}

#[derive(Debug)]
struct Collected(Arc<Sources>);

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let sources = &self.0;
        let open = sources.upstream_limits.open_by_server();
        l7::encode(&sources.snapshot.load(), &open, &mut encoder)?;
        health::encode(&sources.targets.health_view(), &mut encoder)?;
        let state = sources.control.state();
        gauges(
            &mut encoder,
            "elb_store_connected",
            "1 when the configuration store is reachable (a file store always is)",
            [(NO_LABELS, u32::from(state.store_connected))],
        )?;
        gauges(
            &mut encoder,
            "elb_config_applied_revision",
            "Store revision of the configuration last applied",
            [(NO_LABELS, state.applied_revision)],
        )?;
        gauges(
            &mut encoder,
            "elb_config_last_apply_timestamp_seconds",
            "When a configuration change was last applied (Unix time; 0: never)",
            [(NO_LABELS, state.last_apply_seconds.unwrap_or(0.0))],
        )?;
        super::encode::counters(
            &mut encoder,
            "elb_config_rejected_documents",
            "Stored documents skipped as invalid (the previous version kept serving)",
            [(NO_LABELS, state.rejected_documents)],
        )?;
        let l4_up = match sources.l4.get().map(|source| source.stats_json()) {
            Some(Ok(stats)) => {
                l4::encode(&stats, &mut encoder)?;
                1
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the L4 statistics for /metrics");
                0
            }
            None => 0,
        };
        gauges(
            &mut encoder,
            "elb_l4_stats_up",
            "1 when the L4 statistics could be read for this scrape",
            [(NO_LABELS, l4_up)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus.as_bytes())),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
