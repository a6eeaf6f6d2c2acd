//! Puts a loaded program's maps back as they were right after it was
//! loaded, so that test fixtures can reuse one verified program: the
//! verifier takes about 4 s per load of `elb_xdp`, which every XDP fixture
//! test paid.
//!
//! Hash-like maps are emptied, arrays get back every slot's bytes as
//! loaded, map-in-map arrays lose their inner maps, and frozen read-only
//! maps (`.rodata`) are left alone. A map type without a rule here is an
//! error, not skipped: a new kind of map must say how it resets.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{MapFd, MapInfo, MapType};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `map_flags` of a map the program may only read (`.rodata`, frozen).
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// Every map of one loaded program, as it was when [`MapSnapshot::take`]
/// ran.
pub struct MapSnapshot {
    maps: Vec<Saved>,
}

struct Saved {
    name: String,
    fd: MapFd,
    key_size: usize,
    rule: Rule,
}

enum Rule {
    /// Hash maps, LRU hash maps, LPM tries: empty when loaded.
    Empty,
    /// Arrays and per-CPU arrays: each slot's bytes (`value_len` per slot).
    Slots { value_len: usize, bytes: Vec<u8> },
    /// Arrays of maps: no inner map when loaded.
    NoInnerMaps { slots: u32 },
    /// Frozen, read-only for the program: cannot have changed.
    Frozen,
}

impl MapSnapshot {
    /// Reads the maps with these ids (a program's `map_ids`), which must be
    /// as loaded.
    pub fn take(map_ids: &[u32]) -> Result<Self> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?
            .get() as usize;
        let mut maps = Vec::new();
        for &id in map_ids {
            let info = MapInfo::from_id(id).with_context(|| format!("map id {id}"))?;
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let fd = info.fd().with_context(|| format!("map {name}: fd"))?;
            let key_size = info.key_size() as usize;
            let map_type = info
                .map_type()
                .with_context(|| format!("map {name}: type"))?;
            let rule = if info.map_flags() & BPF_F_RDONLY_PROG != 0 {
                Rule::Frozen
            } else {
                match map_type {
                    MapType::Hash | MapType::LruHash | MapType::LpmTrie => Rule::Empty,
                    MapType::Array | MapType::PerCpuArray => {
                        let value_len = if map_type == MapType::PerCpuArray {
                            (info.value_size() as usize).div_ceil(8) * 8 * cpus
                        } else {
                            info.value_size() as usize
                        };
                        let raw = fd.as_fd().as_raw_fd();
                        let mut bytes = vec![0u8; value_len * info.max_entries() as usize];
                        for (slot, value) in bytes.chunks_mut(value_len).enumerate() {
                            lookup(raw, &(slot as u32).to_ne_bytes(), value)
                                .with_context(|| format!("map {name}: reading slot {slot}"))?;
                        }
                        Rule::Slots { value_len, bytes }
                    }
                    MapType::ArrayOfMaps => Rule::NoInnerMaps {
                        slots: info.max_entries(),
                    },
                    other => bail!("map {name}: no reset rule for a map of type {other:?}"),
                }
            };
            maps.push(Saved {
                name,
                fd,
                key_size,
                rule,
            });
        }
        Ok(Self { maps })
    }

    /// Puts every map back as it was taken, then checks that it is.
    pub fn restore(&self) -> Result<()> {
        for map in &self.maps {
            map.restore()
                .with_context(|| format!("restoring map {}", map.name))?;
        }
        Ok(())
    }
}

impl Saved {
    fn restore(&self) -> Result<()> {
        let fd = self.fd.as_fd().as_raw_fd();
        match &self.rule {
            Rule::Frozen => {}
            Rule::Empty => {
                // Every key first, then the deletes: a walk from a deleted
                // key starts over from the first bucket.
                let mut keys = Vec::new();
                let mut key = vec![0u8; self.key_size];
                let mut first = true;
                loop {
                    let mut next = vec![0u8; self.key_size];
                    let found = next_key(fd, (!first).then_some(key.as_slice()), &mut next)?;
                    if !found {
                        break;
                    }
                    keys.push(next.clone());
                    key = next;
                    first = false;
                }
                for key in &keys {
                    delete(fd, key)?;
                }
                let mut next = vec![0u8; self.key_size];
                ensure!(
                    !next_key(fd, None, &mut next)?,
                    "still has entries after the reset"
                );
            }
            Rule::Slots { value_len, bytes } => {
                let mut now = vec![0u8; *value_len];
                for (slot, was) in bytes.chunks(*value_len).enumerate() {
                    let key = (slot as u32).to_ne_bytes();
                    lookup(fd, &key, &mut now)?;
                    if now != was {
                        update(fd, &key, was)?;
                        lookup(fd, &key, &mut now)?;
                        ensure!(now == was, "slot {slot} did not take its loaded value");
                    }
                }
            }
            Rule::NoInnerMaps { slots } => {
                for slot in 0..*slots {
                    match delete(fd, &slot.to_ne_bytes()) {
                        Ok(()) => {}
                        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(err) => return Err(err).context(format!("slot {slot}")),
                    }
                }
            }
        }
        Ok(())
    }
}

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, fd: RawFd, key: *const u8, value: *const u8) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for these commands; the key
    // and value buffers are the map's key and value sizes (callers' duty).
    unsafe { elb_userspace::sys::bpf::bpf(cmd, &mut attr) }.map(drop)
}

fn lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    bpf(BPF_MAP_LOOKUP_ELEM, fd, key.as_ptr(), value.as_mut_ptr())
}

fn update(fd: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    bpf(BPF_MAP_UPDATE_ELEM, fd, key.as_ptr(), value.as_ptr())
}

fn delete(fd: RawFd, key: &[u8]) -> io::Result<()> {
    bpf(BPF_MAP_DELETE_ELEM, fd, key.as_ptr(), std::ptr::null())
}

/// The key after `key` (the first with `None`) into `next`; false at the end.
fn next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    match bpf(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr()) {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}
