//! `/__erulb__/domain`: rule documents per domain.
use serde_json::{Map, Value};

use super::{
    AdminResult, delete_existing, expect_object, expect_string_list, ok, validate_key_segment,
};
use crate::{
    config::{ConfigService, KeyLayout},
    http_util::json,
    rules,
    store::KvOp,
};

pub async fn get(config: &ConfigService) -> AdminResult {
    let body = config
        .read(|manager| {
            manager
                .domains()
                .iter()
                .map(|(domain, entry)| (domain.clone(), entry.rules.document().clone()))
                .collect::<Map<String, Value>>()
        })
        .await;
    Ok(json(http::StatusCode::OK, &Value::Object(body)))
}

/// Adds or replaces every domain in the body, all or nothing.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let domains = expect_object(&body, "domain: rule document")?;
    let mut ops = Vec::with_capacity(domains.len());
    config
        .write(|manager| {
            for (domain, doc) in domains {
                validate(domain, doc)?;
                ops.push(KvOp::Put {
                    key: manager.layout().rule_key(domain),
                    value: doc.to_string(),
                });
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// One domain of a PUT body: its name and its rule document.
pub fn validate(domain: &str, doc: &Value) -> Result<(), String> {
    validate_key_segment("domain", domain)?;
    rules::compile(domain, doc).map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let domains = expect_string_list(&body, "domain names")?;
    delete_existing(config, &domains, KeyLayout::rule_key).await
}
