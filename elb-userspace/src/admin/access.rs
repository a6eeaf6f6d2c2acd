//! Who may use `/__erulb__/`: loopback clients, plus `--admin-allow`
//! networks; with `--admin-token`, only with `Authorization: Bearer <token>`.
use std::net::IpAddr;

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::cidr::{Cidr, canonical};

#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    pub allow: Vec<Cidr>,
    pub token: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the client's address is not allowed.
    Address(IpAddr),
    /// 401: a token is required and was missing or wrong.
    Token,
}

impl AccessPolicy {
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_address(peer)?;
        if let Some(token) = &self.token {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                return Err(Refusal::Token);
            }
        }
        Ok(())
    }
}

impl AccessPolicy {
    /// The address rule alone: for the status page's HTML, which holds no
    /// data (the JSON it fetches needs the token).
    pub fn check_address(&self, peer: IpAddr) -> Result<(), Refusal> {
        let peer = canonical(peer);
        if !peer.is_loopback() && !self.allow.iter().any(|net| net.contains(peer)) {
            return Err(Refusal::Address(peer));
        }
        Ok(())
    }
}

/// Compares in constant time (`subtle`), so timing does not tell how much
/// of a guess was right. The work follows the length of what was presented,
/// which the client knows anyway; a length mismatch does not exit early.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut equal = (presented.len() as u64).ct_eq(&(expected.len() as u64));
    for (i, byte) in presented.iter().enumerate() {
        let wanted = expected.get(i).copied().unwrap_or(!*byte);
        equal &= byte.ct_eq(&wanted);
    }
    equal.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(auth) = auth {
            headers.insert(header::AUTHORIZATION, auth.parse().expect("header"));
        }
        headers
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret ",
            b"s3creT",
            b"S3cret",
            b"s3cret\0",
        ] {
            assert!(!constant_time_eq(wrong, b"s3cret"), "{wrong:?}");
        }
        assert!(!constant_time_eq(b"s3cret", b""));
    }

    #[test]
    fn loopback_only_by_default() {
        let policy = AccessPolicy::default();
        for ok in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                policy.check(ok.parse().expect("ip"), &headers(None)),
                Ok(()),
                "{ok}"
            );
        }
        let outside: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            policy.check(outside, &headers(None)),
            Err(Refusal::Address(outside))
        );
    }

    #[test]
    fn allow_widens_and_token_narrows() {
        let policy = AccessPolicy {
            allow: vec!["10.0.0.0/8".parse().expect("cidr")],
            token: Some("s3cret".into()),
        };
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(policy.check(inside, &headers(None)), Err(Refusal::Token));
        assert_eq!(
            policy.check(inside, &headers(Some("Bearer wrong"))),
            Err(Refusal::Token)
        );
        assert_eq!(
            policy.check(inside, &headers(Some("Bearer s3cret"))),
            Ok(())
        );
        assert_eq!(
            policy.check("127.0.0.1".parse().expect("ip"), &headers(None)),
            Err(Refusal::Token)
        );
    }
}
