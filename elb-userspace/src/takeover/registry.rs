//! Which listening sockets a process has, to hand them over
//! ([`SocketRegistry`], the old side), and the sockets a new process
//! received and has not used yet ([`Inherited`], the new side).
use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use super::SocketTag;

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// A duplicate of each socket, kept open while it is registered.
    sockets: BTreeMap<u64, (SocketTag, OwnedFd)>,
    /// Shutdown began: nothing is kept or registered any more.
    closed: bool,
}

/// The listening sockets a takeover would hand over. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct SocketRegistry {
    table: Arc<Mutex<Table>>,
}

/// A registered socket; dropping it (the listener stopped) takes it out
/// and closes the registry's duplicate.
pub struct Registration {
    table: Weak<Mutex<Table>>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
            table.sockets.remove(&self.id);
        }
    }
}

impl SocketRegistry {
    /// Keeps a duplicate of `socket`, labelled `tag`, until the returned
    /// registration is dropped.
    pub fn register(&self, tag: SocketTag, socket: impl AsFd) -> io::Result<Registration> {
        let duplicate = socket.as_fd().try_clone_to_owned()?;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let id = table.next;
        table.next += 1;
        if !table.closed {
            table.sockets.insert(id, (tag, duplicate));
        }
        Ok(Registration {
            table: Arc::downgrade(&self.table),
            id,
        })
    }

    /// Duplicates of every registered socket, for sending.
    pub fn snapshot(&self) -> io::Result<Vec<(SocketTag, OwnedFd)>> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .sockets
            .values()
            .map(|(tag, fd)| Ok((tag.clone(), fd.try_clone()?)))
            .collect()
    }

    /// At shutdown: closes the duplicates, so a listener its worker closed
    /// is really closed (clients are refused, not queued forever).
    pub fn close(&self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.closed = true;
        table.sockets.clear();
    }
}

/// The sockets received from the old process that no listener has taken
/// yet.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Mutex<Vec<(SocketTag, OwnedFd)>>,
}

impl Inherited {
    pub fn new(sockets: Vec<(SocketTag, OwnedFd)>) -> Self {
        Self {
            sockets: Mutex::new(sockets),
        }
    }

    /// Takes every received socket for `addr` of the same transport.
    pub fn take(&self, addr: SocketAddr, udp: bool) -> Vec<OwnedFd> {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *sockets)
            .into_iter()
            .partition(|(tag, _)| tag.addr == addr && tag.kind.is_udp() == udp);
        *sockets = kept;
        taken.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Closes what the configuration no longer uses, saying which.
    pub fn close_unclaimed(&self) {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        for (tag, _) in sockets.drain(..) {
            tracing::info!(
                kind = ?tag.kind,
                addr = %tag.addr,
                name = tag.name.as_deref().unwrap_or(""),
                "takeover: a socket of the old elb is not in this configuration; closed"
            );
        }
    }
}

/// What every listener opens its sockets through: the sockets received
/// in a takeover (taken first), and the registry it records them in for
/// the next one.
#[derive(Clone, Debug, Default)]
pub struct HandoverSockets {
    pub registry: SocketRegistry,
    pub inherited: Option<Arc<Inherited>>,
}

impl HandoverSockets {
    /// A TCP listener for `addr` that is not part of the configuration
    /// (`--metrics`, `--aws-api`): the socket a takeover handed over for
    /// it, or a new one; registered for the next takeover under `name`.
    /// Without this, a takeover's new elb could not bind the address the
    /// old one still holds.
    pub async fn tcp_listener(
        &self,
        addr: SocketAddr,
        name: &str,
    ) -> io::Result<(tokio::net::TcpListener, Option<Registration>)> {
        let listener = match self.take(addr, false).into_iter().next() {
            Some(fd) => {
                let inherited = std::net::TcpListener::from(fd);
                inherited.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(inherited)?
            }
            None => tokio::net::TcpListener::bind(addr).await?,
        };
        let tag = SocketTag {
            // TCP listening sockets are matched by address alone.
            kind: super::SocketKind::Listen,
            addr: listener.local_addr()?,
            name: Some(name.to_owned()),
        };
        let registration = self.register(tag, &listener);
        Ok((listener, registration))
    }

    /// The received sockets for `addr` of this transport, if any.
    pub fn take(&self, addr: SocketAddr, udp: bool) -> Vec<OwnedFd> {
        self.inherited
            .as_ref()
            .map_or_else(Vec::new, |inherited| inherited.take(addr, udp))
    }

    /// Records `socket` for the next takeover; a failure to duplicate
    /// it (out of descriptors) only costs that socket its handover.
    pub fn register(&self, tag: SocketTag, socket: impl AsFd) -> Option<Registration> {
        match self.registry.register(tag.clone(), socket) {
            Ok(registration) => Some(registration),
            Err(error) => {
                tracing::warn!(
                    addr = %tag.addr,
                    %error,
                    "cannot keep this socket for a takeover; a takeover binds it anew"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takeover::SocketKind;

    fn tag(kind: SocketKind, addr: &str) -> SocketTag {
        SocketTag {
            kind,
            addr: addr.parse().expect("addr"),
            name: None,
        }
    }

    #[test]
    fn a_registration_lives_until_dropped_and_close_empties_all() {
        let registry = SocketRegistry::default();
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let first = registry
            .register(tag(SocketKind::Listen, "127.0.0.1:1"), &socket)
            .expect("register");
        let _second = registry
            .register(tag(SocketKind::Listener, "127.0.0.1:2"), &socket)
            .expect("register");
        assert_eq!(registry.snapshot().expect("snapshot").len(), 2);
        drop(first);
        let left = registry.snapshot().expect("snapshot");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.kind, SocketKind::Listener);
        registry.close();
        assert!(registry.snapshot().expect("snapshot").is_empty());
    }

    #[test]
    fn inherited_sockets_match_by_address_and_transport() {
        let fd = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .into()
        };
        let inherited = Inherited::new(vec![
            (tag(SocketKind::Listen, "127.0.0.1:80"), fd()),
            (tag(SocketKind::Listen, "127.0.0.1:80"), fd()),
            (tag(SocketKind::L4Udp, "127.0.0.1:80"), fd()),
            (tag(SocketKind::L4Tcp, "127.0.0.1:81"), fd()),
        ]);
        let addr = "127.0.0.1:80".parse().expect("addr");
        assert_eq!(inherited.take(addr, false).len(), 2);
        assert!(inherited.take(addr, false).is_empty());
        assert_eq!(inherited.take(addr, true).len(), 1);
        inherited.close_unclaimed();
        assert!(
            inherited
                .take("127.0.0.1:81".parse().expect("addr"), false)
                .is_empty()
        );
    }
}
