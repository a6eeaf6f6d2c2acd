//! Gathers the inputs of `/__erulb__/status.json` from the running parts;
//! [`crate::status::assemble`] shapes them.
use std::time::{Duration, Instant};

use http::Method;

use crate::{
    config::ConfigService,
    server::ListenerBoard,
    status::{
        DomainInput, ListenerInput, ServerInput, ServiceInput, StatusInput, StoreInput,
        UpstreamInput, UpstreamTraffic,
    },
};

/// The path of the page (served without the token; see
/// [`crate::status::page`]).
pub const PAGE_PATH: &str = "/__erulb__/status";

pub fn is_page(method: &Method, path: &str) -> bool {
    method == Method::GET && path.trim_end_matches('/') == PAGE_PATH
}

pub async fn gather(
    config: &ConfigService,
    board: Option<&ListenerBoard>,
    l4: Result<serde_json::Value, String>,
    uptime: Duration,
) -> StatusInput {
    let now = Instant::now();
    let mut input = config
        .read(|manager| {
            let mut listeners: Vec<ListenerInput> = manager
                .static_addrs()
                .listen()
                .iter()
                .map(|addr| ListenerInput {
                    name: None,
                    address: addr.to_string(),
                    protocol: "http".into(),
                    http2: false,
                    status: "serving".into(),
                    error: None,
                })
                .collect();
            listeners.extend(manager.listeners().iter().map(|(name, listener)| {
                let (status, error) = match board {
                    Some(board) => {
                        let state = board.state(name, listener.address);
                        (state.status.to_owned(), state.error)
                    }
                    None => ("starting".to_owned(), None),
                };
                ListenerInput {
                    name: Some(name.clone()),
                    address: listener.address.to_string(),
                    protocol: listener.protocol.as_str().to_owned(),
                    http2: listener.http2,
                    status,
                    error,
                }
            }));
            let domains = manager
                .domains()
                .iter()
                .map(|(name, entry)| {
                    let mut backends: Vec<String> =
                        entry.rules.servernames().map(str::to_owned).collect();
                    backends.sort();
                    backends.dedup();
                    DomainInput {
                        name: name.clone(),
                        backends,
                    }
                })
                .collect();
            let upstreams = manager
                .upstreams()
                .iter()
                .map(|(name, upstream)| UpstreamInput {
                    name: name.clone(),
                    servers: upstream
                        .servers()
                        .iter()
                        .map(|server| ServerInput {
                            address: server.name.clone(),
                            weight: server.params.weight,
                            zone: server.params.zone.clone(),
                            backup: server.params.backup,
                            down: server.params.down,
                        })
                        .collect(),
                })
                .collect();
            let services = manager
                .services()
                .iter()
                .map(|(name, service)| ServiceInput {
                    name: name.clone(),
                    vip: service.vip.to_string(),
                    proto: service.proto.as_str().to_owned(),
                    upstream: service.upstream.clone(),
                })
                .collect();
            StatusInput {
                listeners,
                domains,
                upstreams,
                services,
                health: manager.targets().report(now),
                ..StatusInput::default()
            }
        })
        .await;
    let store = config.store();
    let (connected, error, since) = match store.link() {
        Some(link) => {
            let state = link.get();
            (state.connected, state.error, link.age(now))
        }
        None => (true, None, uptime),
    };
    input.store = StoreInput {
        kind: store.kind().to_owned(),
        location: store.location(),
        connected,
        error,
        seconds_in_state: since.as_secs_f64().round(),
    };
    input.name = config
        .read(|m| m.layout().prefix().trim_matches('/').to_owned())
        .await;
    input.version = env!("CARGO_PKG_VERSION").to_owned();
    input.uptime = uptime;
    input.l4 = l4;
    input.traffic = Some(
        crate::metrics::totals::upstream_totals(&config.snapshot().load())
            .into_iter()
            .map(|totals| {
                let traffic = UpstreamTraffic {
                    requests: totals.requests,
                    errors: totals.errors,
                };
                (totals.upstream, traffic)
            })
            .collect(),
    );
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_itself_skips_the_token() {
        assert!(is_page(&Method::GET, "/__erulb__/status"));
        assert!(is_page(&Method::GET, "/__erulb__/status/"));
        for (method, path) in [
            (Method::GET, "/__erulb__/status.json"),
            (Method::GET, "/__erulb__/statusx"),
            (Method::GET, "/__erulb__/health"),
            (Method::PUT, "/__erulb__/status"),
            (Method::HEAD, "/__erulb__/status"),
        ] {
            assert!(!is_page(&method, path), "{method} {path}");
        }
    }
}
