//! UDP sessions: one per client address, on the server its first datagram
//! picked, until it has been idle for the XDP program's UDP timeout. Pure:
//! time is passed in as milliseconds of a monotonic [`Clock`].
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Milliseconds since the clock was made.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// When a session last carried a datagram, either way. Shared with the task
/// relaying the server's replies, which refreshes it too.
#[derive(Clone, Debug, Default)]
pub struct LastSeen(Arc<AtomicU64>);

impl LastSeen {
    pub fn new(now_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now_ms)))
    }

    pub fn touch(&self, now_ms: u64) {
        self.0.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Session<V> {
    pub value: V,
    pub seen: LastSeen,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the UDP session table is full ({capacity} sessions)")]
pub struct TableFull {
    pub capacity: usize,
}

/// Sessions by client address, at most `capacity` of them.
#[derive(Debug)]
pub struct SessionTable<V> {
    sessions: HashMap<SocketAddr, Session<V>>,
    capacity: usize,
}

impl<V> SessionTable<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, client: &SocketAddr) -> Option<&Session<V>> {
        self.sessions.get(client)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.sessions.len() >= self.capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a session (replacing one of the same client).
    pub fn insert(&mut self, client: SocketAddr, session: Session<V>) -> Result<(), TableFull> {
        if self.is_full() && !self.sessions.contains_key(&client) {
            return Err(TableFull {
                capacity: self.capacity,
            });
        }
        self.sessions.insert(client, session);
        Ok(())
    }

    pub fn remove(&mut self, client: &SocketAddr) -> Option<Session<V>> {
        self.sessions.remove(client)
    }

    /// Removes and returns the sessions idle for `idle_ms` or longer.
    pub fn expire(&mut self, now_ms: u64, idle_ms: u64) -> Vec<(SocketAddr, V)> {
        self.remove_where(|s| now_ms.saturating_sub(s.seen.get()) >= idle_ms)
    }

    /// Removes and returns the sessions `over` says have ended.
    pub fn remove_where(&mut self, over: impl Fn(&Session<V>) -> bool) -> Vec<(SocketAddr, V)> {
        let ended: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| over(s))
            .map(|(client, _)| *client)
            .collect();
        ended
            .into_iter()
            .filter_map(|client| self.sessions.remove(&client).map(|s| (client, s.value)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 50, 0, 2], port))
    }

    fn session(value: u32, now: u64) -> Session<u32> {
        Session {
            value,
            seen: LastSeen::new(now),
        }
    }

    #[test]
    fn idle_sessions_expire_and_active_ones_stay() {
        let mut table = SessionTable::new(10);
        table.insert(client(1), session(1, 0)).expect("room");
        table.insert(client(2), session(2, 0)).expect("room");
        // Client 2's server answered at t=20 s (the reply task touches it).
        table.get(&client(2)).expect("session").seen.touch(20_000);
        let expired = table.expire(29_999, 30_000);
        assert!(expired.is_empty());
        let expired = table.expire(30_000, 30_000);
        assert_eq!(expired, [(client(1), 1)]);
        assert_eq!(table.len(), 1);
        assert!(table.expire(49_999, 30_000).is_empty());
        assert_eq!(table.expire(50_000, 30_000), [(client(2), 2)]);
        assert!(table.is_empty());
    }

    #[test]
    fn ended_sessions_are_removed_and_returned_whatever_their_age() {
        let mut table = SessionTable::new(10);
        for n in 1..=4 {
            table.insert(client(n), session(n.into(), 0)).expect("room");
        }
        let mut ended = table.remove_where(|s| s.value % 2 == 0);
        ended.sort_unstable();
        assert_eq!(ended, [(client(2), 2), (client(4), 4)]);
        assert_eq!(table.len(), 2);
        assert!(table.get(&client(1)).is_some() && table.get(&client(3)).is_some());
    }

    #[test]
    fn touch_never_goes_back_in_time() {
        let seen = LastSeen::new(100);
        seen.touch(50);
        assert_eq!(seen.get(), 100);
        seen.touch(150);
        assert_eq!(seen.get(), 150);
    }

    #[test]
    fn a_full_table_refuses_new_clients_but_not_known_ones() {
        let mut table = SessionTable::new(2);
        table.insert(client(1), session(1, 0)).expect("room");
        table.insert(client(2), session(2, 0)).expect("room");
        assert!(table.is_full());
        assert_eq!(
            table.insert(client(3), session(3, 0)),
            Err(TableFull { capacity: 2 })
        );
        table.insert(client(2), session(22, 0)).expect("replace");
        assert_eq!(table.get(&client(2)).expect("session").value, 22);
        // Expiry makes room again.
        table.expire(30_000, 30_000);
        table
            .insert(client(3), session(3, 30_000))
            .expect("room after expiry");
    }
}
