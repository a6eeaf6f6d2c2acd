//! Which servers a service balances over, and its Maglev table: pure logic
//! shared by the XDP data plane (which writes it into maps) and the
//! userspace fallback (which looks it up directly), so both pick the same
//! server for the same flow.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use elb_common::{
    l4::{FAMILY_IPV4, FAMILY_IPV6, flow_hash},
    maglev::{MaglevError, MaglevServer, build_table},
};

use crate::{
    config::{L4Service, Snapshot, Upstream},
    targets::{ServerGate, gate::FULL_WEIGHT, routing::l4_step},
    upstream::Server,
};

/// A server that takes part in a service's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedServer {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// A service's servers and lookup table: `table[slot]` indexes `servers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub servers: Vec<PlannedServer>,
    pub table: Vec<u32>,
}

/// A server left out of a service, and why (logged by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkippedServer {
    #[error("server {0:?} is not an IP:port literal; L4 services need one")]
    NotAnAddress(String),
    #[error("server {server} is not of the VIP's address family")]
    WrongFamily { server: String },
}

/// Plans a service over `servers` (an upstream's list), every server
/// routable at full weight: see [`plan_gated`].
pub fn plan_service(
    vip: SocketAddr,
    servers: &[Server],
    table_size: u32,
) -> (Result<Option<ServicePlan>, MaglevError>, Vec<SkippedServer>) {
    plan_gated(vip, servers, &[], table_size)
}

/// Plans a service over `servers` with their gates (`gates[i]` for
/// `servers[i]`; a missing gate counts as routable at full weight). `down`
/// servers and servers whose gate is closed (unhealthy, draining, another
/// zone) are left out; `backup` servers take part only when no primary is
/// usable, as in L7 balancing. A server in slow start takes part with its
/// weight scaled in tenths (the gate's L4 step). An empty plan (no table)
/// means packets are dropped.
pub fn plan_gated(
    vip: SocketAddr,
    servers: &[Server],
    gates: &[Arc<ServerGate>],
    table_size: u32,
) -> (Result<Option<ServicePlan>, MaglevError>, Vec<SkippedServer>) {
    let mut skipped = Vec::new();
    let mut primaries = Vec::new();
    let mut backups = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let gate = gates.get(index);
        if server.params.down || gate.is_some_and(|g| !g.routable()) {
            continue;
        }
        let Ok(addr) = server.name.parse::<SocketAddr>() else {
            skipped.push(SkippedServer::NotAnAddress(server.name.clone()));
            continue;
        };
        if addr.is_ipv4() != vip.is_ipv4() {
            skipped.push(SkippedServer::WrongFamily {
                server: server.name.clone(),
            });
            continue;
        }
        let step = gate.map_or(FULL_WEIGHT, |g| l4_step(g.weight_permille()));
        let planned = (
            PlannedServer {
                addr,
                weight: server.params.weight,
            },
            step,
        );
        if server.params.backup {
            backups.push(planned);
        } else {
            primaries.push(planned);
        }
    }
    let tier = if primaries.is_empty() {
        backups
    } else {
        primaries
    };
    if tier.is_empty() {
        return (Ok(None), skipped);
    }
    // Maglev weights are whole numbers: while a server ramps up, every
    // weight is counted in tenths, so a weight of 1 can still be scaled.
    let ramping = tier.iter().any(|(_, step)| *step < FULL_WEIGHT);
    let servers: Vec<PlannedServer> = tier
        .into_iter()
        .map(|(server, step)| PlannedServer {
            weight: if ramping {
                server.weight.saturating_mul(step / 100).max(1)
            } else {
                server.weight
            },
            ..server
        })
        .collect();
    let keys: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let input: Vec<MaglevServer<'_>> = servers
        .iter()
        .zip(&keys)
        .map(|(server, key)| MaglevServer {
            key: key.as_bytes(),
            weight: server.weight,
        })
        .collect();
    let table = build_table(&input, table_size);
    (
        table.map(|table| Some(ServicePlan { servers, table })),
        skipped,
    )
}

/// What a service's plan is made from, kept (so pointer equality is
/// sound) to tell whether the plan must be made again: the service and its
/// upstream (shared between snapshots while unchanged) and each server's
/// gate as a plan reads it (health changes publish no snapshot).
pub struct PlanInputs {
    pub service: Arc<L4Service>,
    pub upstream: Option<Arc<Upstream>>,
    gates: Vec<(bool, u32)>,
}

impl PlanInputs {
    pub fn of(service: &Arc<L4Service>, snapshot: &Snapshot) -> Self {
        let upstream = snapshot.upstream(&service.upstream).cloned();
        let gates = upstream
            .iter()
            .flat_map(|u| u.gates())
            .map(|g| (g.routable(), l4_step(g.weight_permille())))
            .collect();
        Self {
            service: Arc::clone(service),
            upstream,
            gates,
        }
    }

    pub fn same_as(&self, other: &Self) -> bool {
        let same_upstream = match (&self.upstream, &other.upstream) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        Arc::ptr_eq(&self.service, &other.service) && same_upstream && self.gates == other.gates
    }

