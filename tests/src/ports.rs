//! Free loopback ports for servers a test starts.
use std::net::TcpListener;

/// A port that was free a moment ago (bind to :0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
