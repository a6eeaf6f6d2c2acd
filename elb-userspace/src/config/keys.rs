//! The etcd key layout, shared by ERU ELB and elb:
//! `/$ELBNAME/rules/$domain` and `/$ELBNAME/upstreams/$upstream/$server`;
//! elb's own additions: `/$ELBNAME/services/$service` (an L4 service) and
//! `/$ELBNAME/acl/$cidr` (a deny-list entry; the CIDR text has a '/'),
//! `/$ELBNAME/policies/$upstream` (a target-health policy) and
//! `/$ELBNAME/zones` (the disabled availability zones) and
//! `/$ELBNAME/certs/$name` (a TLS certificate and its key) and
//! `/$ELBNAME/listeners/$name` (an L7 listener) and
//! `/$ELBNAME/discovery/$upstream` (the provider that owns an upstream's
//! servers).
use crate::cidr::Cidr;

/// What a key under the prefix stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey<'a> {
    Rule {
        domain: &'a str,
    },
    Server {
        upstream: &'a str,
        server: &'a str,
    },
    Service {
        name: &'a str,
    },
    /// The CIDR text as stored, not yet parsed (it may be invalid).
    Acl {
        cidr: &'a str,
    },
    Policy {
        upstream: &'a str,
    },
    Zones,
    Cert {
        name: &'a str,
    },
    Listener {
        name: &'a str,
    },
    Discovery {
        upstream: &'a str,
    },
}

/// Builds and parses keys for one ELB name.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
    rules: String,
    upstreams: String,
    services: String,
    acl: String,
    policies: String,
    zones: String,
    certs: String,
    listeners: String,
    discovery: String,
}

impl KeyLayout {
    pub fn new(elb_name: &str) -> Self {
        let prefix = format!("/{elb_name}/");
        Self {
            rules: format!("{prefix}rules/"),
            upstreams: format!("{prefix}upstreams/"),
            services: format!("{prefix}services/"),
            acl: format!("{prefix}acl/"),
            policies: format!("{prefix}policies/"),
            zones: format!("{prefix}zones"),
            certs: format!("{prefix}certs/"),
            listeners: format!("{prefix}listeners/"),
            discovery: format!("{prefix}discovery/"),
            prefix,
        }
    }

    /// Everything elb owns: `/$ELBNAME/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn rules_prefix(&self) -> &str {
        &self.rules
    }

    pub fn upstreams_prefix(&self) -> &str {
        &self.upstreams
    }

    pub fn services_prefix(&self) -> &str {
        &self.services
    }

    pub fn acl_prefix(&self) -> &str {
        &self.acl
    }

    pub fn policies_prefix(&self) -> &str {
        &self.policies
    }

    pub fn listeners_prefix(&self) -> &str {
        &self.listeners
    }

    pub fn listener_key(&self, name: &str) -> String {
        format!("{}{name}", self.listeners)
    }

    pub fn discovery_prefix(&self) -> &str {
        &self.discovery
    }

    pub fn discovery_key(&self, upstream: &str) -> String {
        format!("{}{upstream}", self.discovery)
    }

    pub fn policy_key(&self, upstream: &str) -> String {
        format!("{}{upstream}", self.policies)
    }

    pub fn certs_prefix(&self) -> &str {
        &self.certs
    }

    pub fn cert_key(&self, name: &str) -> String {
        format!("{}{name}", self.certs)
    }

    /// `/$ELBNAME/zones`: the one zones document.
    pub fn zones_key(&self) -> &str {
        &self.zones
    }

    pub fn rule_key(&self, domain: &str) -> String {
        format!("{}{domain}", self.rules)
    }

    /// All server keys of one upstream: `/$ELBNAME/upstreams/$upstream/`.
    pub fn upstream_prefix(&self, upstream: &str) -> String {
        format!("{}{upstream}/", self.upstreams)
    }

    pub fn server_key(&self, upstream: &str, server: &str) -> String {
        format!("{}{upstream}/{server}", self.upstreams)
    }

    pub fn service_key(&self, name: &str) -> String {
        format!("{}{name}", self.services)
    }

    /// `/$ELBNAME/acl/10.0.0.0/8`: the canonical CIDR text.
    pub fn acl_key(&self, cidr: &Cidr) -> String {
        format!("{}{cidr}", self.acl)
    }

    /// Classifies a key; `None` for keys elb does not use (they are kept in
    /// the store untouched).
    pub fn parse<'k>(&self, key: &'k str) -> Option<StoreKey<'k>> {
        if let Some(domain) = key.strip_prefix(&self.rules) {
            return (!domain.is_empty() && !domain.contains('/'))
                .then_some(StoreKey::Rule { domain });
        }
        if let Some(name) = key.strip_prefix(&self.services) {
            return (!name.is_empty() && !name.contains('/')).then_some(StoreKey::Service { name });
        }
        if let Some(upstream) = key.strip_prefix(&self.policies) {
            return (!upstream.is_empty() && !upstream.contains('/'))
                .then_some(StoreKey::Policy { upstream });
        }
        if let Some(name) = key.strip_prefix(&self.certs) {
            return (!name.is_empty() && !name.contains('/')).then_some(StoreKey::Cert { name });
        }
        if let Some(name) = key.strip_prefix(&self.listeners) {
            return (!name.is_empty() && !name.contains('/'))
                .then_some(StoreKey::Listener { name });
        }
        if let Some(upstream) = key.strip_prefix(&self.discovery) {
            return (!upstream.is_empty() && !upstream.contains('/'))
                .then_some(StoreKey::Discovery { upstream });
        }
        if key == self.zones {
            return Some(StoreKey::Zones);
        }
        if let Some(cidr) = key.strip_prefix(&self.acl) {
            return (!cidr.is_empty()).then_some(StoreKey::Acl { cidr });
        }
        let rest = key.strip_prefix(&self.upstreams)?;
        let (upstream, server) = rest.split_once('/')?;
        (!upstream.is_empty() && !server.is_empty() && !server.contains('/'))
            .then_some(StoreKey::Server { upstream, server })
    }
}

