//! Typed handles on the XDP program's L4 maps, for writing configuration
//! and reading statistics.
use aya::{
    Ebpf,
    maps::{
        Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use elb_common::{
    counters::PacketCounter,
    l4::{
        FlowEntry, FlowKey, GlobalStats, IfaceAddrs, MAGLEV_CAPACITY, ServerEntry, ServiceEntry,
        ServiceStats, VipKey,
    },
    maps,
    nat::{MAX_SNAT_POOL, NatCursor, SnatPool},
    vip_ports::VipPorts,
};

use std::collections::HashSet;

use super::generations::Generations;

#[derive(Debug, thiserror::Error)]
pub enum L4MapError {
    #[error("the XDP object has no map {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("a Maglev table has {slots} slots; the maps hold at most {MAGLEV_CAPACITY}")]
    TableTooBig { slots: usize },
    #[error("map {name} is not of the expected type ({want})")]
    WrongType {
        name: &'static str,
        want: &'static str,
    },
}

pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> L4MapError {
    move |source| L4MapError::Map { name, source }
}

pub struct L4Maps {
    services: HashMap<MapData, VipKey, ServiceEntry>,
    service_vips: Array<MapData, VipKey>,
    vip_ports: Array<MapData, VipPorts>,
    /// What `vip_ports` holds, so a change writes it only when it differs.
    ports_written: VipPorts,
    servers: Array<MapData, ServerEntry>,
    maglev: ArrayOfMaps<MapData, Array<MapData, u32>>,
    iface_addrs: HashMap<MapData, u32, IfaceAddrs>,
    acl_v4: LpmTrie<MapData, [u8; 4], u32>,
    acl_v6: LpmTrie<MapData, [u8; 16], u32>,
    l7_ports: HashMap<MapData, u32, u32>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    embryos: HashMap<MapData, FlowKey, FlowEntry>,
    snat_pools: Array<MapData, SnatPool>,
    nat_cursors: Array<MapData, NatCursor>,
    generations: Generations,
    /// The deny-list changed but its generation is not bumped yet (the
    /// bump failed): the next `set_acl` bumps, even with nothing to write.
    acl_bump_pending: bool,
    stats: StatsMaps,
    /// Each service's installed table and its inner map, so a change
    /// writes only the slots that differ.
    tables: std::collections::HashMap<u32, (Array<MapData, u32>, Vec<u32>)>,
}

/// The per-CPU statistics maps, summed over CPUs when read.
pub struct StatsMaps {
    service_stats: PerCpuArray<MapData, ServiceStats>,
    server_stats: PerCpuArray<MapData, PacketCounter>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    nat_failures: PerCpuArray<MapData, u64>,
}

/// Where [`L4Maps::take`] takes the program's maps from: the loaded
/// object, or (in test fixtures that reuse a loaded program) handles
/// opened by map id.
pub trait MapSource {
    fn take_map(&mut self, name: &str) -> Option<Map>;
}

impl MapSource for Ebpf {
    fn take_map(&mut self, name: &str) -> Option<Map> {
        Ebpf::take_map(self, name)
    }
}

fn take(maps: &mut impl MapSource, name: &'static str) -> Result<Map, L4MapError> {
    maps.take_map(name).ok_or(L4MapError::Missing(name))
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)?.try_into().map_err(map_err($name))?
    };
}

