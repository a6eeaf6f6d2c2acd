//! The L7 families, read from the cells of the current snapshot's domains
//! and upstreams (so removed ones have no series).
use std::{collections::HashMap, fmt};

use prometheus_client::encoding::DescriptorEncoder;

use super::{
    cells::{STATUS_CLASSES, ServerCells},
    encode::{counters, gauges, histograms},
    histogram::HistogramSnapshot,
};
use crate::config::{DomainEntry, Snapshot, Upstream};
use std::sync::{Arc, atomic::Ordering};

/// `open`: open upstream connections by server address.
pub fn encode(
    snapshot: &Snapshot,
    open: &HashMap<String, usize>,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let mut domains: Vec<&Arc<DomainEntry>> = snapshot.domains().collect();
    domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    let mut upstreams: Vec<&Arc<Upstream>> = snapshot.upstreams().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));

    counters(
        encoder,
        "elb_http_requests",
        "HTTP requests answered, by configured domain and status class",
        domains.iter().flat_map(|d| {
            let counts = d.metrics.requests.get();
            STATUS_CLASSES
                .iter()
                .zip(counts)
                .map(move |(code, n)| ([("domain", d.domain.as_str()), ("code", *code)], n))
        }),
    )?;
    histograms(
        encoder,
        "elb_http_request_duration_seconds",
        "Time from a request's arrival to its response head, by domain",
        domains
            .iter()
            .map(|d| {
                (
                    [("domain", d.domain.as_str())],
                    d.metrics.request_seconds.snapshot(),
                )
            })
            .filter(observed),
    )?;

    let servers = || {
        upstreams.iter().flat_map(|u| {
            u.servers()
                .iter()
                .zip(&u.metrics.servers)
                .map(move |(server, cells)| (u.name.as_str(), server.name.as_str(), cells.as_ref()))
        })
    };
    // Per server, counters appear at their first event (the classes too):
    // series for each of thousands of servers would be mostly zeros, and
    // a scrape of 10,000 servers must stay small.
    counters(
        encoder,
        "elb_upstream_requests",
        "Requests answered after their last try on this server (server=\"\": no server was tried), by status class",
        servers()
            .flat_map(|(upstream, server, cells)| classes(upstream, server, cells.requests.get()))
            .chain(
                upstreams
                    .iter()
                    .flat_map(|u| classes(u.name.as_str(), "", u.metrics.level.no_server.get())),
            ),
    )?;
    let per_server: [PerServer; 2] = [
        (
            "elb_upstream_connect_failures",
            "Upstream connections that could not be opened (refused, timed out, TLS)",
            |c| c.connect_failures.load(Ordering::Relaxed),
        ),
        (
            "elb_upstream_timeouts",
            "Tries that timed out connecting or waiting for the response head",
            |c| c.timeouts.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, field) in per_server {
        counters(
            encoder,
            name,
            help,
            servers()
                .map(|(upstream, server, cells)| {
                    ([("upstream", upstream), ("server", server)], field(cells))
                })
                .filter(|(_, n)| *n > 0),
        )?;
    }
    gauges(
        encoder,
        "elb_upstream_active_requests",
        "Tries under way on the server (connecting, sending, awaiting the response head)",
        servers().map(|(upstream, server, cells)| {
            (
                [("upstream", upstream), ("server", server)],
                cells.active.load(Ordering::Relaxed),
            )
        }),
    )?;
    gauges(
        encoder,
        "elb_upstream_open_connections",
        "Open connections to the server's address, idle pooled ones included (absent: none)",
        servers().filter_map(|(upstream, server, _)| {
            let count = *open.get(server)?;
            Some(([("upstream", upstream), ("server", server)], count))
        }),
    )?;
    counters(
        encoder,
        "elb_upstream_retries",
        "Tries after a request's first one",
        upstreams.iter().map(|u| {
            (
                [("upstream", u.name.as_str())],
                u.metrics.level.retries.load(Ordering::Relaxed),
            )
        }),
    )?;
    histograms(
        encoder,
        "elb_upstream_request_duration_seconds",
        "Time from a request's arrival to its response head, by upstream",
        upstreams
            .iter()
            .map(|u| {
                (
                    [("upstream", u.name.as_str())],
                    u.metrics.level.request_seconds.snapshot(),
                )
            })
            .filter(observed),
    )?;
    histograms(
        encoder,
        "elb_upstream_response_duration_seconds",
        "The last try's time to the response head, connecting included, by upstream",
        upstreams
            .iter()
            .map(|u| {
                (
                    [("upstream", u.name.as_str())],
                    u.metrics.level.upstream_seconds.snapshot(),
                )
            })
            .filter(observed),
    )?;
    Ok(())
}

/// Whether a histogram has had an observation: one that never had is left
/// out (14 series of zeros each, for every idle domain and upstream).
fn observed<L>((_, histogram): &(L, HistogramSnapshot)) -> bool {
    histogram.count > 0
}

/// A per-server counter family: name, help, and how to read it.
type PerServer = (&'static str, &'static str, fn(&ServerCells) -> u64);

/// The non-zero classes of one server as samples.
fn classes<'a>(
    upstream: &'a str,
    server: &'a str,
    counts: [u64; STATUS_CLASSES.len()],
) -> impl Iterator<Item = ([(&'static str, &'a str); 3], u64)> {
    STATUS_CLASSES
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(move |(code, n)| {
            (
                [("upstream", upstream), ("server", server), ("code", *code)],
                n,
            )
        })
}
