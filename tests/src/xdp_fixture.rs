//! `BPF_PROG_TEST_RUN` harness: loads the real XDP object (the one embedded
//! in `elb`), runs it on a packet, and returns the action and output bytes.
use anyhow::{Context, Result, bail};
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use elb_common::{
    counters::{PacketCounter, ProtoCounter},
    l4::{FlowEntry, FlowKey},
    maps,
    nat::NatPorts,
};
use elb_userspace::{
    dataplane::{TableSizes, sum_proto_stats},
    l4::maps::MapSource,
};

use crate::map_reset::MapSnapshot;

/// XDP return codes (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl XdpAction {
    fn from_raw(raw: u32) -> Result<Self> {
        Ok(match raw {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => bail!("the program returned {other}, which is no XDP action"),
        })
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct XdpRun {
    pub action: XdpAction,
    pub output: Vec<u8>,
}

/// One loaded instance of the XDP program with its own maps, fresh or
/// reset to how they were loaded (see [`XdpFixture::load_configured`]).
pub struct XdpFixture {
    /// Always `Some` until the fixture goes back to the pool on drop.
    loaded: Option<Loaded>,
    /// A handle of its own on the connection table, so that tests can
    /// plant and inspect entries after [`XdpFixture::l4_maps`] has taken
    /// the maps (which include the table).
    flows: Map,
    /// The same for the embryonic table.
    embryos: Map,
}

/// A verified program and how its maps were when it was loaded.
struct Loaded {
    ebpf: Ebpf,
    snapshot: MapSnapshot,
    /// What it was loaded with; `None`: not to be reused.
    reuse_as: Option<PoolKey>,
}

/// The settings a program was loaded with, for reuse.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PoolKey {
    nat_ports: Option<(u16, u16)>,
}

/// Programs given back by dropped fixtures, for the next fixture with the
/// same settings in this test binary.
static POOL: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());

impl Drop for XdpFixture {
    fn drop(&mut self) {
        if let Some(loaded) = self.loaded.take()
            && loaded.reuse_as.is_some()
        {
            POOL.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(loaded);
        }
    }
}

/// Handles on every map of a loaded program, by name, opened through the
/// program's map ids: what [`L4Maps::take`] takes from in a fixture.
///
/// [`L4Maps::take`]: elb_userspace::l4::maps::L4Maps::take
struct ProgramMaps(HashMap<String, Map>);

impl MapSource for ProgramMaps {
    fn take_map(&mut self, name: &str) -> Option<Map> {
        self.0.remove(name)
    }
}

fn map_ids(ebpf: &Ebpf) -> Result<Vec<u32>> {
    let program = ebpf
        .program(maps::XDP_PROGRAM)
        .context("the object has no XDP program")?;
    program.info()?.map_ids()?.context("map ids not reported")
}

impl XdpFixture {
    pub fn load() -> Result<Self> {
        Self::load_configured(TableSizes::default(), None)
    }

    /// [`XdpFixture::load`] with connection tables of the given sizes.
    pub fn load_with(tables: TableSizes) -> Result<Self> {
        Self::load_configured(tables, None)
    }

    /// [`XdpFixture::load`] with the NAT port range `--nat-ports` sets.
    pub fn load_with_nat_ports(ports: NatPorts) -> Result<Self> {
        Self::load_configured(TableSizes::default(), Some(ports))
    }

    /// Loads the program as the daemon would with these settings. With the
    /// default table sizes, a program an earlier test of this binary
    /// loaded with the same NAT ports is reused, its maps reset to how they
    /// were loaded; smaller tables always get a fresh program, as their
    /// tests fill them and an LRU's lists after deletes are not as loaded.
    pub fn load_configured(tables: TableSizes, nat_ports: Option<NatPorts>) -> Result<Self> {
        // The globals must outlive the loader, which borrows them.
        let range = nat_ports.map(|ports| (ports.min(), ports.max()));
        let reuse_as = (tables == TableSizes::default()).then_some(PoolKey { nat_ports: range });
        let pooled = reuse_as.and_then(|key| {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            let at = pool.iter().position(|l| l.reuse_as == Some(key))?;
            Some(pool.swap_remove(at))
        });
        let loaded = match pooled {
            Some(loaded) => {
                loaded.snapshot.restore()?;
                loaded
            }
            None => Self::load_fresh(tables, range, reuse_as)?,
        };
        let flows = own_handle(&loaded.ebpf, maps::FLOWS)?;
        let embryos = own_handle(&loaded.ebpf, maps::EMBRYOS)?;
        Ok(Self {
            loaded: Some(loaded),
            flows,
            embryos,
        })
    }