/// Names that become one key segment (domains, upstreams, services).
pub fn validate_key_segment(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > 253 {
        return Err(format!("{kind} name {name:?} is longer than 253 bytes"));
    }
    // `.` and `..` would be path components in the key
    // (`/ELB/upstreams/../x`); `*` looks like a wildcard elb does not have.
    if name == "." || name == ".." {
        return Err(format!(
            "{kind} name {name:?} is not allowed (it is a path component)"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == '*' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{kind} name {name:?} contains {bad:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_eru_layout() {
        let layout = KeyLayout::new("ELB");
        assert_eq!(layout.rule_key("example.com"), "/ELB/rules/example.com");
        assert_eq!(
            layout.server_key("up1", "127.0.0.1:8088"),
            "/ELB/upstreams/up1/127.0.0.1:8088"
        );
        assert_eq!(layout.upstream_prefix("up1"), "/ELB/upstreams/up1/");
        assert_eq!(layout.service_key("web"), "/ELB/services/web");
        assert_eq!(layout.policy_key("up1"), "/ELB/policies/up1");
        assert_eq!(layout.zones_key(), "/ELB/zones");
        assert_eq!(layout.cert_key("main"), "/ELB/certs/main");
        assert_eq!(layout.listener_key("web"), "/ELB/listeners/web");
        assert_eq!(
            layout.parse("/ELB/listeners/web"),
            Some(StoreKey::Listener { name: "web" })
        );
        assert_eq!(layout.parse("/ELB/listeners/"), None);
        assert_eq!(layout.discovery_key("web"), "/ELB/discovery/web");
        assert_eq!(
            layout.parse("/ELB/discovery/web"),
            Some(StoreKey::Discovery { upstream: "web" })
        );
        assert_eq!(layout.parse("/ELB/discovery/"), None);
        assert_eq!(layout.parse("/ELB/discovery/a/b"), None);
        assert_eq!(layout.parse("/ELB/listeners/a/b"), None);
        let cidr: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert_eq!(layout.acl_key(&cidr), "/ELB/acl/10.0.0.0/8");
    }

    #[test]
    fn path_components_and_wildcards_are_not_names() {
        for bad in [".", "..", "*", "*.example.com", "a*b"] {
            let err = validate_key_segment("upstream", bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        for good in ["up1", "a.b", "...", "..x", "example.com:8080"] {
            assert_eq!(validate_key_segment("upstream", good), Ok(()), "{good}");
        }
    }

    #[test]
    fn parse_round_trips_and_ignores_foreign_keys() {
        let layout = KeyLayout::new("ELB");
        assert_eq!(
            layout.parse("/ELB/rules/a.com"),
            Some(StoreKey::Rule { domain: "a.com" })
        );
        assert_eq!(
            layout.parse("/ELB/upstreams/up/[::1]:80"),
            Some(StoreKey::Server {
                upstream: "up",
                server: "[::1]:80"
            })
        );
        assert_eq!(
            layout.parse("/ELB/services/web"),
            Some(StoreKey::Service { name: "web" })
        );
        assert_eq!(
            layout.parse("/ELB/policies/up"),
            Some(StoreKey::Policy { upstream: "up" })
        );
        assert_eq!(layout.parse("/ELB/zones"), Some(StoreKey::Zones));
        assert_eq!(
            layout.parse("/ELB/certs/main"),
            Some(StoreKey::Cert { name: "main" })
        );
        assert_eq!(
            layout.parse("/ELB/acl/2001:db8::/32"),
            Some(StoreKey::Acl {
                cidr: "2001:db8::/32"
            })
        );
        for foreign in [
            "/ELB/rules/",
            "/ELB/upstreams/up",
            "/ELB/upstreams/up/",
            "/ELB/upstreams//x:1",
            "/ELB/other/x",
            "/ELB2/rules/a.com",
            "/ELB/rules/a/b",
            "/ELB/services/",
            "/ELB/services/a/b",
            "/ELB/acl/",
            "/ELB/policies/",
            "/ELB/policies/a/b",
            "/ELB/zones/x",
            "/ELB/certs/",
            "/ELB/certs/a/b",
        ] {
            assert_eq!(layout.parse(foreign), None, "{foreign}");
        }
    }
}
