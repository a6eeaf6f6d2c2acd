//! `/__erulb__/policy`: target-health policies, shaped like
//! `/__erulb__/service`. PUT replaces each named policy whole (stored in
//! canonical form, every field filled in); a policy may name an upstream
//! that does not exist yet. `/__erulb__/zones`: the disabled zones.
//! `/__erulb__/health`: every server's target state.
use serde_json::Value;

use super::{AdminResult, delete_existing, expect_object, expect_string_list, get_view, named, ok};
use crate::{
    config::{ConfigService, KeyLayout, policy::Policy, zones::Zones},
    store::KvOp,
};

pub async fn get(config: &ConfigService) -> AdminResult {
    get_view(config, |manager| named(manager.policies(), |p| p.to_json())).await
}

/// Adds or replaces every policy in the body, all or nothing.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let policies = expect_object(&body, "upstream: policy")?;
    config
        .write(|manager| {
            let mut ops = Vec::with_capacity(policies.len());
            for (upstream, doc) in policies {
                let policy = Policy::from_value(upstream, doc).map_err(|e| e.to_string())?;
                ops.push(KvOp::Put {
                    key: manager.layout().policy_key(upstream),
                    value: policy.to_json().to_string(),
                });
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// Deletes the named policies; unknown names are ignored.
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let names = expect_string_list(&body, "upstream names")?;
    delete_existing(config, &names, KeyLayout::policy_key).await
}

pub async fn get_zones(config: &ConfigService) -> AdminResult {
    get_view(config, |manager| manager.zones().to_json()).await
}

/// Replaces the zones document: `{"disabled": ["us-east-1a"]}`.
pub async fn put_zones(config: &ConfigService, body: Value) -> AdminResult {
    let zones =
        Zones::from_value(&body).map_err(|e| super::AdminError::bad_request(e.to_string()))?;
    config
        .write(|manager| {
            let key = manager.layout().zones_key().to_owned();
            let op = if zones.disabled.is_empty() {
                if !manager.kv().contains_key(&key) {
                    return Ok((Vec::new(), ()));
                }
                KvOp::Delete { key }
            } else {
                KvOp::Put {
                    key,
                    value: zones.to_json().to_string(),
                }
            };
            Ok((vec![op], ()))
        })
        .await?;
    ok()
}

pub async fn health(config: &ConfigService) -> AdminResult {
    get_view(config, |manager| {
        manager.targets().report(std::time::Instant::now())
    })
    .await
}
