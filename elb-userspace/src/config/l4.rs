//! L4 services: a VIP and protocol whose flows the XDP data plane spreads
//! over an upstream's servers with Maglev. One key per service,
//! `/$ELBNAME/services/$name`, holding
//! `{"vip": "IP:PORT", "proto": "tcp"|"udp", "upstream": NAME}` plus the
//! optional `"snat"` (an IP, or a pool: a list of up to
//! [`MAX_SNAT_POOL`] distinct IPs) and `"table_size": PRIME`.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use elb_common::{
    maglev::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, is_prime},
    nat::MAX_SNAT_POOL,
};
use serde_json::{Map, Value};

use super::keys::validate_key_segment;

/// Every field a service document may have; anything else is a typo.
const FIELDS: [&str; 5] = ["vip", "proto", "upstream", "snat", "table_size"];
const KNOWN: &str = "vip, proto, upstream, snat, table_size";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Service {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: L4Proto,
    pub upstream: String,
    pub snat: Option<SnatAddrs>,
    /// Maglev lookup-table size (a prime).
    pub table_size: u32,
}

/// A service's SNAT addresses: one, or a pool whose NAT ports add up (a
/// new flow tries the next address when one has no free port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatAddrs {
    /// Never empty, no duplicates, at most [`MAX_SNAT_POOL`].
    addrs: Vec<IpAddr>,
    /// Written as a list (kept so GET returns the document's shape).
    list: bool,
}

impl SnatAddrs {
    /// One address, written as a string.
    pub fn one(addr: IpAddr) -> Self {
        Self {
            addrs: vec![addr],
            list: false,
        }
    }

    /// The first address: the one the userspace data plane binds.
    pub fn first(&self) -> IpAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    fn to_json(&self) -> Value {
        if self.list {
            Value::Array(self.addrs.iter().map(|a| a.to_string().into()).collect())
        } else {
            self.addrs[0].to_string().into()
        }
    }
}

/// Why a service definition was refused; every message names the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L4ServiceError {
    /// The name cannot be a key segment (the message names it).
    #[error("{0}")]
    Name(String),
    #[error("service {service:?}: the definition is not valid JSON: {message}")]
    NotJson { service: String, message: String },
    #[error("service {service:?}: the definition must be a JSON object with {known}", known = KNOWN)]
    NotObject { service: String },
    #[error("service {service:?}: unknown field {field:?} (known fields: {known})", known = KNOWN)]
    UnknownField { service: String, field: String },
    #[error("service {service:?}: field {field:?} is missing")]
    MissingField {
        service: String,
        field: &'static str,
    },
    #[error("service {service:?}, field {field:?}: {reason}")]
    BadField {
        service: String,
        field: &'static str,
        reason: String,
    },
    #[error("services {service:?} and {other:?} both use {proto} VIP {vip}")]
    DuplicateVip {
        service: String,
        other: String,
        proto: L4Proto,
        vip: SocketAddr,
    },
    #[error("service {service:?}: upstream {upstream:?}, server {server:?}: {reason}")]
    BadServer {
        service: String,
        upstream: String,
        server: String,
        reason: String,
    },
}

impl L4Service {
    /// Parses and validates a stored definition (the value of its key).
    pub fn parse(name: &str, json: &str) -> Result<Self, L4ServiceError> {
        let value: Value = serde_json::from_str(json).map_err(|e| L4ServiceError::NotJson {
            service: name.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(name, &value)
    }

    /// [`L4Service::parse`] for an already decoded document (admin PUT).
    /// `null` counts as absent for the optional fields.
    pub fn from_value(name: &str, value: &Value) -> Result<Self, L4ServiceError> {
        validate_key_segment("service", name).map_err(L4ServiceError::Name)?;
        let service = || name.to_owned();
        let object = value
            .as_object()
            .ok_or_else(|| L4ServiceError::NotObject { service: service() })?;
        if let Some(field) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(L4ServiceError::UnknownField {
                service: service(),
                field: field.clone(),
            });
        }
        let bad = |field: &'static str, reason: String| L4ServiceError::BadField {
            service: service(),
            field,
            reason,
        };
        let string = |field: &'static str| match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(bad(field, format!("must be a string, got {other}"))),
        };
        let required = |field: &'static str| {
            string(field)?.ok_or_else(|| L4ServiceError::MissingField {
                service: service(),
                field,
            })
        };

        let vip = parse_vip(required("vip")?).map_err(|reason| bad("vip", reason))?;
        let proto = match required("proto")? {
            "tcp" => L4Proto::Tcp,
            "udp" => L4Proto::Udp,
            other => {
                return Err(bad(
                    "proto",
                    format!("must be \"tcp\" or \"udp\", got {other:?}"),
                ));
            }
        };
        let upstream = required("upstream")?;
        validate_key_segment("upstream", upstream).map_err(|reason| bad("upstream", reason))?;
        let snat = match object.get("snat") {
            None | Some(Value::Null) => None,
            Some(value) => {
                Some(parse_snat_field(value, vip).map_err(|reason| bad("snat", reason))?)
            }
        };
        let table_size = match object.get("table_size") {
            None | Some(Value::Null) => DEFAULT_TABLE_SIZE,
            Some(value) => parse_table_size(value).map_err(|reason| bad("table_size", reason))?,
        };
        Ok(Self {
            name: name.to_owned(),
            vip,
            proto,
            upstream: upstream.to_owned(),
            snat,
            table_size,
        })
    }

    /// The stored and GET shape: `snat` only when set, `table_size` always.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("vip".into(), self.vip.to_string().into());
        object.insert("proto".into(), self.proto.as_str().into());
        object.insert("upstream".into(), self.upstream.clone().into());
        if let Some(snat) = &self.snat {
            object.insert("snat".into(), snat.to_json());
        }
        object.insert("table_size".into(), self.table_size.into());
        Value::Object(object)
    }

    /// Checks that every server of this service's upstream is an `IP:port`
    /// literal of the VIP's family: the data plane forwards packets to
    /// addresses, it cannot resolve names or translate between families.
    pub fn check_servers<'a>(
        &self,
        servers: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), L4ServiceError> {
        for server in servers {
            let reason = match server.parse::<SocketAddr>() {
                Err(_) => format!(
                    "is not an IP:port literal ({} VIPs need {} servers; the L4 data plane does not resolve names)",
                    family(self.vip.ip()),
                    family(self.vip.ip())
                ),
                Ok(addr) if addr.is_ipv4() != self.vip.is_ipv4() => format!(
                    "is {} but the VIP {} is {}",
                    family(addr.ip()),
                    self.vip,
                    family(self.vip.ip())
                ),
                Ok(_) => continue,
            };
            return Err(L4ServiceError::BadServer {
                service: self.name.clone(),
                upstream: self.upstream.clone(),
                server: server.to_owned(),
                reason,
            });
        }
        Ok(())
    }
}

