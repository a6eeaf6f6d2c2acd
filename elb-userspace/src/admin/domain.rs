//! `/__erulb__/domain`: rule documents per domain.
use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::{AdminResult, expect_object, expect_string_list, ok};
use crate::{
    config::{
        ConfigManager, ConfigService, StoreKey,
        domain_name::{is_canonical, normalize_domain},
    },
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

/// Adds or replaces every domain in the body, all or nothing. Names are
/// stored in canonical form (lower case, IDNA punycode): a Host matches
/// case-insensitively, so `Probe.test` and `probe.test` are one domain, and
/// writing it replaces any other stored spelling of it.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let domains = expect_object(&body, "domain: rule document")?;
    config
        .write(|manager| {
            let mut ops = Vec::with_capacity(domains.len());
            let mut seen: HashMap<String, &str> = HashMap::new();
            let others = other_spellings(manager);
            for (domain, doc) in domains {
                let (canonical, rules) = validate(domain, doc)?;
                if let Some(first) = seen.insert(canonical.clone(), domain) {
                    return Err(format!(
                        "domains {first:?} and {domain:?} are the same domain {canonical:?} \
                         (Host matching is case-insensitive): send one of them"
                    ));
                }
                manager
                    .own_addrs()
                    .check_servernames(rules.servernames())
                    .map_err(|e| format!("domain {domain:?}: backend servername {e}"))?;
                ops.extend(
                    others
                        .get(&canonical)
                        .into_iter()
                        .flatten()
                        .map(|key| KvOp::Delete { key: key.clone() }),
                );
                ops.push(KvOp::Put {
                    key: manager.layout().rule_key(&canonical),
                    value: doc.to_string(),
                });
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// One domain of a PUT body, checked on its own: its canonical name (the
/// key it is stored under) and its compiled rules.
pub fn validate(domain: &str, doc: &Value) -> Result<(String, rules::CompiledRules), String> {
    let canonical = normalize_domain(domain)?;
    let rules = rules::compile(&canonical, doc).map_err(|e| e.to_string())?;
    Ok((canonical, rules))
}

/// Deletes each named domain under every spelling stored; a name that is
/// no valid domain (a hand-written `..`) is deleted as it is spelled.
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let domains = expect_string_list(&body, "domain names")?;
    config
        .write(|manager| {
            let others = other_spellings(manager);
            let mut keys = BTreeSet::new();
            for domain in &domains {
                keys.insert(manager.layout().rule_key(domain));
                if let Ok(canonical) = normalize_domain(domain) {
                    keys.insert(manager.layout().rule_key(&canonical));
                    keys.extend(others.get(&canonical).into_iter().flatten().cloned());
                }
            }
            Ok((super::delete_ops(manager, keys), ()))
        })
        .await?;
    ok()
}

/// Stored rule keys whose domain is not in canonical form (written by ERU
/// ELB or by hand), by the canonical name they stand for.
fn other_spellings(manager: &ConfigManager) -> HashMap<String, Vec<String>> {
    let prefix = manager.layout().rules_prefix();
    let mut others: HashMap<String, Vec<String>> = HashMap::new();
    for (key, _) in manager
        .kv()
        .range(prefix.to_owned()..)
        .take_while(|(key, _)| key.starts_with(prefix))
    {
        let Some(StoreKey::Rule { domain }) = manager.layout().parse(key) else {
            continue;
        };
        if is_canonical(domain) {
            continue;
        }
        if let Ok(canonical) = normalize_domain(domain) {
            others.entry(canonical).or_default().push(key.clone());
        }
    }
    others
}