impl L4Maps {
    /// Takes the L4 maps out of a loaded object (the program keeps its own
    /// references, so it goes on using them).
    pub fn take(ebpf: &mut impl MapSource) -> Result<Self, L4MapError> {
        let mut maps = Self {
            services: typed!(ebpf, maps::SERVICES),
            service_vips: typed!(ebpf, maps::SERVICE_VIPS),
            vip_ports: typed!(ebpf, maps::VIP_PORTS),
            ports_written: VipPorts::EMPTY,
            servers: typed!(ebpf, maps::SERVERS),
            maglev: typed!(ebpf, maps::MAGLEV),
            iface_addrs: typed!(ebpf, maps::IFACE_ADDRS),
            acl_v4: typed!(ebpf, maps::ACL_V4),
            acl_v6: typed!(ebpf, maps::ACL_V6),
            l7_ports: typed!(ebpf, maps::L7_PORTS),
            flows: typed!(ebpf, maps::FLOWS),
            embryos: typed!(ebpf, maps::EMBRYOS),
            snat_pools: typed!(ebpf, maps::SNAT_POOLS),
            nat_cursors: typed!(ebpf, maps::NAT_CURSORS),
            generations: Generations::new(take(ebpf, maps::GENERATIONS)?)?,
            acl_bump_pending: false,
            stats: StatsMaps {
                service_stats: typed!(ebpf, maps::SERVICE_STATS),
                server_stats: typed!(ebpf, maps::SERVER_STATS),
                global_stats: typed!(ebpf, maps::GLOBAL_STATS),
                nat_failures: typed!(ebpf, maps::NAT_FAILURES),
            },
            tables: std::collections::HashMap::new(),
        };
        // Adopted services' ports (a previous elb may not have had the map).
        maps.write_vip_ports(true)?;
        Ok(maps)
    }

    /// Makes `elb_vip_ports` hold the ports of the services in
    /// `elb_services` (written if they differ from the last write, or if
    /// `always`).
    fn write_vip_ports(&mut self, always: bool) -> Result<(), L4MapError> {
        let ports: VipPorts = self
            .services()?
            .iter()
            .map(|(vip, _)| u16::from_be_bytes(vip.port))
            .collect();
        if always || ports != self.ports_written {
            self.put_vip_ports(ports)?;
        }
        Ok(())
    }

    fn put_vip_ports(&mut self, ports: VipPorts) -> Result<(), L4MapError> {
        self.vip_ports
            .set(0, &ports, 0)
            .map_err(map_err(maps::VIP_PORTS))?;
        self.ports_written = ports;
        Ok(())
    }

    /// Installs the service at `vip`, then records that its id serves
    /// `vip` (`elb_svc_vips`, which established flows are checked
    /// against). A service that moved to another VIP stops matching its
    /// old flows here, as its old VIP stops matching in `elb_services`.
    pub fn set_service(&mut self, vip: &VipKey, entry: &ServiceEntry) -> Result<(), L4MapError> {
        self.services
            .insert(vip, entry, 0)
            .map_err(map_err(maps::SERVICES))?;
        self.service_vips
            .set(entry.id, vip, 0)
            .map_err(map_err(maps::SERVICE_VIPS))?;
        let port = u16::from_be_bytes(vip.port);
        if !self.ports_written.contains(port) {
            let mut ports = self.ports_written;
            ports.insert(port);
            self.put_vip_ports(ports)?;
        }
        Ok(())
    }

    /// Removes the service at `vip`: its id first stops serving `vip` (so
    /// no established flow is forwarded past this point), then the entry
    /// goes.
    pub fn remove_service(&mut self, vip: &VipKey) -> Result<(), L4MapError> {
        let id = match self.services.get(vip, 0) {
            Ok(entry) => entry.id,
            Err(error) if not_found(&error) => return Ok(()),
            Err(error) => return Err(map_err(maps::SERVICES)(error)),
        };
        let serves = self
            .service_vips
            .get(&id, 0)
            .map_err(map_err(maps::SERVICE_VIPS))?;
        if serves == *vip {
            self.service_vips
                .set(id, &VipKey::default(), 0)
                .map_err(map_err(maps::SERVICE_VIPS))?;
        }
        match self.services.remove(vip) {
            Ok(()) => {}
            Err(error) if not_found(&error) => return Ok(()),
            Err(error) => return Err(map_err(maps::SERVICES)(error)),
        }
        // Its port stays listed if another service still listens on it.
        self.write_vip_ports(false)
    }

