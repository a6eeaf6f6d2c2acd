//! IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a single
//! address), for admin access control and the XDP deny-list.
use std::{fmt, net::IpAddr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8): {reason}")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl Cidr {
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                masked(u32::from(a) as u128, 32, self.prefix_len) == u32::from(net) as u128
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                masked(u128::from(a), 128, self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(bits: u128, width: u8, prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        return 0;
    }
    let shift = width - prefix_len;
    (bits >> shift) << shift
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, CidrError> {
        let error = |reason| CidrError {
            input: input.to_owned(),
            reason,
        };
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| error("invalid address"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| error("invalid prefix length"))?,
        };
        let network = match addr {
            IpAddr::V4(v4) => {
                IpAddr::V4((masked(u32::from(v4) as u128, 32, prefix_len) as u32).into())
            }
            IpAddr::V6(v6) => IpAddr::V6(masked(u128::from(v6), 128, prefix_len).into()),
        };
        if network != addr {
            return Err(error("host bits are set after the prefix"));
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect(s)
    }

    #[test]
    fn contains_v4_and_v6() {
        assert!(cidr("10.0.0.0/8").contains("10.255.1.2".parse().expect("ip")));
        assert!(!cidr("10.0.0.0/8").contains("11.0.0.1".parse().expect("ip")));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().expect("ip")));
        assert!(cidr("fd00::/8").contains("fd12::1".parse().expect("ip")));
        assert!(!cidr("fd00::/8").contains("fe80::1".parse().expect("ip")));
        assert!(cidr("192.0.2.7").contains("192.0.2.7".parse().expect("ip")));
        assert!(!cidr("10.0.0.0/8").contains("fd00::1".parse().expect("ip")));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        assert!(cidr("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn bad_input_is_named() {
        for (bad, reason) in [
            ("10.0.0.0/33", "invalid prefix length"),
            ("10.0.0.1/8", "host bits"),
            ("ten/8", "invalid address"),
            ("::/129", "invalid prefix length"),
        ] {
            let err = bad.parse::<Cidr>().expect_err(bad).to_string();
            assert!(err.contains(bad) && err.contains(reason), "{err}");
        }
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(cidr("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
    }
}
