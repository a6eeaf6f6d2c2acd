//! The etcd key layout, shared by ERU ELB and elb:
//! `/$ELBNAME/rules/$domain` and `/$ELBNAME/upstreams/$upstream/$server`.

/// What a key under the prefix stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey<'a> {
    Rule { domain: &'a str },
    Server { upstream: &'a str, server: &'a str },
}

/// Builds and parses keys for one ELB name.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
    rules: String,
    upstreams: String,
}

impl KeyLayout {
    pub fn new(elb_name: &str) -> Self {
        let prefix = format!("/{elb_name}/");
        Self {
            rules: format!("{prefix}rules/"),
            upstreams: format!("{prefix}upstreams/"),
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

    /// Classifies a key; `None` for keys elb does not use (they are kept in
    /// the store untouched).
    pub fn parse<'k>(&self, key: &'k str) -> Option<StoreKey<'k>> {
        if let Some(domain) = key.strip_prefix(&self.rules) {
            return (!domain.is_empty() && !domain.contains('/'))
                .then_some(StoreKey::Rule { domain });
        }
        let rest = key.strip_prefix(&self.upstreams)?;
        let (upstream, server) = rest.split_once('/')?;
        (!upstream.is_empty() && !server.is_empty() && !server.contains('/'))
            .then_some(StoreKey::Server { upstream, server })
    }
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
        for foreign in [
            "/ELB/rules/",
            "/ELB/upstreams/up",
            "/ELB/upstreams/up/",
            "/ELB/upstreams//x:1",
            "/ELB/other/x",
            "/ELB2/rules/a.com",
            "/ELB/rules/a/b",
        ] {
            assert_eq!(layout.parse(foreign), None, "{foreign}");
        }
    }
}
