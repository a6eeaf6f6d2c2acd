//! The hop marker: every request elb forwards carries `Via: 1.1 elb-<name>`
//! appended to any `Via` it had (RFC 9110 §7.6.3), and a request that
//! arrives with this elb's own entry already in it has been around a loop
//! (508 Loop Detected). That also catches loops the write-time check cannot
//! see: a name that resolves to elb, or a path through other proxies.
//!
//! The marker is the `received-by` pseudonym `elb-<name>`, matched as a
//! whole token: `elb-PROBE2`, `elb-PROBE.example`, `elb` or a comment that
//! mentions `elb-PROBE` are other proxies. elbs of the same name share one
//! configuration (the name is its key prefix), so a request that passed
//! through one of them and reaches another would take the same route again.
use http::{HeaderMap, HeaderValue, header};

#[derive(Debug, Clone)]
pub struct HopMarker {
    /// `elb-<name>`.
    pseudonym: String,
    /// `1.1 elb-<name>`.
    entry: HeaderValue,
}

/// Why a marker cannot be made from a name.
#[derive(Debug, thiserror::Error)]
#[error("elb name {0:?} cannot be a Via pseudonym (letters, digits, '-', '_' and '.' only)")]
pub struct BadMarkerName(String);

impl HopMarker {
    /// `name` is a validated elb name (letters, digits, `-`, `_`, `.`).
    pub fn new(name: &str) -> Result<Self, BadMarkerName> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(BadMarkerName(name.to_owned()));
        }
        let pseudonym = format!("elb-{name}");
        let entry = HeaderValue::try_from(format!("1.1 {pseudonym}"))
            .map_err(|_| BadMarkerName(name.to_owned()))?;
        Ok(Self { pseudonym, entry })
    }

    /// Whether any `Via` entry of `headers` was added by this elb.
    pub fn seen_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .any(|value| via_entries(value.as_bytes()).any(|entry| self.is_ours(entry)))
    }

    /// Appends this elb's entry, joining earlier `Via` lines into one.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        let mut joined = Vec::new();
        for value in headers.get_all(header::VIA) {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                joined.extend_from_slice(value);
                joined.extend_from_slice(b", ");
            }
        }
        let value = if joined.is_empty() {
            self.entry.clone()
        } else {
            joined.extend_from_slice(self.entry.as_bytes());
            // Valid header values joined by ", " are a valid header value.
            match HeaderValue::from_bytes(&joined) {
                Ok(value) => value,
                Err(_) => self.entry.clone(),
            }
        };
        headers.insert(header::VIA, value);
    }

    /// `received-protocol RWS received-by [RWS comment]`: ours when the
    /// second word is our pseudonym (case-sensitive, as elb names are).
    fn is_ours(&self, entry: &[u8]) -> bool {
        let mut words = entry
            .split(|b| b.is_ascii_whitespace())
            .filter(|word| !word.is_empty());
        let _protocol = words.next();
        words
            .next()
            .is_some_and(|by| by == self.pseudonym.as_bytes())
    }
}

/// The comma-separated entries of one `Via` value; commas inside a
/// comment (`(...)`, nested, with `\` escapes) do not separate.
fn via_entries(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut depth = 0usize;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if depth > 0 => escaped = true,
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let entry = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(entry.trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(vias: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for via in vias {
            map.append(header::VIA, via.parse().expect("value"));
        }
        map
    }

    fn marker() -> HopMarker {
        HopMarker::new("PROBE").expect("marker")
    }

    #[test]
    fn appends_to_what_came_before() {
        let mut map = headers(&[]);
        marker().append_to(&mut map);
        assert_eq!(map.get(header::VIA).expect("via"), "1.1 elb-PROBE");
        let mut map = headers(&["1.0 fred, 1.1 p.example.net", "2 cdn"]);
        marker().append_to(&mut map);
        let all: Vec<_> = map.get_all(header::VIA).iter().collect();
        assert_eq!(all, ["1.0 fred, 1.1 p.example.net, 2 cdn, 1.1 elb-PROBE"]);
    }

    #[test]
    fn finds_its_own_entry_anywhere() {
        let marker = marker();
        for vias in [
            &["1.1 elb-PROBE"][..],
            &["1.0 fred, 1.1 elb-PROBE"],
            &["1.0 fred", "HTTP/1.1 elb-PROBE (elb, v1)"],
            &["1.1 a (x, y), 1.1 elb-PROBE"],
            &["  1.1   elb-PROBE  ,1.1 b"],
        ] {
            assert!(marker.seen_in(&headers(vias)), "{vias:?}");
        }
    }

    #[test]
    fn other_proxies_entries_are_not_ours() {
        let marker = marker();
        for vias in [
            &[][..],
            &["1.1 elb"],
            &["1.1 elb-PROBE2"],
            &["1.1 ELB-probe"],
            &["1.1 elb-PROBE.example.com"],
            &["1.1 x-elb-PROBE"],
            &["elb-PROBE"],
            &["1.1 proxy (1.1 elb-PROBE)"],
            &["1.1 proxy (a, 1.1 elb-PROBE)"],
            &["1.1 proxy (a \\) , 1.1 elb-PROBE)"],
        ] {
            assert!(!marker.seen_in(&headers(vias)), "{vias:?}");
        }
    }

    #[test]
    fn the_name_must_be_a_token() {
        assert!(HopMarker::new("").is_err());
        assert!(HopMarker::new("a b").is_err());
        assert!(HopMarker::new("a,b").is_err());
        assert!(HopMarker::new("ELB_1.x-y").is_ok());
    }
}
