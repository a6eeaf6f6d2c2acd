//! Discovery documents: one per upstream at `/$ELBNAME/discovery/<upstream>`,
//! naming the provider that owns the upstream's server list:
//!
//! ```json
//! {"provider": "aws_asg", "group": "web-asg", "region": "us-east-1", "port": 8080,
//!  "interval": "10s", "ip": "ipv4", "params": "weight=1 max_fails=2"}
//! {"provider": "consul", "address": "127.0.0.1:8500", "service": "web", "tags": ["prod"],
//!  "only_passing": true, "datacenter": "dc1", "token_file": "/etc/elb/consul.token"}
//! ```
//!
//! Pure parsing and validation: every error names the upstream and the
//! field. Whether this build can run a provider is the runner's question
//! (`crate::discovery::available`), not the document's.
use std::{fmt, path::PathBuf, time::Duration};

use serde_json::{Map, Value, json};

use super::{
    keys::validate_key_segment,
    policy::{format_duration, parse_bounded_duration},
};
use crate::upstream::{ServerParams, parse_params};

const AWS_ASG_FIELDS: [&str; 7] = [
    "provider", "group", "region", "port", "interval", "ip", "params",
];
const CONSUL_FIELDS: [&str; 8] = [
    "provider",
    "address",
    "service",
    "tags",
    "only_passing",
    "datacenter",
    "token_file",
    "params",
];
/// The provider names a document may give.
pub const PROVIDERS: [&str; 2] = ["aws_asg", "consul"];

pub const DEFAULT_ASG_INTERVAL: Duration = Duration::from_secs(10);
/// Short enough for tests against a local endpoint; longer makes AWS calls
/// that no one needs.
pub const MIN_ASG_INTERVAL: Duration = Duration::from_millis(500);
pub const MAX_ASG_INTERVAL: Duration = Duration::from_secs(3600);
/// Consul's own agent address.
pub const DEFAULT_CONSUL_ADDRESS: &str = "127.0.0.1:8500";

/// One upstream's discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub upstream: String,
    /// Parameters every discovered server gets (canonical text, may be
    /// empty); a provider's own `zone`/`weight` replace those here.
    pub params: String,
    pub source: Source,
}

/// Where the servers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    AwsAsg(AwsAsg),
    Consul(Consul),
}

/// An AWS Auto Scaling group, polled every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsAsg {
    pub group: String,
    /// None: the SDK's region chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// The instances' port (an ASG has none).
    pub port: u16,
    pub interval: Duration,
    /// Which of an instance's addresses becomes the server (`"ip"`).
    pub ip: AsgAddress,
}

/// Which address of a group member elb sends traffic to: its primary
/// private IPv4 address, or its (first) IPv6 address. One family per
/// upstream, so a dual-stack instance is not two servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AsgAddress {
    #[default]
    Ipv4,
    Ipv6,
}

impl AsgAddress {
    /// The document's `ip` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A Consul service, followed with blocking queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consul {
    /// `host:port` of the Consul HTTP API.
    pub address: String,
    pub service: String,
    /// Every tag must be on an instance.
    pub tags: Vec<String>,
    pub only_passing: bool,
    pub datacenter: Option<String>,
    /// Holds the ACL token, sent as `X-Consul-Token`; read on every request
    /// so a rotated token is picked up.
    pub token_file: Option<PathBuf>,
}

impl Source {
    /// The document's `provider` value.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::AwsAsg(_) => "aws_asg",
            Self::Consul(_) => "consul",
        }
    }
}

impl fmt::Display for Source {
    /// `consul (service "web")`, `aws_asg (group "web-asg")`: for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwsAsg(asg) => write!(f, "aws_asg (group {:?})", asg.group),
            Self::Consul(consul) => write!(f, "consul (service {:?})", consul.service),
        }
    }
}

/// Why a discovery document was refused; every message names the upstream
/// and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The upstream name cannot be a key segment (the message names it).
    #[error("{0}")]
    Name(String),
    #[error("discovery of upstream {upstream:?}: the document is not valid JSON: {message}")]
    NotJson { upstream: String, message: String },
    #[error("discovery of upstream {upstream:?}: the document must be a JSON object")]
    NotObject { upstream: String },
    #[error(
        "discovery of upstream {upstream:?}: field \"provider\" is missing (one of: aws_asg, consul)"
    )]
    NoProvider { upstream: String },
    #[error(
        "discovery of upstream {upstream:?}, field \"provider\": unknown provider {provider:?} (known: aws_asg, consul)"
    )]
    UnknownProvider { upstream: String, provider: String },
    #[error(
        "discovery of upstream {upstream:?}: unknown field {field:?} for provider {provider} (known fields: {known})"
    )]
    UnknownField {
        upstream: String,
        provider: &'static str,
        field: String,
        known: String,
    },
    #[error(
        "discovery of upstream {upstream:?}: field {field:?} is required for provider {provider}"
    )]
    Missing {
        upstream: String,
        provider: &'static str,
        field: &'static str,
    },
    #[error("discovery of upstream {upstream:?}, field {field:?}: {reason}")]
    BadField {
        upstream: String,
        field: &'static str,
        reason: String,
    },
}

