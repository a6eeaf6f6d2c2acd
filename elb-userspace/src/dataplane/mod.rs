//! Loads elb's XDP program, pins its maps and links, and attaches it to
//! interfaces, adopting what a previous elb of the same name pinned.
mod links;
pub mod pins;

use std::{
    ffi::CString,
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use elb_common::{
    counters::{PacketCounter, ProtoCounter},
    maps,
};
use thiserror::Error;

use crate::{
    bpffs, l4::generations::Generations, os_error::errno_in_chain, sys::rtnetlink::RouteEvents,
};
pub use links::pinned_link_ifindex;
pub use pins::{PinError, PinLayout, TeardownReport, teardown};

/// How to attach the program, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    /// Driver (native) mode, falling back to skb (generic) mode with a warning.
    #[default]
    Auto,
    /// Driver (native) mode only.
    Driver,
    /// skb (generic) mode only.
    Skb,
}

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("network interface {0:?} does not exist")]
    UnknownInterface(String),
    #[error(
        "{action}: permission denied. elb needs root, or CAP_BPF + CAP_NET_ADMIN \
         (+ CAP_SYS_ADMIN to mount bpffs)"
    )]
    NotPermitted { action: String },
    #[error("{action}: this kernel has no BPF support (the bpf() system call does not exist)")]
    NoKernelBpf { action: String },
    #[error("{action}")]
    Bpf {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    PortRange(#[from] crate::l4::port_range::PortRangeError),
    #[error(
        "opening an rtnetlink socket for route, neighbour and link changes: XDP caches each \
         flow's next hop and must learn when they change"
    )]
    RouteEvents(#[source] std::io::Error),
    #[error(
        "the maps pinned for elb {name:?} do not fit this elb: made by an incompatible elb \
         version, or with another --conn-table-size or --embryonic-table-size; \
         `elb teardown --name {name}` removes them (established L4 flows are then dropped)"
    )]
    IncompatiblePins {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DataplaneError {
    /// Whether this failure is the host's (no privileges, no BPF, a driver
    /// that refuses XDP), so L4 may fall back to userspace; operator
    /// mistakes (an unknown interface, clashing pins or ports) stay fatal.
    pub fn allows_fallback(&self) -> bool {
        match self {
            Self::NotPermitted { .. }
            | Self::NoKernelBpf { .. }
            | Self::Bpf { .. }
            | Self::RouteEvents(_) => true,
            Self::Pins(PinError::NotPermitted { .. }) => true,
            Self::Bpffs(bpffs::BpffsError::MountNotPermitted { .. }) => true,
            Self::UnknownInterface(_)
            | Self::Bpffs(_)
            | Self::Pins(_)
            | Self::IncompatiblePins { .. }
            | Self::PortRange(_) => false,
        }
    }

    /// Wraps a BPF failure, naming the operator-level cause where the errno
    /// tells it.
    fn bpf(action: impl Into<String>, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        let action = action.into();
        match errno_in_chain(&err) {
            Some(libc::EPERM) => Self::NotPermitted { action },
            Some(libc::ENOSYS) => Self::NoKernelBpf { action },
            _ => Self::Bpf {
                action,
                source: Box::new(err),
            },
        }
    }
}

/// Where and how the data plane is set up.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// The ELB name: maps are pinned under `<bpffs>/elb/<name>/`.
    pub name: String,
    pub bpffs_root: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    /// Entries of the connection table (`elb_flows`) and of the embryonic
    /// table (`elb_embryos`): `--conn-table-size`, `--embryonic-table-size`.
    pub tables: TableSizes,
    /// `--nat-ports`; None: the default range for this host
    /// ([`crate::l4::port_range`]).
    pub nat_ports: Option<elb_common::nat::NatPorts>,
}

/// Sizes of the two connection tables, in entries (two per flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    pub flows: u32,
    pub embryos: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            flows: elb_common::l4::MAX_FLOW_ENTRIES,
            embryos: elb_common::l4::EMBRYO_ENTRIES,
        }
    }
}

