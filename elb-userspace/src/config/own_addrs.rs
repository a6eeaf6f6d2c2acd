//! elb's own listening addresses, to refuse a server that would send
//! requests straight back to elb (a proxy loop).
//!
//! A server `host:port` reaches a listener on the same port when its IP is
//! the listener's, or, for a wildcard listener (`0.0.0.0:P`, `[::]:P`),
//! when its IP is any address of this host: loopback (`127.0.0.0/8`,
//! `::1`), `0.0.0.0`/`::` (which connect to this host), or an interface
//! address. `[::]` also takes IPv4, as Linux binds it dual-stack.
//!
//! Names: `localhost` and `*.localhost` always resolve to loopback (RFC
//! 6761 §6.3), so they are checked as loopback. Other names are not
//! resolved here: what a name resolves to can change after the write (the
//! pool resolves on every connect), so the run-time hop marker (`Via`, see
//! `proxy::via`) is what catches those loops.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

/// Whether an IP is one of this host's (non-loopback) addresses.
pub type IsLocal = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// A server that is elb itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{server} is elb's own listening address {listener}: requests sent there would come back \
     to elb in a loop"
)]
pub struct OwnAddrError {
    pub server: String,
    pub listener: SocketAddr,
}

#[derive(Clone)]
pub struct OwnAddrs {
    listen: Vec<SocketAddr>,
    is_local: IsLocal,
}

impl fmt::Debug for OwnAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnAddrs")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Default for OwnAddrs {
    /// No listener: nothing is refused (tools and unit tests).
    fn default() -> Self {
        Self::with_local(Vec::new(), Arc::new(|_| false))
    }
}

impl OwnAddrs {
    /// elb's bound listeners; this host's addresses are read from the
    /// interfaces at each check, so an address added later counts.
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        Self::with_local(listen, Arc::new(host_has_address))
    }

    pub fn with_local(listen: Vec<SocketAddr>, is_local: IsLocal) -> Self {
        Self { listen, is_local }
    }

    /// These addresses plus `more` (the configured listeners), checked
    /// against the same host addresses.
    pub fn with_more(&self, more: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut listen = self.listen.clone();
        listen.extend(more);
        Self::with_local(listen, Arc::clone(&self.is_local))
    }

    /// Only `addr`, checked against the same host addresses: which
    /// servers a new listener would make loop.
    pub fn only(&self, addr: SocketAddr) -> Self {
        Self::with_local(vec![addr], Arc::clone(&self.is_local))
    }

    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The listener `server` (`host:port`, already validated) would reach,
    /// if any.
    pub fn reached_by(&self, server: &str) -> Option<SocketAddr> {
        if self.listen.is_empty() {
            return None;
        }
        let (host, port) = split_host_port(server)?;
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) if is_localhost_name(host) => vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            Err(_) => return None,
        };
        ips.into_iter().find_map(|ip| self.listener_for(ip, port))
    }

    /// Refuses `server` (`host:port`) if it is one of elb's listeners.
    pub fn check(&self, server: &str) -> Result<(), OwnAddrError> {
        match self.reached_by(server) {
            Some(listener) => Err(OwnAddrError {
                server: server.to_owned(),
                listener,
            }),
            None => Ok(()),
        }
    }

    /// [`OwnAddrs::check`] for a rule document's servernames: those that
    /// are `host:port` are used as addresses when no upstream has that
    /// name, which may change after the write, so all of them are checked.
    pub fn check_servernames<'a>(
        &self,
        servernames: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), OwnAddrError> {
        servernames
            .into_iter()
            .filter(|name| crate::upstream::validate_server_address(name).is_ok())
            .try_for_each(|name| self.check(name))
    }

    fn listener_for(&self, ip: IpAddr, port: u16) -> Option<SocketAddr> {
        let ip = canonical(ip);
        self.listen.iter().copied().find(|listen| {
            listen.port() == port
                && match listen.ip().to_canonical() {
                    IpAddr::V4(any) if any.is_unspecified() => {
                        ip.is_ipv4() && self.is_this_host(ip)
                    }
                    // Dual-stack: an IPv6 wildcard takes IPv4 as well.
                    IpAddr::V6(any) if any.is_unspecified() => self.is_this_host(ip),
                    bound => bound == ip,
                }
        })
    }

    fn is_this_host(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || (self.is_local)(ip)
    }
}

