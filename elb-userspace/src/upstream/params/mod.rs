//! nginx `server` parameters: `weight=N max_fails=N fail_timeout=TIME backup down`,
//! plus `max_conns=N` (nginx's too), `zone=NAME`, and the flags `tls` (connect
//! with TLS) and `h2` (speak HTTP/2 to the server).
use std::time::Duration;

use serde_json::{Map, Value, json};

mod address;
mod duration;
mod error;

pub use address::validate_server_address;
pub use error::ParamsError;

use duration::{DurationError, MAX_FAIL_TIMEOUT_TEXT, format_duration, parse_duration};

const U32_MAX_TEXT: &str = "4294967295";

/// One server's balancing parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    /// Share of requests relative to the other servers; at least 1.
    pub weight: u32,
    /// Failures within `fail_timeout` that take the server out; 0 never does.
    pub max_fails: u32,
    /// Both the failure-counting window and how long the server stays out.
    pub fail_timeout: Duration,
    /// Used only when no primary (non-backup) server is available.
    pub backup: bool,
    /// Permanently out of rotation.
    pub down: bool,
    /// Availability zone (`zone=us-east-1a`); see `--zone` and `cross_zone`.
    pub zone: Option<String>,
    /// Most open connections elb keeps to this server (`max_conns=N`, as
    /// nginx); 0: `--max-server-connections` applies.
    pub max_conns: u32,
    /// Connect with TLS, verified against `--upstream-ca` or the system
    /// roots, SNI the server's host name.
    pub tls: bool,
    /// Speak HTTP/2: prior knowledge on plaintext, ALPN `h2` with `tls`.
    pub h2: bool,
}

impl Default for ServerParams {
    /// nginx's defaults.
    fn default() -> Self {
        Self {
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
            down: false,
            zone: None,
            max_conns: 0,
            tls: false,
            h2: false,
        }
    }
}

/// Tracks which parameters were given, to refuse duplicates.
#[derive(Default)]
struct Seen {
    weight: bool,
    max_fails: bool,
    fail_timeout: bool,
    backup: bool,
    down: bool,
    zone: bool,
    max_conns: bool,
    tls: bool,
    h2: bool,
}

/// Parses whitespace-separated nginx `server` parameters; `""` gives the defaults.
pub fn parse_params(text: &str) -> Result<ServerParams, ParamsError> {
    let mut params = ServerParams::default();
    let mut seen = Seen::default();
    for token in text.split_ascii_whitespace() {
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (token, None),
        };
        match name {
            "weight" => {
                mark_seen(&mut seen.weight, token, "weight")?;
                params.weight = parse_count(token, value)?;
                if params.weight == 0 {
                    return Err(ParamsError::ZeroWeight {
                        token: token.to_owned(),
                    });
                }
            }
            "max_fails" => {
                mark_seen(&mut seen.max_fails, token, "max_fails")?;
                params.max_fails = parse_count(token, value)?;
            }
            "fail_timeout" => {
                mark_seen(&mut seen.fail_timeout, token, "fail_timeout")?;
                params.fail_timeout = parse_fail_timeout(token, value)?;
            }
            "backup" => {
                mark_seen(&mut seen.backup, token, "backup")?;
                refuse_value(token, value, "backup")?;
                params.backup = true;
            }
            "down" => {
                mark_seen(&mut seen.down, token, "down")?;
                refuse_value(token, value, "down")?;
                params.down = true;
            }
            "tls" => {
                mark_seen(&mut seen.tls, token, "tls")?;
                refuse_value(token, value, "tls")?;
                params.tls = true;
            }
            "h2" => {
                mark_seen(&mut seen.h2, token, "h2")?;
                refuse_value(token, value, "h2")?;
                params.h2 = true;
            }
            "max_conns" => {
                mark_seen(&mut seen.max_conns, token, "max_conns")?;
                params.max_conns = parse_count(token, value)?;
            }
            "zone" => {
                mark_seen(&mut seen.zone, token, "zone")?;
                let zone = required_value(token, value)?;
                crate::config::zones::validate_zone_name(zone).map_err(|reason| {
                    ParamsError::BadZone {
                        token: token.to_owned(),
                        reason,
                    }
                })?;
                params.zone = Some(zone.to_owned());
            }
            _ => {
                return Err(ParamsError::UnknownParameter {
                    token: token.to_owned(),
                });
            }
        }
    }
    Ok(params)
}

