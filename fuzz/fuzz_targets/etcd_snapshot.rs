//! etcd key/value sets into a configuration snapshot.
//!
//! Input: one operation a line, `P key value`, `D key` or `X prefix` (put,
//! delete, delete by prefix); a key without a leading `/` is under
//! `/ELB/`, e.g. `P rules/a.com {"init": ...}`.
//! Properties, with one manager fed the operations one by one (watch
//! events) and another loading the final key/value set at once (start-up):
//! - neither panics;
//! - the loaded one serves exactly the entries that are valid on their own
//!   (domains that compile, upstreams whose servers all parse, the valid ACL
//!   keys), services that parse, on distinct VIPs;
//! - its snapshot finds every served domain by Host and every upstream;
//! - when the final set has no bad entry, both managers serve the same.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use elb_userspace::{
    config::{
        ConfigManager, KeyLayout, L4Service, StoreKey, acl, keys,
        manager::{compile_domain, parse_servers},
    },
    rules::RegexCache,
    store::{Kv, KvOp},
};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 64;

fn full_key(key: &str) -> String {
    if key.starts_with('/') {
        key.to_owned()
    } else {
        format!("/ELB/{key}")
    }
}

fn parse_ops(text: &str) -> Vec<KvOp> {
    text.lines()
        .take(MAX_OPS)
        .filter_map(|line| {
            let (verb, rest) = line.split_once(' ')?;
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match verb {
                "P" => Some(KvOp::Put {
                    key: full_key(key),
                    value: value.to_owned(),
                }),
                "D" => Some(KvOp::Delete { key: full_key(key) }),
                "X" => Some(KvOp::DeletePrefix {
                    prefix: full_key(key),
                }),
                _ => None,
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ops = parse_ops(text);
    let layout = KeyLayout::new("ELB");

    let mut incremental = ConfigManager::new(layout.clone());
    let mut kv = Kv::new();
    for op in &ops {
        incremental.apply(std::slice::from_ref(op));
        op.apply_to(&mut kv);
    }
    assert_eq!(incremental.kv(), &kv);

    let mut loaded = ConfigManager::new(layout.clone());
    let errors = loaded.replace_all(kv.clone());
    check_serves_the_valid_entries(&loaded, &layout, &kv);
    check_snapshot(&loaded);
    if errors.is_empty() {
        assert_same_serving(&incremental, &loaded);
    }
});

fn check_serves_the_valid_entries(manager: &ConfigManager, layout: &KeyLayout, kv: &Kv) {
    let regexes = RegexCache::default();
    let mut domains = BTreeSet::new();
    let mut upstreams = BTreeSet::new();
    let mut acl_entries = Vec::new();
    let mut services = BTreeSet::new();
    for (key, value) in kv {
        match layout.parse(key) {
            Some(StoreKey::Rule { domain }) => {
                if compile_domain(key, domain, value, &regexes).is_ok() {
                    domains.insert(domain.to_owned());
                }
            }
            // `..` or `*` as an upstream name is skipped, like a bad server.
            Some(StoreKey::Server { upstream, .. })
                if keys::validate_key_segment("upstream", upstream).is_ok() =>
            {
                upstreams.insert(upstream.to_owned());
            }
            Some(StoreKey::Acl { cidr }) => acl_entries.extend(acl::parse_entry(cidr).ok()),
            Some(StoreKey::Service { name }) => {
                services.insert(name.to_owned());
            }
            _ => {}
        }
    }
    let served: BTreeSet<String> = manager.domains().keys().cloned().collect();
    assert_eq!(served, domains, "served domains");
    for (domain, entry) in manager.domains() {
        let stored: serde_json::Value =
            serde_json::from_str(&kv[&layout.rule_key(domain)]).expect("a served rule is JSON");
        assert_eq!(entry.rules.document(), &stored);
    }

    // An upstream serves when every key under its prefix is a valid server.
    upstreams.retain(|name| {
        let prefix = layout.upstream_prefix(name);
        let servers: Vec<(&str, &str)> = kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| match layout.parse(k) {
                Some(StoreKey::Server { server, .. }) => Some((server, v.as_str())),
                _ => None,
            })
            .collect();
        parse_servers(name, servers, manager.own_addrs()).is_ok()
    });
    let served: BTreeSet<String> = manager.upstreams().keys().cloned().collect();
    assert_eq!(served, upstreams, "served upstreams");

    let mut expected_acl = acl::normalize(acl_entries);
    expected_acl.truncate(acl::MAX_ACL_ENTRIES);
    assert_eq!(manager.acl(), expected_acl.as_slice());

    let mut vips = std::collections::HashSet::new();
    for (name, service) in manager.services() {
        assert!(services.contains(name), "service {name} has no key");
        let stored = L4Service::parse(name, &kv[&layout.service_key(name)])
            .expect("a freshly loaded service is its stored definition");
        assert_eq!(**service, stored);
        assert!(
            vips.insert((service.vip, service.proto)),
            "two services on {:?}",
            service.vip
        );
    }
}

fn check_snapshot(manager: &ConfigManager) {
    let snapshot = manager.snapshot_handle().load_full();
    for (domain, entry) in manager.domains() {
        // A client sends the canonical name (lower case, IDNA punycode); an
        // ASCII spelling in any case finds the same domain.
        let found = snapshot
            .lookup_host(&entry.host)
            .unwrap_or_else(|| panic!("Host {:?} ({domain:?}) finds no domain", entry.host));
        assert_eq!(found.host, entry.host);
        if domain.is_ascii() {
            let found = snapshot
                .lookup_host(domain)
                .unwrap_or_else(|| panic!("Host {domain:?} finds no domain"));
            assert_eq!(found.host, entry.host);
        }
    }
    for name in manager.upstreams().keys() {
        assert!(snapshot.upstream(name).is_some(), "upstream {name}");
    }
    assert_eq!(snapshot.acl(), manager.acl());
    assert_eq!(snapshot.services(), manager.services());
}

fn assert_same_serving(a: &ConfigManager, b: &ConfigManager) {
    let documents = |m: &ConfigManager| -> BTreeMap<String, serde_json::Value> {
        m.domains()
            .iter()
            .map(|(d, e)| (d.clone(), e.rules.document().clone()))
            .collect()
    };
    assert_eq!(documents(a), documents(b), "domains");
    let servers = |m: &ConfigManager| -> BTreeMap<String, Vec<(String, String)>> {
        m.upstreams()
            .iter()
            .map(|(name, upstream)| {
                let servers = upstream
                    .servers()
                    .iter()
                    .map(|s| (s.name.clone(), s.params.to_nginx_string()))
                    .collect();
                (name.clone(), servers)
            })
            .collect()
    };
    assert_eq!(servers(a), servers(b), "upstreams");
    assert_eq!(a.services(), b.services(), "services");
    assert_eq!(a.acl(), b.acl(), "acl");
    assert_eq!(a.policies(), b.policies(), "policies");
    assert_eq!(a.zones(), b.zones(), "zones");
}
