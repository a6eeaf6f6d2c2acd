//! The configuration the fuzzer loads into the XDP maps (services, servers,
//! deny-list, L7 ports) and the addresses its packets come from and go to.
//! The checker judges every packet against this description, never against
//! what the maps say.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use elb_common::counters::{IPPROTO_TCP, IPPROTO_UDP};
use elb_userspace::{
    l4::{maps::L4Maps, plan},
    upstream::{Server, parse_params},
};

use crate::l4_fixture::{
    CLIENT_MAC, CLIENT_V4, CLIENT_V6, LB_CLIENT_SIDE_MAC, LB_SERVER_SIDE_MAC, SNAT_V4, SNAT_V6,
    VIP_V4, VIP_V6, install_service, server_mac, server_v4, server_v6, write_iface_addrs,
};

/// A second VIP of each family, whose services SNAT to a fixed address.
pub const VIP2_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
pub const VIP2_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x101);
pub const FIXED_SNAT_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 200);
pub const FIXED_SNAT_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 0x200);
/// The node's own addresses on the client side.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

/// Deny-listed prefixes.
pub const DENIED_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 66, 0, 0), 16);
pub const DENIED_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 0), 32);
/// Ports of the node's L7 listeners (deny-listed sources are dropped there).
pub const L7_PORTS: [u16; 2] = [8081, 8444];

pub struct Service {
    pub id: u32,
    pub vip: SocketAddr,
    pub proto: u8,
    /// Server ids and addresses.
    pub servers: Vec<(u32, SocketAddr)>,
    /// The service's own SNAT address; None: the egress interface's.
    pub snat: Option<IpAddr>,
    /// The Maglev table as the daemon's planner makes it: slot → server
    /// address.
    pub table: Vec<SocketAddr>,
}

impl Service {
    /// The address NAT'd flows of this service leave from.
    pub fn snat_address(&self) -> IpAddr {
        match (self.snat, self.vip.ip()) {
            (Some(snat), _) => snat,
            (None, IpAddr::V4(_)) => SNAT_V4.into(),
            (None, IpAddr::V6(_)) => SNAT_V6.into(),
        }
    }
}

pub struct World {
    pub services: Vec<Service>,
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

impl World {
    /// TCP and UDP services on both families, one to three servers each,
    /// two of them with a fixed SNAT address.
    pub fn new() -> Self {
        let service =
            |id, vip, proto, servers: &[(u32, SocketAddr)], snat: Option<IpAddr>| Service {
                id,
                vip,
                proto,
                servers: servers.to_vec(),
                snat,
                table: Vec::new(),
            };
        let services = vec![
            service(
                0,
                sa(VIP_V4, 80),
                IPPROTO_TCP,
                &[
                    (0, sa(server_v4(0), 8080)),
                    (1, sa(server_v4(1), 8080)),
                    (2, sa(server_v4(2), 8080)),
                ],
                None,
            ),
            service(
                1,
                sa(VIP_V4, 53),
                IPPROTO_UDP,
                &[(3, sa(server_v4(0), 5353)), (4, sa(server_v4(2), 5353))],
                None,
            ),
            service(
                2,
                sa(VIP_V6, 443),
                IPPROTO_TCP,
                &[(5, sa(server_v6(0), 8443)), (6, sa(server_v6(1), 8443))],
                None,
            ),
            service(
                3,
                sa(VIP_V6, 53),
                IPPROTO_UDP,
                &[(7, sa(server_v6(2), 5353))],
                None,
            ),
            service(
                4,
                sa(VIP2_V4, 8000),
                IPPROTO_TCP,
                &[(8, sa(server_v4(1), 9000)), (9, sa(server_v4(2), 9000))],
                Some(FIXED_SNAT_V4.into()),
            ),
            service(
                5,
                sa(VIP2_V6, 4789),
                IPPROTO_UDP,
                &[(10, sa(server_v6(0), 4789)), (11, sa(server_v6(1), 4789))],
                Some(FIXED_SNAT_V6.into()),
            ),
        ];
        let services = services
            .into_iter()
            .map(|mut s| {
                s.table = planned_table(s.vip, &s.servers);
                s
            })
            .collect();
        Self { services }
    }

    /// Writes the configuration into the maps, as the daemon would.
    pub fn install(&self, maps: &mut L4Maps, client_if: u32, server_if: u32) -> Result<()> {
        write_iface_addrs(maps, client_if, server_if)?;
        for service in &self.services {
            let servers: Vec<_> = service.servers.iter().map(|&(id, a)| (id, a, 1)).collect();
            let plan = install_service(
                maps,
                service.id,
                service.vip,
                service.proto,
                &servers,
                service.snat,
            )
            .with_context(|| format!("service {}", service.vip))?;
            let written: Vec<_> = plan
                .table
                .iter()
                .map(|&i| plan.servers[i as usize].addr)
                .collect();
            ensure!(
                written == service.table,
                "service {}: the table written is not the one planned",
                service.vip
            );
        }
        maps.set_acl(
            &[(DENIED_V4.1.into(), DENIED_V4.0.octets())],
            &[(DENIED_V6.1.into(), DENIED_V6.0.octets())],
        )?;
        maps.set_l7_ports(&L7_PORTS)?;
        Ok(())
    }

    pub fn service_at(&self, vip: SocketAddr, proto: u8) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.vip == vip && s.proto == proto)
    }

    pub fn server_ids(&self) -> Vec<u32> {
        self.services
            .iter()
            .flat_map(|s| s.servers.iter().map(|&(id, _)| id))
            .collect()
    }

    /// Whether `ip` is a server of some service (replies come from these).
    pub fn is_server(&self, addr: SocketAddr) -> bool {
        self.services
            .iter()
            .any(|s| s.servers.iter().any(|&(_, a)| a == addr))
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// The table of a service over `servers` at weight 1, as
/// `install_service` plans it (table size 251).
fn planned_table(vip: SocketAddr, servers: &[(u32, SocketAddr)]) -> Vec<SocketAddr> {
    let upstream: Vec<Server> = servers
        .iter()
        .map(|(_, addr)| Server::new(addr.to_string(), parse_params("weight=1").expect("params")))
        .collect();
    let (plan, skipped) = plan::plan_service(vip, &upstream, 251);
    assert!(
        skipped.is_empty(),
        "fixed servers are addresses of the VIP's family"
    );
    let plan = plan.expect("a valid plan").expect("servers to plan");
    plan.table
        .iter()
        .map(|&i| plan.servers[i as usize].addr)
        .collect()
}

pub fn denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX << (32 - u32::from(DENIED_V4.1));
            u32::from(v4) & mask == u32::from(DENIED_V4.0)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - u32::from(DENIED_V6.1));
            u128::from(v6) & mask == u128::from(DENIED_V6.0)
        }
    }
}

/// The MAC of `ip`'s permanent neighbour entry in the fixture network, if
/// it has one (clients and servers 0..3), with the LB interface facing it.
pub fn neighbour(ip: IpAddr) -> Option<([u8; 6], [u8; 6])> {
    if ip == IpAddr::V4(CLIENT_V4) || ip == IpAddr::V6(CLIENT_V6) {
        return Some((LB_CLIENT_SIDE_MAC, CLIENT_MAC));
    }
    (0..3)
        .find(|&i| ip == IpAddr::V4(server_v4(i)) || ip == IpAddr::V6(server_v6(i)))
        .map(|i| (LB_SERVER_SIDE_MAC, server_mac(i)))
}
