//! Free loopback ports for servers a test starts.
use std::{
    hash::{BuildHasher, RandomState},
    net::{TcpListener, UdpSocket},
};

/// The lowest port handed out.
const FIRST: u16 = 10_000;

/// A loopback port that is free for TCP and UDP, picked at random below
/// the kernel's ephemeral range: a port from that range (bind to :0) can be
/// taken as the source port of any outgoing connection between the pick and
/// the server's bind, which made etcd fail with "address already in use"
/// in a full run.
pub fn free_port() -> u16 {
    let end = ephemeral_start().unwrap_or(32_768);
    let span = end.saturating_sub(FIRST);
    if span >= 1_000 {
        let random = RandomState::new();
        for attempt in 0u32..1_000 {
            let offset = random.hash_one(attempt) % u64::from(span);
            let port = FIRST + u16::try_from(offset).unwrap_or(0);
            if TcpListener::bind(("127.0.0.1", port)).is_ok()
                && UdpSocket::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    // No room below the ephemeral range: take one from it.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_are_bindable() {
        let end = ephemeral_start().unwrap_or(32_768);
        for _ in 0..50 {
            let port = free_port();
            assert!((FIRST..end).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("bindable");
        }
    }
}
