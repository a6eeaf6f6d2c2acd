//! Target-health policies: one document per upstream at
//! `/$ELBNAME/policies/<upstream>`, in the shape of an AWS target group's
//! health-check and attribute settings:
//!
//! ```json
//! {"health_check": {"target": "HTTP:8080/health", "interval": "30s", "timeout": "5s",
//!                   "healthy_threshold": 10, "unhealthy_threshold": 2,
//!                   "matcher": "200-399", "host": "www.example.com"},
//!  "deregistration_delay": "300s", "slow_start": "0s", "cross_zone": true}
//! ```
//!
//! Every field is optional; the defaults are the ones shown (the target
//! defaults to `TCP`: a connect to each server's own port). Pure parsing
//! and validation: every error names the upstream and the field.
use std::{fmt, time::Duration};

use serde_json::{Map, Value, json};

use super::keys::validate_key_segment;

const TOP_FIELDS: [&str; 4] = [
    "health_check",
    "deregistration_delay",
    "slow_start",
    "cross_zone",
];
const CHECK_FIELDS: [&str; 7] = [
    "target",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "matcher",
    "host",
];

/// AWS allows 5 s at least; elb allows 100 ms so tests (and fast failover)
/// need not wait.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
pub const MAX_THRESHOLD: u32 = 10;
/// AWS's limit for a target group's deregistration delay.
pub const MAX_DEREGISTRATION_DELAY: Duration = Duration::from_secs(3600);
/// AWS's limit for slow start.
pub const MAX_SLOW_START: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckProtocol {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// `GET path` on a fresh connection, the status checked by the matcher.
    Http,
    /// `Http` over TLS, with the client of `tls` servers (`--upstream-ca`).
    Https,
}

/// `PROTO[:PORT][/PATH]`: where and how a server is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    pub protocol: CheckProtocol,
    /// None: each server's own port.
    pub port: Option<u16>,
    /// The HTTP request target (starts with '/'); empty for TCP.
    pub path: String,
}

impl fmt::Display for CheckTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            CheckProtocol::Tcp => "TCP",
            CheckProtocol::Http => "HTTP",
            CheckProtocol::Https => "HTTPS",
        };
        f.write_str(protocol)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

/// Status codes a check accepts: `200`, `200-399`, `200,204,300-399`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusMatcher {
    ranges: Vec<(u16, u16)>,
}

impl StatusMatcher {
    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (status_code(low.trim())?, status_code(high.trim())?),
                None => {
                    let code = status_code(part)?;
                    (code, code)
                }
            };
            if low > high {
                return Err(format!("range {part:?} runs backwards"));
            }
            ranges.push((low, high));
        }
        Ok(Self { ranges })
    }
}

impl fmt::Display for StatusMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (low, high)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) && text.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(code)
        }
        _ => Err(format!(
            "{text:?} is not an HTTP status code (100-599); write codes and ranges such as \
             \"200,204,300-399\""
        )),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub target: CheckTarget,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: StatusMatcher,
    /// Host header of HTTP checks; default: the server's `host:port`.
    pub host: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            target: CheckTarget {
                protocol: CheckProtocol::Tcp,
                port: None,
                path: String::new(),
            },
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 10,
            unhealthy_threshold: 2,
            matcher: StatusMatcher {
                ranges: vec![(200, 399)],
            },
            host: None,
        }
    }
}

/// One upstream's target-health policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub health_check: HealthCheck,
    /// How long a removed (or `down`, or zone-disabled) server drains.
    pub deregistration_delay: Duration,
    /// Ramp of a new server's weight; zero: full weight at once.
    pub slow_start: Duration,
    /// false: prefer servers in elb's own zone while any is healthy.
    pub cross_zone: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            health_check: HealthCheck::default(),
            deregistration_delay: Duration::from_secs(300),
            slow_start: Duration::ZERO,
            cross_zone: true,
        }
    }
}

/// Why a policy document was refused; every message names the upstream
/// and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The upstream name cannot be a key segment (the message names it).
    #[error("{0}")]
    Name(String),
    #[error("policy of upstream {upstream:?}: the document is not valid JSON: {message}")]
    NotJson { upstream: String, message: String },
    #[error("policy of upstream {upstream:?}: {field} must be a JSON object")]
    NotObject {
        upstream: String,
        field: &'static str,
    },
    #[error("policy of upstream {upstream:?}: unknown field {field:?} (known fields: {known})")]
    UnknownField {
        upstream: String,
        field: String,
        known: String,
    },
    #[error("policy of upstream {upstream:?}, field {field:?}: {reason}")]
    BadField {
        upstream: String,
        field: &'static str,
        reason: String,
    },
}

