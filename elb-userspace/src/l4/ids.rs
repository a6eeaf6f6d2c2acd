//! Ids for map slots (services, servers). A released id is not handed out
//! again for a grace period: a packet that read an old Maglev table may
//! still look its server id up, and must find the old server there.
use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    time::{Duration, Instant},
};

pub const REUSE_GRACE: Duration = Duration::from_secs(2);

pub struct IdAllocator<K> {
    capacity: u32,
    assigned: HashMap<K, u32>,
    free: BTreeSet<u32>,
    released: Vec<(u32, Instant)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("all {capacity} {what} slots are in use")]
pub struct Exhausted {
    pub capacity: u32,
    pub what: &'static str,
}

impl<K: Eq + Hash + Clone> IdAllocator<K> {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            assigned: HashMap::new(),
            free: (0..capacity).collect(),
            released: Vec::new(),
        }
    }

    /// Records an id found in pinned maps (adoption after a restart).
    pub fn adopt(&mut self, key: K, id: u32) {
        if self.free.remove(&id) {
            self.assigned.insert(key, id);
        }
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.assigned.get(key).copied()
    }

    /// The key's id, assigning the lowest free one if it has none; the bool
    /// says whether it is new.
    pub fn assign(
        &mut self,
        key: &K,
        now: Instant,
        what: &'static str,
    ) -> Result<(u32, bool), Exhausted> {
        if let Some(id) = self.assigned.get(key) {
            return Ok((*id, false));
        }
        self.reclaim(now);
        let id = self.free.pop_first().ok_or(Exhausted {
            capacity: self.capacity,
            what,
        })?;
        self.assigned.insert(key.clone(), id);
        Ok((id, true))
    }

    /// Releases every id whose key `keep` rejects; returns them.
    pub fn release_unless(&mut self, now: Instant, keep: impl Fn(&K) -> bool) -> Vec<u32> {
        let gone: Vec<K> = self.assigned.keys().filter(|k| !keep(k)).cloned().collect();
        let mut ids = Vec::with_capacity(gone.len());
        for key in gone {
            if let Some(id) = self.assigned.remove(&key) {
                self.released.push((id, now));
                ids.push(id);
            }
        }
        ids
    }

    fn reclaim(&mut self, now: Instant) {
        let free = &mut self.free;
        self.released.retain(|(id, at)| {
            let ready = now.duration_since(*at) >= REUSE_GRACE;
            if ready {
                free.insert(*id);
            }
            !ready
        });
    }

    /// The id `key` holds, if any.
    pub fn id_of(&self, key: &K) -> Option<u32> {
        self.assigned.get(key).copied()
    }

    pub fn assigned(&self) -> impl Iterator<Item = (&K, u32)> {
        self.assigned.iter().map(|(k, id)| (k, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_not_reused_within_the_grace_period() {
        let t0 = Instant::now();
        let mut ids = IdAllocator::new(2);
        assert_eq!(ids.assign(&"a", t0, "server"), Ok((0, true)));
        assert_eq!(ids.assign(&"a", t0, "server"), Ok((0, false)));
        assert_eq!(ids.assign(&"b", t0, "server"), Ok((1, true)));
        assert_eq!(
            ids.assign(&"c", t0, "server"),
            Err(Exhausted {
                capacity: 2,
                what: "server"
            })
        );
        assert_eq!(ids.release_unless(t0, |k| *k != "a"), vec![0]);
        assert!(
            ids.assign(&"c", t0 + Duration::from_millis(100), "server")
                .is_err()
        );
        assert_eq!(ids.assign(&"c", t0 + REUSE_GRACE, "server"), Ok((0, true)));
    }

    #[test]
    fn adopted_ids_are_kept() {
        let mut ids = IdAllocator::new(4);
        ids.adopt("x", 2);
        assert_eq!(ids.get(&"x"), Some(2));
        assert_eq!(ids.assign(&"y", Instant::now(), "service"), Ok((0, true)));
        assert_eq!(
            ids.assign(&"z", Instant::now(), "service").map(|r| r.0),
            Ok(1)
        );
        assert_eq!(
            ids.assign(&"w", Instant::now(), "service").map(|r| r.0),
            Ok(3)
        );
    }
}
