//! `/__erulb__/listener`: L7 listeners, in the style of `/__erulb__/service`.
//! GET adds each listener's live state (`status`, `error`) from the server.
use std::net::SocketAddr;

use serde_json::Value;

use super::{AdminResult, delete_existing, expect_object, expect_string_list, ok};
use crate::{
    config::{ConfigManager, ConfigService, KeyLayout, Listener, listener::addresses_overlap},
    http_util::json,
    server::ListenerBoard,
    store::KvOp,
};

pub async fn get(config: &ConfigService, board: Option<&ListenerBoard>) -> AdminResult {
    let listeners = config.read(|manager| manager.listeners().clone()).await;
    let body: serde_json::Map<String, Value> = listeners
        .iter()
        .map(|(name, listener)| {
            let mut doc = listener.to_json();
            if let (Some(object), Some(board)) = (doc.as_object_mut(), board) {
                let state = board.state(name, listener.address);
                object.insert("status".into(), Value::String(state.status.into()));
                if let Some(error) = state.error {
                    object.insert("error".into(), Value::String(error));
                }
            }
            (name.clone(), doc)
        })
        .collect();
    Ok(json(http::StatusCode::OK, &Value::Object(body)))
}

/// How long a write waits for its listeners to be opened (or closed).
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// After a write: answers once the server has acted on it, so a client may
/// connect to a new listener right after the 200 (GET then shows
/// `serving`, or `failed` with the reason).
async fn await_server(config: &ConfigService, board: Option<&ListenerBoard>) -> AdminResult {
    if let Some(board) = board {
        let wanted = *config.subscribe().borrow();
        if !board.wait_applied(wanted, OPEN_WAIT).await {
            return Err(super::AdminError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the change is stored, but the server has not acted on it within {}s",
                    OPEN_WAIT.as_secs()
                ),
            ));
        }
    }
    ok()
}

/// Adds or replaces every listener in the body, all or nothing.
pub async fn put(
    config: &ConfigService,
    board: Option<&ListenerBoard>,
    body: Value,
) -> AdminResult {
    let listeners = expect_object(
        &body,
        "listener: {\"address\", \"protocol\", \"http2\", \"default_certificate\"}",
    )?;
    config
        .write(|manager| {
            let mut parsed = Vec::with_capacity(listeners.len());
            for (name, doc) in listeners {
                let listener = Listener::from_value(name, doc).map_err(|e| e.to_string())?;
                check_certificate(manager, &listener)?;
                check_no_loop(manager, &listener)?;
                parsed.push(listener);
            }
            check_unique_addresses(manager, &parsed)?;
            let ops = parsed
                .iter()
                .map(|listener| KvOp::Put {
                    key: manager.layout().listener_key(&listener.name),
                    value: listener.to_json().to_string(),
                })
                .collect();
            Ok((ops, ()))
        })
        .await?;
    await_server(config, board).await
}

/// Deletes the named listeners; unknown names are ignored (as for services).
pub async fn delete(
    config: &ConfigService,
    board: Option<&ListenerBoard>,
    body: Value,
) -> AdminResult {
    let names = expect_string_list(&body, "listener names")?;
    delete_existing(config, &names, KeyLayout::listener_key).await?;
    await_server(config, board).await
}

/// An https listener's default certificate must be stored first: without
/// it every handshake without a matching SNI name would fail.
fn check_certificate(manager: &ConfigManager, listener: &Listener) -> Result<(), String> {
    match &listener.default_certificate {
        Some(cert) if !manager.certs().contains_key(cert) => Err(format!(
            "listener {:?}: default_certificate {cert:?} does not exist (upload it to \
             /__erulb__/cert first)",
            listener.name
        )),
        _ => Ok(()),
    }
}

/// No two listeners, nor a listener and `--listen`, on one address or on
/// addresses that overlap (a wildcard and an address it covers): the second
/// could never bind.
fn check_unique_addresses(manager: &ConfigManager, parsed: &[Listener]) -> Result<(), String> {
    let mut claimed: Vec<(SocketAddr, String)> = manager
        .static_addrs()
        .listen()
        .iter()
        .map(|addr| (*addr, "the static listener (--listen)".to_owned()))
        .collect();
    let replaced: Vec<&str> = parsed.iter().map(|l| l.name.as_str()).collect();
    for listener in manager.listeners().values() {
        if !replaced.contains(&listener.name.as_str()) {
            claimed.push((listener.address, format!("listener {:?}", listener.name)));
        }
    }
    for listener in parsed {
        let address = listener.address;
        if let Some((other_address, other)) = claimed
            .iter()
            .find(|(other, _)| addresses_overlap(address, *other))
        {
            return Err(if *other_address == address {
                format!(
                    "listener {:?}: address {address} is already used by {other}",
                    listener.name
                )
            } else {
                format!(
                    "listener {:?}: address {address} overlaps {other_address} of {other}",
                    listener.name
                )
            });
        }
        claimed.push((address, format!("listener {:?}", listener.name)));
    }
    Ok(())
}

/// A listener on an address a configured server points at would make
/// that server elb itself (a proxy loop).
fn check_no_loop(manager: &ConfigManager, listener: &Listener) -> Result<(), String> {
    let own = manager.static_addrs().only(listener.address);
    let servers = manager
        .upstreams()
        .values()
        .flat_map(|upstream| upstream.servers().iter().map(|s| s.name.as_str()));
    let servernames = manager
        .domains()
        .values()
        .flat_map(|domain| domain.rules.servernames())
        .filter(|name| crate::upstream::validate_server_address(name).is_ok());
    for server in servers.chain(servernames) {
        if own.reached_by(server).is_some() {
            return Err(format!(
                "listener {:?}: server {server} is configured and would reach this listener's \
                 address {}; requests sent there would come back to elb in a loop",
                listener.name, listener.address
            ));
        }
    }
    Ok(())
}