impl Policy {
    /// Parses and validates a stored document (the value of its key).
    pub fn parse(upstream: &str, text: &str) -> Result<Self, PolicyError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PolicyError::NotJson {
            upstream: upstream.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(upstream, &value)
    }

    /// [`Policy::parse`] for a decoded document (admin PUT).
    pub fn from_value(upstream: &str, value: &Value) -> Result<Self, PolicyError> {
        validate_key_segment("upstream", upstream).map_err(PolicyError::Name)?;
        let fields = Fields { upstream };
        let top = fields.object(value, "the policy", &TOP_FIELDS)?;
        let mut policy = Self::default();
        if let Some(check) = top.get("health_check") {
            let check = fields.object(check, "health_check", &CHECK_FIELDS)?;
            policy.health_check = fields.health_check(check)?;
        }
        if let Some(value) = top.get("deregistration_delay") {
            policy.deregistration_delay = fields.duration(
                value,
                "deregistration_delay",
                Duration::ZERO,
                MAX_DEREGISTRATION_DELAY,
            )?;
        }
        if let Some(value) = top.get("slow_start") {
            policy.slow_start =
                fields.duration(value, "slow_start", Duration::ZERO, MAX_SLOW_START)?;
        }
        if let Some(value) = top.get("cross_zone") {
            policy.cross_zone = value
                .as_bool()
                .ok_or_else(|| fields.bad("cross_zone", format!("{value} is not true or false")))?;
        }
        Ok(policy)
    }

    /// The canonical document, every field filled in; parses back to `self`.
    pub fn to_json(&self) -> Value {
        let check = &self.health_check;
        let mut health_check = json!({
            "target": check.target.to_string(),
            "interval": format_duration(check.interval),
            "timeout": format_duration(check.timeout),
            "healthy_threshold": check.healthy_threshold,
            "unhealthy_threshold": check.unhealthy_threshold,
            "matcher": check.matcher.to_string(),
        });
        if let (Some(host), Some(object)) = (&check.host, health_check.as_object_mut()) {
            object.insert("host".into(), json!(host));
        }
        json!({
            "health_check": health_check,
            "deregistration_delay": format_duration(self.deregistration_delay),
            "slow_start": format_duration(self.slow_start),
            "cross_zone": self.cross_zone,
        })
    }
}

/// Pure: a document's duration field (`"30s"`, `"500ms"`, `"5m"`) within
/// `min..=max`, or why not (the caller names the field).
pub fn parse_bounded_duration(
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}; examples: \"30s\", \"500ms\", \"5m\")")
    })?;
    if duration < min || duration > max {
        return Err(format!(
            "{text} is out of range ({} to {})",
            format_duration(min),
            format_duration(max)
        ));
    }
    Ok(duration)
}

/// `30s`, `1500ms`: whole seconds when they are, else milliseconds.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Field readers that name the upstream in their errors.
struct Fields<'a> {
    upstream: &'a str,
}