    fn load_fresh(
        tables: TableSizes,
        range: Option<(u16, u16)>,
        reuse_as: Option<PoolKey>,
    ) -> Result<Loaded> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::FLOWS, tables.flows)
            .map_max_entries(maps::EMBRYOS, tables.embryos);
        if let Some((min, max)) = &range {
            loader.override_global(maps::NAT_PORT_MIN_GLOBAL, min, true);
            loader.override_global(maps::NAT_PORT_MAX_GLOBAL, max, true);
        }
        let mut ebpf = loader
            .load(elb_userspace::EBPF_OBJECT)
            .context("loading the XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .context("the object has no XDP program")?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;
        let snapshot = MapSnapshot::take(&map_ids(&ebpf)?)?;
        Ok(Loaded {
            ebpf,
            snapshot,
            reuse_as,
        })
    }

    fn ebpf(&self) -> Result<&Ebpf> {
        Ok(&self
            .loaded
            .as_ref()
            .context("the fixture was given back")?
            .ebpf)
    }

    fn ebpf_mut(&mut self) -> Result<&mut Ebpf> {
        Ok(&mut self
            .loaded
            .as_mut()
            .context("the fixture was given back")?
            .ebpf)
    }

    /// The id of the loaded program (the same for a reused one).
    pub fn program_id(&self) -> Result<u32> {
        let program = self
            .ebpf()?
            .program(maps::XDP_PROGRAM)
            .context("the object has no XDP program")?;
        Ok(program.info()?.id())
    }

    /// Runs the program once on `frame`.
    pub fn run(&mut self, frame: &[u8]) -> Result<XdpRun> {
        Ok(self.time(frame, 1)?.0)
    }

    /// Runs the program `repeat` times on `frame` (each run on the previous
    /// run's output: repeat only frames the program leaves as they are,
    /// like dropped ones); the last run and the kernel's mean time per run.
    pub fn time(&mut self, frame: &[u8], repeat: u32) -> Result<(XdpRun, Duration)> {
        let program: &mut Xdp = self
            .ebpf_mut()?
            .program_mut(maps::XDP_PROGRAM)
            .context("the object has no XDP program")?
            .try_into()?;
        let mut output = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut output),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN x{repeat}"))?;
        output.truncate(result.data_size_out as usize);
        let run = XdpRun {
            action: XdpAction::from_raw(result.return_value)?,
            output,
        };
        Ok((run, result.duration))
    }

    /// Per-protocol counters, summed over CPUs.
    pub fn proto_stats(&self) -> Result<Vec<(ProtoCounter, PacketCounter)>> {
        let map = self
            .ebpf()?
            .map(maps::PROTO_STATS)
            .context("no counter map")?;
        let stats = PerCpuArray::<_, PacketCounter>::try_from(map)?;
        Ok(sum_proto_stats(&stats)?)
    }

    /// The L4 configuration maps (handles of their own on the program's
    /// maps, which the program goes on using).
    pub fn l4_maps(&mut self) -> Result<elb_userspace::l4::maps::L4Maps> {
        Ok(elb_userspace::l4::maps::L4Maps::take(
            &mut self.program_maps()?,
        )?)
    }

    /// Handles of their own on every map of the program, by name, opened
    /// through its map ids (never another program's map of that name).
    fn program_maps(&self) -> Result<ProgramMaps> {
        let mut maps = ProgramMaps(HashMap::new());
        for id in map_ids(self.ebpf()?)? {
            let data = MapData::from_id(id)?;
            if let Some(name) = data.info()?.name_as_str().map(str::to_owned) {
                maps.0.insert(name, Map::from_map_data(data)?);
            }
        }
        Ok(maps)
    }

    /// The connection table, for planting and inspecting entries.
    pub fn flows(&mut self) -> Result<aya::maps::HashMap<&mut MapData, FlowKey, FlowEntry>> {
        Ok(aya::maps::HashMap::try_from(&mut self.flows)?)
    }

    /// The embryonic table (flows whose handshake is not complete).
    pub fn embryos(&mut self) -> Result<aya::maps::HashMap<&mut MapData, FlowKey, FlowEntry>> {
        Ok(aya::maps::HashMap::try_from(&mut self.embryos)?)
    }

    /// The entry at `key` and whether it is embryonic, from whichever
    /// table holds it (the main table first, as the program looks).
    pub fn entry(&mut self, key: &FlowKey) -> Result<Option<(FlowEntry, bool)>> {
        if let Ok(entry) = self.flows()?.get(key, 0) {
            return Ok(Some((entry, false)));
        }
        Ok(self.embryos()?.get(key, 0).ok().map(|entry| (entry, true)))
    }

    /// Replaces the entry at `key` in the table that holds it (the main
    /// table if neither does).
    pub fn put_entry(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<()> {
        let embryonic = matches!(self.entry(key)?, Some((_, true)));
        let mut table = if embryonic {
            self.embryos()?
        } else {
            self.flows()?
        };
        Ok(table.insert(key, entry, 0)?)
    }

    /// Entries in both tables.
    pub fn entry_count(&mut self) -> Result<usize> {
        Ok(self.flows()?.keys().count() + self.embryos()?.keys().count())
    }

    /// A handle of its own on the program's map `name`, found through the
    /// program's map ids (so it works after [`XdpFixture::l4_maps`] took
    /// the maps, and never finds another program's map of that name): for
    /// writing behind the userspace API's back.
    pub fn map_named(&self, name: &str) -> Result<Map> {
        self.program_maps()?
            .take_map(name)
            .with_context(|| format!("the program uses no map {name}"))
    }

    /// The counter of one slot.
    pub fn counter(&self, slot: ProtoCounter) -> Result<PacketCounter> {
        self.proto_stats()?
            .into_iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, c)| c)
            .context("slot missing")
    }
}

/// A handle of the test's own on the map `name` of `ebpf` (an LRU hash
/// map), which stays usable after `L4Maps::take` takes the object's.
pub fn own_handle(ebpf: &Ebpf, name: &str) -> Result<Map> {
    match ebpf.map(name).with_context(|| format!("no map {name}"))? {
        Map::LruHashMap(data) => Ok(Map::from_map_data(MapData::from_id(data.info()?.id())?)?),
        _ => bail!("{name} is no LRU hash map"),
    }
}

/// `bpf_ktime_get_coarse_ns`'s clock, to plant entries with a given age.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
