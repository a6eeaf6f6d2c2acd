//! XDP's NAT source ports (`--nat-ports`) must never be ports the host
//! hands out to its own connections: a reply to such a connection would be
//! taken for a NAT'd flow's reply. So the XDP data plane only starts when
//! the host's ephemeral range (`net.ipv4.ip_local_port_range`, which IPv6
//! shares) avoids the NAT range, or the overlap is reserved
//! (`net.ipv4.ip_local_reserved_ports`).
//!
//! Without `--nat-ports` the range is the largest run of unprivileged
//! ports (1024-65535) clear of the ephemeral range: 1024-32767 on a host
//! with Linux's default 32768-60999. It follows the host: narrowing the
//! ephemeral range (e.g. to "61000 65535") widens it at the next start.
//!
//! The check applies whatever the SNAT addresses. An address the host does
//! not own cannot collide with the host's connections, but services
//! without `snat` NAT to the host's own interface address, and services
//! come and go while the range is fixed at load. For a wider range on
//! dedicated SNAT addresses, reserve it for the host.
use std::ops::RangeInclusive;

use elb_common::nat::NatPorts;

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// Ports below this are privileged: services listen there, never NAT.
const FIRST_UNPRIVILEGED: u16 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PortRangeError {
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {text:?}")]
    Parse { path: &'static str, text: String },
    #[error(
        "the host's ephemeral ports {host_min}-{host_max} (net.ipv4.ip_local_port_range) overlap \
         elb's XDP NAT ports {nat} (--nat-ports), so the host's own connections could be taken \
         for NAT'd flows; give --nat-ports a range outside {host_min}-{host_max}, move the \
         ephemeral range (`sysctl -w net.ipv4.ip_local_port_range=\"61000 65535\"`) or reserve \
         the NAT ports (`sysctl -w net.ipv4.ip_local_reserved_ports={nat}`)"
    )]
    Overlap {
        nat: NatPorts,
        host_min: u16,
        host_max: u16,
    },
    #[error(
        "no unprivileged port is outside the host's ephemeral ports {host_min}-{host_max} \
         (net.ipv4.ip_local_port_range), so elb has no XDP NAT ports; narrow the ephemeral \
         range or give --nat-ports and reserve it (net.ipv4.ip_local_reserved_ports)"
    )]
    NoDefault { host_min: u16, host_max: u16 },
}

/// The NAT ports to load the program with: `configured` once checked
/// against this network namespace's settings, else the default.
pub fn check_host(configured: Option<NatPorts>) -> Result<NatPorts, PortRangeError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| PortRangeError::Read { path, source })
    };
    let range_text = read(LOCAL_PORT_RANGE)?;
    let range = parse_range(&range_text).ok_or_else(|| PortRangeError::Parse {
        path: LOCAL_PORT_RANGE,
        text: range_text.trim().to_owned(),
    })?;
    let reserved_text = read(RESERVED_PORTS)?;
    let reserved = parse_port_list(&reserved_text).ok_or_else(|| PortRangeError::Parse {
        path: RESERVED_PORTS,
        text: reserved_text.trim().to_owned(),
    })?;
    match configured {
        Some(nat) => check(nat, range, &reserved).map(|()| nat),
        None => default_range(range.clone(), &reserved).ok_or(PortRangeError::NoDefault {
            host_min: *range.start(),
            host_max: *range.end(),
        }),
    }
}

/// Ok when no port of `nat` is both in `ephemeral` and unreserved.
pub fn check(
    nat: NatPorts,
    ephemeral: RangeInclusive<u16>,
    reserved: &[RangeInclusive<u16>],
) -> Result<(), PortRangeError> {
    if (nat.min()..=nat.max()).any(|port| exposed(port, &ephemeral, reserved)) {
        return Err(PortRangeError::Overlap {
            nat,
            host_min: *ephemeral.start(),
            host_max: *ephemeral.end(),
        });
    }
    Ok(())
}

/// The largest run of unprivileged ports the host never hands out (the
/// lowest such run on a tie).
pub fn default_range(
    ephemeral: RangeInclusive<u16>,
    reserved: &[RangeInclusive<u16>],
) -> Option<NatPorts> {
    let mut best: Option<NatPorts> = None;
    let mut start: Option<u16> = None;
    for port in FIRST_UNPRIVILEGED..=u16::MAX {
        let usable = !exposed(port, &ephemeral, reserved);
        if usable && start.is_none() {
            start = Some(port);
        }
        let run_ends = !usable || port == u16::MAX;
        if let (true, Some(first)) = (run_ends, start) {
            let last = if usable { port } else { port - 1 };
            let run = NatPorts::new(first, last);
            if run.is_some_and(|r| best.is_none_or(|b| r.count() > b.count())) {
                best = run;
            }
            start = None;
        }
    }
    best
}

