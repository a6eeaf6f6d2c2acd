//! Which host a request is for (RFC 9112 §3.2): at most one `Host`, a valid
//! `host[:port]`, required in HTTP/1.1; an absolute-form target's authority
//! wins over it (§3.2.2).
use std::net::Ipv6Addr;

use http::{HeaderMap, Uri, Version, header};

/// Why a request's host is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has more than one Host header")]
    Duplicate,
    #[error("the HTTP/1.1 request has no Host header")]
    Missing,
    #[error("the Host header is not a valid host[:port]")]
    InvalidHeader,
    #[error("the request target's authority is not a valid host[:port]")]
    InvalidTarget,
}

/// The host a request is routed by.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestHost<'a> {
    /// From the one `Host` header.
    Header(&'a str),
    /// From an absolute-form target; the upstream must get it as `Host`.
    Target(&'a str),
    /// HTTP/1.0 without a `Host` and with an origin-form target.
    None,
}

/// Checks `headers`' `Host` and picks the host of a request.
pub fn request_host<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<RequestHost<'a>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host = match host {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|h| is_valid_host(h))
                .ok_or(HostError::InvalidHeader)?,
        ),
        // HTTP/2 carries the host as `:authority`, in the target (RFC 9113
        // §8.3.1); Host is then optional.
        None if version == Version::HTTP_11
            || (version > Version::HTTP_11 && uri.authority().is_none()) =>
        {
            return Err(HostError::Missing);
        }
        None => None,
    };
    // Absolute-form (a scheme and an authority); an authority-form CONNECT
    // target is no absolute-form and keeps its Host.
    if uri.scheme().is_some()
        && let Some(authority) = uri.authority()
    {
        let authority = authority.as_str();
        if !is_valid_host(authority) {
            return Err(HostError::InvalidTarget);
        }
        return Ok(RequestHost::Target(authority));
    }
    Ok(host.map_or(RequestHost::None, RequestHost::Header))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): a bracketed IPv6 address, or a
/// reg-name of unreserved characters, sub-delims and %-escapes; the port
/// digits only, at most 65535. No user info, spaces, slashes or controls.
pub fn is_valid_host(value: &str) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, port),
            None => (value, ""),
        }
    };
    is_reg_name(host) && is_port(port)
}

/// Empty, or up to 5 digits no more than 65535 (u16's parser alone would
/// also take a `+` sign).
fn is_port(port: &str) -> bool {
    port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok())
}

fn is_reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let escaped = bytes.get(i + 1..i + 3);
            if !escaped.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(hosts: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(
                header::HOST,
                HeaderValue::from_bytes(host).expect("header value"),
            );
        }
        map
    }

    fn host_of(version: Version, target: &str, hosts: &[&[u8]]) -> Result<String, HostError> {
        let uri: Uri = target.parse().expect("uri");
        let headers = headers(hosts);
        request_host(version, &uri, &headers).map(|host| format!("{host:?}"))
    }

    const V11: Version = Version::HTTP_11;

    #[test]
    fn one_valid_host_is_the_host() {
        assert_eq!(
            host_of(V11, "/x", &[b"probe.test"]),
            Ok("Header(\"probe.test\")".into())
        );
        assert_eq!(
            host_of(V11, "/x", &[b"probe.test:8080"]),
            Ok("Header(\"probe.test:8080\")".into())
        );
        assert_eq!(
            host_of(Version::HTTP_10, "/x", &[]),
            Ok("None".into()),
            "HTTP/1.0 needs no Host"
        );
    }

    #[test]
    fn two_hosts_or_none_in_http_11_are_refused() {
        assert_eq!(
            host_of(V11, "/x", &[b"secret.test", b"probe.test"]),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            host_of(V11, "/x", &[b"probe.test", b"probe.test"]),
            Err(HostError::Duplicate),
            "even when equal"
        );
        assert_eq!(host_of(V11, "/x", &[]), Err(HostError::Missing));
        assert_eq!(
            host_of(V11, "http://probe.test/x", &[]),
            Err(HostError::Missing),
            "HTTP/1.1 needs a Host even with an absolute-form target"
        );
    }

    #[test]
    fn http2_takes_the_authority_and_needs_no_host() {
        let v2 = Version::HTTP_2;
        assert_eq!(
            host_of(v2, "https://probe.test/x", &[]),
            Ok("Target(\"probe.test\")".into())
        );
        assert_eq!(
            host_of(v2, "https://probe.test/x", &[b"other.test"]),
            Ok("Target(\"probe.test\")".into())
        );
        assert_eq!(
            host_of(v2, "/x", &[b"probe.test"]),
            Ok("Header(\"probe.test\")".into())
        );
        assert_eq!(host_of(v2, "/x", &[]), Err(HostError::Missing));
    }

    #[test]
    fn the_absolute_form_authority_wins() {
        assert_eq!(
            host_of(V11, "http://probe.test/x", &[b"secret.test"]),
            Ok("Target(\"probe.test\")".into())
        );
        assert_eq!(
            host_of(Version::HTTP_10, "http://probe.test:81/x", &[]),
            Ok("Target(\"probe.test:81\")".into())
        );
        assert_eq!(
            host_of(V11, "http://user@probe.test/x", &[b"probe.test"]),
            Err(HostError::InvalidTarget)
        );
        // A bad Host is refused even when the target would win.
        assert_eq!(
            host_of(V11, "http://probe.test/x", &[b"a b"]),
            Err(HostError::InvalidHeader)
        );
    }

    #[test]
    fn host_syntax() {
        for valid in [
            "probe.test",
            "PROBE.test:80",
            "probe.test:",
            "127.0.0.1:18080",
            "[::1]",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "a_b-c~d",
            "%41.test",
            "",
        ] {
            assert!(is_valid_host(valid), "{valid:?} is valid");
        }
        for invalid in [
            "probe.test/../x",
            "probe.test@secret.test",
            "user@probe.test",
            "probe test",
            "probe.test:80:80",
            "probe.test:http",
            "probe.test:65536",
            "probe.test:+80",
            "probe.test:-1",
            "probe.test:000080",
            "[::1",
            "[not-ip]:80",
            "[::1]80",
            "probe\\test",
            "probe.test?",
            "probe.test#",
            "%4",
            "%zz.test",
            "bücher.example",
            "probe\ttest",
        ] {
            assert!(!is_valid_host(invalid), "{invalid:?} is invalid");
        }
    }

    #[test]
    fn a_non_text_host_is_invalid() {
        assert_eq!(
            host_of(V11, "/x", &[b"caf\xc3\xa9.test"]),
            Err(HostError::InvalidHeader)
        );
    }
}
