//! The health families, from the target registry's view at scrape time.
use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{counters, gauges};
use crate::targets::registry::{ServerHealth, UpstreamHealth};

pub fn encode(view: &[UpstreamHealth], encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let servers = || {
        view.iter().flat_map(|u| {
            u.servers
                .iter()
                .map(move |s: &ServerHealth| (u.upstream.as_str(), s))
        })
    };
    // One series per server, its current state in a label: a state change
    // ends one series and starts another (as kube-state-metrics does
    // without the zero series, which would be 5 per server).
    gauges(
        encoder,
        "elb_server_state",
        "1 for the server's current health state (initial, healthy, unhealthy, draining, unused)",
        servers().map(|(upstream, s)| {
            (
                [
                    ("upstream", upstream),
                    ("server", s.server.as_str()),
                    ("state", s.state.as_str()),
                ],
                1u32,
            )
        }),
    )?;
    gauges(
        encoder,
        "elb_server_routable",
        "1 when new requests and flows may go to the server, else 0",
        servers().map(|(upstream, s)| {
            (
                [("upstream", upstream), ("server", s.server.as_str())],
                u32::from(s.routable),
            )
        }),
    )?;
    counters(
        encoder,
        "elb_server_health_transitions",
        "Health check state changes of the server since it was added",
        // From the first change on, as the L7 counters.
        servers()
            .map(|(upstream, s)| {
                (
                    [("upstream", upstream), ("server", s.server.as_str())],
                    s.transitions,
                )
            })
            .filter(|(_, n)| *n > 0),
    )?;
    gauges(
        encoder,
        "elb_upstream_fail_open",
        "1 when no server of the upstream passes its checks and all get traffic",
        view.iter()
            .map(|u| ([("upstream", u.upstream.as_str())], u32::from(u.fail_open))),
    )?;
    Ok(())
}
