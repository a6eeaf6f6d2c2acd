//! The SNI choice, pure: exact DNS name first, then a wildcard
//! (`*.example.com` matches exactly one label, RFC 6125 §6.4.3), compared
//! case-insensitively; no match or no SNI gets the listener's default.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::certs::{Certificate, normalize};

/// Every usable certificate, indexed by DNS name. When two certificates
/// carry the same name, the first by certificate name wins (stable).
pub struct CertSet<T = Arc<Certificate>> {
    by_name: BTreeMap<String, T>,
    exact: HashMap<String, T>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, T>,
}

// By hand: a derive would want `T: Default`.
impl<T> Default for CertSet<T> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl CertSet<Arc<Certificate>> {
    pub fn from_certificates<'a>(certs: impl IntoIterator<Item = &'a Arc<Certificate>>) -> Self {
        Self::new(
            certs
                .into_iter()
                .map(|cert| (cert.name.clone(), cert.dns_names.clone(), Arc::clone(cert))),
        )
    }
}

impl<T: Clone> CertSet<T> {
    /// From `(certificate name, DNS names, value)`.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<String>, T)>) -> Self {
        let mut by_name: BTreeMap<String, (Vec<String>, T)> = BTreeMap::new();
        for (name, dns_names, value) in entries {
            by_name.insert(name, (dns_names, value));
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (dns_names, value) in by_name.values() {
            for dns in dns_names {
                let dns = normalize(dns);
                let (map, key) = match dns.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                        (&mut wildcard, parent.to_owned())
                    }
                    // `f*.example.com` and other partial wildcards: not
                    // matched (RFC 6125 lets a client refuse them too).
                    _ if dns.contains('*') => continue,
                    _ => (&mut exact, dns),
                };
                map.entry(key).or_insert_with(|| value.clone());
            }
        }
        Self {
            by_name: by_name
                .into_iter()
                .map(|(name, (_, value))| (name, value))
                .collect(),
            exact,
            wildcard,
        }
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The certificate for a handshake: by SNI, else `default` (a
    /// certificate name). `None` only when neither exists.
    pub fn choose(&self, sni: Option<&str>, default: &str) -> Option<&T> {
        sni.and_then(|sni| self.by_sni(sni))
            .or_else(|| self.by_name.get(default))
    }

    fn by_sni(&self, sni: &str) -> Option<&T> {
        let sni = normalize(sni);
        if let Some(value) = self.exact.get(&sni) {
            return Some(value);
        }
        // Exactly one label: `a.example.com` → `example.com`; the label
        // must not be empty.
        let (label, parent) = sni.split_once('.')?;
        if label.is_empty() || parent.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &[&str])]) -> CertSet<&'static str> {
        let leaked: Vec<(String, Vec<String>, &'static str)> = entries
            .iter()
            .map(|(name, dns)| {
                let name: &'static str = Box::leak(name.to_string().into_boxed_str());
                (
                    name.to_owned(),
                    dns.iter().map(|d| d.to_string()).collect(),
                    name,
                )
            })
            .collect();
        CertSet::new(leaked)
    }

    #[test]
    fn exact_beats_wildcard_and_default_catches_the_rest() {
        let certs = set(&[
            ("main", &["main.example.org"]),
            ("wild", &["*.example.com"]),
            ("api", &["api.example.com"]),
        ]);
        let choose = |sni: Option<&str>| certs.choose(sni, "main").copied();
        assert_eq!(choose(Some("api.example.com")), Some("api"));
        assert_eq!(choose(Some("API.Example.COM.")), Some("api"));
        assert_eq!(choose(Some("www.example.com")), Some("wild"));
        assert_eq!(choose(Some("WWW.EXAMPLE.COM")), Some("wild"));
        // One label only; the bare parent is not matched.
        assert_eq!(choose(Some("a.b.example.com")), Some("main"));
        assert_eq!(choose(Some("example.com")), Some("main"));
        assert_eq!(choose(Some(".example.com")), Some("main"));
        assert_eq!(choose(Some("unknown.test")), Some("main"));
        assert_eq!(choose(None), Some("main"));
        assert_eq!(certs.choose(Some("unknown.test"), "missing"), None);
        assert_eq!(
            certs.choose(Some("api.example.com"), "missing"),
            Some(&"api")
        );
    }

    #[test]
    fn partial_wildcards_never_match_and_duplicates_are_stable() {
        let certs = set(&[("b", &["f*.example.com", "dup.test"]), ("a", &["dup.test"])]);
        assert_eq!(certs.choose(Some("foo.example.com"), "none"), None);
        assert_eq!(certs.choose(Some("dup.test"), "none"), Some(&"a"));
        assert_eq!(certs.len(), 2);
    }
}
