//! Request and response header rewriting between client and upstream.
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The protocol a client asks to switch to, if this is an upgrade request
/// (`Connection: upgrade` plus `Upgrade: <protocol>`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. `Upgrade` is removed too unless `keep_upgrade`, in which case the
/// upgrade handshake headers are set again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: Option<HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(protocol) = keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Adds the client's address to `X-Forwarded-For` and sets `X-Real-IP` and
/// `X-Forwarded-Proto`, as nginx's usual proxy configuration does.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, scheme: &'static str) {
    let client_text = client.to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) if !previous.trim().is_empty() => format!("{previous}, {client_text}"),
        _ => client_text.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Ok(value) = HeaderValue::from_str(&client_text) {
        headers.insert(X_REAL_IP, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("host", "a.com"),
            ("user-agent", "curl"),
        ]);
        strip_hop_by_hop(&mut headers, None);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "user-agent"]);
    }

    #[test]
    fn upgrade_is_detected_and_kept_when_asked() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let protocol = upgrade_protocol(&headers);
        assert_eq!(
            protocol.as_ref().and_then(|v| v.to_str().ok()),
            Some("websocket")
        );
        strip_hop_by_hop(&mut headers, protocol);
        assert_eq!(headers.get("connection").expect("kept"), "upgrade");
        assert_eq!(headers.get("upgrade").expect("kept"), "websocket");
        assert_eq!(upgrade_protocol(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn forwarded_headers_append_and_set() {
        let mut headers = map(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "spoofed")]);
        add_forwarded(&mut headers, "10.0.0.9".parse().expect("ip"), "http");
        assert_eq!(
            headers.get("x-forwarded-for").expect("xff"),
            "1.1.1.1, 10.0.0.9"
        );
        assert_eq!(headers.get("x-real-ip").expect("real ip"), "10.0.0.9");
        assert_eq!(headers.get("x-forwarded-proto").expect("proto"), "http");

        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::1".parse().expect("ip"), "http");
        assert_eq!(fresh.get("x-forwarded-for").expect("xff"), "::1");
    }
}
