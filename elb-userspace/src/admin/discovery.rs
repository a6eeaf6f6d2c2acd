//! `/__erulb__/discovery`: the providers that own upstreams' server lists,
//! shaped like `/__erulb__/policy`. PUT replaces each named document whole
//! (stored in canonical form); GET adds each provider's `state` (last
//! success, last error, server count, Consul's index). DELETE stops the
//! provider and leaves the upstream's servers as they are (admin-owned
//! again).
use serde_json::Value;

use super::{AdminResult, delete_existing, expect_object, expect_string_list, get_view, ok};
use crate::{
    config::{ConfigService, KeyLayout, discovery::Discovery},
    discovery::DiscoveryBoard,
    store::KvOp,
};

pub async fn get(config: &ConfigService, board: &DiscoveryBoard) -> AdminResult {
    get_view(config, |manager| {
        Value::Object(
            manager
                .discovery()
                .iter()
                .map(|(upstream, document)| {
                    let mut body = document.to_json();
                    if let Some(object) = body.as_object_mut() {
                        object.insert(
                            "state".into(),
                            board.report(upstream).unwrap_or(Value::Null),
                        );
                    }
                    (upstream.clone(), body)
                })
                .collect(),
        )
    })
    .await
}

/// Adds or replaces every document in the body, all or nothing.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let documents = expect_object(&body, "upstream: discovery document")?;
    config
        .write(|manager| {
            let mut ops = Vec::with_capacity(documents.len());
            for (upstream, doc) in documents {
                let document = Discovery::from_value(upstream, doc).map_err(|e| e.to_string())?;
                crate::discovery::available(&document)
                    .map_err(|e| format!("discovery of upstream {upstream:?}: {e}"))?;
                ops.push(KvOp::Put {
                    key: manager.layout().discovery_key(upstream),
                    value: document.to_json().to_string(),
                });
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// Deletes the named documents; unknown names are ignored.
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let names = expect_string_list(&body, "upstream names")?;
    delete_existing(config, &names, KeyLayout::discovery_key).await
}

/// The 409 message when `upstream` is owned by a provider, for admin
/// writes of its servers.
pub fn owner_conflict(manager: &crate::config::ConfigManager, upstream: &str) -> Option<String> {
    manager.discovery().get(upstream).map(|document| {
        format!(
            "upstream {upstream:?} is owned by discovery provider {} (DELETE its \
             /__erulb__/discovery document first)",
            document.source
        )
    })
}
