//! The Consul provider: follows `/v1/health/service/<name>` with blocking
//! queries (`index` = the last `X-Consul-Index`, `wait`), so a change
//! arrives as soon as Consul has it. Filters: `passing` (all checks
//! passing), `tag` (every tag, also checked here), `dc`. The address is
//! `Service.Address`, or `Node.Address` when empty; the weight is
//! `Service.Weights.Passing`. Consul has no zone convention: no `zone=`.
//!
//! Plain HTTP to the Consul agent (its usual local address); the ACL token
//! from `token_file` is read before each request (rotation needs no
//! restart) and sent as `X-Consul-Token`.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{DiscoveredServer, NextResult, Provider, ProviderError};
use crate::config::discovery::Consul;

/// How long one blocking query may wait for a change (Consul's default is
/// 5 min, its maximum 10 min); shorter notices a dead agent sooner.
pub const WAIT: Duration = Duration::from_secs(60);
/// Back-off after errors: doubles from the first to the last, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Least time between two requests: a blocking query that returns at once
/// (index unchanged, an agent that does not block) must not spin.
const MIN_GAP: Duration = Duration::from_millis(50);
/// A health answer larger than this is refused (thousands of instances fit).
const MAX_BODY: usize = 32 << 20;

pub struct ConsulProvider {
    consul: Consul,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// The last `X-Consul-Index`; 0: none yet (a query that does not block).
    index: u64,
    /// Errors in a row; their back-off is waited before the next request.
    failures: u32,
    last_request: Option<Instant>,
    wait: Duration,
}

impl ConsulProvider {
    pub fn new(consul: Consul) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            consul,
            client: Client::builder(TokioExecutor::new()).build(connector),
            index: 0,
            failures: 0,
            last_request: None,
            wait: WAIT,
        }
    }

    async fn poll(&mut self) -> Result<Vec<DiscoveredServer>, ProviderError> {
        if self.failures > 0 {
            tokio::time::sleep(backoff(self.failures, fastrand::f64())).await;
        } else if let Some(last) = self.last_request {
            tokio::time::sleep_until(last + MIN_GAP).await;
        }
        self.last_request = Some(Instant::now());
        match self.query().await {
            Ok(servers) => {
                self.failures = 0;
                Ok(servers)
            }
            Err(message) => {
                self.failures = self.failures.saturating_add(1);
                Err(ProviderError(message))
            }
        }
    }

    /// One blocking query; on success the index moves on.
    async fn query(&mut self) -> Result<Vec<DiscoveredServer>, String> {
        let path = query_path(&self.consul, self.index, self.wait);
        let url = format!("http://{}{path}", self.consul.address);
        let where_ = format!("Consul at {}: GET {path}", self.consul.address);
        let mut request = http::Request::get(&url);
        if let Some(file) = &self.consul.token_file {
            let token = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("cannot read token_file {}: {e}", file.display()))?;
            request = request.header("X-Consul-Token", token.trim());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("{where_}: {e}"))?;
        let response = tokio::time::timeout(request_timeout(self.wait), async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut message = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    message = format!("{message}: {source}");
                }
                message
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await
        .map_err(|_| {
            format!(
                "{where_}: no answer within {:?}",
                request_timeout(self.wait)
            )
        })?
        .map_err(|e| format!("{where_}: {e}"))?;
        let (parts, body) = response;
        if parts.status != http::StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!(
                "{where_}: answered {}: {}",
                parts.status,
                text.trim()
            ));
        }
        let header = parts
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let servers = parse_health(&body, &self.consul).map_err(|e| format!("{where_}: {e}"))?;
        self.index = next_index(self.index, header);
        Ok(servers)
    }
}

impl Provider for ConsulProvider {
    fn next(&mut self) -> NextResult<'_> {
        Box::pin(self.poll())
    }

    fn state(&self) -> Map<String, Value> {
        Map::from_iter([("index".to_owned(), json!(self.index))])
    }
}

