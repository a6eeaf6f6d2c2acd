//! Loads elb's XDP program, pins its maps and attaches it to interfaces.
use std::{
    ffi::CString,
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use elb_common::{
    counters::{PacketCounter, ProtoCounter},
    maps,
};
use thiserror::Error;

use crate::{bpffs, os_error::errno_in_chain};

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
    #[error("{action} {path}")]
    PinDir {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
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
}

impl DataplaneConfig {
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.bpffs_root, &self.name)
    }
}

/// The directory holding the pinned maps of the elb named `name`.
pub fn pin_dir(bpffs_root: &Path, name: &str) -> PathBuf {
    bpffs_root.join("elb").join(name)
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

struct Attachment {
    interface: String,
    mode: AttachedMode,
    link: XdpLinkId,
}

/// A loaded and attached XDP data plane. Dropping it without
/// [`XdpDataplane::shutdown`] still detaches (aya drops the links) but leaves
/// the pins behind.
pub struct XdpDataplane {
    ebpf: Ebpf,
    l4_maps: Option<crate::l4::maps::L4Maps>,
    pin_dir: PathBuf,
    attachments: Vec<Attachment>,
}

impl XdpDataplane {
    pub fn start(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let if_indexes = config
            .interfaces
            .iter()
            .map(|name| if_index(name).map(|index| (name.clone(), index)))
            .collect::<Result<Vec<_>, _>>()?;

        // Loading first makes a missing privilege show as exactly that.
        let mut ebpf = EbpfLoader::new()
            .load(crate::EBPF_OBJECT)
            .map_err(|e| DataplaneError::bpf("loading the XDP object", e))?;

        bpffs::ensure_mounted(&config.bpffs_root)?;
        let pin_dir = config.pin_dir();
        prepare_pin_dir(&pin_dir)?;
        for name in maps::ALL {
            let map = ebpf.map(name).ok_or_else(|| DataplaneError::Bpf {
                action: format!("finding map {name}"),
                source: "the embedded object does not declare it".into(),
            })?;
            map.pin(pin_dir.join(name))
                .map_err(|e| DataplaneError::bpf(format!("pinning map {name}"), e))?;
        }

        let program = xdp_program(&mut ebpf)?;
        program
            .load()
            .map_err(|e| DataplaneError::bpf("loading the XDP program into the kernel", e))?;

        let l4_maps =
            crate::l4::maps::L4Maps::take(&mut ebpf).map_err(|e| DataplaneError::Bpf {
                action: "opening the L4 maps".into(),
                source: Box::new(e),
            })?;
        let mut dataplane = Self {
            ebpf,
            l4_maps: Some(l4_maps),
            pin_dir,
            attachments: Vec::new(),
        };
        for (interface, index) in if_indexes {
            let attachment = dataplane.attach(&interface, index, config.mode)?;
            tracing::info!(interface, mode = %attachment.mode, "XDP program attached");
            dataplane.attachments.push(attachment);
        }
        Ok(dataplane)
    }

    fn attach(
        &mut self,
        interface: &str,
        index: u32,
        mode: AttachMode,
    ) -> Result<Attachment, DataplaneError> {
        let program = xdp_program(&mut self.ebpf)?;
        let attach = |program: &mut Xdp, mode: AttachedMode| {
            let xdp_mode = match mode {
                AttachedMode::Driver => XdpMode::Driver,
                AttachedMode::Skb => XdpMode::Skb,
            };
            program.attach(index, xdp_mode).map(|link| Attachment {
                interface: interface.to_owned(),
                mode,
                link,
            })
        };
        let action = |mode| format!("attaching XDP in {mode} mode to {interface}");
        match mode {
            AttachMode::Driver => attach(program, AttachedMode::Driver)
                .map_err(|e| DataplaneError::bpf(action(AttachedMode::Driver), e)),
            AttachMode::Skb => attach(program, AttachedMode::Skb)
                .map_err(|e| DataplaneError::bpf(action(AttachedMode::Skb), e)),
            AttachMode::Auto => match attach(program, AttachedMode::Driver) {
                Ok(attachment) => Ok(attachment),
                Err(driver_err) => {
                    let driver_err = DataplaneError::bpf(action(AttachedMode::Driver), driver_err);
                    if matches!(driver_err, DataplaneError::NotPermitted { .. }) {
                        return Err(driver_err);
                    }
                    tracing::warn!(
                        interface,
                        error = %driver_err,
                        "driver-mode XDP unavailable, falling back to skb (generic) mode, which is slower"
                    );
                    attach(program, AttachedMode::Skb)
                        .map_err(|e| DataplaneError::bpf(action(AttachedMode::Skb), e))
                }
            },
        }
    }

    /// The L4 maps, for the configuration sync (once).
    pub fn take_l4_maps(&mut self) -> Option<crate::l4::maps::L4Maps> {
        self.l4_maps.take()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Detaches from every interface and removes the pinned maps.
    pub fn shutdown(mut self) -> Result<(), DataplaneError> {
        let program = xdp_program(&mut self.ebpf)?;
        for attachment in self.attachments.drain(..) {
            program.detach(attachment.link).map_err(|e| {
                DataplaneError::bpf(format!("detaching XDP from {}", attachment.interface), e)
            })?;
            tracing::info!(interface = attachment.interface, "XDP program detached");
        }
        remove_pin_dir(&self.pin_dir)
    }
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

/// Creates the pin directory, clearing pins a crashed predecessor left. The
/// instance lock guarantees no live elb of this name owns them.
fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
        action: "creating",
        path: dir.to_owned(),
        source,
    })?;
    for name in maps::ALL {
        let path = dir.join(name);
        if path.exists() {
            tracing::warn!(path = %path.display(), "removing a stale pinned map left by a previous elb");
            std::fs::remove_file(&path).map_err(|source| DataplaneError::PinDir {
                action: "removing stale pin",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn remove_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    for name in maps::ALL {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::PinDir {
                    action: "unpinning",
                    path,
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::PinDir {
            action: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
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
