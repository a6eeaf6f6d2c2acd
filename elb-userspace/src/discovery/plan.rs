//! A provider's result as store operations: the upstream's server keys
//! made to hold exactly the discovered servers (pure).
use std::collections::BTreeMap;

use super::DiscoveredServer;
use crate::{
    config::{KeyLayout, discovery::Discovery},
    store::{Kv, KvOp},
};

/// Server name (`ip:port`, `[v6]:port`) → stored parameters, one entry per
/// address (the first wins when a provider lists one twice).
pub fn server_entries(
    document: &Discovery,
    servers: &[DiscoveredServer],
) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    for server in servers {
        entries
            .entry(server.addr.to_string())
            .or_insert_with(|| document.server_value(server.zone.as_deref(), server.weight));
    }
    entries
}

/// Operations that make `upstream` hold exactly `entries`: deletes for
/// keys that vanished, puts for new or changed ones, nothing for the rest
/// (an unchanged result commits nothing).
pub fn replace_ops(
    kv: &Kv,
    layout: &KeyLayout,
    upstream: &str,
    entries: &BTreeMap<String, String>,
) -> Vec<KvOp> {
    let prefix = layout.upstream_prefix(upstream);
    let mut ops: Vec<KvOp> = kv
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter(|(key, _)| !entries.contains_key(&key[prefix.len()..]))
        .map(|(key, _)| KvOp::Delete { key: key.clone() })
        .collect();
    for (server, value) in entries {
        let key = layout.server_key(upstream, server);
        if kv.get(&key) != Some(value) {
            ops.push(KvOp::Put {
                key,
                value: value.clone(),
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, zone: Option<&str>, weight: Option<u32>) -> DiscoveredServer {
        DiscoveredServer {
            addr: addr.parse().expect("addr"),
            zone: zone.map(str::to_owned),
            weight,
        }
    }

    #[test]
    fn results_become_keys_and_values() {
        let doc = Discovery::parse(
            "web",
            r#"{"provider":"consul","service":"web","params":"max_fails=2"}"#,
        )
        .expect("doc");
        let entries = server_entries(
            &doc,
            &[
                server("10.0.0.1:80", Some("a"), Some(3)),
                server("[2001:db8::1]:8080", None, None),
                server("10.0.0.1:80", None, None),
            ],
        );
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            [
                (
                    "10.0.0.1:80".to_owned(),
                    "weight=3 max_fails=2 fail_timeout=10s zone=a".to_owned()
                ),
                (
                    "[2001:db8::1]:8080".to_owned(),
                    "weight=1 max_fails=2 fail_timeout=10s".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn replacing_deletes_the_vanished_puts_the_changed_and_keeps_the_rest() {
        let layout = KeyLayout::new("E");
        let mut kv = Kv::new();
        for (key, value) in [
            ("/E/upstreams/web/10.0.0.1:80", "weight=1"),
            ("/E/upstreams/web/10.0.0.2:80", "weight=1"),
            ("/E/upstreams/web/10.0.0.3:80", "weight=1"),
            ("/E/upstreams/web2/10.0.0.9:80", "weight=1"),
        ] {
            kv.insert(key.into(), value.into());
        }
        let entries: BTreeMap<String, String> = [
            ("10.0.0.1:80", "weight=1"),
            ("10.0.0.3:80", "weight=2"),
            ("10.0.0.4:80", "weight=1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let ops = replace_ops(&kv, &layout, "web", &entries);
        assert_eq!(
            ops,
            [
                KvOp::Delete {
                    key: "/E/upstreams/web/10.0.0.2:80".into()
                },
                KvOp::Put {
                    key: "/E/upstreams/web/10.0.0.3:80".into(),
                    value: "weight=2".into()
                },
                KvOp::Put {
                    key: "/E/upstreams/web/10.0.0.4:80".into(),
                    value: "weight=1".into()
                },
            ]
        );
        for op in &ops {
            op.apply_to(&mut kv);
        }
        assert!(replace_ops(&kv, &layout, "web", &entries).is_empty());
        // An empty result from a healthy API empties the upstream (and
        // leaves its neighbour "web2" alone).
        let ops = replace_ops(&kv, &layout, "web", &BTreeMap::new());
        assert_eq!(ops.len(), 3);
        assert!(
            ops.iter().all(
                |op| matches!(op, KvOp::Delete { key } if key.starts_with("/E/upstreams/web/"))
            )
        );
    }
}
