//! Writes the configuration's L4 services and deny-list into the XDP maps,
//! in an order that keeps every packet's view valid: server entries before
//! the tables that name them, a table before the VIP that uses it, a VIP
//! removed before its ids are freed, and freed ids reused only after a
//! grace period (`ids::REUSE_GRACE`).
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use arc_swap::ArcSwap;

use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{
        MAX_SERVERS, MAX_SERVICES, SERVICE_HAS_SNAT, SERVICE_SNAT_POOL, ServerEntry, ServiceEntry,
        VipKey,
    },
    nat::SnatPool,
};

use elb_common::maglev::MaglevError;

use super::{
    ids::IdAllocator,
    maps::{L4MapError, L4Maps},
    plan::{PlanInputs, ServicePlan, SkippedServer, addr16, family},
    stats::{IndexedService, StatsIndex},
};
use crate::{
    cidr::Cidr,
    config::{L4Proto, L4Service, Snapshot},
    targets::TargetRegistry,
};

/// The `elb_snat_pools` value for `addrs` (validated: 1..=MAX_SNAT_POOL).
pub fn snat_pool(addrs: &[IpAddr]) -> SnatPool {
    let mut pool = SnatPool::default();
    for (slot, addr) in pool.addrs.iter_mut().zip(addrs) {
        *slot = addr16(*addr);
        pool.count += 1;
    }
    pool
}

pub struct L4Sync {
    maps: L4Maps,
    /// Which ids the services and servers of the last apply got, for the
    /// statistics endpoint.
    index: Arc<ArcSwap<StatsIndex>>,
    /// Server addresses of the last apply, for neighbour priming.
    server_addrs: Vec<SocketAddr>,
    services: IdAllocator<VipKey>,
    servers: IdAllocator<SocketAddr>,
    /// Each service's last plan and what it was made from: a Maglev table
    /// is built again only when its inputs change.
    plans: HashMap<String, CachedPlan>,
    /// Where drains are known; None: no drains (tests, benches).
    targets: Option<Arc<TargetRegistry>>,
    /// Servers draining at the last apply: out of the tables, their flows
    /// and ids kept until the drain ends.
    draining: HashSet<SocketAddr>,
    /// The `--listen` ports; the configured listeners' are added on apply.
    static_l7_ports: Vec<u16>,
    /// The L7 ports in the map (where XDP applies the deny-list to TCP).
    l7_ports: Vec<u16>,
}

/// A plan with what it was made from.
struct CachedPlan {
    inputs: PlanInputs,
    plan: PlanResult,
}

type PlanResult = (Result<Option<ServicePlan>, MaglevError>, Vec<SkippedServer>);

impl L4Sync {
    /// Takes over ids already in the (possibly adopted) maps, so a restart
    /// keeps every service and server where it was.
    pub fn new(maps: L4Maps) -> Result<Self, L4MapError> {
        let mut services = IdAllocator::new(MAX_SERVICES);
        for (vip, entry) in maps.services()? {
            services.adopt(vip, entry.id);
        }
        let mut servers = IdAllocator::new(MAX_SERVERS);
        for id in 0..MAX_SERVERS {
            let entry = maps.server(id)?;
            if entry.family != 0 {
                servers.adopt(server_addr(&entry), id);
            }
        }
        Ok(Self {
            maps,
            index: Arc::default(),
            server_addrs: Vec::new(),
            services,
            servers,
            plans: HashMap::new(),
            targets: None,
            draining: HashSet::new(),
            static_l7_ports: Vec::new(),
            l7_ports: Vec::new(),
        })
    }

    /// The static (`--listen`) L7 ports, written at once; each apply adds
    /// the configured listeners' ports, so the deny-list covers them too.
    pub fn set_static_l7_ports(&mut self, ports: &[u16]) -> Result<(), L4MapError> {
        self.static_l7_ports = ports.to_vec();
        let wanted = self.wanted_l7_ports(None);
        self.write_l7_ports(wanted)
    }