    pub fn servers(&self) -> &[Server] {
        self.upstream
            .as_ref()
            .map(|u| u.servers())
            .unwrap_or_default()
    }

    pub fn gates(&self) -> &[Arc<ServerGate>] {
        self.upstream
            .as_ref()
            .map(|u| u.gates())
            .unwrap_or_default()
    }

    pub fn plan(&self) -> (Result<Option<ServicePlan>, MaglevError>, Vec<SkippedServer>) {
        plan_gated(
            self.service.vip,
            self.servers(),
            self.gates(),
            self.service.table_size,
        )
    }
}

impl ServicePlan {
    /// The server for a flow from `client` to `vip`: the same slot the XDP
    /// program computes.
    pub fn pick(&self, client: SocketAddr, vip: SocketAddr, proto: u8) -> Option<&PlannedServer> {
        let hash = flow_hash(
            &addr16(client.ip()),
            &addr16(vip.ip()),
            client.port().to_be_bytes(),
            vip.port().to_be_bytes(),
            proto,
        );
        let slot = (hash as usize) % self.table.len().max(1);
        let index = *self.table.get(slot)?;
        self.servers.get(index as usize)
    }
}

/// An address as the maps store it: IPv6 as is, IPv4 in the first 4 bytes.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            addr
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::parse_params;

    fn server(name: &str, params: &str) -> Server {
        Server::new(name, parse_params(params).expect("params"))
    }

    fn vip() -> SocketAddr {
        "10.0.0.100:80".parse().expect("vip")
    }

    #[test]
    fn down_servers_are_out_and_backups_only_without_primaries() {
        let servers = [
            server("10.1.0.1:80", ""),
            server("10.1.0.2:80", "down"),
            server("10.1.0.3:80", "backup"),
        ];
        let (plan, skipped) = plan_service(vip(), &servers, 251);
        let plan = plan.expect("table").expect("servers");
        assert!(skipped.is_empty());
        assert_eq!(plan.servers.len(), 1);
        assert_eq!(plan.servers[0].addr.to_string(), "10.1.0.1:80");

        let only_backup = [
            server("10.1.0.1:80", "down"),
            server("10.1.0.3:80", "backup"),
        ];
        let (plan, _) = plan_service(vip(), &only_backup, 251);
        let plan = plan.expect("table").expect("servers");
        assert_eq!(plan.servers[0].addr.to_string(), "10.1.0.3:80");
    }

    #[test]
    fn hostnames_and_other_families_are_skipped_with_a_reason() {
        let servers = [
            server("backend.local:80", ""),
            server("[2001:db8::1]:80", ""),
            server("10.1.0.1:80", ""),
        ];
        let (plan, skipped) = plan_service(vip(), &servers, 251);
        assert_eq!(plan.expect("table").expect("servers").servers.len(), 1);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].to_string().contains("backend.local:80"));
    }

    #[test]
    fn closed_gates_are_left_out_and_slow_start_scales_in_tenths() {
        let servers = [
            server("10.1.0.1:80", ""),
            server("10.1.0.2:80", ""),
            server("10.1.0.3:80", "backup"),
        ];
        let gates: Vec<Arc<ServerGate>> = (0..3).map(|_| Arc::default()).collect();
        gates[0].set(false, FULL_WEIGHT);
        let (plan, _) = plan_gated(vip(), &servers, &gates, 251);
        let plan = plan.expect("table").expect("servers");
        assert_eq!(plan.servers.len(), 1);
        assert_eq!(plan.servers[0].addr.to_string(), "10.1.0.2:80");
        gates[1].set(false, FULL_WEIGHT);
        let (plan, _) = plan_gated(vip(), &servers, &gates, 251);
        let plan = plan.expect("table").expect("servers");
        assert_eq!(plan.servers[0].addr.to_string(), "10.1.0.3:80", "backup");
        gates[0].set(true, FULL_WEIGHT);
        gates[1].set(true, 250);
        let (plan, _) = plan_gated(vip(), &servers, &gates, 251);
        let weights: Vec<u32> = plan
            .expect("table")
            .expect("servers")
            .servers
            .iter()
            .map(|s| s.weight)
            .collect();
        assert_eq!(weights, [10, 2]);
    }

    #[test]
    fn no_usable_server_means_no_table() {
        let (plan, _) = plan_service(vip(), &[server("10.1.0.1:80", "down")], 251);
        assert_eq!(plan, Ok(None));
    }

    #[test]
    fn picks_follow_the_weights() {
        let servers = [
            server("10.1.0.1:80", "weight=1"),
            server("10.1.0.2:80", "weight=3"),
        ];
        let (plan, _) = plan_service(vip(), &servers, 65_537);
        let plan = plan.expect("table").expect("servers");
        let mut counts = [0u32; 2];
        for port in 1024..9024u16 {
            let client = SocketAddr::from(([192, 168, 1, 7], port));
            let picked = plan.pick(client, vip(), 6).expect("server");
            counts[usize::from(picked.addr.to_string() == "10.1.0.2:80")] += 1;
        }
        let share = f64::from(counts[1]) / 8000.0;
        assert!((share - 0.75).abs() < 0.03, "share {share}");
    }
}
