//! `/__erulb__/service`: L4 services, in the style of `/__erulb__/domain`.
use std::collections::BTreeSet;

use serde_json::Value;

use super::{AdminResult, delete_existing, expect_object, expect_string_list, get_view, named, ok};
use crate::{
    config::{
        ConfigManager, ConfigService, KeyLayout,
        l4::{L4Service, check_unique_vips},
    },
    store::KvOp,
};

pub async fn get(config: &ConfigService) -> AdminResult {
    get_view(config, |manager| named(manager.services(), |s| s.to_json())).await
}

/// Adds or replaces every service in the body, all or nothing. Stores the
/// canonical form (`table_size` filled in), which GET shows.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let services = expect_object(&body, "service: {\"vip\", \"proto\", \"upstream\"}")?;
    config
        .write(|manager| {
            let mut parsed = Vec::with_capacity(services.len());
            for (name, doc) in services {
                let service = L4Service::from_value(name, doc).map_err(|e| e.to_string())?;
                check_upstream(manager, &service)?;
                parsed.push(service);
            }
            // Existing services first (minus those replaced), so a conflict
            // names the service being written.
            let replaced: BTreeSet<&str> = parsed.iter().map(|s| s.name.as_str()).collect();
            let existing = manager
                .services()
                .values()
                .filter(|service| !replaced.contains(service.name.as_str()))
                .map(|service| &**service);
            check_unique_vips(existing.chain(&parsed)).map_err(|e| e.to_string())?;
            let ops = parsed
                .iter()
                .map(|service| KvOp::Put {
                    key: manager.layout().service_key(&service.name),
                    value: service.to_json().to_string(),
                })
                .collect();
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// Deletes the named services; unknown names are ignored (as for domains).
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let names = expect_string_list(&body, "service names")?;
    delete_existing(config, &names, KeyLayout::service_key).await
}

/// An upstream that exists must be usable by the data plane; one that does
/// not exist yet is fine (it may be created next).
fn check_upstream(manager: &ConfigManager, service: &L4Service) -> Result<(), String> {
    match manager.upstreams().get(&service.upstream) {
        Some(upstream) => service
            .check_servers(upstream.servers().iter().map(|s| s.name.as_str()))
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
