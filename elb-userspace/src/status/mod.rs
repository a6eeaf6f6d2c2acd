//! The live status of a running elb: `GET /__erulb__/status.json` (one
//! document for the status page and `elb status`) and the page itself
//! (`GET /__erulb__/status`, see [`page`]).
//!
//! [`assemble`] is pure: the admin API gathers the inputs (configuration,
//! target registry report, L4 counters, listener board, store link) and this
//! module shapes them, derives each server's one-word `status` and the
//! summary a person reads first.
pub mod command;
pub mod page;
pub mod report;

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Map, Value, json};

/// Everything the status document is made of.
#[derive(Debug)]
pub struct StatusInput {
    pub name: String,
    pub version: String,
    pub uptime: Duration,
    pub listeners: Vec<ListenerInput>,
    pub domains: Vec<DomainInput>,
    pub upstreams: Vec<UpstreamInput>,
    /// [`crate::targets::TargetRegistry::report`]: `{upstream: {"fail_open",
    /// "health_checks", "servers": {server: {"state", "reason", ...}}}}`.
    pub health: Value,
    pub services: Vec<ServiceInput>,
    /// `/__erulb__/stats` of the running L4 data plane, or why there is none.
    pub l4: Result<Value, String>,
    pub store: StoreInput,
    /// Per-upstream HTTP counters since start, when elb counts them.
    pub traffic: Option<BTreeMap<String, UpstreamTraffic>>,
}

