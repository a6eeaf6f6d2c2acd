//! Resource guards: elb must never run out of file descriptors. The fd
//! limit is raised at start ([`fd`]); client connections
//! ([`ClientLimit`]) and upstream connections ([`UpstreamLimits`]) are
//! counted against budgets that fit in it, and beyond them elb answers 503.
//! Each limit logs once when it is first hit and once when it clears
//! ([`Episode`]), not once per refused request.
mod client;
mod episode;
pub mod fd;
pub mod upstream;

pub use client::{ClientLimit, ClientPermit, RefusalPermit};
pub use episode::{Episode, Throttle};
pub use upstream::{UpstreamLimits, UpstreamPermit};

/// A client connection's slot, carried in an upgrade request's extensions:
/// hyper's connection task ends at the upgrade, and the tunnel that goes
/// on with the client's descriptor holds the slot from then on.
#[derive(Debug, Clone)]
pub struct ClientSlot(pub std::sync::Arc<ClientPermit>);

/// File descriptors kept out of the connection budgets: listeners, the
/// state file, etcd and statsd sockets, epoll, the L4 userspace proxy's
/// control sockets, and the brief fd of a refused client.
pub const RESERVED_FDS: u64 = 512;

/// The budgets that fit in `fd_limit` descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Open client connections.
    pub clients: usize,
    /// Open upstream connections, all servers together (idle ones count).
    pub upstream_total: usize,
}

impl Budgets {
    /// Each client connection needs at most one upstream connection at a
    /// time, so by default the fds left after [`RESERVED_FDS`] are split in
    /// two halves. An explicit `max_clients` leaves the rest upstream.
    pub fn for_fd_limit(fd_limit: u64, max_clients: Option<usize>) -> Self {
        let usable = usize::try_from(fd_limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        let clients = max_clients.unwrap_or((usable / 2).max(1));
        Self {
            clients,
            upstream_total: usable.saturating_sub(clients),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_fit_in_the_fd_limit() {
        assert_eq!(
            Budgets::for_fd_limit(1024, None),
            Budgets {
                clients: 256,
                upstream_total: 256
            }
        );
        assert_eq!(
            Budgets::for_fd_limit(1 << 20, Some(1000)),
            Budgets {
                clients: 1000,
                upstream_total: (1 << 20) - 512 - 1000
            }
        );
        // Too small a limit or too many clients: no room left upstream,
        // which elb warns about at start.
        assert_eq!(Budgets::for_fd_limit(100, None).clients, 1);
        assert_eq!(Budgets::for_fd_limit(1024, Some(5000)).upstream_total, 0);
    }
}