/// `/v1/health/service/<name>?passing&tag=..&dc=..&index=..&wait=..s`.
pub fn query_path(consul: &Consul, index: u64, wait: Duration) -> String {
    let mut path = format!(
        "/v1/health/service/{}",
        utf8_percent_encode(&consul.service, NON_ALPHANUMERIC)
    );
    let mut query = Vec::new();
    if consul.only_passing {
        query.push("passing=true".to_owned());
    }
    for tag in &consul.tags {
        query.push(format!(
            "tag={}",
            utf8_percent_encode(tag, NON_ALPHANUMERIC)
        ));
    }
    if let Some(dc) = &consul.datacenter {
        query.push(format!("dc={}", utf8_percent_encode(dc, NON_ALPHANUMERIC)));
    }
    // Index 0 is no index: the first query answers at once.
    if index > 0 {
        query.push(format!("index={index}"));
        query.push(format!("wait={}s", wait.as_secs().max(1)));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

/// The index for the next query, by Consul's rules for blocking queries:
/// an index that went backwards (a restored or restarted cluster) starts
/// over at 0; one below 1 (a Consul bug the docs warn of) becomes 1, never
/// a query that returns at once forever; no header at all: 0, a plain
/// query (paced by [`MIN_GAP`]).
pub fn next_index(previous: u64, returned: Option<u64>) -> u64 {
    match returned {
        None => 0,
        Some(0) => 1,
        Some(index) if index < previous => 0,
        Some(index) => index,
    }
}

/// A bit longer than the wait: Consul adds up to wait/16 of jitter.
fn request_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(5)
}

/// The delay before retry number `failures` (1 = after the first error):
/// doubling from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], then a random
/// half to whole of it (`jitter` in 0..1), so many nodes do not retry in
/// step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    crate::backoff::doubling(BACKOFF_FIRST, BACKOFF_MAX, failures)
        .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
    #[serde(rename = "Checks", default)]
    checks: Vec<Check>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Node", default)]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Datacenter", default)]
    datacenter: Option<String>,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: Option<u32>,
}

#[derive(Deserialize)]
struct Check {
    #[serde(rename = "Status", default)]
    status: String,
}