impl Discovery {
    /// Parses and validates a stored document (the value of its key).
    pub fn parse(upstream: &str, text: &str) -> Result<Self, DiscoveryError> {
        let value: Value = serde_json::from_str(text).map_err(|e| DiscoveryError::NotJson {
            upstream: upstream.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(upstream, &value)
    }

    /// [`Discovery::parse`] for a decoded document (admin PUT).
    pub fn from_value(upstream: &str, value: &Value) -> Result<Self, DiscoveryError> {
        validate_key_segment("upstream", upstream).map_err(DiscoveryError::Name)?;
        let fields = Fields { upstream };
        let object = value.as_object().ok_or_else(|| DiscoveryError::NotObject {
            upstream: upstream.to_owned(),
        })?;
        let provider = match object.get("provider") {
            None => {
                return Err(DiscoveryError::NoProvider {
                    upstream: upstream.to_owned(),
                });
            }
            Some(value) => fields.string(value, "provider")?,
        };
        let (provider, known): (&'static str, &[&str]) = match provider {
            "aws_asg" => ("aws_asg", &AWS_ASG_FIELDS),
            "consul" => ("consul", &CONSUL_FIELDS),
            other => {
                return Err(DiscoveryError::UnknownProvider {
                    upstream: upstream.to_owned(),
                    provider: other.to_owned(),
                });
            }
        };
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(DiscoveryError::UnknownField {
                upstream: upstream.to_owned(),
                provider,
                field: unknown.clone(),
                known: known.join(", "),
            });
        }
        let fields = Fields { upstream };
        let params = match object.get("params") {
            None => String::new(),
            Some(value) => {
                let text = fields.string(value, "params")?;
                parse_params(text).map_err(|e| fields.bad("params", e.to_string()))?;
                text.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
            }
        };
        let source = match provider {
            "aws_asg" => Source::AwsAsg(fields.aws_asg(object)?),
            _ => Source::Consul(fields.consul(object)?),
        };
        Ok(Self {
            upstream: upstream.to_owned(),
            params,
            source,
        })
    }

    /// The canonical document, every field filled in; parses back to `self`.
    pub fn to_json(&self) -> Value {
        let mut object = match &self.source {
            Source::AwsAsg(asg) => {
                let mut object = json!({
                    "provider": "aws_asg",
                    "group": asg.group,
                    "port": asg.port,
                    "interval": format_duration(asg.interval),
                    "ip": asg.ip.as_str(),
                });
                if let (Some(region), Some(map)) = (&asg.region, object.as_object_mut()) {
                    map.insert("region".into(), json!(region));
                }
                object
            }
            Source::Consul(consul) => {
                let mut object = json!({
                    "provider": "consul",
                    "address": consul.address,
                    "service": consul.service,
                    "tags": consul.tags,
                    "only_passing": consul.only_passing,
                });
                if let Some(map) = object.as_object_mut() {
                    if let Some(dc) = &consul.datacenter {
                        map.insert("datacenter".into(), json!(dc));
                    }
                    if let Some(file) = &consul.token_file {
                        map.insert("token_file".into(), json!(file.to_string_lossy()));
                    }
                }
                object
            }
        };
        if let Some(map) = object.as_object_mut() {
            map.insert("params".into(), json!(self.params));
        }
        object
    }

    /// The stored value of one discovered server: the document's params
    /// with the provider's `zone` and `weight` in place of its own, in
    /// canonical form.
    pub fn server_value(&self, zone: Option<&str>, weight: Option<u32>) -> String {
        // Validated when the document was parsed.
        let mut params: ServerParams = parse_params(&self.params).unwrap_or_default();
        if let Some(zone) = zone {
            params.zone = Some(zone.to_owned());
        }
        if let Some(weight) = weight.filter(|w| *w > 0) {
            params.weight = weight;
        }
        params.to_nginx_string()
    }
}

/// Field readers that name the upstream in their errors.
struct Fields<'a> {
    upstream: &'a str,
}

