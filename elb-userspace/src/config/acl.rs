//! The deny-list: networks whose packets the XDP data plane drops. One key
//! per entry, `/$ELBNAME/acl/$cidr` (e.g. `/ELB/acl/10.0.0.0/8`), whose
//! value is ignored (elb writes `""`).
//!
//! Entries are [`Cidr`]s: a bare address means /32 or /128, and an entry
//! with host bits set after the prefix (`10.1.2.3/8`) is refused rather
//! than silently widened, so a typo cannot deny more than was meant.
use crate::cidr::{Cidr, CidrError};

/// Most entries the deny-list may hold (the data plane's map size).
pub const MAX_ACL_ENTRIES: usize = 65_536;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// The message names the entry and the problem.
    #[error("ACL entry {0}")]
    Invalid(#[from] CidrError),
    #[error("the ACL would hold {count} entries; at most {max} are allowed", max = MAX_ACL_ENTRIES)]
    TooMany { count: usize },
}

/// Parses one entry as written by a user or found in a store key.
pub fn parse_entry(text: &str) -> Result<Cidr, AclError> {
    Ok(text.parse::<Cidr>()?)
}

/// Sorted (IPv4 first, then by network and prefix length) without
/// duplicates: the order GET shows and the snapshot holds.
pub fn normalize(entries: impl IntoIterator<Item = Cidr>) -> Vec<Cidr> {
    let mut entries: Vec<Cidr> = entries.into_iter().collect();
    entries.sort_unstable_by_key(|cidr| (cidr.network(), cidr.prefix_len()));
    entries.dedup();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_to_canonical_text() {
        for (input, canonical) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("2001:db8:0:0::1", "2001:db8::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(
                parse_entry(input).expect(input).to_string(),
                canonical,
                "{input}"
            );
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for (bad, reason) in [
            ("10.1.2.3/8", "host bits"),
            ("10.0.0.0/33", "prefix length"),
            ("2001:db8::1/32", "host bits"),
            ("not-an-ip", "invalid address"),
            ("", "invalid address"),
            ("10.0.0.0/", "prefix length"),
        ] {
            let message = parse_entry(bad).expect_err(bad).to_string();
            assert!(
                message.starts_with("ACL entry ") && message.contains(reason),
                "{bad}: {message}"
            );
            assert!(message.contains(&format!("{bad:?}")), "{bad}: {message}");
        }
    }

    #[test]
    fn normalize_sorts_and_deduplicates() {
        let entries = [
            "fd00::/8",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "1.2.3.4",
            "10.0.0.0/8",
        ]
        .map(|e| parse_entry(e).expect(e));
        let text: Vec<String> = normalize(entries).iter().map(Cidr::to_string).collect();
        assert_eq!(
            text,
            ["1.2.3.4/32", "10.0.0.0/8", "10.0.0.0/16", "fd00::/8"]
        );
    }

    #[test]
    fn too_many_names_the_limit() {
        let message = AclError::TooMany { count: 70_000 }.to_string();
        assert!(
            message.contains("70000") && message.contains("65536"),
            "{message}"
        );
    }
}