    /// The ports `elb_vip_ports` lists.
    pub fn vip_ports(&self) -> Result<VipPorts, L4MapError> {
        self.vip_ports.get(&0, 0).map_err(map_err(maps::VIP_PORTS))
    }

    /// The VIP the service `id` serves (`VipKey::default()`: none).
    pub fn service_vip(&self, id: u32) -> Result<VipKey, L4MapError> {
        self.service_vips
            .get(&id, 0)
            .map_err(map_err(maps::SERVICE_VIPS))
    }

    pub fn services(&self) -> Result<Vec<(VipKey, ServiceEntry)>, L4MapError> {
        self.services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::SERVICES))
    }

    /// The SNAT pool of the service `id` (read when its entry has
    /// `SERVICE_SNAT_POOL`; write it first).
    pub fn set_snat_pool(&mut self, id: u32, pool: &SnatPool) -> Result<(), L4MapError> {
        self.snat_pools
            .set(id, pool, 0)
            .map_err(map_err(maps::SNAT_POOLS))
    }

    /// The port-allocation cursor of (server id, SNAT pool index).
    pub fn nat_cursor(&self, server_id: u32, pool_index: u32) -> Result<NatCursor, L4MapError> {
        self.nat_cursors
            .get(&NatCursor::slot(server_id, pool_index), 0)
            .map_err(map_err(maps::NAT_CURSORS))
    }

    pub fn set_server(&mut self, id: u32, server: &ServerEntry) -> Result<(), L4MapError> {
        self.servers
            .set(id, server, 0)
            .map_err(map_err(maps::SERVERS))
    }

    pub fn server(&self, id: u32) -> Result<ServerEntry, L4MapError> {
        self.servers.get(&id, 0).map_err(map_err(maps::SERVERS))
    }

    /// Installs a service's table; returns how many slots were written.
    ///
    /// A table of a new size (or the first one this process writes) goes
    /// into a new inner map, filled, then swapped in with one update. A
    /// table of the same size is updated in place, slot by slot, and only
    /// where it differs: Maglev moves few slots on a change (about 1/N for
    /// one of N servers), and each slot is read whole, so a new flow gets
    /// either its old server or its new one. Server ids in the old slots
    /// stay valid meanwhile (they are freed only after a grace period).
    pub fn set_table(&mut self, service_id: u32, table: &[u32]) -> Result<usize, L4MapError> {
        if table.len() > MAGLEV_CAPACITY as usize {
            return Err(L4MapError::TableTooBig { slots: table.len() });
        }
        if let Some((inner, installed)) = self.tables.get_mut(&service_id)
            && installed.len() == table.len()
        {
            let mut written = 0;
            for (slot, (old, new)) in installed.iter_mut().zip(table).enumerate() {
                if old != new {
                    inner
                        .set(slot as u32, new, 0)
                        .map_err(map_err(maps::MAGLEV))?;
                    *old = *new;
                    written += 1;
                }
            }
            return Ok(written);
        }
        let mut inner =
            Array::<MapData, u32>::create(MAGLEV_CAPACITY, 0).map_err(map_err(maps::MAGLEV))?;
        for (slot, server) in table.iter().enumerate() {
            inner
                .set(slot as u32, server, 0)
                .map_err(map_err(maps::MAGLEV))?;
        }
        self.maglev
            .set(service_id, &inner, 0)
            .map_err(map_err(maps::MAGLEV))?;
        self.tables.insert(service_id, (inner, table.to_vec()));
        Ok(table.len())
    }

    pub fn set_iface_addrs(&mut self, ifindex: u32, addrs: &IfaceAddrs) -> Result<(), L4MapError> {
        self.iface_addrs
            .insert(&ifindex, addrs, 0)
            .map_err(map_err(maps::IFACE_ADDRS))
    }

    /// Replaces the deny-list with `entries` (prefix length, address).
    /// When anything changed, the ACL generation is bumped, after the
    /// writes: established flows check their source again at their next
    /// packet (they skip the lookup while it stays). Bumped on a failed
    /// write too, which may have changed part of the list.
    pub fn set_acl(
        &mut self,
        v4: &[(u32, [u8; 4])],
        v6: &[(u32, [u8; 16])],
    ) -> Result<(), L4MapError> {
        let mut changed = 0;
        let written = replace_trie(&mut self.acl_v4, v4, maps::ACL_V4, &mut changed)
            .and_then(|()| replace_trie(&mut self.acl_v6, v6, maps::ACL_V6, &mut changed));
        self.acl_bump_pending |= changed > 0 || written.is_err();
        if self.acl_bump_pending {
            self.generations.bump_acl()?;
            self.acl_bump_pending = false;
        }
        written
    }

    /// The generation numbers (a handle of its own, for the route watcher
    /// and tests).
    pub fn generations(&self) -> Result<Generations, L4MapError> {
        self.generations.duplicate()
    }

    pub fn set_l7_ports(&mut self, ports: &[u16]) -> Result<(), L4MapError> {
        let old = self
            .l7_ports
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::L7_PORTS))?;
        for port in ports {
            self.l7_ports
                .insert(&u32::from(*port), &1, 0)
                .map_err(map_err(maps::L7_PORTS))?;
        }
        for port in old {
            if !ports.iter().any(|p| u32::from(*p) == port) {
                let _ = self.l7_ports.remove(&port);
            }
        }
        Ok(())
    }

    /// Marks every connection-table entry of server `server_id`, both
    /// directions, drained ([`super::drain::drain_flows`]); returns how many
    /// it marked. The end of a drain: XDP answers the flows' next TCP
    /// segments with a RST and removes their entries. `server_id` must not
    /// have been given to another server yet.
    /// Both tables: a flow still in its handshake is drained as well.
    pub fn drain_flows_of_server(&mut self, server_id: u32) -> Result<usize, L4MapError> {
        let established = super::drain::drain_flows(&mut self.flows, server_id)?;
        let embryonic = super::drain::drain_table(&mut self.embryos, maps::EMBRYOS, server_id)?;
        Ok(established + embryonic)
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats, L4MapError> {
        self.stats.service(id)
    }

    pub fn server_stats(&self, id: u32) -> Result<PacketCounter, L4MapError> {
        self.stats.server(id)
    }

    pub fn global_stats(&self) -> Result<GlobalStats, L4MapError> {
        self.stats.global()
    }

    pub fn nat_failures(&self, server_id: u32) -> Result<u64, L4MapError> {
        self.stats.nat_failures(server_id)
    }

    /// Zeroes a server's counters, NAT failure count and port-allocation
    /// cursors when its id is given to another server (a stale cursor is
    /// only a hint, but a stale full mark would hold back the new server's
    /// first flows for a moment).
    pub fn reset_server_stats(&mut self, id: u32) -> Result<(), L4MapError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| map_err(maps::NAT_FAILURES)(MapError::IoError(e)))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus.get() as usize])
            .map_err(|e| map_err(maps::NAT_FAILURES)(MapError::IoError(e)))?;
        self.stats
            .nat_failures
            .set(id, zeros, 0)
            .map_err(map_err(maps::NAT_FAILURES))?;
        for index in 0..MAX_SNAT_POOL {
            self.nat_cursors
                .set(NatCursor::slot(id, index), &NatCursor::default(), 0)
                .map_err(map_err(maps::NAT_CURSORS))?;
        }
        self.reset_packet_counters(id)
    }

    fn reset_packet_counters(&mut self, id: u32) -> Result<(), L4MapError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| map_err(maps::SERVER_STATS)(MapError::IoError(e)))?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![PacketCounter::default(); cpus.get() as usize])
                .map_err(|e| map_err(maps::SERVER_STATS)(MapError::IoError(e)))?;
        self.stats
            .server_stats
            .set(id, zeros, 0)
            .map_err(map_err(maps::SERVER_STATS))
    }
}