    fn wanted_l7_ports(&self, snapshot: Option<&Snapshot>) -> Vec<u16> {
        let mut ports = self.static_l7_ports.clone();
        if let Some(snapshot) = snapshot {
            ports.extend(snapshot.listeners().values().map(|l| l.address.port()));
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    fn write_l7_ports(&mut self, wanted: Vec<u16>) -> Result<(), L4MapError> {
        self.maps.set_l7_ports(&wanted)?;
        self.l7_ports = wanted;
        Ok(())
    }

    /// Follows the drains of `targets`: a draining server keeps its id and
    /// its established flows; when its drain ends, its flows are marked
    /// drained (XDP resets them on their next packet) and its id is freed.
    pub fn with_targets(mut self, targets: Arc<TargetRegistry>) -> Self {
        self.targets = Some(targets);
        self
    }

    pub fn maps_mut(&mut self) -> &mut L4Maps {
        &mut self.maps
    }

    /// The service and server ids as of the last apply, kept current.
    pub fn stats_index(&self) -> Arc<ArcSwap<StatsIndex>> {
        Arc::clone(&self.index)
    }

    /// Brings the maps to `snapshot`. Problems that concern one service are
    /// logged and leave that service without servers (its packets are
    /// dropped and counted); map failures are returned.
    pub fn apply(&mut self, snapshot: &Snapshot) -> Result<(), L4MapError> {
        let now = Instant::now();
        let mut wanted_vips = HashSet::new();
        let mut used_servers = HashSet::new();
        let mut index = StatsIndex::default();
        for service in snapshot.services().values() {
            let vip = vip_key(service);
            wanted_vips.insert(vip);
            let mut indexed = IndexedService {
                name: service.name.clone(),
                vip: service.vip,
                proto: service.proto,
                id: None,
                servers: Vec::new(),
            };
            let id = match self.services.assign(&vip, now, "service") {
                Ok((id, _)) => id,
                Err(error) => {
                    tracing::error!(service = service.name, %error, "L4 service not installed");
                    index.services.push(indexed);
                    continue;
                }
            };
            indexed.id = Some(id);
            let table =
                self.install_servers(service, snapshot, now, &mut used_servers, &mut indexed)?;
            index.services.push(indexed);
            let table_size = match table {
                Some(table) => {
                    self.maps.set_table(id, &table)?;
                    table.len() as u32
                }
                None => 0,
            };
            let (flags, snat) = match &service.snat {
                None => (0, [0; 16]),
                Some(snat) if snat.addrs().len() == 1 => (SERVICE_HAS_SNAT, addr16(snat.first())),
                Some(snat) => {
                    // The pool before the entry that points to it.
                    self.maps.set_snat_pool(id, &snat_pool(snat.addrs()))?;
                    (SERVICE_HAS_SNAT | SERVICE_SNAT_POOL, addr16(snat.first()))
                }
            };
            self.maps.set_service(
                &vip,
                &ServiceEntry {
                    id,
                    table_size,
                    flags,
                    _pad: 0,
                    snat,
                },
            )?;
        }
        let gone: Vec<VipKey> = self
            .services
            .assigned()
            .map(|(vip, _)| *vip)
            .filter(|vip| !wanted_vips.contains(vip))
            .collect();
        for vip in &gone {
            self.maps.remove_service(vip)?;
        }
        self.services
            .release_unless(now, |vip| wanted_vips.contains(vip));
        let draining = self.draining_servers(snapshot);
        self.end_drains(&draining, &used_servers)?;
        self.servers.release_unless(now, |addr| {
            used_servers.contains(addr) || draining.contains(addr)
        });
        self.draining = draining;
        self.plans
            .retain(|name, _| snapshot.services().contains_key(name));
        // New servers now; all of them again on the periodic refresh.
        let known: HashSet<SocketAddr> = self.server_addrs.iter().copied().collect();
        let new: Vec<SocketAddr> = used_servers.difference(&known).copied().collect();
        prime(&new);
        self.server_addrs = used_servers.iter().copied().collect();
        self.index.store(Arc::new(index));
        let l7_ports = self.wanted_l7_ports(Some(snapshot));
        if l7_ports != self.l7_ports {
            self.write_l7_ports(l7_ports)?;
        }
        self.apply_acl(snapshot.acl())
    }

    /// Writes the service's servers; returns its table as server ids, or
    /// None when it has no usable server.
    fn install_servers(
        &mut self,
        service: &Arc<L4Service>,
        snapshot: &Snapshot,
        now: Instant,
        used: &mut HashSet<SocketAddr>,
        indexed: &mut IndexedService,
    ) -> Result<Option<Vec<u32>>, L4MapError> {
        let (plan, skipped) = self.plan(service, snapshot);
        for reason in skipped {
            tracing::warn!(service = service.name, %reason, "server left out of L4 service");
        }
        let plan = match plan {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                tracing::warn!(
                    service = service.name,
                    upstream = service.upstream,
                    "L4 service has no usable server; its packets are dropped"
                );
                return Ok(None);
            }
            Err(error) => {
                tracing::error!(service = service.name, %error, "cannot build the Maglev table");
                return Ok(None);
            }
        };
        let mut ids = Vec::with_capacity(plan.servers.len());
        for server in &plan.servers {
            let (id, new) = match self.servers.assign(&server.addr, now, "server") {
                Ok(assigned) => assigned,
                Err(error) => {
                    tracing::error!(service = service.name, %error, "L4 service not installed");
                    return Ok(None);
                }
            };
            if new {
                self.maps.reset_server_stats(id)?;
                self.maps.set_server(
                    id,
                    &ServerEntry {
                        addr: addr16(server.addr.ip()),
                        port: server.addr.port().to_be_bytes(),
                        family: family(server.addr.ip()),
                        _pad: 0,
                    },
                )?;
            }
            used.insert(server.addr);
            indexed.servers.push((server.addr, id));
            ids.push(id);
        }
        Ok(Some(
            plan.table
                .iter()
                .filter_map(|&index| ids.get(index as usize).copied())
                .collect(),
        ))
    }

    /// The servers of the services' upstreams that drain now.
    fn draining_servers(&self, snapshot: &Snapshot) -> HashSet<SocketAddr> {
        let Some(targets) = &self.targets else {
            return HashSet::new();
        };
        let upstreams: HashSet<&str> = snapshot
            .services()
            .values()
            .map(|service| service.upstream.as_str())
            .collect();
        upstreams
            .into_iter()
            .flat_map(|upstream| targets.draining(upstream))
            .filter_map(|server| server.parse().ok())
            .collect()
    }

    /// Servers whose drain ended since the last apply (and that no table
    /// uses again): their flows are marked drained while their id is
    /// still theirs.
    fn end_drains(
        &mut self,
        draining: &HashSet<SocketAddr>,
        used: &HashSet<SocketAddr>,
    ) -> Result<(), L4MapError> {
        let ended: Vec<SocketAddr> = self
            .draining
            .iter()
            .filter(|addr| !draining.contains(addr) && !used.contains(addr))
            .copied()
            .collect();
        for addr in ended {
            let Some(id) = self.servers.id_of(&addr) else {
                continue;
            };
            let started = Instant::now();
            let flows = self.maps.drain_flows_of_server(id)?;
            tracing::info!(server = %addr, flows, took = ?started.elapsed(),
                "drain over: the server's L4 flows are reset on their next packet");
        }
        Ok(())
    }

    /// The service's plan, from the cache while its inputs are the same.
    fn plan(&mut self, service: &Arc<L4Service>, snapshot: &Snapshot) -> PlanResult {
        let inputs = PlanInputs::of(service, snapshot);
        if let Some(cached) = self.plans.get(&service.name)
            && cached.inputs.same_as(&inputs)
        {
            return cached.plan.clone();
        }
        let plan = inputs.plan();
        self.plans.insert(
            service.name.clone(),
            CachedPlan {
                inputs,
                plan: plan.clone(),
            },
        );
        plan
    }

    /// XDP forwards by the FIB's neighbour entries but cannot make the
    /// kernel resolve one; and a NAT'd packet passed up (source = a local
    /// address) is dropped by the kernel as martian. So the kernel is made
    /// to resolve every server's neighbour entry ahead of time by sending
    /// it an empty datagram (discard port), and again periodically so the
    /// entries, which XDP traffic does not refresh, stay valid.
    pub fn prime_neighbours(&self) {
        prime(&self.server_addrs);
    }

    fn apply_acl(&mut self, acl: &[Cidr]) -> Result<(), L4MapError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for cidr in acl {
            match cidr.network() {
                IpAddr::V4(ip) => v4.push((u32::from(cidr.prefix_len()), ip.octets())),
                IpAddr::V6(ip) => v6.push((u32::from(cidr.prefix_len()), ip.octets())),
            }
        }
        self.maps.set_acl(&v4, &v6)
    }
}