/// `::ffff:a.b.c.d` is IPv4 on the wire; `0.0.0.0` and `::` as a
/// destination connect to this host's loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// `host` (brackets removed) and port of a validated `host:port`.
fn split_host_port(server: &str) -> Option<(&str, u16)> {
    let (host, port) = server.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// `localhost`, `x.localhost`, with or without the root dot, any case.
fn is_localhost_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let lower = host.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost")
}

/// Whether any interface of this host has `ip` (getifaddrs).
pub fn host_has_address(ip: IpAddr) -> bool {
    match crate::l4::ifaddrs::all_addresses() {
        Ok(addrs) => addrs.contains(&ip),
        Err(error) => {
            tracing::warn!(%error, "cannot list this host's addresses");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(listen: &[&str], local: &'static [&'static str]) -> OwnAddrs {
        let listen = listen.iter().map(|a| a.parse().expect("addr")).collect();
        OwnAddrs::with_local(
            listen,
            Arc::new(move |ip| local.iter().any(|l| l.parse::<IpAddr>() == Ok(ip))),
        )
    }

    fn reached(own: &OwnAddrs, server: &str) -> Option<String> {
        own.reached_by(server).map(|a| a.to_string())
    }

    #[test]
    fn a_specific_listener_is_reached_by_its_own_address_only() {
        let own = own(&["127.0.0.1:18080"], &["10.0.0.5"]);
        assert_eq!(
            reached(&own, "127.0.0.1:18080").as_deref(),
            Some("127.0.0.1:18080")
        );
        assert_eq!(
            reached(&own, "[::ffff:127.0.0.1]:18080").as_deref(),
            Some("127.0.0.1:18080")
        );
        assert!(reached(&own, "0.0.0.0:18080").is_some(), "0.0.0.0 is here");
        assert!(reached(&own, "localhost:18080").is_some());
        assert!(reached(&own, "LocalHost.:18080").is_some());
        assert!(reached(&own, "api.localhost:18080").is_some());
        assert_eq!(reached(&own, "127.0.0.1:18081"), None);
        assert_eq!(reached(&own, "127.0.0.2:18080"), None);
        assert_eq!(reached(&own, "10.0.0.5:18080"), None);
        assert_eq!(reached(&own, "notlocalhost:18080"), None);
        assert_eq!(reached(&own, "example.com:18080"), None);
    }

    #[test]
    fn a_v4_wildcard_is_reached_by_any_v4_address_of_the_host() {
        let own = own(&["0.0.0.0:80"], &["10.0.0.5"]);
        for server in ["127.0.0.1:80", "127.9.9.9:80", "10.0.0.5:80", "0.0.0.0:80"] {
            assert_eq!(
                reached(&own, server).as_deref(),
                Some("0.0.0.0:80"),
                "{server}"
            );
        }
        assert!(reached(&own, "localhost:80").is_some());
        assert_eq!(reached(&own, "10.0.0.6:80"), None, "not this host");
        assert_eq!(reached(&own, "[::1]:80"), None, "IPv6 is not bound");
        assert_eq!(reached(&own, "10.0.0.5:81"), None);
    }

    #[test]
    fn a_v6_wildcard_takes_both_families() {
        let own = own(&["[::]:8080"], &["10.0.0.5", "fd00::5"]);
        for server in [
            "[::1]:8080",
            "[::]:8080",
            "[fd00::5]:8080",
            "127.0.0.1:8080",
            "10.0.0.5:8080",
        ] {
            assert!(reached(&own, server).is_some(), "{server}");
        }
        assert_eq!(reached(&own, "[fd00::6]:8080"), None);
    }

    #[test]
    fn checks_name_the_server_and_the_listener() {
        let own = own(&["127.0.0.1:18080"], &[]);
        let error = own.check("127.0.0.1:18080").expect_err("own address");
        let message = error.to_string();
        assert!(
            message.contains("127.0.0.1:18080 is elb's own listening address"),
            "{message}"
        );
        assert!(own.check("127.0.0.1:9").is_ok());
        // Upstream names are not addresses; a literal one is checked.
        assert!(own.check_servernames(["up1", "127.0.0.1:9"]).is_ok());
        assert!(own.check_servernames(["up1", "localhost:18080"]).is_err());
    }

    #[test]
    fn nothing_is_refused_without_listeners() {
        assert_eq!(reached(&OwnAddrs::default(), "127.0.0.1:80"), None);
    }

    #[test]
    fn the_real_host_has_its_loopback() {
        assert!(host_has_address("127.0.0.1".parse().expect("ip")));
        assert!(!host_has_address("192.0.2.77".parse().expect("ip")));
    }
}