impl Fields<'_> {
    fn bad(&self, field: &'static str, reason: String) -> PolicyError {
        PolicyError::BadField {
            upstream: self.upstream.to_owned(),
            field,
            reason,
        }
    }

    fn object<'v>(
        &self,
        value: &'v Value,
        field: &'static str,
        known: &[&str],
    ) -> Result<&'v Map<String, Value>, PolicyError> {
        let object = value.as_object().ok_or_else(|| PolicyError::NotObject {
            upstream: self.upstream.to_owned(),
            field,
        })?;
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(PolicyError::UnknownField {
                upstream: self.upstream.to_owned(),
                field: unknown.clone(),
                known: known.join(", "),
            });
        }
        Ok(object)
    }

    fn health_check(&self, check: &Map<String, Value>) -> Result<HealthCheck, PolicyError> {
        let mut out = HealthCheck::default();
        if let Some(value) = check.get("target") {
            let text = self.string(value, "health_check.target")?;
            out.target =
                parse_target(text).map_err(|reason| self.bad("health_check.target", reason))?;
        }
        if let Some(value) = check.get("interval") {
            out.interval =
                self.duration(value, "health_check.interval", MIN_INTERVAL, MAX_INTERVAL)?;
        }
        if let Some(value) = check.get("timeout") {
            out.timeout = self.duration(
                value,
                "health_check.timeout",
                Duration::from_millis(1),
                MAX_INTERVAL,
            )?;
        }
        if out.timeout >= out.interval {
            return Err(self.bad(
                "health_check.timeout",
                format!(
                    "{} must be less than the interval ({})",
                    format_duration(out.timeout),
                    format_duration(out.interval)
                ),
            ));
        }
        if let Some(value) = check.get("healthy_threshold") {
            out.healthy_threshold = self.threshold(value, "health_check.healthy_threshold")?;
        }
        if let Some(value) = check.get("unhealthy_threshold") {
            out.unhealthy_threshold = self.threshold(value, "health_check.unhealthy_threshold")?;
        }
        if let Some(value) = check.get("matcher") {
            let text = self.string(value, "health_check.matcher")?;
            out.matcher = StatusMatcher::parse(text)
                .map_err(|reason| self.bad("health_check.matcher", reason))?;
        }
        if let Some(value) = check.get("host") {
            let host = self.string(value, "health_check.host")?;
            if host.is_empty() || http::HeaderValue::from_str(host).is_err() || host.contains(' ') {
                return Err(self.bad(
                    "health_check.host",
                    format!("{host:?} is not a valid Host header value"),
                ));
            }
            out.host = Some(host.to_owned());
        }
        Ok(out)
    }

    fn string<'v>(&self, value: &'v Value, field: &'static str) -> Result<&'v str, PolicyError> {
        value
            .as_str()
            .ok_or_else(|| self.bad(field, format!("{value} is not a string")))
    }

    fn duration(
        &self,
        value: &Value,
        field: &'static str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, PolicyError> {
        let text = self.string(value, field)?;
        parse_bounded_duration(text, min, max).map_err(|reason| self.bad(field, reason))
    }

    fn threshold(&self, value: &Value, field: &'static str) -> Result<u32, PolicyError> {
        value
            .as_u64()
            .filter(|n| (1..=u64::from(MAX_THRESHOLD)).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.bad(field, format!("{value} is not a whole number from 1 to 10")))
    }
}