/// Makes the kernel resolve each address's neighbour entry (see
/// [`L4Sync::prime_neighbours`]).
fn prime(addrs: &[SocketAddr]) {
    for addr in addrs {
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sent = std::net::UdpSocket::bind(bind)
            .and_then(|socket| socket.send_to(&[], SocketAddr::new(addr.ip(), 9)));
        if let Err(error) = sent {
            tracing::warn!(server = %addr, %error, "neighbour priming failed");
        }
    }
}

pub fn vip_key(service: &L4Service) -> VipKey {
    VipKey {
        addr: addr16(service.vip.ip()),
        port: service.vip.port().to_be_bytes(),
        proto: match service.proto {
            L4Proto::Tcp => IPPROTO_TCP,
            L4Proto::Udp => IPPROTO_UDP,
        },
        family: family(service.vip.ip()),
    }
}

fn server_addr(entry: &ServerEntry) -> SocketAddr {
    let port = u16::from_be_bytes(entry.port);
    if entry.family == elb_common::l4::FAMILY_IPV6 {
        SocketAddr::from((entry.addr, port))
    } else {
        SocketAddr::from((
            [entry.addr[0], entry.addr[1], entry.addr[2], entry.addr[3]],
            port,
        ))
    }
}

/// What the L4 data plane has applied: the configuration generation (see
/// [`crate::config::ConfigService::subscribe`]) and whether writing it
/// failed. Admin writes wait on this before they answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub error: Option<String>,
}