impl StatsMaps {
    /// Opens the statistics maps a running data plane pinned, as separate
    /// handles, so readers never wait for the configuration sync.
    pub fn open_pinned(pins: &crate::dataplane::PinLayout) -> Result<Self, L4MapError> {
        fn open<T>(pins: &crate::dataplane::PinLayout, name: &'static str) -> Result<T, L4MapError>
        where
            T: TryFrom<Map, Error = MapError>,
        {
            let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
            let map = Map::from_map_data(data).map_err(map_err(name))?;
            T::try_from(map).map_err(map_err(name))
        }
        Ok(Self {
            service_stats: open(pins, maps::SERVICE_STATS)?,
            server_stats: open(pins, maps::SERVER_STATS)?,
            global_stats: open(pins, maps::GLOBAL_STATS)?,
            nat_failures: open(pins, maps::NAT_FAILURES)?,
        })
    }

    pub fn service(&self, id: u32) -> Result<ServiceStats, L4MapError> {
        let per_cpu = self
            .service_stats
            .get(&id, 0)
            .map_err(map_err(maps::SERVICE_STATS))?;
        let mut sum = ServiceStats::default();
        for cpu in per_cpu.iter() {
            sum.add(cpu);
        }
        Ok(sum)
    }

    pub fn server(&self, id: u32) -> Result<PacketCounter, L4MapError> {
        let per_cpu = self
            .server_stats
            .get(&id, 0)
            .map_err(map_err(maps::SERVER_STATS))?;
        let mut sum = PacketCounter::default();
        for cpu in per_cpu.iter() {
            sum.add(cpu.packets, cpu.bytes);
        }
        Ok(sum)
    }

    /// New flows to the server `id` dropped for want of a NAT port.
    pub fn nat_failures(&self, id: u32) -> Result<u64, L4MapError> {
        let per_cpu = self
            .nat_failures
            .get(&id, 0)
            .map_err(map_err(maps::NAT_FAILURES))?;
        Ok(per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n)))
    }

    pub fn global(&self) -> Result<GlobalStats, L4MapError> {
        let per_cpu = self
            .global_stats
            .get(&0, 0)
            .map_err(map_err(maps::GLOBAL_STATS))?;
        let mut sum = GlobalStats::default();
        for cpu in per_cpu.iter() {
            sum.add(cpu);
        }
        Ok(sum)
    }
}