impl Fields<'_> {
    fn bad(&self, field: &'static str, reason: String) -> DiscoveryError {
        DiscoveryError::BadField {
            upstream: self.upstream.to_owned(),
            field,
            reason,
        }
    }

    fn missing(&self, provider: &'static str, field: &'static str) -> DiscoveryError {
        DiscoveryError::Missing {
            upstream: self.upstream.to_owned(),
            provider,
            field,
        }
    }

    fn string<'v>(&self, value: &'v Value, field: &'static str) -> Result<&'v str, DiscoveryError> {
        value
            .as_str()
            .ok_or_else(|| self.bad(field, format!("{value} is not a string")))
    }

    /// A non-empty string without whitespace or control characters.
    fn name(&self, value: &Value, field: &'static str) -> Result<String, DiscoveryError> {
        let text = self.string(value, field)?;
        if text.is_empty() {
            return Err(self.bad(field, "is empty".to_owned()));
        }
        if text.len() > 255 {
            return Err(self.bad(field, format!("{text:?} is longer than 255 bytes")));
        }
        if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.bad(field, format!("{text:?} contains {bad:?}")));
        }
        Ok(text.to_owned())
    }

    fn aws_asg(&self, object: &Map<String, Value>) -> Result<AwsAsg, DiscoveryError> {
        let group = match object.get("group") {
            Some(value) => self.name(value, "group")?,
            None => return Err(self.missing("aws_asg", "group")),
        };
        let region = object
            .get("region")
            .map(|value| self.name(value, "region"))
            .transpose()?;
        let port = match object.get("port") {
            Some(value) => value
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| self.bad("port", format!("{value} is not a port (1-65535)")))?,
            None => return Err(self.missing("aws_asg", "port")),
        };
        let interval = match object.get("interval") {
            Some(value) => self.duration(value, "interval", MIN_ASG_INTERVAL, MAX_ASG_INTERVAL)?,
            None => DEFAULT_ASG_INTERVAL,
        };
        let ip = match object.get("ip") {
            None => AsgAddress::default(),
            Some(value) => match self.string(value, "ip")? {
                "ipv4" => AsgAddress::Ipv4,
                "ipv6" => AsgAddress::Ipv6,
                other => {
                    return Err(self.bad(
                        "ip",
                        format!("{other:?} is not an address family (\"ipv4\" or \"ipv6\")"),
                    ));
                }
            },
        };
        Ok(AwsAsg {
            group,
            region,
            port,
            interval,
            ip,
        })
    }

    fn consul(&self, object: &Map<String, Value>) -> Result<Consul, DiscoveryError> {
        let address = match object.get("address") {
            Some(value) => {
                let text = self.string(value, "address")?;
                validate_host_port(text).map_err(|reason| self.bad("address", reason))?;
                text.to_owned()
            }
            None => DEFAULT_CONSUL_ADDRESS.to_owned(),
        };
        let service = match object.get("service") {
            Some(value) => self.name(value, "service")?,
            None => return Err(self.missing("consul", "service")),
        };
        let tags = match object.get("tags") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| self.name(item, "tags"))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(self.bad("tags", format!("{other} is not a list of strings")));
            }
        };
        let only_passing = match object.get("only_passing") {
            None => true,
            Some(value) => value
                .as_bool()
                .ok_or_else(|| self.bad("only_passing", format!("{value} is not true or false")))?,
        };
        let datacenter = object
            .get("datacenter")
            .map(|value| self.name(value, "datacenter"))
            .transpose()?;
        let token_file = match object.get("token_file") {
            None => None,
            Some(value) => {
                let text = self.string(value, "token_file")?;
                if !text.starts_with('/') {
                    return Err(self.bad("token_file", format!("{text:?} is not an absolute path")));
                }
                Some(PathBuf::from(text))
            }
        };
        Ok(Consul {
            address,
            service,
            tags,
            only_passing,
            datacenter,
            token_file,
        })
    }

    fn duration(
        &self,
        value: &Value,
        field: &'static str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, DiscoveryError> {
        let text = self.string(value, field)?;
        parse_bounded_duration(text, min, max).map_err(|reason| self.bad(field, reason))
    }
}