/// The directory holding the pinned maps of the elb named `name`.
pub fn pin_dir(bpffs_root: &Path, name: &str) -> PathBuf {
    PinLayout::new(bpffs_root, name).dir().to_owned()
}

/// The mode an attachment actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Driver,
    Skb,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        })
    }
}

/// How an interface came to run this process's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new link, pinned.
    Attached(AttachedMode),
    /// The program swapped into the link a previous elb pinned.
    Replaced,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attached(mode) => write!(f, "attached in {mode} mode"),
            Self::Replaced => f.write_str("swapped into the previous elb's pinned link (hitless)"),
        }
    }
}

/// A loaded and attached XDP data plane. Its maps and links are pinned, so
/// dropping it (or elb exiting) leaves the program forwarding; the next elb
/// of the same name adopts the pins, and `elb teardown` removes them.
pub struct XdpDataplane {
    _ebpf: Ebpf,
    pins: PinLayout,
    interfaces: Vec<(String, Attachment)>,
    adopted: bool,
    /// Subscribed at start, so no change is missed before the watcher
    /// runs; taken by [`XdpDataplane::spawn_route_watch`].
    route_events: Option<RouteEvents>,
}

impl XdpDataplane {
    /// Starts the data plane; the L4 maps go to the configuration sync.
    pub fn start(
        config: &DataplaneConfig,
    ) -> Result<(Self, crate::l4::maps::L4Maps), DataplaneError> {
        let if_indexes = config
            .interfaces
            .iter()
            .map(|name| if_index(name).map(|index| (name.clone(), index)))
            .collect::<Result<Vec<_>, _>>()?;

        let nat_ports = crate::l4::port_range::check_host(config.nat_ports)?;
        // First, so that a failure leaves nothing behind.
        let route_events = RouteEvents::open().map_err(DataplaneError::RouteEvents)?;
        // Load-time constants the verifier knows (elb-ebpf/src/ports.rs).
        let (nat_min, nat_max) = (nat_ports.min(), nat_ports.max());
        bpffs::ensure_mounted(&config.bpffs_root)?;
        let pins = PinLayout::new(&config.bpffs_root, &config.name);
        pins.create()?;
        let adopted = pins.has_maps();

        // Maps already pinned are reused as they are (flows, stats, tables);
        // the others are created and pinned.
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = maps::ALL
            .iter()
            .map(|name| (*name, pins.map(name)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(maps::FLOWS, config.tables.flows)
            .map_max_entries(maps::EMBRYOS, config.tables.embryos);
        loader.override_global(maps::NAT_PORT_MIN_GLOBAL, &nat_min, true);
        loader.override_global(maps::NAT_PORT_MAX_GLOBAL, &nat_max, true);
        tracing::info!(nat_ports = %nat_ports, "XDP full NAT source ports");
        let mut ebpf = loader.load(crate::EBPF_OBJECT).map_err(|e| {
            if incompatible_pin(&e) {
                DataplaneError::IncompatiblePins {
                    name: config.name.clone(),
                    source: Box::new(e),
                }
            } else {
                DataplaneError::bpf("loading the XDP object", e)
            }
        })?;
        if adopted {
            tracing::info!(
                dir = %pins.dir().display(),
                "adopted the pinned maps of a previous elb: established L4 flows keep their servers"
            );
        }

        let program = xdp_program(&mut ebpf)?;
        program
            .load()
            .map_err(|e| DataplaneError::bpf("loading the XDP program into the kernel", e))?;

        let mut interfaces = Vec::new();
        for (interface, index) in &if_indexes {
            let attachment = attach(program, &pins, interface, *index, config.mode)?;
            tracing::info!(interface, "XDP program {attachment}");
            interfaces.push((interface.clone(), attachment));
        }
        for stale in pins.pinned_links()? {
            if !config.interfaces.contains(&stale) {
                pins.unpin_link(&stale)?;
                tracing::info!(
                    interface = stale,
                    "XDP program detached: the interface is no longer configured"
                );
            }
        }

        let l4_maps =
            crate::l4::maps::L4Maps::take(&mut ebpf).map_err(|e| DataplaneError::Bpf {
                action: "opening the L4 maps".into(),
                source: Box::new(e),
            })?;
        let dataplane = Self {
            _ebpf: ebpf,
            pins,
            interfaces,
            adopted,
            route_events: Some(route_events),
        };
        Ok((dataplane, l4_maps))
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Starts bumping the route generation on every route, neighbour and
    /// link change ([`crate::l4::routes`]), until `shutdown`. Once.
    pub fn spawn_route_watch(
        &mut self,
        generations: Generations,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, DataplaneError> {
        let events = self
            .route_events
            .take()
            .ok_or_else(|| DataplaneError::Bpf {
                action: "starting the route watcher".into(),
                source: "it was started already".into(),
            })?;
        crate::l4::routes::spawn(events, generations, shutdown).map_err(DataplaneError::RouteEvents)
    }

    /// Whether the maps came from a previous elb.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The interfaces and how each got the program.
    pub fn interfaces(&self) -> &[(String, Attachment)] {
        &self.interfaces
    }

    /// Lets go of the program: the pinned links keep it attached and the
    /// pinned maps keep its state, so L4 forwarding goes on without elb.
    pub fn release(self, name: &str) {
        let interfaces: Vec<&str> = self.interfaces.iter().map(|(i, _)| i.as_str()).collect();
        tracing::info!(
            interfaces = interfaces.join(","),
            pins = %self.pins.dir().display(),
            "the XDP data plane keeps forwarding; a new elb adopts it, `elb teardown --name {name}` removes it"
        );
    }
}

/// Gives `interface` this process's program: swapped into the link a
/// previous elb pinned when that link is still on the interface, else
/// attached through a new pinned link.
fn attach(
    program: &mut Xdp,
    pins: &PinLayout,
    interface: &str,
    index: u32,
    mode: AttachMode,
) -> Result<Attachment, DataplaneError> {
    let path = pins.link(interface);
    if path.exists() {
        match links::pinned_link_ifindex(&path) {
            Ok(linked) if linked == index => {
                links::replace_program(program, &path).map_err(|e| {
                    DataplaneError::bpf(format!("replacing the XDP program on {interface}"), e)
                })?;
                return Ok(Attachment::Replaced);
            }
            Ok(linked) => tracing::warn!(
                interface,
                linked_ifindex = linked,
                ifindex = index,
                "the pinned XDP link belongs to an interface that is gone; attaching anew"
            ),
            Err(error) => tracing::warn!(
                interface,
                %error,
                "cannot inspect the pinned XDP link; attaching anew"
            ),
        }
        pins.unpin_link(interface)?;
    }
    let attach_in = |program: &mut Xdp, mode: AttachedMode| {
        let xdp_mode = match mode {
            AttachedMode::Driver => XdpMode::Driver,
            AttachedMode::Skb => XdpMode::Skb,
        };
        links::attach_pinned(program, index, xdp_mode, &path)
            .map(|()| Attachment::Attached(mode))
            .map_err(|e| {
                DataplaneError::bpf(format!("attaching XDP in {mode} mode to {interface}"), e)
            })
    };
    match mode {
        AttachMode::Driver => attach_in(program, AttachedMode::Driver),
        AttachMode::Skb => attach_in(program, AttachedMode::Skb),
        AttachMode::Auto => match attach_in(program, AttachedMode::Driver) {
            Ok(attachment) => Ok(attachment),
            Err(driver_err @ DataplaneError::NotPermitted { .. }) => Err(driver_err),
            Err(driver_err) => {
                tracing::warn!(
                    interface,
                    error = %driver_err,
                    "driver-mode XDP unavailable, falling back to skb (generic) mode, which is slower"
                );
                attach_in(program, AttachedMode::Skb)
            }
        },
    }
}

/// aya refuses to reuse a pinned map whose type or sizes differ from the
/// object's: the pins were made by an incompatible elb version.
fn incompatible_pin(err: &aya::EbpfError) -> bool {
    matches!(
        err,
        aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap { .. })
    )
}

/// Per-protocol counters from the pinned map of a running elb.
pub fn pinned_proto_stats(
    pin_dir: &Path,
) -> Result<Vec<(ProtoCounter, PacketCounter)>, DataplaneError> {
    let path = pin_dir.join(maps::PROTO_STATS);
    let data = MapData::from_pin(&path)
        .map_err(|e| DataplaneError::bpf(format!("opening pinned map {}", path.display()), e))?;
    let map = aya::maps::Map::from_map_data(data)
        .map_err(|e| DataplaneError::bpf(format!("opening pinned map {}", path.display()), e))?;
    let stats = PerCpuArray::<_, PacketCounter>::try_from(map)
        .map_err(|e| DataplaneError::bpf(format!("reading pinned map {}", path.display()), e))?;
    sum_proto_stats(&stats)
}

/// Sums each per-protocol counter over CPUs.
pub fn sum_proto_stats<T: std::borrow::Borrow<MapData>>(
    stats: &PerCpuArray<T, PacketCounter>,
) -> Result<Vec<(ProtoCounter, PacketCounter)>, DataplaneError> {
    ProtoCounter::ALL
        .iter()
        .map(|&slot| {
            let per_cpu = stats
                .get(&slot.index(), 0)
                .map_err(|e| DataplaneError::bpf(format!("reading counter {}", slot.name()), e))?;
            let mut total = PacketCounter::default();
            for cpu in per_cpu.iter() {
                total.add(cpu.packets, cpu.bytes);
            }
            Ok((slot, total))
        })
        .collect()
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program = ebpf
        .program_mut(maps::XDP_PROGRAM)
        .ok_or_else(|| DataplaneError::Bpf {
            action: format!("finding program {}", maps::XDP_PROGRAM),
            source: "the embedded object does not contain it".into(),
        })?;
    program
        .try_into()
        .map_err(|e| DataplaneError::bpf(format!("program {}", maps::XDP_PROGRAM), e))
}

fn if_index(name: &str) -> Result<u32, DataplaneError> {
    let c_name = CString::new(name).map_err(|_| DataplaneError::UnknownInterface(name.into()))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::UnknownInterface(name.into()));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(errno: i32) -> DataplaneError {
        DataplaneError::bpf("loading", std::io::Error::from_raw_os_error(errno))
    }

    // The kernels here all have BPF, so ENOSYS is produced by hand.
    #[test]
    fn errno_enosys_means_no_kernel_bpf_simulated() {
        let err = classify(libc::ENOSYS);
        assert!(matches!(err, DataplaneError::NoKernelBpf { .. }));
        assert!(err.to_string().contains("no BPF support"), "{err}");
    }

    #[test]
    fn errno_eperm_means_missing_privileges() {
        let err = classify(libc::EPERM);
        assert!(err.to_string().contains("CAP_BPF + CAP_NET_ADMIN"), "{err}");
    }

    #[test]
    fn other_errnos_keep_their_cause() {
        let err = classify(libc::EINVAL);
        let DataplaneError::Bpf { source, .. } = &err else {
            panic!("expected Bpf, got {err:?}");
        };
        assert!(source.to_string().contains("Invalid argument"));
    }

    #[test]
    fn pins_live_under_elb_and_the_name() {
        assert_eq!(
            pin_dir(Path::new("/sys/fs/bpf"), "ELB"),
            PathBuf::from("/sys/fs/bpf/elb/ELB")
        );
    }
}