/// A deleted or looked-up key that is not in the map: the kernel's ENOENT,
/// which aya reports as a syscall error, or aya's own `KeyNotFound`.
pub(crate) fn not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Makes `trie` hold exactly `entries`: the missing ones added first, then
/// the unwanted ones removed. Counts the writes in `changed` (also when it
/// fails half-way).
fn replace_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    entries: &[(u32, [u8; N])],
    name: &'static str,
    changed: &mut usize,
) -> Result<(), L4MapError> {
    let old: HashSet<(u32, [u8; N])> = trie
        .keys()
        .map(|key| key.map(|key| (key.prefix_len(), key.data())))
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    let wanted: HashSet<(u32, [u8; N])> = entries.iter().copied().collect();
    for (prefix_len, addr) in wanted.difference(&old) {
        *changed += 1;
        trie.insert(&Key::new(*prefix_len, *addr), &1, 0)
            .map_err(map_err(name))?;
    }
    for (prefix_len, addr) in old.difference(&wanted) {
        *changed += 1;
        let _ = trie.remove(&Key::new(*prefix_len, *addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enoent_and_key_not_found_are_not_found_and_nothing_else_is() {
        let syscall = |errno| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(not_found(&syscall(libc::ENOENT)));
        assert!(not_found(&MapError::KeyNotFound));
        assert!(!not_found(&syscall(libc::EPERM)));
        assert!(!not_found(&MapError::InvalidName { name: "x".into() }));
    }
}
