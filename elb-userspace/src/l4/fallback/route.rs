//! Where a service's new flows go: its Maglev plan (the same one the XDP
//! sync writes into the maps) with each server's counters, and its SNAT
//! address. Swapped whole on a configuration change; flows already set up
//! keep the server they picked, until that server's drain ends (the pick
//! carries its gate's drain token).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio_util::sync::CancellationToken;

use super::stats::ServerStats;
use crate::{
    config::L4Service,
    l4::plan::{ServicePlan, plan_gated},
    targets::ServerGate,
    upstream::Server,
};

#[derive(Debug, Default)]
pub struct Route {
    /// None: no usable server, new flows are dropped.
    plan: Option<ServicePlan>,
    /// `servers[i]` counts for `plan.servers[i]`.
    servers: Vec<Arc<ServerStats>>,
    /// `gates[i]` is `plan.servers[i]`'s gate (None: no target registry).
    gates: Vec<Option<Arc<ServerGate>>>,
    pub snat: Option<IpAddr>,
}

/// A new flow's server.
#[derive(Clone, Debug)]
pub struct Pick {
    pub server: SocketAddr,
    pub stats: Arc<ServerStats>,
    /// Cancelled when the server's drain ends: the flow is closed then.
    /// None when its upstream has no policy (the flow lives on).
    pub cut: Option<CancellationToken>,
}

impl Route {
    /// The server for a new flow from `client`: the slot the XDP program
    /// would use for the same 5-tuple.
    pub fn pick(&self, client: SocketAddr, vip: SocketAddr, proto: u8) -> Option<Pick> {
        let plan = self.plan.as_ref()?;
        let server = plan.pick(client, vip, proto)?;
        let index = plan.servers.iter().position(|s| s.addr == server.addr)?;
        Some(Pick {
            server: server.addr,
            stats: Arc::clone(self.servers.get(index)?),
            // Taken now, as L7 does: a server that drains later still has
            // the token of its serving days, which its drain's end cancels.
            cut: self
                .gates
                .get(index)
                .and_then(|gate| gate.as_ref()?.drain_token()),
        })
    }

    pub fn has_servers(&self) -> bool {
        self.plan.is_some()
    }
}

/// Every server's counters for one service, kept across plan changes so a
/// weight change does not reset them.
#[derive(Debug, Default)]
pub struct ServerRegistry {
    servers: HashMap<SocketAddr, Arc<ServerStats>>,
}

impl ServerRegistry {
    fn stats(&mut self, addr: SocketAddr) -> Arc<ServerStats> {
        Arc::clone(self.servers.entry(addr).or_default())
    }

    /// Forgets servers that are out of the plan and that no flow uses any
    /// more (only the registry holds their counters).
    fn prune(&mut self, route: &Route) {
        let planned: Vec<SocketAddr> = route
            .plan
            .iter()
            .flat_map(|plan| plan.servers.iter().map(|s| s.addr))
            .collect();
        self.servers
            .retain(|addr, stats| planned.contains(addr) || Arc::strong_count(stats) > 1);
    }

    /// Sorted by address, for a stable JSON order.
    pub fn snapshot(&self) -> Vec<(SocketAddr, Arc<ServerStats>)> {
        let mut servers: Vec<_> = self
            .servers
            .iter()
            .map(|(addr, stats)| (*addr, Arc::clone(stats)))
            .collect();
        servers.sort_unstable_by_key(|(addr, _)| *addr);
        servers
    }
}

/// Plans `service` over `servers` (its upstream's list, empty when the
/// upstream does not exist). Problems are logged with the service's name,
/// as the XDP sync does; they leave the service without servers.
pub fn build_route(
    service: &L4Service,
    servers: &[Server],
    gates: &[Arc<ServerGate>],
    registry: &mut ServerRegistry,
) -> Route {
    let (plan, skipped) = plan_gated(service.vip, servers, gates, service.table_size);
    for reason in skipped {
        tracing::warn!(service = service.name, %reason, "server left out of L4 service");
    }
    let plan = match plan {
        Ok(Some(plan)) => Some(plan),
        Ok(None) => {
            tracing::warn!(
                service = service.name,
                upstream = service.upstream,
                "L4 service has no usable server; its new flows are dropped"
            );
            None
        }
        Err(error) => {
            tracing::error!(service = service.name, %error, "cannot build the Maglev table");
            None
        }
    };
    let planned = plan.iter().flat_map(|plan| plan.servers.iter());
    let stats = planned
        .clone()
        .map(|server| registry.stats(server.addr))
        .collect();
    let gates = planned
        .map(|server| gate_of(server.addr, servers, gates))
        .collect();
    Route {
        plan,
        servers: stats,
        gates,
        snat: service.snat.as_ref().map(|snat| snat.first()),
    }
}

