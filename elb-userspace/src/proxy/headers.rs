//! Request and response header rewriting between client and upstream.
use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// and `Upgrade`, which only an upgrade handshake passes on.
const HOP_BY_HOP_COUNT: usize = 9;
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
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
    // One pass over the names finds which hop-by-hop headers are there; a
    // hashed removal of each of the nine would cost more for messages that
    // carry none or one (`Connection: keep-alive` from most upstreams).
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present[index] = true;
        }
    }
    // Headers that `Connection` names, besides its usual tokens (no Vec is
    // allocated when there are none).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !["close", "keep-alive", "upgrade"]
                .iter()
                .any(|usual| token.eq_ignore_ascii_case(usual))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        // `Connection: Host` must not leave the upstream request without
        // the Host it was routed by (hop-by-hop abuse).
        .filter(|name| name != header::HOST)
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for (hop, _) in HOP_BY_HOP
        .iter()
        .zip(present)
        .filter(|(_, present)| *present)
    {
        headers.remove(hop);
    }
    if let Some(protocol) = keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Where `name` is in [`HOP_BY_HOP`], if it is there. A match on the text
/// (a switch on its length, then one comparison) costs a fraction of
/// comparing the name with each of the nine, for every header of every
/// message (callgrind: about 400 instructions a message).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "transfer-encoding" => Some(7),
        "upgrade" => Some(8),
        _ => None,
    }
}

/// Whether a request's `Transfer-Encoding`, if any, is `chunked` alone: the
/// only coding elb removes. hyper accepts any list that ends in `chunked`
/// (`gzip, chunked`, `chunked, chunked`), and the body would go upstream
/// re-chunked with the other codings silently dropped.
pub fn only_chunked_coding(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        // Empty list elements are allowed (RFC 9110 5.6.1).
        .filter(|coding| !coding.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(coding), None) => coding.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// A client connection: its address (with the header value of its IP made
/// once per connection rather than for every request on it), and the
/// listener it came on.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    ip_text: HeaderValue,
    /// The configured listener's name; `None` for `--listen`.
    pub listener: Option<Arc<str>>,
    /// `https` over TLS, else `http` (`X-Forwarded-Proto`).
    pub scheme: &'static str,
}

impl ClientAddr {
    /// The listener's name for log lines: `--listen` for the static ones.
    pub fn listener_name(&self) -> &str {
        self.listener.as_deref().unwrap_or("--listen")
    }

    pub fn new(addr: SocketAddr) -> Self {
        // An IP's text is digits, hex letters, '.' and ':': always a valid
        // header value, so the fallback is never taken.
        let ip_text = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            addr,
            ip_text,
            listener: None,
            scheme: "http",
        }
    }

    /// The connection came on configured listener `listener`, over TLS
    /// when `tls`.
    pub fn on_listener(mut self, listener: Option<Arc<str>>, tls: bool) -> Self {
        self.listener = listener;
        self.scheme = if tls { "https" } else { "http" };
        self
    }
}

/// Adds the client's address to `X-Forwarded-For` and sets `X-Real-IP` and
/// `X-Forwarded-Proto` (the client's scheme), as nginx's usual proxy
/// configuration does.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientAddr) {
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(previous) if !previous.trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(previous.len() + 2 + client.ip_text.len());
            joined.extend_from_slice(previous);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.ip_text.as_bytes());
            // Both parts are valid header values, and so is ", ".
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => Some(client.ip_text.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_REAL_IP, client.ip_text.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
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
    fn each_hop_by_hop_name_is_found_where_it_is_listed_and_no_other() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        for other in [
            header::HOST,
            header::USER_AGENT,
            header::CONTENT_LENGTH,
            X_FORWARDED_PROTO,
            HeaderName::from_static("x-connection"),
            HeaderName::from_static("t"),
        ] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
        // Names arrive lower-case whatever the client sent.
        let shouted = HeaderName::from_bytes(b"Transfer-Encoding").expect("name");
        assert_eq!(hop_by_hop_index(&shouted), Some(7));
    }

    #[test]
    fn usual_connection_tokens_and_missing_names_are_harmless() {
        let mut headers = map(&[
            ("connection", "close, Upgrade, X-Hop"),
            ("upgrade", "h2c"),
            ("x-hop", "1"),
            ("content-length", "2"),
        ]);
        strip_hop_by_hop(&mut headers, None);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
        let mut plain = map(&[("host", "a.com")]);
        strip_hop_by_hop(&mut plain, None);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn only_a_lone_chunked_coding_is_supported() {
        for fine in [
            &[][..],
            &[("transfer-encoding", "chunked")],
            &[("transfer-encoding", "CHUNKED")],
            &[("transfer-encoding", " ,chunked")],
        ] {
            assert!(only_chunked_coding(&map(fine)), "{fine:?}");
        }
        for unsupported in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "chunked, chunked")],
            &[
                ("transfer-encoding", "identity"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "x")],
        ] {
            assert!(!only_chunked_coding(&map(unsupported)), "{unsupported:?}");
        }
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut headers = map(&[
            ("connection", "Host, x-hop"),
            ("host", "a.com"),
            ("x-hop", "1"),
        ]);
        strip_hop_by_hop(&mut headers, None);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host"]);
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
        let client = ClientAddr::new("10.0.0.9:4000".parse().expect("addr"));
        add_forwarded(&mut headers, &client);
        assert_eq!(
            headers.get("x-forwarded-for").expect("xff"),
            "1.1.1.1, 10.0.0.9"
        );
        assert_eq!(headers.get("x-real-ip").expect("real ip"), "10.0.0.9");
        assert_eq!(headers.get("x-forwarded-proto").expect("proto"), "http");

        let mut fresh = HeaderMap::new();
        let client = ClientAddr::new("[::1]:4000".parse().expect("addr"));
        add_forwarded(&mut fresh, &client);
        assert_eq!(fresh.get("x-forwarded-for").expect("xff"), "::1");
        assert_eq!(fresh.get("x-real-ip").expect("real ip"), "::1");

        let mut tls = map(&[("x-forwarded-proto", "http")]);
        let client = ClientAddr::new("10.0.0.9:4000".parse().expect("addr"))
            .on_listener(Some("web".into()), true);
        add_forwarded(&mut tls, &client);
        assert_eq!(tls.get("x-forwarded-proto").expect("proto"), "https");
    }
}
