//! L7 listeners as configuration: one key per listener,
//! `/$ELBNAME/listeners/$name`, holding
//! `{"address": "IP:PORT", "protocol": "http"|"https", "http2": bool,
//! "default_certificate": NAME}`. The server (`server::dynamic`) opens and
//! closes them live; `--listen` addresses stay static listeners.
use std::{fmt, net::SocketAddr};

use serde_json::{Map, Value, json};

use super::keys::validate_key_segment;

const FIELDS: [&str; 4] = ["address", "protocol", "http2", "default_certificate"];
const KNOWN: &str = "address, protocol, http2, default_certificate";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerProtocol {
    Http,
    Https,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// HTTP/2 to clients (ALPN on https, h2c prior knowledge on http).
    pub http2: bool,
    /// The certificate for handshakes no SNI name matches (https only).
    pub default_certificate: Option<String>,
}

/// Why a listener definition was refused; every message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error("{0}")]
    Name(String),
    #[error("listener {listener:?}: the definition is not valid JSON: {message}")]
    NotJson { listener: String, message: String },
    #[error("listener {listener:?}: the definition must be a JSON object with {known}", known = KNOWN)]
    NotObject { listener: String },
    #[error("listener {listener:?}: unknown field {field:?} (known fields: {known})", known = KNOWN)]
    UnknownField { listener: String, field: String },
    #[error("listener {listener:?}: field {field:?} is missing")]
    MissingField {
        listener: String,
        field: &'static str,
    },
    #[error("listener {listener:?}, field {field:?}: {reason}")]
    BadField {
        listener: String,
        field: &'static str,
        reason: String,
    },
}

impl Listener {
    /// Parses and validates a stored definition (the value of its key).
    pub fn parse(name: &str, json: &str) -> Result<Self, ListenerError> {
        let value: Value = serde_json::from_str(json).map_err(|e| ListenerError::NotJson {
            listener: name.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(name, &value)
    }

    /// [`Listener::parse`] for a decoded document (admin PUT). `null`
    /// counts as absent for the optional fields.
    pub fn from_value(name: &str, value: &Value) -> Result<Self, ListenerError> {
        validate_key_segment("listener", name).map_err(ListenerError::Name)?;
        let listener = || name.to_owned();
        let object = value.as_object().ok_or_else(|| ListenerError::NotObject {
            listener: listener(),
        })?;
        if let Some(field) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ListenerError::UnknownField {
                listener: listener(),
                field: field.clone(),
            });
        }
        let bad = |field: &'static str, reason: String| ListenerError::BadField {
            listener: listener(),
            field,
            reason,
        };
        let address = required_str(object, name, "address")?;
        let address: SocketAddr = address.parse().map_err(|_| {
            bad(
                "address",
                format!("{address:?} is not IP:PORT (IPv6 as [addr]:port)"),
            )
        })?;
        if address.port() == 0 {
            return Err(bad("address", "port 0 is not a port to listen on".into()));
        }
        let protocol = match required_str(object, name, "protocol")? {
            "http" => ListenerProtocol::Http,
            "https" => ListenerProtocol::Https,
            other => {
                return Err(bad(
                    "protocol",
                    format!("{other:?} is not \"http\" or \"https\" (L4 TCP/UDP are services)"),
                ));
            }
        };
        let http2 = match object.get("http2") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(bad("http2", format!("{other} is not true or false"))),
        };
        let default_certificate = match object.get("default_certificate") {
            None | Some(Value::Null) => None,
            Some(Value::String(cert)) => {
                validate_key_segment("certificate", cert)
                    .map_err(|reason| bad("default_certificate", reason))?;
                Some(cert.clone())
            }
            Some(other) => {
                return Err(bad(
                    "default_certificate",
                    format!("{other} is not a certificate name"),
                ));
            }
        };
        match (protocol, &default_certificate) {
            (ListenerProtocol::Https, None) => {
                return Err(ListenerError::MissingField {
                    listener: listener(),
                    field: "default_certificate",
                });
            }
            (ListenerProtocol::Http, Some(_)) => {
                return Err(bad(
                    "default_certificate",
                    "only an https listener has certificates".into(),
                ));
            }
            _ => {}
        }
        Ok(Self {
            name: name.to_owned(),
            address,
            protocol,
            http2,
            default_certificate,
        })
    }

    /// The canonical document, as stored and as GET shows it.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "address": self.address.to_string(),
            "protocol": self.protocol.as_str(),
            "http2": self.http2,
        });
        if let (Some(cert), Some(object)) = (&self.default_certificate, doc.as_object_mut()) {
            object.insert("default_certificate".into(), Value::String(cert.clone()));
        }
        doc
    }
}

