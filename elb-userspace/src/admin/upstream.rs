//! `/__erulb__/upstream`: upstreams and their servers.
use serde_json::{Map, Value};

use super::{AdminResult, expect_object, expect_string_list, ok, validate_key_segment};
use crate::{
    config::ConfigService,
    http_util::json,
    store::KvOp,
    upstream::{parse_params, validate_server_address},
};

pub async fn get(config: &ConfigService) -> AdminResult {
    let body = config
        .read(|manager| {
            manager
                .upstreams()
                .iter()
                .map(|(name, upstream)| {
                    let servers = upstream
                        .servers()
                        .iter()
                        .map(|server| server.params.to_json(&server.name))
                        .collect();
                    (name.clone(), Value::Array(servers))
                })
                .collect::<Map<String, Value>>()
        })
        .await;
    Ok(json(http::StatusCode::OK, &Value::Object(body)))
}

/// Replaces each named upstream whole, all or nothing. An upstream that an
/// L4 service uses must keep to `IP:port` servers of the service's family.
/// An upstream a discovery provider owns is a 409.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let upstreams = expect_object(&body, "upstream: {\"host:port\": \"params\"}")?;
    config
        .write(|manager| {
            let mut ops = Vec::new();
            for (name, servers) in upstreams {
                if let Some(conflict) = super::discovery::owner_conflict(manager, name) {
                    return Ok((Vec::new(), Err(conflict)));
                }
                let entries = validate(name, servers)?;
                for (server, _) in &entries {
                    manager
                        .own_addrs()
                        .check(server)
                        .map_err(|e| format!("upstream {name:?}, server {server:?}: {e}"))?;
                }
                // L4 services forward to addresses: keep their upstreams usable.
                for service in manager.services().values() {
                    if service.upstream == *name {
                        service
                            .check_servers(entries.iter().map(|(server, _)| server.as_str()))
                            .map_err(|e| e.to_string())?;
                    }
                }
                let entries = entries
                    .into_iter()
                    .map(|(server, params)| (manager.layout().server_key(name, &server), params))
                    .collect();
                ops.extend(
                    manager.replace_prefix_ops(&manager.layout().upstream_prefix(name), entries),
                );
            }
            Ok((ops, Ok(())))
        })
        .await?
        .map_err(conflict)?;
    ok()
}

fn conflict(message: String) -> super::AdminError {
    super::AdminError::new(http::StatusCode::CONFLICT, message)
}

/// One upstream of a PUT body: `{"host:port": "params"}`, checked, as the
/// `(server, params)` pairs to store.
pub fn validate(name: &str, servers: &Value) -> Result<Vec<(String, String)>, String> {
    validate_key_segment("upstream", name)?;
    let servers = servers.as_object().ok_or_else(|| {
        format!("upstream {name:?}: expected an object of \"host:port\": \"params\"")
    })?;
    if servers.is_empty() {
        return Err(format!(
            "upstream {name:?} has no servers (to remove it, DELETE it)"
        ));
    }
    let mut entries = Vec::with_capacity(servers.len());
    for (server, params) in servers {
        let error = |message: String| format!("upstream {name:?}, server {server:?}: {message}");
        validate_server_address(server).map_err(|e| error(e.to_string()))?;
        let params = params
            .as_str()
            .ok_or_else(|| error(format!("parameters must be a string, got {params}")))?;
        parse_params(params).map_err(|e| error(e.to_string()))?;
        entries.push((server.clone(), params.trim().to_owned()));
    }
    Ok(entries)
}

/// Deletes the named upstreams; replies `{name: existed}`. An upstream a
/// discovery provider owns is a 409.
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let names = expect_string_list(&body, "upstream names")?;
    let reply = config
        .write(|manager| {
            let mut ops = Vec::new();
            let mut reply = Map::new();
            for name in names {
                if let Some(message) = super::discovery::owner_conflict(manager, &name) {
                    return Ok((Vec::new(), Err(message)));
                }
                let prefix = manager.layout().upstream_prefix(&name);
                let exists = manager
                    .kv()
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(key, _)| key.starts_with(&prefix));
                if exists {
                    ops.push(KvOp::DeletePrefix { prefix });
                }
                reply.insert(name, Value::Bool(exists));
            }
            Ok((ops, Ok(reply)))
        })
        .await?
        .map_err(conflict)?;
    Ok(json(http::StatusCode::OK, &Value::Object(reply)))
}