impl Default for StatusInput {
    fn default() -> Self {
        Self {
            name: String::new(),
            version: String::new(),
            uptime: Duration::ZERO,
            listeners: Vec::new(),
            domains: Vec::new(),
            upstreams: Vec::new(),
            health: Value::Null,
            services: Vec::new(),
            l4: Err("not started".to_owned()),
            store: StoreInput::default(),
            traffic: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInput {
    /// None: a `--listen` address (always serving while elb runs).
    pub name: Option<String>,
    pub address: String,
    pub protocol: String,
    pub http2: bool,
    /// `serving`, `failed` or `starting`.
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInput {
    pub name: String,
    /// The servernames its rules send to: upstream names or addresses.
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInput {
    pub name: String,
    pub servers: Vec<ServerInput>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInput {
    pub address: String,
    pub weight: u32,
    pub zone: Option<String>,
    pub backup: bool,
    pub down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    pub name: String,
    pub vip: String,
    pub proto: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreInput {
    /// `etcd` or `file`.
    pub kind: String,
    /// The endpoints or the file.
    pub location: String,
    pub connected: bool,
    pub error: Option<String>,
    pub seconds_in_state: f64,
}

/// One upstream's HTTP counters since elb started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamTraffic {
    pub requests: u64,
    /// Responses with a 5xx status (elb's own 502/503/504 included).
    pub errors: u64,
}

/// A server's state in one word, for colour and counting:
/// - `up`: passing its health checks;
/// - `down`: failing them (still sent requests while its upstream fails open);
/// - `starting`: not checked enough yet;
/// - `draining`: leaving, in-flight requests and flows finish;
/// - `out`: not in service (`down`, a disabled zone, drained);
/// - `unchecked`: in service, its upstream has no health-check policy.
pub fn server_status(state: &str, checked: bool, routable: bool) -> &'static str {
    match state {
        "healthy" => "up",
        "unhealthy" => "down",
        "initial" => "starting",
        "draining" => "draining",
        "unused" if !checked && routable => "unchecked",
        _ => "out",
    }
}

pub const SERVER_STATUSES: [&str; 6] = ["up", "down", "starting", "draining", "out", "unchecked"];

/// The status document.
pub fn assemble(input: &StatusInput) -> Value {
    let mut problems: Vec<String> = Vec::new();
    let listeners = listeners_json(&input.listeners, &mut problems);
    let upstreams = upstreams_json(input, &mut problems);
    let l4 = l4_json(input, &upstreams, &mut problems);
    if !input.store.connected {
        problems.push(format!(
            "store {} {} is not connected{}: serving the last known configuration",
            input.store.kind,
            input.store.location,
            input
                .store
                .error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    let mut counts: BTreeMap<&str, u64> = SERVER_STATUSES.iter().map(|s| (*s, 0)).collect();
    let mut fail_open = Vec::new();
    for upstream in &upstreams {
        for server in upstream["servers"].as_array().into_iter().flatten() {
            if let Some(count) = server["status"].as_str().and_then(|s| counts.get_mut(s)) {
                *count += 1;
            }
        }
        if upstream["fail_open"] == Value::Bool(true) {
            fail_open.push(upstream["name"].clone());
        }
    }
    let servers_total: u64 = counts.values().sum();
    let domains: Vec<Value> = input
        .domains
        .iter()
        .map(|domain| {
            let (upstream_names, addresses): (Vec<&String>, Vec<&String>) = domain
                .backends
                .iter()
                .partition(|b| input.upstreams.iter().any(|u| &u.name == *b));
            json!({"name": domain.name, "upstreams": upstream_names, "servers": addresses})
        })
        .collect();
    json!({
        "elb": {
            "name": input.name,
            "version": input.version,
            "uptime_seconds": input.uptime.as_secs(),
        },
        "summary": {
            "servers": counts,
            "servers_total": servers_total,
            "upstreams_total": upstreams.len(),
            "upstreams_fail_open": fail_open,
            "listeners_total": listeners.len(),
            "listeners_failed": listeners.iter().filter(|l| l["status"] == "failed").count(),
            "domains_total": domains.len(),
            "services_total": input.services.len(),
            "problems": problems,
            "traffic_counted": input.traffic.is_some(),
        },
        "listeners": listeners,
        "domains": domains,
        "upstreams": upstreams,
        "l4": l4,
        "store": {
            "kind": input.store.kind,
            "location": input.store.location,
            "connected": input.store.connected,
            "error": input.store.error,
            "seconds_in_state": input.store.seconds_in_state,
        },
    })
}

fn listeners_json(listeners: &[ListenerInput], problems: &mut Vec<String>) -> Vec<Value> {
    listeners
        .iter()
        .map(|l| {
            if l.status == "failed" {
                let name = l.name.as_deref().unwrap_or("--listen");
                problems.push(format!(
                    "listener {name} on {} failed: {}",
                    l.address,
                    l.error.as_deref().unwrap_or("unknown error")
                ));
            }
            json!({
                "name": l.name,
                "address": l.address,
                "protocol": l.protocol,
                "http2": l.http2,
                "status": l.status,
                "error": l.error,
            })
        })
        .collect()
}

fn upstreams_json(input: &StatusInput, problems: &mut Vec<String>) -> Vec<Value> {
    let mut names: Vec<&str> = input.upstreams.iter().map(|u| u.name.as_str()).collect();
    // Upstreams removed from the configuration whose servers still drain.
    if let Some(health) = input.health.as_object() {
        for name in health.keys() {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let config = input.upstreams.iter().find(|u| u.name == name);
            upstream_json(input, name, config, problems)
        })
        .collect()
}

fn upstream_json(
    input: &StatusInput,
    name: &str,
    config: Option<&UpstreamInput>,
    problems: &mut Vec<String>,
) -> Value {
    let health = &input.health[name];
    let checked = health["health_checks"].as_bool().unwrap_or(false);
    let fail_open = health["fail_open"].as_bool().unwrap_or(false);
    let reports = health["servers"].as_object();
    let mut servers: Vec<Value> = config
        .map(|c| c.servers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|server| {
            let report = reports.and_then(|r| r.get(&server.address));
            server_json(server, report, checked, false)
        })
        .collect();
    // Servers removed from the upstream, still draining.
    for (address, report) in reports.into_iter().flatten() {
        let configured = config.is_some_and(|c| c.servers.iter().any(|s| &s.address == address));
        if !configured {
            let server = ServerInput {
                address: address.clone(),
                weight: 0,
                zone: None,
                backup: false,
                down: false,
            };
            servers.push(server_json(&server, Some(report), checked, true));
        }
    }
    if fail_open {
        problems.push(format!(
            "upstream {name}: no healthy server, failing open (requests go to every server)"
        ));
    }
    for server in &servers {
        if server["status"] == "down" {
            problems.push(format!(
                "upstream {name}: server {} is down: {}",
                server["address"].as_str().unwrap_or_default(),
                server["reason"].as_str().unwrap_or_default()
            ));
        }
    }
    let domains: Vec<&str> = input
        .domains
        .iter()
        .filter(|d| d.backends.iter().any(|b| b == name))
        .map(|d| d.name.as_str())
        .collect();
    let services: Vec<&str> = input
        .services
        .iter()
        .filter(|s| s.upstream == name)
        .map(|s| s.name.as_str())
        .collect();
    let traffic = input.traffic.as_ref().map(|t| {
        let counted = t.get(name).copied().unwrap_or_default();
        json!({"requests": counted.requests, "errors_5xx": counted.errors})
    });
    let mut object = json!({
        "name": name,
        "configured": config.is_some(),
        "health_checks": checked,
        "fail_open": fail_open,
        "domains": domains,
        "services": services,
        "servers": servers,
    });
    if let Some(traffic) = traffic {
        object["traffic"] = traffic;
    }
    object
}

fn server_json(
    server: &ServerInput,
    report: Option<&Value>,
    checked: bool,
    removed: bool,
) -> Value {
    let state = report
        .and_then(|r| r["state"].as_str())
        .unwrap_or(if server.down { "unused" } else { "initial" });
    let routable = report
        .and_then(|r| r["routable"].as_bool())
        .unwrap_or(false);
    let mut object = json!({
        "address": server.address,
        "status": server_status(state, checked, routable),
        "state": state,
        "reason": report.and_then(|r| r.get("reason")).cloned().unwrap_or(Value::Null),
        "routable": routable,
        "weight": server.weight,
        "zone": server.zone,
        "backup": server.backup,
        "down": server.down,
        "removed": removed,
    });
    if let Some(report) = report.and_then(Value::as_object) {
        for key in [
            "seconds_in_state",
            "drain_seconds_left",
            "slow_start_weight_percent",
            "last_check",
        ] {
            if let Some(value) = report.get(key) {
                object[key] = value.clone();
            }
        }
    }
    object
}

/// The L4 part: the data plane, its interfaces and global counters, and
/// each configured service with its counters and its servers' traffic and
/// health.
fn l4_json(input: &StatusInput, upstreams: &[Value], problems: &mut Vec<String>) -> Value {
    let stats = match &input.l4 {
        Ok(stats) => stats,
        Err(error) => {
            if !input.services.is_empty() {
                problems.push(format!("L4 data plane: {error}"));
            }
            return json!({
                "dataplane": Value::Null,
                "error": error,
                "services": input.services.iter().map(|s| service_json(s, None, upstreams)).collect::<Vec<_>>(),
            });
        }
    };
    let services: Vec<Value> = input
        .services
        .iter()
        .map(|service| {
            let traffic = stats["services"].get(&service.name);
            if let Some(error) = traffic.and_then(|t| t["error"].as_str()) {
                problems.push(format!("L4 service {}: {error}", service.name));
            }
            if traffic.and_then(|t| t["installed"].as_bool()) == Some(false) {
                problems.push(format!(
                    "L4 service {}: not installed in XDP (no free id)",
                    service.name
                ));
            }
            service_json(service, traffic, upstreams)
        })
        .collect();
    let mut object = Map::new();
    object.insert("dataplane".into(), stats["dataplane"].clone());
    object.insert(
        "interfaces".into(),
        stats
            .get("interfaces")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    // XDP calls its totals `global`, the userspace plane `totals`.
    let totals = stats
        .get("global")
        .or_else(|| stats.get("totals"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    object.insert("totals".into(), totals);
    if let Some(drops) = stats.get("l7_acl_drops") {
        object.insert("l7_acl_drops".into(), drops.clone());
    }
    object.insert("services".into(), Value::Array(services));
    Value::Object(object)
}

fn service_json(service: &ServiceInput, traffic: Option<&Value>, upstreams: &[Value]) -> Value {
    let upstream = upstreams.iter().find(|u| u["name"] == *service.upstream);
    let per_server = traffic.and_then(|t| t["servers"].as_object());
    let servers: Vec<Value> = upstream
        .and_then(|u| u["servers"].as_array())
        .into_iter()
        .flatten()
        .map(|server| {
            let address = server["address"].as_str().unwrap_or_default();
            json!({
                "address": address,
                "status": server["status"],
                "counters": per_server.and_then(|s| s.get(address)).cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    let counters: Map<String, Value> = traffic
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.is_number())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut object = json!({
        "name": service.name,
        "vip": service.vip,
        "proto": service.proto,
        "upstream": service.upstream,
        "fail_open": upstream.is_some_and(|u| u["fail_open"] == Value::Bool(true)),
        "counters": counters,
        "servers": servers,
    });
    for key in ["listening", "installed", "error"] {
        if let Some(value) = traffic.and_then(|t| t.get(key)) {
            object[key] = value.clone();
        }
    }
    object
}

#[cfg(test)]
mod tests;