/// `host:port` or `[v6]:port`, the port 1-65535.
fn validate_host_port(text: &str) -> Result<(), String> {
    let example = "(write host:port, e.g. \"127.0.0.1:8500\")";
    if text
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
    {
        return Ok(());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} has no port {example}"))?;
    if port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
        return Err(format!("{text:?}: {port:?} is not a port (1-65535)"));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return Err(format!(
            "{text:?}: {host:?} is not a host name or IP {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Discovery, DiscoveryError> {
        Discovery::parse("web", text)
    }

    #[test]
    fn the_issue_documents_parse_and_round_trip() {
        for text in [
            r#"{"provider":"aws_asg","group":"web-asg","region":"us-east-1","port":8080,"interval":"10s","params":"weight=1 max_fails=2"}"#,
            r#"{"provider":"aws_asg","group":"web-asg","port":8080,"ip":"ipv6"}"#,
            r#"{"provider":"consul","address":"127.0.0.1:8500","service":"web","tags":["prod"],"only_passing":true,"datacenter":"dc1","token_file":"/etc/elb/consul.token"}"#,
            r#"{"provider":"consul","service":"web"}"#,
        ] {
            let doc = parse(text).expect(text);
            let again = Discovery::from_value("web", &doc.to_json()).expect("canonical");
            assert_eq!(doc, again, "{text}");
        }
        let consul = parse(r#"{"provider":"consul","service":"web"}"#).expect("minimal");
        let Source::Consul(c) = &consul.source else {
            panic!("consul")
        };
        assert_eq!(c.address, DEFAULT_CONSUL_ADDRESS);
        assert!(c.only_passing);
        assert_eq!(consul.source.to_string(), "consul (service \"web\")");
    }

    #[test]
    fn errors_name_the_field() {
        for (text, wanted) in [
            ("[]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"service":"web"}"#, "\"provider\" is missing"),
            (r#"{"provider":"k8s"}"#, "unknown provider \"k8s\""),
            (
                r#"{"provider":"consul","service":"web","group":"x"}"#,
                "unknown field \"group\" for provider consul",
            ),
            (r#"{"provider":"consul"}"#, "\"service\" is required"),
            (
                r#"{"provider":"aws_asg","port":80}"#,
                "\"group\" is required",
            ),
            (
                r#"{"provider":"aws_asg","group":"g"}"#,
                "\"port\" is required",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":70000}"#,
                "field \"port\": 70000 is not a port",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":0}"#,
                "field \"port\": 0 is not a port",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":80,"interval":"10ms"}"#,
                "field \"interval\": 10ms is out of range",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":80,"interval":"2h"}"#,
                "field \"interval\": 2h is out of range",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":80,"interval":"soon"}"#,
                "field \"interval\": \"soon\" is not a duration",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":80,"ip":"ipv5"}"#,
                "field \"ip\": \"ipv5\" is not an address family",
            ),
            (
                r#"{"provider":"aws_asg","group":"g","port":80,"ip":6}"#,
                "field \"ip\": 6 is not a string",
            ),
            (
                r#"{"provider":"consul","service":"web","params":"weight=0"}"#,
                "field \"params\"",
            ),
            (
                r#"{"provider":"consul","service":"web","params":"colour=red"}"#,
                "field \"params\"",
            ),
            (
                r#"{"provider":"consul","service":"web","tags":"prod"}"#,
                "field \"tags\"",
            ),
            (
                r#"{"provider":"consul","service":"web","tags":[""]}"#,
                "field \"tags\": is empty",
            ),
            (
                r#"{"provider":"consul","service":"web","address":"consul"}"#,
                "field \"address\": \"consul\" has no port",
            ),
            (
                r#"{"provider":"consul","service":"web","address":"a b:80"}"#,
                "field \"address\"",
            ),
            (
                r#"{"provider":"consul","service":"web","only_passing":"yes"}"#,
                "field \"only_passing\"",
            ),
            (
                r#"{"provider":"consul","service":"web","token_file":"token"}"#,
                "field \"token_file\": \"token\" is not an absolute path",
            ),
            (
                r#"{"provider":"consul","service":""}"#,
                "field \"service\": is empty",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains("upstream \"web\""), "{text}: {err}");
            assert!(err.contains(wanted), "{text}: {err} (wanted {wanted})");
        }
        let err = Discovery::parse("a/b", r#"{"provider":"consul","service":"web"}"#)
            .expect_err("bad name");
        assert!(err.to_string().contains("\"a/b\""), "{err}");
    }

    #[test]
    fn server_values_take_the_providers_zone_and_weight() {
        let doc = parse(
            r#"{"provider":"consul","service":"web","params":"weight=3 max_fails=2 zone=a"}"#,
        )
        .expect("doc");
        assert_eq!(
            doc.server_value(None, None),
            "weight=3 max_fails=2 fail_timeout=10s zone=a"
        );
        assert_eq!(
            doc.server_value(Some("us-east-1b"), Some(7)),
            "weight=7 max_fails=2 fail_timeout=10s zone=us-east-1b"
        );
        // Weight 0 is no weight elb accepts: the document's stays.
        assert_eq!(
            doc.server_value(None, Some(0)),
            "weight=3 max_fails=2 fail_timeout=10s zone=a"
        );
    }
}