/// Whether the host may give `port` to one of its own connections.
fn exposed(port: u16, ephemeral: &RangeInclusive<u16>, reserved: &[RangeInclusive<u16>]) -> bool {
    ephemeral.contains(&port) && !reserved.iter().any(|range| range.contains(&port))
}

/// `--nat-ports LO-HI`.
pub fn parse_nat_ports(text: &str) -> Result<NatPorts, String> {
    let parsed = text.split_once('-').and_then(|(lo, hi)| {
        Some((
            lo.trim().parse::<u16>().ok()?,
            hi.trim().parse::<u16>().ok()?,
        ))
    });
    let Some((lo, hi)) = parsed else {
        return Err(format!(
            "{text:?} is not LO-HI (two ports, e.g. 1024-60999)"
        ));
    };
    if lo < FIRST_UNPRIVILEGED {
        return Err(format!(
            "{text:?} starts below {FIRST_UNPRIVILEGED}: privileged ports are the services' own"
        ));
    }
    NatPorts::new(lo, hi).ok_or_else(|| format!("{text:?}: {lo} is above {hi}"))
}

/// `"32768\t60999\n"` → 32768..=60999.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (min, max) = (parts.next()?.ok()?, parts.next()?.ok()?);
    (parts.next().is_none() && min <= max).then_some(min..=max)
}

/// `"8080,20000-32767\n"` → [8080..=8080, 20000..=32767]; empty is none.
fn parse_port_list(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| match item.split_once('-') {
            Some((a, b)) => Some(a.trim().parse().ok()?..=b.trim().parse().ok()?),
            None => {
                let port = item.trim().parse().ok()?;
                Some(port..=port)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(lo: u16, hi: u16) -> NatPorts {
        NatPorts::new(lo, hi).expect("valid")
    }

    #[test]
    fn the_linux_default_range_gives_every_unprivileged_port_below_it() {
        let host = parse_range("32768\t60999\n").expect("parse");
        assert_eq!(default_range(host.clone(), &[]), Some(ports(1024, 32767)));
        assert!(check(ports(1024, 32767), host.clone(), &[]).is_ok());
        assert!(check(NatPorts::DEFAULT, host, &[]).is_ok());
    }

    #[test]
    fn the_default_follows_the_host() {
        // Ephemeral ports moved up: room for 55,000 flows per address.
        assert_eq!(default_range(61000..=65535, &[]), Some(ports(1024, 60999)));
        // Ephemeral ports low: the run above them is larger.
        assert_eq!(default_range(1024..=9999, &[]), Some(ports(10000, 65535)));
        // Reserved ports are the host's to give only on request: usable.
        let reserved = parse_port_list("32768-40000").expect("parse");
        assert_eq!(
            default_range(32768..=60999, &reserved),
            Some(ports(1024, 40000))
        );
        assert_eq!(default_range(1024..=65535, &[]), None);
        assert_eq!(default_range(1..=65535, &[]), None);
    }

    #[test]
    fn an_overlapping_range_is_refused_with_the_fix() {
        let err = check(ports(20000, 40000), 32768..=60999, &[]).expect_err("overlap");
        let message = err.to_string();
        assert!(message.contains("32768-60999"), "{message}");
        assert!(message.contains("--nat-ports"), "{message}");
        assert!(message.contains("ip_local_port_range"), "{message}");
        assert!(
            message.contains("ip_local_reserved_ports=20000-40000"),
            "{message}"
        );
    }

    #[test]
    fn reserving_the_nat_ports_is_enough() {
        let reserved = parse_port_list("20000-32767\n").expect("parse");
        assert!(check(ports(20000, 32767), 1024..=65535, &reserved).is_ok());
        let partly = parse_port_list("20000-30000,8080").expect("parse");
        assert!(check(ports(20000, 32767), 1024..=65535, &partly).is_err());
    }

    #[test]
    fn nat_ports_flag_is_parsed_and_checked() {
        assert_eq!(parse_nat_ports("1024-65535"), Ok(ports(1024, 65535)));
        assert_eq!(parse_nat_ports(" 2000 - 3000 "), Ok(ports(2000, 3000)));
        for (bad, needle) in [
            ("1024", "LO-HI"),
            ("a-b", "LO-HI"),
            ("1024-70000", "LO-HI"),
            ("80-1000", "privileged"),
            ("5000-4000", "above"),
        ] {
            let message = parse_nat_ports(bad).expect_err(bad);
            assert!(message.contains(needle), "{bad}: {message}");
        }
    }

    #[test]
    fn malformed_settings_are_not_guessed() {
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("abc"), None);
        assert_eq!(parse_port_list("1-x"), None);
        assert_eq!(parse_port_list(""), Some(Vec::new()));
    }
}
