//! The generation numbers of `elb_l4_gen`. A flow entry caches its
//! deny-list check and its next hop together with the generation they were
//! made at; bumping a generation makes every flow do them again at its next
//! packet. The deny-list writer ([`super::maps::L4Maps::set_acl`]) bumps
//! [`GEN_ACL`], the route watcher ([`super::routes`]) bumps [`GEN_ROUTE`].
use std::os::fd::AsFd;

use aya::maps::{Array, Map, MapData, MapError};
use elb_common::{
    l4::{GEN_ACL, GEN_ROUTE, next_generation},
    maps,
};

use super::maps::{L4MapError, map_err};

/// A handle on `elb_l4_gen`. Each slot has one kind of writer; a lost
/// update between two writers of one slot (the old and the new elb during
/// a takeover) still changes the value, which is all a flow entry compares.
pub struct Generations {
    map: Map,
}

impl Generations {
    /// Wraps the map and makes sure no slot is 0: 0 is a flow entry's
    /// "never checked", so a map still at 0 would cache nothing.
    pub(crate) fn new(map: Map) -> Result<Self, L4MapError> {
        if !matches!(map, Map::Array(_)) {
            return Err(L4MapError::WrongType {
                name: maps::GENERATIONS,
                want: "array",
            });
        }
        let mut generations = Self { map };
        for slot in [GEN_ACL, GEN_ROUTE] {
            if generations.current(slot)? == 0 {
                generations.bump(slot)?;
            }
        }
        Ok(generations)
    }

    /// A second handle on the same map (a duplicated descriptor), for a
    /// task that bumps on its own.
    pub fn duplicate(&self) -> Result<Self, L4MapError> {
        let Map::Array(data) = &self.map else {
            return Err(L4MapError::WrongType {
                name: maps::GENERATIONS,
                want: "array",
            });
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| map_err(maps::GENERATIONS)(MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(maps::GENERATIONS))?;
        let map = Map::from_map_data(data).map_err(map_err(maps::GENERATIONS))?;
        Ok(Self { map })
    }

    /// The generation in `slot` ([`GEN_ACL`] or [`GEN_ROUTE`]).
    pub fn current(&self, slot: u32) -> Result<u32, L4MapError> {
        let array =
            Array::<&MapData, u32>::try_from(&self.map).map_err(map_err(maps::GENERATIONS))?;
        array.get(&slot, 0).map_err(map_err(maps::GENERATIONS))
    }

    /// Moves `slot` to its next generation; returns it.
    pub fn bump(&mut self, slot: u32) -> Result<u32, L4MapError> {
        let next = next_generation(self.current(slot)?);
        let mut array = Array::<&mut MapData, u32>::try_from(&mut self.map)
            .map_err(map_err(maps::GENERATIONS))?;
        array
            .set(slot, &next, 0)
            .map_err(map_err(maps::GENERATIONS))?;
        Ok(next)
    }

    /// After a deny-list change: established flows check their source again.
    pub fn bump_acl(&mut self) -> Result<u32, L4MapError> {
        self.bump(GEN_ACL)
    }

    /// After a route, neighbour or link change: established flows look
    /// their next hop up again.
    pub fn bump_route(&mut self) -> Result<u32, L4MapError> {
        self.bump(GEN_ROUTE)
    }
}