/// Fails on the first two services that claim the same (VIP, protocol);
/// the error names the later one first.
pub fn check_unique_vips<'a>(
    services: impl IntoIterator<Item = &'a L4Service>,
) -> Result<(), L4ServiceError> {
    let mut seen: HashMap<(SocketAddr, L4Proto), &str> = HashMap::new();
    for service in services {
        if let Some(other) = seen.insert((service.vip, service.proto), &service.name) {
            return Err(L4ServiceError::DuplicateVip {
                service: service.name.clone(),
                other: other.to_owned(),
                proto: service.proto,
                vip: service.vip,
            });
        }
    }
    Ok(())
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Addresses no packet is ever sent to or from.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

fn parse_vip(text: &str) -> Result<SocketAddr, String> {
    let vip: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not IP:PORT (IPv6 as [::1]:80)"))?;
    if vip.port() == 0 {
        return Err(format!("{text:?} has port 0"));
    }
    if let Some(what) = unusable(vip.ip()) {
        return Err(format!("{text:?} is {what}"));
    }
    if let SocketAddr::V6(v6) = vip {
        if v6.scope_id() != 0 {
            return Err(format!("{text:?} has a scope id; VIPs are global"));
        }
        if v6.ip().to_ipv4_mapped().is_some() {
            return Err(format!(
                "{text:?} is an IPv4-mapped address; write the IPv4 form"
            ));
        }
    }
    Ok(vip)
}

fn parse_snat(text: &str, vip: SocketAddr) -> Result<IpAddr, String> {
    let snat: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    if snat.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "{text:?} is {} but the VIP {vip} is {}",
            family(snat),
            family(vip.ip())
        ));
    }
    if let Some(what) = unusable(snat) {
        return Err(format!("{text:?} is {what}"));
    }
    Ok(snat)
}

/// `"IP"` or `["IP", ...]`: every address as [`parse_snat`] wants it,
/// none twice, 1..=MAX_SNAT_POOL of them; errors name the list index.
fn parse_snat_field(value: &Value, vip: SocketAddr) -> Result<SnatAddrs, String> {
    let items = match value {
        Value::String(text) => return parse_snat(text, vip).map(SnatAddrs::one),
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "must be an IP address or a list of them, got {other}"
            ));
        }
    };
    if items.is_empty() || items.len() > MAX_SNAT_POOL as usize {
        return Err(format!(
            "a pool has 1 to {MAX_SNAT_POOL} addresses, got {}",
            items.len()
        ));
    }
    let mut addrs: Vec<IpAddr> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let addr = match item {
            Value::String(text) => parse_snat(text, vip),
            other => Err(format!("must be a string, got {other}")),
        }
        .map_err(|reason| format!("[{index}]: {reason}"))?;
        if let Some(first) = addrs.iter().position(|a| *a == addr) {
            return Err(format!("[{index}]: {addr} is already [{first}]"));
        }
        addrs.push(addr);
    }
    Ok(SnatAddrs { addrs, list: true })
}

fn parse_table_size(value: &Value) -> Result<u32, String> {
    let size = value
        .as_u64()
        .ok_or_else(|| format!("must be a whole number, got {value}"))?;
    u32::try_from(size)
        .ok()
        .filter(|size| (2..=MAX_TABLE_SIZE).contains(size) && is_prime(*size))
        .ok_or_else(|| format!("must be a prime number between 2 and {MAX_TABLE_SIZE}, got {size}"))
}

#[cfg(test)]
mod tests;