/// The servers of a `/v1/health/service` answer. The filters are checked
/// again here (an agent that ignores one still gives the right list).
/// Instances whose address is no IP (Consul allows host names) or whose
/// port is 0 are left out, with a log line.
pub fn parse_health(body: &[u8], consul: &Consul) -> Result<Vec<DiscoveredServer>, String> {
    let entries: Vec<Entry> = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not Consul's health JSON: {e}"))?;
    let wanted: BTreeSet<&str> = consul.tags.iter().map(String::as_str).collect();
    let mut servers = Vec::with_capacity(entries.len());
    for entry in entries {
        let tags: BTreeSet<&str> = entry
            .service
            .tags
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !wanted.is_subset(&tags) {
            continue;
        }
        if consul.only_passing && entry.checks.iter().any(|c| c.status != "passing") {
            continue;
        }
        if let (Some(wanted), Some(dc)) = (&consul.datacenter, &entry.node.datacenter)
            && !dc.is_empty()
            && dc != wanted
        {
            continue;
        }
        let address = if entry.service.address.is_empty() {
            &entry.node.address
        } else {
            &entry.service.address
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            tracing::warn!(
                service = consul.service,
                instance = entry.service.id,
                node = entry.node.name,
                address,
                "Consul instance left out: its address is not an IP"
            );
            continue;
        };
        if entry.service.port == 0 {
            tracing::warn!(
                service = consul.service,
                instance = entry.service.id,
                node = entry.node.name,
                "Consul instance left out: it has no port"
            );
            continue;
        }
        servers.push(DiscoveredServer {
            addr: SocketAddr::new(ip, entry.service.port),
            zone: None,
            weight: entry
                .service
                .weights
                .and_then(|w| w.passing)
                .filter(|w| *w > 0),
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consul(tags: &[&str], only_passing: bool, dc: Option<&str>) -> Consul {
        Consul {
            address: "127.0.0.1:8500".into(),
            service: "web".into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            only_passing,
            datacenter: dc.map(str::to_owned),
            token_file: None,
        }
    }

    const ANSWER: &str = r#"[
      {"Node": {"ID": "n1", "Node": "node1", "Address": "10.0.0.1", "Datacenter": "dc1",
                "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {}},
       "Service": {"ID": "web1", "Service": "web", "Tags": ["prod", "v2"], "Address": "",
                   "Port": 8080, "Weights": {"Passing": 10, "Warning": 1}, "Meta": {}},
       "Checks": [{"Node": "node1", "CheckID": "serfHealth", "Status": "passing"},
                  {"Node": "node1", "CheckID": "service:web1", "Status": "passing"}]},
      {"Node": {"Node": "node2", "Address": "10.0.0.2", "Datacenter": "dc1"},
       "Service": {"ID": "web2", "Service": "web", "Tags": ["prod"], "Address": "fd00::2",
                   "Port": 80},
       "Checks": [{"Status": "warning"}]},
      {"Node": {"Node": "node3", "Address": "10.0.0.3", "Datacenter": "dc2"},
       "Service": {"ID": "web3", "Service": "web", "Tags": null, "Address": "10.1.0.3",
                   "Port": 81, "Weights": {"Passing": 0}},
       "Checks": []},
      {"Node": {"Node": "node4", "Address": "10.0.0.4"},
       "Service": {"ID": "web4", "Service": "web", "Address": "web4.example", "Port": 82},
       "Checks": []}
    ]"#;

    fn addrs(servers: &[DiscoveredServer]) -> Vec<String> {
        servers.iter().map(|s| s.addr.to_string()).collect()
    }

    #[test]
    fn health_json_becomes_servers() {
        let all = parse_health(ANSWER.as_bytes(), &consul(&[], false, None)).expect("parse");
        // node4's address is a host name: left out.
        assert_eq!(
            addrs(&all),
            ["10.0.0.1:8080", "[fd00::2]:80", "10.1.0.3:81"]
        );
        assert_eq!(all[0].weight, Some(10), "Weights.Passing");
        assert_eq!(all[1].weight, None);
        assert_eq!(all[2].weight, None, "a passing weight of 0 is none");
        assert!(all.iter().all(|s| s.zone.is_none()));
        let prod = parse_health(ANSWER.as_bytes(), &consul(&["prod"], false, None)).expect("tags");
        assert_eq!(addrs(&prod), ["10.0.0.1:8080", "[fd00::2]:80"]);
        let both =
            parse_health(ANSWER.as_bytes(), &consul(&["prod", "v2"], false, None)).expect("tags");
        assert_eq!(addrs(&both), ["10.0.0.1:8080"]);
        let passing = parse_health(ANSWER.as_bytes(), &consul(&[], true, None)).expect("passing");
        assert_eq!(addrs(&passing), ["10.0.0.1:8080", "10.1.0.3:81"]);
        let dc2 = parse_health(ANSWER.as_bytes(), &consul(&[], false, Some("dc2"))).expect("dc");
        assert_eq!(addrs(&dc2), ["10.1.0.3:81"], "node4 has no datacenter");
        assert!(
            parse_health(b"[]", &consul(&[], true, None))
                .expect("empty")
                .is_empty()
        );
        let err = parse_health(b"{\"x\":1}", &consul(&[], true, None)).expect_err("not a list");
        assert!(err.contains("not Consul's health JSON"), "{err}");
    }

    #[test]
    fn queries_block_on_the_index_once_there_is_one() {
        let mut c = consul(&["prod", "a b"], true, Some("dc1"));
        assert_eq!(
            query_path(&c, 0, WAIT),
            "/v1/health/service/web?passing=true&tag=prod&tag=a%20b&dc=dc1"
        );
        c.only_passing = false;
        c.tags.clear();
        c.datacenter = None;
        assert_eq!(
            query_path(&c, 42, Duration::from_secs(60)),
            "/v1/health/service/web?index=42&wait=60s"
        );
    }

    #[test]
    fn index_rules_follow_consuls_documentation() {
        assert_eq!(next_index(0, Some(7)), 7);
        assert_eq!(next_index(7, Some(7)), 7, "a wait that timed out");
        assert_eq!(next_index(7, Some(9)), 9);
        assert_eq!(next_index(9, Some(3)), 0, "went backwards: start over");
        assert_eq!(next_index(9, Some(0)), 1, "never 0 from a blocking answer");
        assert_eq!(next_index(9, None), 0, "no header: plain queries");
        assert!(request_timeout(WAIT) > WAIT + WAIT / 16);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_bounded() {
        assert_eq!(backoff(1, 1.0), BACKOFF_FIRST);
        assert_eq!(backoff(1, 0.0), BACKOFF_FIRST / 2);
        assert_eq!(backoff(3, 1.0), BACKOFF_FIRST * 4);
        assert_eq!(backoff(40, 1.0), BACKOFF_MAX);
        assert!(backoff(40, 0.3) >= BACKOFF_MAX / 2);
    }
}
