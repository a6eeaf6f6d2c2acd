//! L4 statistics for `/__erulb__/stats`, from whichever data plane runs.
use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use serde_json::{Map, Value, json};

use super::maps::{L4MapError, StatsMaps};
use crate::config::L4Proto;

/// A data plane that can report its L4 statistics.
pub trait L4StatsSource: Send + Sync {
    fn stats_json(&self) -> Result<Value, L4StatsError>;
}

#[derive(Debug, thiserror::Error)]
pub enum L4StatsError {
    #[error("reading the XDP statistics: {0}")]
    Maps(#[from] L4MapError),
}

/// The ids the XDP sync gave each configured service and its servers.
#[derive(Debug, Default)]
pub struct StatsIndex {
    pub services: Vec<IndexedService>,
}

#[derive(Debug)]
pub struct IndexedService {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: L4Proto,
    /// None when the service could not be installed (no free id).
    pub id: Option<u32>,
    pub servers: Vec<(SocketAddr, u32)>,
}

/// The XDP data plane's counters, summed over CPUs.
pub struct XdpStats {
    maps: StatsMaps,
    index: Arc<ArcSwap<StatsIndex>>,
    /// Each interface with how it got the program.
    interfaces: Vec<(String, String)>,
}

impl XdpStats {
    pub fn new(
        maps: StatsMaps,
        index: Arc<ArcSwap<StatsIndex>>,
        interfaces: Vec<(String, String)>,
    ) -> Self {
        Self {
            maps,
            index,
            interfaces,
        }
    }
}

impl L4StatsSource for XdpStats {
    fn stats_json(&self) -> Result<Value, L4StatsError> {
        let global: Map<String, Value> = self
            .maps
            .global()?
            .fields()
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect();
        let mut services = Map::new();
        for service in &self.index.load().services {
            let mut entry = json!({
                "vip": service.vip.to_string(),
                "proto": service.proto.as_str(),
                "installed": service.id.is_some(),
            });
            if let Some(id) = service.id {
                let stats = self.maps.service(id)?;
                let mut servers = Map::new();
                for (addr, server_id) in &service.servers {
                    let counter = self.maps.server(*server_id)?;
                    let nat_failures = self.maps.nat_failures(*server_id)?;
                    servers.insert(
                        addr.to_string(),
                        json!({
                            "packets": counter.packets,
                            "bytes": counter.bytes,
                            // Per server, whichever service's flows.
                            "nat_port_failures": nat_failures,
                        }),
                    );
                }
                entry["packets"] = json!(stats.packets);
                entry["bytes"] = json!(stats.bytes);
                entry["new_flows"] = json!(stats.new_flows);
                entry["servers"] = Value::Object(servers);
            }
            services.insert(service.name.clone(), entry);
        }
        let interfaces: Map<String, Value> = self
            .interfaces
            .iter()
            .map(|(name, how)| (name.clone(), json!(how)))
            .collect();
        Ok(json!({
            "dataplane": "xdp",
            "interfaces": interfaces,
            "global": global,
            "services": services,
        }))
    }
}