/// The gate of the server planned as `addr` (`gates[i]` is `servers[i]`'s).
fn gate_of(
    addr: SocketAddr,
    servers: &[Server],
    gates: &[Arc<ServerGate>],
) -> Option<Arc<ServerGate>> {
    let index = servers
        .iter()
        .position(|s| s.name.parse::<SocketAddr>().is_ok_and(|a| a == addr))?;
    gates.get(index).cloned()
}

/// Called after `route` replaced the previous one.
pub fn forget_unused(registry: &mut ServerRegistry, route: &Route) {
    registry.prune(route);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::L4Proto, upstream::parse_params};

    pub(crate) fn service(vip: &str) -> L4Service {
        L4Service {
            name: "web".into(),
            vip: vip.parse().expect("vip"),
            proto: L4Proto::Tcp,
            upstream: "web".into(),
            snat: None,
            table_size: 251,
        }
    }

    pub(crate) fn servers(list: &[(&str, u32)]) -> Vec<Server> {
        list.iter()
            .map(|(name, weight)| {
                Server::new(
                    *name,
                    parse_params(&format!("weight={weight}")).expect("params"),
                )
            })
            .collect()
    }

    #[test]
    fn picks_what_the_plan_picks() {
        let svc = service("10.0.0.100:80");
        let list = servers(&[("10.1.0.1:80", 1), ("10.1.0.2:80", 2), ("10.1.0.3:80", 3)]);
        let mut registry = ServerRegistry::default();
        let route = build_route(&svc, &list, &[], &mut registry);
        let (plan, _) = crate::l4::plan::plan_service(svc.vip, &list, svc.table_size);
        let plan = plan.expect("table").expect("servers");
        for port in 1024..3024u16 {
            let client = SocketAddr::from(([10, 50, 0, 2], port));
            let expected = plan.pick(client, svc.vip, 6).expect("server").addr;
            assert_eq!(
                route.pick(client, svc.vip, 6).expect("pick").server,
                expected
            );
        }
    }

    #[test]
    fn no_server_means_no_pick() {
        let mut registry = ServerRegistry::default();
        let route = build_route(&service("10.0.0.100:80"), &[], &[], &mut registry);
        assert!(!route.has_servers());
        let client = SocketAddr::from(([10, 50, 0, 2], 4000));
        assert!(
            route
                .pick(client, "10.0.0.100:80".parse().expect("vip"), 6)
                .is_none()
        );
    }

    #[test]
    fn counters_survive_a_plan_change_and_unused_servers_are_forgotten() {
        let svc = service("10.0.0.100:80");
        let mut registry = ServerRegistry::default();
        let first = build_route(
            &svc,
            &servers(&[("10.1.0.1:80", 1), ("10.1.0.2:80", 1)]),
            &[],
            &mut registry,
        );
        let client = SocketAddr::from(([10, 50, 0, 2], 4000));
        let held = first.pick(client, svc.vip, 6).expect("pick");
        super::super::stats::bump(&held.stats.new_flows);
        drop(first);

        // The held server stays (a flow uses it) even if it leaves the plan.
        let keep = if held.server.to_string() == "10.1.0.1:80" {
            "10.1.0.2:80"
        } else {
            "10.1.0.1:80"
        };
        let second = build_route(&svc, &servers(&[(keep, 1)]), &[], &mut registry);
        forget_unused(&mut registry, &second);
        let listed: Vec<SocketAddr> = registry.snapshot().iter().map(|(a, _)| *a).collect();
        assert!(listed.contains(&held.server), "{listed:?}");
        let (_, stats) = registry
            .snapshot()
            .into_iter()
            .find(|(a, _)| *a == held.server)
            .expect("held server");
        assert_eq!(stats.counters().new_flows, 1);

        drop((held, stats));
        forget_unused(&mut registry, &second);
        let listed: Vec<String> = registry
            .snapshot()
            .iter()
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(listed, [keep]);
    }
}
