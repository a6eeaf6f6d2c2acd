//! `/__erulb__/dump`: writes the in-memory configuration to the store.
//!
//! ERU ELB kept admin changes in memory until a dump; elb writes through at
//! once, so a dump only matters to replace whatever the store holds (bad or
//! hand-edited entries) with what is serving. One transaction: keys that are
//! not serving are deleted, the rest rewritten: rules, upstreams (server
//! parameters in canonical `k=v` form), L4 services, ACL entries, health
//! policies, the zones document, L7 listeners (all in canonical form) and
//! TLS certificates (as they were given) and discovery documents.
use super::{AdminResult, ok};
use crate::config::ConfigService;

pub async fn put(config: &ConfigService) -> AdminResult {
    config
        .write(|manager| {
            let layout = manager.layout();
            let rules = manager
                .domains()
                .iter()
                .map(|(domain, entry)| {
                    (layout.rule_key(domain), entry.rules.document().to_string())
                })
                .collect();
            let servers = manager
                .upstreams()
                .iter()
                .flat_map(|(name, upstream)| {
                    upstream.servers().iter().map(move |server| {
                        (
                            layout.server_key(name, &server.name),
                            server.params.to_nginx_string(),
                        )
                    })
                })
                .collect();
            let services = manager
                .services()
                .iter()
                .map(|(name, service)| (layout.service_key(name), service.to_json().to_string()))
                .collect();
            let acl = manager
                .acl()
                .iter()
                .map(|cidr| (layout.acl_key(cidr), String::new()))
                .collect();
            let policies = manager
                .policies()
                .iter()
                .map(|(name, policy)| (layout.policy_key(name), policy.to_json().to_string()))
                .collect();
            let discovery = manager
                .discovery()
                .iter()
                .map(|(name, doc)| (layout.discovery_key(name), doc.to_json().to_string()))
                .collect();
            let certs = manager
                .certs()
                .iter()
                .map(|(name, cert)| (layout.cert_key(name), cert.to_document().to_string()))
                .collect();
            let listeners = manager
                .listeners()
                .iter()
                .map(|(name, listener)| (layout.listener_key(name), listener.to_json().to_string()))
                .collect();
            let mut ops = manager.replace_prefix_ops(layout.rules_prefix(), rules);
            ops.extend(manager.replace_prefix_ops(layout.listeners_prefix(), listeners));
            ops.extend(manager.replace_prefix_ops(layout.certs_prefix(), certs));
            ops.extend(manager.replace_prefix_ops(layout.policies_prefix(), policies));
            ops.extend(manager.replace_prefix_ops(layout.discovery_prefix(), discovery));
            let zones_key = layout.zones_key().to_owned();
            if manager.zones().disabled.is_empty() {
                if manager.kv().contains_key(&zones_key) {
                    ops.push(crate::store::KvOp::Delete { key: zones_key });
                }
            } else {
                ops.push(crate::store::KvOp::Put {
                    key: zones_key,
                    value: manager.zones().to_json().to_string(),
                });
            }
            ops.extend(manager.replace_prefix_ops(layout.upstreams_prefix(), servers));
            ops.extend(manager.replace_prefix_ops(layout.services_prefix(), services));
            ops.extend(manager.replace_prefix_ops(layout.acl_prefix(), acl));
            Ok((ops, ()))
        })
        .await?;
    ok()
}
