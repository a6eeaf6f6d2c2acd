//! Admin API bodies, for every endpoint that reads one.
//!
//! Input: one byte naming the endpoint, then the body. The byte is a letter
//! in the seeds: `d`/`D` domain PUT/DELETE, `u`/`U` upstream, `s`/`S`
//! service, `a`/`A` acl, `p`/`P` policy, `z` zones; any other byte picks
//! one by its value.
//! Properties:
//! - no panic, and a refusal is a 400 with a message;
//! - whatever a PUT accepts, the store path accepts too: the stored keys
//!   parse back to the same names, and the stored values parse back to the
//!   same definitions (what GET shows is what was written).
#![no_main]

use elb_userspace::{
    admin::{self, AdminError},
    config::{
        KeyLayout, L4Service, OwnAddrs, StoreKey, acl,
        manager::{compile_domain, parse_servers},
        policy::Policy,
        zones::Zones,
    },
    rules::RegexCache,
    upstream::parse_params,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    DomainPut,
    UpstreamPut,
    ServicePut,
    AclPut,
    PolicyPut,
    ZonesPut,
    /// Every DELETE but the ACL's: a list of names.
    NamesDelete,
}

const ALL: [Endpoint; 7] = [
    Endpoint::DomainPut,
    Endpoint::UpstreamPut,
    Endpoint::ServicePut,
    Endpoint::AclPut,
    Endpoint::PolicyPut,
    Endpoint::ZonesPut,
    Endpoint::NamesDelete,
];

fn endpoint(selector: u8) -> Endpoint {
    match selector {
        b'd' => Endpoint::DomainPut,
        b'u' => Endpoint::UpstreamPut,
        b's' => Endpoint::ServicePut,
        // The ACL's DELETE parses its body as its PUT does.
        b'a' | b'A' => Endpoint::AclPut,
        b'p' => Endpoint::PolicyPut,
        b'z' => Endpoint::ZonesPut,
        b'D' | b'U' | b'S' | b'P' => Endpoint::NamesDelete,
        other => ALL[usize::from(other) % ALL.len()],
    }
}

fn refused(error: &AdminError) {
    assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
    assert!(!error.message().is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // As the admin API reads a body.
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let layout = KeyLayout::new("ELB");
    match endpoint(selector) {
        Endpoint::DomainPut => domain_put(&layout, &body),
        Endpoint::UpstreamPut => upstream_put(&layout, &body),
        Endpoint::ServicePut => service_put(&layout, &body),
        Endpoint::AclPut => acl_put(&layout, &body),
        Endpoint::PolicyPut => policy_put(&layout, &body),
        Endpoint::ZonesPut => zones_put(&body),
        Endpoint::NamesDelete => match admin::expect_string_list(&body, "names") {
            Ok(names) => assert_eq!(Some(names.len()), body.as_array().map(Vec::len)),
            Err(error) => refused(&error),
        },
    }
});

fn domain_put(layout: &KeyLayout, body: &Value) {
    let domains = match admin::expect_object(body, "domain: rule document") {
        Ok(domains) => domains,
        Err(error) => return refused(&error),
    };
    for (domain, doc) in domains {
        let Ok((canonical, _)) = admin::domain::validate(domain, doc) else {
            continue;
        };
        let domain = canonical.as_str();
        let key = layout.rule_key(domain);
        assert_eq!(layout.parse(&key), Some(StoreKey::Rule { domain }));
        let entry = compile_domain(&key, domain, &doc.to_string(), &RegexCache::default())
            .expect("the store compiles what the admin API accepted");
        assert_eq!(entry.rules.document(), doc);
    }
}

fn upstream_put(layout: &KeyLayout, body: &Value) {
    let upstreams = match admin::expect_object(body, "upstream: servers") {
        Ok(upstreams) => upstreams,
        Err(error) => return refused(&error),
    };
    for (name, servers) in upstreams {
        let Ok(entries) = admin::upstream::validate(name, servers) else {
            continue;
        };
        assert!(!entries.is_empty());
        for (server, params) in &entries {
            let key = layout.server_key(name, server);
            assert_eq!(
                layout.parse(&key),
                Some(StoreKey::Server {
                    upstream: name,
                    server
                }),
                "{key:?}"
            );
            let written = servers[server.as_str()]
                .as_str()
                .expect("accepted parameters are a string");
            assert_eq!(parse_params(params), parse_params(written));
        }
        parse_servers(
            name,
            entries
                .iter()
                .map(|(s, p)| (s.as_str(), p.as_str()))
                .collect(),
            // No listeners here: no server is elb's own address.
            &OwnAddrs::new(Vec::new()),
        )
        .expect("the store reads the servers the admin API accepted");
    }
}

fn service_put(layout: &KeyLayout, body: &Value) {
    let services = match admin::expect_object(body, "service: definition") {
        Ok(services) => services,
        Err(error) => return refused(&error),
    };
    for (name, doc) in services {
        let Ok(service) = L4Service::from_value(name, doc) else {
            continue;
        };
        let key = layout.service_key(name);
        assert_eq!(layout.parse(&key), Some(StoreKey::Service { name }));
        let stored = service.to_json().to_string();
        assert_eq!(
            L4Service::parse(name, &stored).as_ref().ok(),
            Some(&service),
            "{stored}"
        );
    }
}

fn acl_put(layout: &KeyLayout, body: &Value) {
    let entries = match admin::acl::parse_body(body) {
        Ok(entries) => entries,
        Err(error) => return refused(&error),
    };
    assert!(entries.windows(2).all(|w| w[0] != w[1]), "deduplicated");
    assert_eq!(acl::normalize(entries.iter().copied()), entries);
    for cidr in &entries {
        let text = cidr.to_string();
        assert_eq!(acl::parse_entry(&text).as_ref(), Ok(cidr), "{text}");
        let key = layout.acl_key(cidr);
        assert_eq!(layout.parse(&key), Some(StoreKey::Acl { cidr: &text }));
    }
}

fn policy_put(layout: &KeyLayout, body: &Value) {
    let policies = match admin::expect_object(body, "upstream: policy") {
        Ok(policies) => policies,
        Err(error) => return refused(&error),
    };
    for (upstream, doc) in policies {
        let Ok(policy) = Policy::from_value(upstream, doc) else {
            continue;
        };
        let key = layout.policy_key(upstream);
        assert_eq!(layout.parse(&key), Some(StoreKey::Policy { upstream }));
        let stored = policy.to_json().to_string();
        assert_eq!(
            Policy::parse(upstream, &stored).as_ref().ok(),
            Some(&policy),
            "{stored}"
        );
    }
}

fn zones_put(body: &Value) {
    let Ok(zones) = Zones::from_value(body) else {
        return;
    };
    let stored = zones.to_json().to_string();
    assert_eq!(Zones::parse(&stored).as_ref(), Ok(&zones), "{stored}");
}