/// Whether listening on `a` and on `b` would conflict: the same port and
/// the same IP, or a wildcard that covers the other (`[::]` binds
/// dual-stack, so it covers IPv4 too).
pub fn addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wide: SocketAddr, narrow: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || narrow.is_ipv4())
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

fn required_str<'v>(
    object: &'v Map<String, Value>,
    listener: &str,
    field: &'static str,
) -> Result<&'v str, ListenerError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(ListenerError::MissingField {
            listener: listener.to_owned(),
            field,
        }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ListenerError::BadField {
            listener: listener.to_owned(),
            field,
            reason: format!("{other} is not a string"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: Value) -> Result<Listener, String> {
        Listener::from_value("web", &doc).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_http_listener_round_trips() {
        let listener =
            parse(json!({"address": "127.0.0.1:8080", "protocol": "http"})).expect("valid");
        assert_eq!(listener.address, "127.0.0.1:8080".parse().expect("addr"));
        assert!(!listener.http2);
        let again = Listener::parse("web", &listener.to_json().to_string()).expect("canonical");
        assert_eq!(again, listener);
    }

    #[test]
    fn https_needs_a_default_certificate_and_http_has_none() {
        let https = parse(
            json!({"address": "[::]:443", "protocol": "https", "http2": true,
            "default_certificate": "main"}),
        )
        .expect("valid");
        assert_eq!(https.default_certificate.as_deref(), Some("main"));
        assert_eq!(https.to_json()["default_certificate"], "main");
        let err = parse(json!({"address": "[::]:443", "protocol": "https"})).expect_err("no cert");
        assert!(err.contains("\"default_certificate\" is missing"), "{err}");
        let err = parse(json!({"address": "[::]:80", "protocol": "http",
            "default_certificate": "main"}))
        .expect_err("cert on http");
        assert!(err.contains("only an https listener"), "{err}");
    }

    #[test]
    fn wildcards_overlap_what_they_cover() {
        let overlap =
            |a: &str, b: &str| addresses_overlap(a.parse().expect("a"), b.parse().expect("b"));
        assert!(overlap("127.0.0.1:80", "127.0.0.1:80"));
        assert!(overlap("0.0.0.0:80", "127.0.0.1:80"));
        assert!(overlap("127.0.0.1:80", "0.0.0.0:80"));
        assert!(overlap("[::]:80", "10.0.0.1:80"));
        assert!(overlap("[::]:80", "0.0.0.0:80"));
        assert!(overlap("[::1]:80", "[::]:80"));
        assert!(!overlap("0.0.0.0:80", "[::1]:80"));
        assert!(!overlap("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!overlap("0.0.0.0:80", "0.0.0.0:81"));
    }

    #[test]
    fn bad_documents_name_the_listener_and_the_field() {
        for (doc, wanted) in [
            (
                json!({"address": "1.2.3.4", "protocol": "http"}),
                "field \"address\"",
            ),
            (
                json!({"address": "1.2.3.4:0", "protocol": "http"}),
                "port 0",
            ),
            (
                json!({"address": "a:80", "protocol": "http"}),
                "not IP:PORT",
            ),
            (
                json!({"address": "1.2.3.4:80", "protocol": "tcp"}),
                "services",
            ),
            (json!({"address": "1.2.3.4:80"}), "\"protocol\" is missing"),
            (
                json!({"address": "1.2.3.4:80", "protocol": "http", "http2": "yes"}),
                "\"http2\"",
            ),
            (
                json!({"address": "1.2.3.4:80", "protocol": "http", "port": 1}),
                "unknown field \"port\"",
            ),
            (json!(["1.2.3.4:80"]), "must be a JSON object"),
            (
                json!({"address": "1.2.3.4:443", "protocol": "https",
                "default_certificate": "a/b"}),
                "\"default_certificate\"",
            ),
        ] {
            let err = parse(doc.clone()).expect_err(&doc.to_string());
            assert!(err.starts_with("listener \"web\""), "{err}");
            assert!(err.contains(wanted), "{doc}: {err}");
        }
        let err = Listener::from_value("a/b", &json!({})).expect_err("bad name");
        assert!(err.to_string().contains("listener name"), "{err}");
    }
}
