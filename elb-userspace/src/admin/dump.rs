//! `/__erulb__/dump`: writes the in-memory configuration to the store.
//!
//! ERU ELB kept admin changes in memory until a dump; elb writes through at
//! once, so a dump only matters to replace whatever the store holds (bad or
//! hand-edited entries) with what is serving. One transaction: the rules and
//! upstreams prefixes are cleared and rewritten, server parameters in
//! canonical `k=v` form.
use super::{AdminResult, ok};
use crate::{config::ConfigService, store::KvOp};

pub async fn put(config: &ConfigService) -> AdminResult {
    config
        .write(|manager| {
            let layout = manager.layout();
            let mut ops = vec![
                KvOp::DeletePrefix {
                    prefix: layout.rules_prefix().to_owned(),
                },
                KvOp::DeletePrefix {
                    prefix: layout.upstreams_prefix().to_owned(),
                },
            ];
            for (domain, entry) in manager.domains() {
                ops.push(KvOp::Put {
                    key: layout.rule_key(domain),
                    value: entry.rules.document().to_string(),
                });
            }
            for (name, upstream) in manager.upstreams() {
                for server in upstream.servers() {
                    ops.push(KvOp::Put {
                        key: layout.server_key(name, &server.name),
                        value: server.params.to_nginx_string(),
                    });
                }
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}
