//! The request head as the proxy reads it before routing: the path rules
//! match (percent-decoding, dot segments, repeated slashes), the Host lookup,
//! and the header rewriting towards the upstream.
//!
//! Input: a request head, `target` on the first line, then `name: value`
//! lines (the request line's method and version may be present).
//! Properties:
//! - the decoded path of an origin-form target starts with `/`, has no
//!   `.`/`..` segment and no empty one (so `/public/../admin` cannot pass a
//!   `/public` rule), and decoding it again changes nothing;
//! - Host lookup finds only a domain equal to the Host, or to the Host
//!   without its port, ignoring case;
//! - after hop-by-hop stripping no hop-by-hop header and no header the
//!   `Connection` header names is left, and every other header is kept
//!   as it was; an upgrade keeps exactly its handshake headers;
//! - `X-Forwarded-For` ends with the client's address.
//!
//! Each check is a function of its own: add one per new head rule.
#![no_main]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
};

use elb_userspace::{
    config::{DomainEntry, Snapshot, manager::compile_domain},
    proxy::headers::{
        ClientAddr, X_FORWARDED_FOR, add_forwarded, strip_hop_by_hop, upgrade_protocol,
    },
    rules::{self, RegexCache},
};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use libfuzzer_sys::fuzz_target;

const MAX_HEADERS: usize = 100;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return;
    };
    // `GET /x HTTP/1.1` or just `/x`.
    let target = request_line
        .split(|&b| b == b' ')
        .find(|part| !part.is_empty() && !part.iter().all(u8::is_ascii_uppercase))
        .unwrap_or(request_line);
    let mut headers = HeaderMap::new();
    for line in lines.take(MAX_HEADERS) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }

    if let Ok(uri) = Uri::try_from(target) {
        check_path(uri.path());
    }
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        check_host(host);
    }
    check_hop_by_hop(&headers);
    check_forwarded(headers);
});

fn check_path(raw: &str) {
    let decoded = rules::decode_path(raw);
    if !raw.starts_with('/') {
        return;
    }
    assert!(decoded.starts_with(b"/"), "{raw:?} -> {decoded:?}");
    for segment in decoded[1..].split(|&b| b == b'/') {
        assert!(
            segment != b"." && segment != b"..",
            "{raw:?} keeps a dot segment: {decoded:?}"
        );
    }
    let inner = decoded.strip_suffix(b"/").unwrap_or(&decoded);
    assert!(
        inner.is_empty() || !inner[1..].split(|&b| b == b'/').any(<[u8]>::is_empty),
        "{raw:?} keeps an empty segment: {decoded:?}"
    );
    if let Ok(text) = std::str::from_utf8(&decoded)
        && !text.contains('%')
    {
        assert_eq!(rules::decode_path(text), text.as_bytes(), "idempotent");
    }
}

/// Domains with the shapes a Host can take: a name, mixed case, a port, an
/// IPv6 literal.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let doc = serde_json::json!({
            "init": "b",
            "rules": {"b": {"type": "backend", "args": {"servername": "up"}}}
        });
        let entries: Vec<Arc<DomainEntry>> = [
            "probe.test",
            "Mixed.Case.test",
            "v4.test:8080",
            "[::1]",
            "127.0.0.1",
        ]
        .into_iter()
        .map(|domain| {
            Arc::new(
                compile_domain(domain, domain, &doc.to_string(), &RegexCache::default())
                    .expect("a fixed document"),
            )
        })
        .collect();
        Snapshot::new(&entries, &[])
    })
}

fn check_host(host: &str) {
    let Some(found) = snapshot().lookup_host(host) else {
        return;
    };
    let without_port = host.rsplit_once(':').map_or(host, |(name, _)| name);
    assert!(
        found.domain.eq_ignore_ascii_case(host) || found.domain.eq_ignore_ascii_case(without_port),
        "Host {host:?} found {:?}",
        found.domain
    );
}

fn check_hop_by_hop(headers: &HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        // `Connection: Host` never strips the Host elb routed by.
        .filter(|token| token != "host")
        .collect();
    let upgrade = upgrade_protocol(headers);
    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped, upgrade.clone());
    for name in stripped.keys() {
        let kept_for_upgrade =
            upgrade.is_some() && (*name == header::CONNECTION || *name == header::UPGRADE);
        assert!(
            kept_for_upgrade || !HOP_BY_HOP.contains(&name.as_str()),
            "{name} is left"
        );
        assert!(
            kept_for_upgrade || !named.iter().any(|n| n == name.as_str()),
            "{name} is named by Connection but left"
        );
    }
    for (name, _) in headers {
        let dropped =
            HOP_BY_HOP.contains(&name.as_str()) || named.iter().any(|n| n == name.as_str());
        if !dropped {
            assert!(
                headers
                    .get_all(name)
                    .iter()
                    .eq(stripped.get_all(name).iter()),
                "{name} changed"
            );
        }
    }
    if let Some(protocol) = upgrade {
        assert_eq!(stripped.get(header::UPGRADE), Some(&protocol));
        assert_eq!(
            stripped.get(header::CONNECTION),
            Some(&HeaderValue::from_static("upgrade"))
        );
    }
}

fn check_forwarded(mut headers: HeaderMap) {
    let ip: IpAddr = "192.0.2.7".parse().expect("a fixed address");
    add_forwarded(&mut headers, &ClientAddr::new(SocketAddr::new(ip, 4000)));
    let forwarded_for = headers
        .get(X_FORWARDED_FOR)
        .expect("X-Forwarded-For is always set");
    assert!(forwarded_for.as_bytes().ends_with(b"192.0.2.7"));
}