fn mark_seen(seen: &mut bool, token: &str, name: &'static str) -> Result<(), ParamsError> {
    if std::mem::replace(seen, true) {
        return Err(ParamsError::Duplicate {
            token: token.to_owned(),
            name,
        });
    }
    Ok(())
}

fn refuse_value(token: &str, value: Option<&str>, flag: &'static str) -> Result<(), ParamsError> {
    match value {
        None => Ok(()),
        Some(_) => Err(ParamsError::ValueOnFlag {
            token: token.to_owned(),
            flag,
        }),
    }
}

/// The value of a `name=value` token; a bare `name` or `name=` has none.
fn required_value<'a>(token: &str, value: Option<&'a str>) -> Result<&'a str, ParamsError> {
    match value {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(ParamsError::MissingValue {
            token: token.to_owned(),
        }),
    }
}

fn parse_count(token: &str, value: Option<&str>) -> Result<u32, ParamsError> {
    let value = required_value(token, value)?;
    // By hand: `str::parse` would accept a leading '+'.
    if !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(ParamsError::BadNumber {
            token: token.to_owned(),
            value: value.to_owned(),
        });
    }
    value
        .bytes()
        .try_fold(0u32, |acc, digit| {
            acc.checked_mul(10)?.checked_add(u32::from(digit - b'0'))
        })
        .ok_or_else(|| ParamsError::Overflow {
            token: token.to_owned(),
            value: value.to_owned(),
            limit: U32_MAX_TEXT,
        })
}

fn parse_fail_timeout(token: &str, value: Option<&str>) -> Result<Duration, ParamsError> {
    let value = required_value(token, value)?;
    parse_duration(value).map_err(|error| match error {
        DurationError::Malformed => ParamsError::BadDuration {
            token: token.to_owned(),
            value: value.to_owned(),
        },
        DurationError::Overflow => ParamsError::Overflow {
            token: token.to_owned(),
            value: value.to_owned(),
            limit: MAX_FAIL_TIMEOUT_TEXT,
        },
    })
}

impl ServerParams {
    /// Canonical form, always with all three values and the set flags, e.g.
    /// `weight=10 max_fails=2 fail_timeout=10s backup`. Parses back to `self`
    /// for every value `parse_params` can produce (a hand-built weight of 0 or
    /// a sub-millisecond `fail_timeout` cannot be written).
    pub fn to_nginx_string(&self) -> String {
        let mut text = format!(
            "weight={} max_fails={} fail_timeout={}",
            self.weight,
            self.max_fails,
            format_duration(self.fail_timeout)
        );
        if self.backup {
            text.push_str(" backup");
        }
        if self.down {
            text.push_str(" down");
        }
        if let Some(zone) = &self.zone {
            text.push_str(" zone=");
            text.push_str(zone);
        }
        if self.max_conns > 0 {
            text.push_str(&format!(" max_conns={}", self.max_conns));
        }
        if self.tls {
            text.push_str(" tls");
        }
        if self.h2 {
            text.push_str(" h2");
        }
        text
    }

    /// One server as the admin API's `GET /__erulb__/upstream` lists it:
    /// `{"name", "addr", "weight", "max_fails", "fail_timeout"}` plus `"backup"`
    /// and `"down"` only when set. `fail_timeout` is in seconds: an integer
    /// when whole (as the old ELB printed it), otherwise a float.
    pub fn to_json(&self, server: &str) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), json!(server));
        object.insert("addr".into(), json!(server));
        object.insert("weight".into(), json!(self.weight));
        object.insert("max_fails".into(), json!(self.max_fails));
        let fail_timeout = if self.fail_timeout.subsec_nanos() == 0 {
            json!(self.fail_timeout.as_secs())
        } else {
            json!(self.fail_timeout.as_secs_f64())
        };
        object.insert("fail_timeout".into(), fail_timeout);
        if self.backup {
            object.insert("backup".into(), Value::Bool(true));
        }
        if self.down {
            object.insert("down".into(), Value::Bool(true));
        }
        if let Some(zone) = &self.zone {
            object.insert("zone".into(), json!(zone));
        }
        if self.max_conns > 0 {
            object.insert("max_conns".into(), json!(self.max_conns));
        }
        if self.tls {
            object.insert("tls".into(), Value::Bool(true));
        }
        if self.h2 {
            object.insert("h2".into(), Value::Bool(true));
        }
        Value::Object(object)
    }
}