/// `HTTP:8080/health`, `HTTP/health`, `TCP:8080`, `TCP`.
pub fn parse_target(text: &str) -> Result<CheckTarget, String> {
    let split = text.find([':', '/']).unwrap_or(text.len());
    let (protocol, rest) = text.split_at(split);
    let protocol = match protocol.to_ascii_uppercase().as_str() {
        "TCP" => CheckProtocol::Tcp,
        "HTTP" => CheckProtocol::Http,
        "HTTPS" => CheckProtocol::Https,
        _ => {
            return Err(format!(
                "{text:?} does not start with TCP, HTTP or HTTPS (examples: \"HTTP:8080/health\", \
                 \"HTTPS:443/health\", \"HTTP/health\", \"TCP:8080\", \"TCP\")"
            ));
        }
    };
    let (port, path) = match rest.strip_prefix(':') {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            let (port, path) = after.split_at(end);
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{port:?} in {text:?} is not a port (1-65535)"))?;
            (Some(port), path)
        }
        None => (None, rest),
    };
    match protocol {
        CheckProtocol::Tcp if !path.is_empty() => Err(format!(
            "{text:?}: a TCP check has no path (write \"TCP\" or \"TCP:PORT\")"
        )),
        CheckProtocol::Http | CheckProtocol::Https if path.is_empty() => Err(format!(
            "{text:?}: an HTTP check needs a path (\"HTTP:8080/health\", \"HTTP/\")"
        )),
        CheckProtocol::Http | CheckProtocol::Https
            if http::uri::PathAndQuery::try_from(path).is_err() =>
        {
            Err(format!("{path:?} in {text:?} is not a valid request path"))
        }
        _ => Ok(CheckTarget {
            protocol,
            port,
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: Value) -> Result<Policy, String> {
        Policy::from_value("up", &doc).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_document_takes_the_defaults() {
        let policy = parse(json!({})).expect("policy");
        assert_eq!(policy, Policy::default());
        assert_eq!(policy.health_check.target.to_string(), "TCP");
        assert!(policy.health_check.matcher.matches(302));
        assert!(!policy.health_check.matcher.matches(404));
    }

    #[test]
    fn the_full_document_parses_and_round_trips() {
        let doc = json!({"health_check": {"target": "HTTP:8080/health", "interval": "500ms",
            "timeout": "200ms", "healthy_threshold": 3, "unhealthy_threshold": 2,
            "matcher": "200,204,300-399", "host": "probe.test"},
            "deregistration_delay": "2s", "slow_start": "30s", "cross_zone": false});
        let policy = parse(doc).expect("policy");
        let check = &policy.health_check;
        assert_eq!(check.target.port, Some(8080));
        assert_eq!(check.target.path, "/health");
        assert_eq!(check.interval, Duration::from_millis(500));
        assert!(check.matcher.matches(204) && check.matcher.matches(399));
        assert!(!check.matcher.matches(201));
        assert!(!policy.cross_zone);
        let again = parse(policy.to_json()).expect("round trip");
        assert_eq!(again, policy);
    }

    #[test]
    fn targets_without_a_port_use_the_servers_own() {
        for (text, protocol, port, path) in [
            ("HTTP/health", CheckProtocol::Http, None, "/health"),
            ("http:81/", CheckProtocol::Http, Some(81), "/"),
            ("TCP", CheckProtocol::Tcp, None, ""),
            ("TCP:8080", CheckProtocol::Tcp, Some(8080), ""),
            ("HTTP/h?x=1", CheckProtocol::Http, None, "/h?x=1"),
            (
                "HTTPS:8443/health",
                CheckProtocol::Https,
                Some(8443),
                "/health",
            ),
            ("https/", CheckProtocol::Https, None, "/"),
        ] {
            let target = parse_target(text).expect(text);
            assert_eq!(
                (target.protocol, target.port, target.path.as_str()),
                (protocol, port, path),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_documents_name_the_field() {
        for (doc, expected) in [
            (json!([]), "must be a JSON object"),
            (json!({"healthcheck": {}}), "unknown field \"healthcheck\""),
            (
                json!({"health_check": {"path": "/"}}),
                "unknown field \"path\"",
            ),
            (
                json!({"health_check": {"target": "UDP:53"}}),
                "health_check.target",
            ),
            (
                json!({"health_check": {"target": "HTTPS:443"}}),
                "needs a path",
            ),
            (
                json!({"health_check": {"target": "TCP:8080/x"}}),
                "has no path",
            ),
            (
                json!({"health_check": {"target": "HTTP:8080"}}),
                "needs a path",
            ),
            (json!({"health_check": {"target": "HTTP:0/"}}), "not a port"),
            (
                json!({"health_check": {"target": "HTTP:99999/"}}),
                "not a port",
            ),
            (
                json!({"health_check": {"interval": "50ms"}}),
                "health_check.interval",
            ),
            (
                json!({"health_check": {"interval": "301s"}}),
                "out of range",
            ),
            (
                json!({"health_check": {"interval": "soon"}}),
                "not a duration",
            ),
            (json!({"health_check": {"interval": 5}}), "is not a string"),
            (
                json!({"health_check": {"interval": "1s", "timeout": "1s"}}),
                "less than the interval",
            ),
            (
                json!({"health_check": {"healthy_threshold": 0}}),
                "healthy_threshold",
            ),
            (
                json!({"health_check": {"unhealthy_threshold": 11}}),
                "1 to 10",
            ),
            (
                json!({"health_check": {"unhealthy_threshold": 2.5}}),
                "whole number",
            ),
            (
                json!({"health_check": {"matcher": "200-"}}),
                "health_check.matcher",
            ),
            (json!({"health_check": {"matcher": "399-200"}}), "backwards"),
            (
                json!({"health_check": {"matcher": "700"}}),
                "not an HTTP status",
            ),
            (json!({"health_check": {"host": ""}}), "health_check.host"),
            (json!({"health_check": {"host": "a b"}}), "not a valid Host"),
            (
                json!({"deregistration_delay": "2h"}),
                "deregistration_delay",
            ),
            (json!({"slow_start": "1h"}), "slow_start"),
            (json!({"cross_zone": "no"}), "cross_zone"),
        ] {
            let error = parse(doc.clone()).expect_err(&doc.to_string());
            assert!(error.contains(expected), "{doc}: {error}");
            assert!(error.contains("\"up\""), "{doc}: {error}");
        }
    }

    #[test]
    fn stored_text_that_is_not_json_is_refused() {
        let error = Policy::parse("up", "{").expect_err("not json");
        assert!(error.to_string().contains("not valid JSON"));
    }
}
