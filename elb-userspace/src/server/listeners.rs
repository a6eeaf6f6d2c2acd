//! The HTTP listening sockets: for each address, one socket per worker,
//! bound with `SO_REUSEPORT`. The kernel then spreads new connections
//! evenly over the workers by their addresses' hash. With one shared
//! socket, whichever worker woke first accepted a whole burst: wrk's 64
//! connections all landed on one worker in some runs, leaving a core idle.
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::takeover::{HandoverSockets, Registration, SocketKind, SocketTag, spread};

/// Pending connections per socket (the kernel caps it at somaxconn).
const BACKLOG: i32 = 1024;

/// Why an address could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Every worker's sockets, in the order of the addresses.
#[derive(Debug)]
pub struct Listeners {
    addrs: Vec<SocketAddr>,
    per_worker: Vec<Vec<TcpListener>>,
}

impl Listeners {
    /// Binds `workers` sockets on each address. An address another process
    /// already listens on is an error, even if that process also set
    /// `SO_REUSEPORT`: elb would silently get only part of the connections.
    pub fn bind(addrs: &[SocketAddr], workers: usize) -> Result<Self, BindError> {
        Self::open(addrs, workers, &HandoverSockets::default())
    }

    /// As [`Listeners::bind`], but an address whose sockets came in a
    /// takeover serves on those (they are the old process's, shared: no
    /// queued connection is lost), plus fresh ones in the same
    /// `SO_REUSEPORT` group if there are more workers than sockets.
    pub fn open(
        addrs: &[SocketAddr],
        workers: usize,
        sockets: &HandoverSockets,
    ) -> Result<Self, BindError> {
        let workers = workers.max(1);
        let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut bound_addrs = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let error = |source| BindError { addr, source };
            let received = sockets.take(addr, false);
            if !received.is_empty() {
                let mut group: Vec<TcpListener> =
                    received.into_iter().map(TcpListener::from).collect();
                for socket in &group {
                    socket.set_nonblocking(true).map_err(error)?;
                }
                while group.len() < workers {
                    group.push(listen(addr).map_err(error)?);
                }
                for (mine, more) in per_worker.iter_mut().zip(spread(group, workers)) {
                    mine.extend(more);
                }
                bound_addrs.push(addr);
                continue;
            }
            // A socket without SO_REUSEPORT cannot share the address with
            // anyone: binding it first proves the address is free, and it
            // resolves port 0 to the one port every worker then uses.
            let probe = new_socket(addr, false).map_err(error)?;
            probe.bind(&addr.into()).map_err(error)?;
            let bound = probe
                .local_addr()
                .map_err(error)?
                .as_socket()
                .unwrap_or(addr);
            drop(probe);
            for sockets in &mut per_worker {
                sockets.push(listen(bound).map_err(error)?);
            }
            bound_addrs.push(bound);
        }
        Ok(Self {
            addrs: bound_addrs,
            per_worker,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(self.addrs.clone())
    }

    /// Records every socket for the next takeover, as `kind` (and the
    /// configured listener's `name`).
    pub fn register(
        &self,
        sockets: &HandoverSockets,
        kind: SocketKind,
        name: Option<&str>,
    ) -> Vec<Registration> {
        self.per_worker
            .iter()
            .flatten()
            .filter_map(|socket| {
                let addr = socket.local_addr().ok()?;
                let tag = SocketTag {
                    kind,
                    addr,
                    name: name.map(str::to_owned),
                };
                sockets.register(tag, socket)
            })
            .collect()
    }

    /// One worker's sockets each, one worker at a time.
    pub fn into_per_worker(self) -> Vec<Vec<TcpListener>> {
        self.per_worker
    }
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's TcpListener does: a restart must not wait for TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(socket)
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr, true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn every_worker_listens_on_the_same_resolved_port() {
        let listeners = Listeners::bind(&[loopback_any_port()], 3).expect("bind");
        let addrs = listeners.local_addrs().expect("addrs");
        assert_eq!(addrs.len(), 1);
        assert_ne!(addrs[0].port(), 0);
        let per_worker = listeners.into_per_worker();
        assert_eq!(per_worker.len(), 3);
        for sockets in &per_worker {
            assert_eq!(sockets.len(), 1);
            assert_eq!(sockets[0].local_addr().expect("addr"), addrs[0]);
        }
    }

    #[test]
    fn an_address_in_use_is_named_even_if_its_owner_shares_ports() {
        // Another process's reuseport listener would otherwise quietly take
        // part of the connections.
        let other = Listeners::bind(&[loopback_any_port()], 1).expect("bind");
        let taken = other.local_addrs().expect("addrs")[0];
        let err = Listeners::bind(&[taken], 2).expect_err("address is in use");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot listen on {taken}: ")),
            "{message}"
        );
        let plain = std::net::TcpListener::bind(loopback_any_port()).expect("bind");
        let taken = plain.local_addr().expect("addr");
        assert!(Listeners::bind(&[taken], 2).is_err());
    }

    #[test]
    fn connections_spread_over_the_workers() {
        let listeners = Listeners::bind(&[loopback_any_port()], 2).expect("bind");
        let addr = listeners.local_addrs().expect("addrs")[0];
        let per_worker = listeners.into_per_worker();
        // Connections from 64 client ports: the kernel hashes each to one
        // socket; all 64 on one side would mean the sockets are not shared.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let accepted: Vec<usize> = per_worker
            .iter()
            .map(|sockets| std::iter::from_fn(|| sockets[0].accept().ok()).count())
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        assert!(
            accepted.iter().all(|&n| n >= 12),
            "connections per worker: {accepted:?}"
        );
    }
}