/// How often the servers' neighbour entries are refreshed: well within the
/// kernel's neighbour staleness.
const PRIME_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A failed map write is retried this soon.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps the maps in step with the configuration and the target health:
/// applies at once whenever a snapshot is published (`changes`) or a gate
/// changes (`health`), until `shutdown`. Reports each apply on the returned
/// channel.
pub fn spawn_sync_loop(
    mut sync: L4Sync,
    snapshots: crate::config::SnapshotHandle,
    mut changes: tokio::sync::watch::Receiver<u64>,
    mut health: tokio::sync::watch::Receiver<u64>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    writer: Arc<tokio::sync::Mutex<()>>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<Applied>,
) {
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(Applied::default());
    let task = tokio::spawn(async move {
        let mut prime = tokio::time::interval(PRIME_EVERY);
        prime.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut config_open, mut health_open) = (true, true);
        loop {
            // Generation before snapshot: the snapshot is at least as new.
            let generation = *changes.borrow_and_update();
            health.borrow_and_update();
            let current = snapshots.load_full();
            // Held by a takeover in progress: only one process writes the
            // maps at a time (see crate::takeover).
            let writing = tokio::select! {
                writing = writer.lock() => writing,
                _ = shutdown.wait_for(|down| *down) => return,
            };
            let error = match sync.apply(&current) {
                Ok(()) => None,
                Err(error) => {
                    tracing::error!(%error, "writing L4 services into the XDP maps failed; retrying");
                    Some(error.to_string())
                }
            };
            let failed = error.is_some();
            applied_tx.send_replace(Applied { generation, error });
            drop(writing);
            loop {
                tokio::select! {
                    changed = changes.changed(), if config_open => match changed {
                        Ok(()) => break,
                        Err(_) => config_open = false,
                    },
                    changed = health.changed(), if health_open => match changed {
                        Ok(()) => break,
                        Err(_) => health_open = false,
                    },
                    _ = tokio::time::sleep(RETRY_AFTER), if failed => break,
                    _ = prime.tick() => sync.prime_neighbours(),
                    _ = shutdown.changed() => return,
                }
            }
        }
    });
    (task, applied_rx)
}
