//! XDP's NAT source ports must never be ports the host hands out to its own
//! connections: a reply to such a connection would be taken for a NAT'd
//! flow's reply. So the XDP data plane only starts when the host's
//! ephemeral range (`net.ipv4.ip_local_port_range`, which IPv6 shares)
//! avoids elb's NAT range, or the NAT range is reserved.
use std::ops::RangeInclusive;

use elb_common::l4::{NAT_PORT_MAX, NAT_PORT_MIN};

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

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
         elb's XDP NAT ports {NAT_PORT_MIN}-{NAT_PORT_MAX}, so the host's own connections could \
         be taken for NAT'd flows; set `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"` \
         or reserve them with `sysctl -w net.ipv4.ip_local_reserved_ports={NAT_PORT_MIN}-{NAT_PORT_MAX}`"
    )]
    Overlap { host_min: u16, host_max: u16 },
}

/// Checks this network namespace's settings.
pub fn check_host() -> Result<(), PortRangeError> {
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
    check(range, &reserved)
}

/// Ok when no NAT port is both in `ephemeral` and unreserved.
pub fn check(
    ephemeral: RangeInclusive<u16>,
    reserved: &[RangeInclusive<u16>],
) -> Result<(), PortRangeError> {
    let overlap_min = (*ephemeral.start()).max(NAT_PORT_MIN);
    let overlap_max = (*ephemeral.end()).min(NAT_PORT_MAX);
    let exposed =
        (overlap_min..=overlap_max).any(|port| !reserved.iter().any(|range| range.contains(&port)));
    if overlap_min <= overlap_max && exposed {
        return Err(PortRangeError::Overlap {
            host_min: *ephemeral.start(),
            host_max: *ephemeral.end(),
        });
    }
    Ok(())
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

    #[test]
    fn the_linux_default_range_is_clear_of_the_nat_ports() {
        assert!(check(parse_range("32768\t60999\n").expect("parse"), &[]).is_ok());
    }

    #[test]
    fn an_overlapping_range_is_refused_with_the_fix() {
        let err = check(1024..=65535, &[]).expect_err("overlap");
        let message = err.to_string();
        assert!(message.contains("1024-65535"), "{message}");
        assert!(
            message.contains("ip_local_reserved_ports=20000-32767"),
            "{message}"
        );
    }

    #[test]
    fn reserving_the_nat_ports_is_enough() {
        let reserved = parse_port_list("20000-32767\n").expect("parse");
        assert!(check(1024..=65535, &reserved).is_ok());
        let partly = parse_port_list("20000-30000,8080").expect("parse");
        assert!(check(1024..=65535, &partly).is_err());
    }

    #[test]
    fn malformed_settings_are_not_guessed() {
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("abc"), None);
        assert_eq!(parse_port_list("1-x"), None);
        assert_eq!(parse_port_list(""), Some(Vec::new()));
    }
}
