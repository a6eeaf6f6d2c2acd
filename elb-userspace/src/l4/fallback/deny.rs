//! The deny-list as the fallback checks it: one hash set per prefix
//! length, so a lookup costs at most 33 (IPv4) or 129 (IPv6) probes
//! whatever the list's size, like the XDP program's LPM trie.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use crate::cidr::{Cidr, canonical};

#[derive(Debug, Default)]
pub struct DenyList {
    /// Prefix length → networks (as integers, host bits zero).
    v4: BTreeMap<u8, HashSet<u32>>,
    v6: BTreeMap<u8, HashSet<u128>>,
}

impl DenyList {
    pub fn new(entries: &[Cidr]) -> Self {
        let mut list = Self::default();
        for cidr in entries {
            match cidr.network() {
                IpAddr::V4(ip) => {
                    list.v4
                        .entry(cidr.prefix_len())
                        .or_default()
                        .insert(u32::from(ip));
                }
                IpAddr::V6(ip) => {
                    list.v6
                        .entry(cidr.prefix_len())
                        .or_default()
                        .insert(u128::from(ip));
                }
            }
        }
        list
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `addr` is in a denied network. IPv4-mapped IPv6 clients (a
    /// dual-stack listener's view of IPv4) count as IPv4.
    pub fn denies(&self, addr: IpAddr) -> bool {
        match canonical(addr) {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                self.v4
                    .iter()
                    .any(|(&len, nets)| nets.contains(&mask_u32(bits, len)))
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                self.v6
                    .iter()
                    .any(|(&len, nets)| nets.contains(&mask_u128(bits, len)))
            }
        }
    }
}

fn mask_u32(bits: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        len if len >= 32 => bits,
        len => bits & (u32::MAX << (32 - len)),
    }
}

fn mask_u128(bits: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        len if len >= 128 => bits,
        len => bits & (u128::MAX << (128 - len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> DenyList {
        let cidrs: Vec<Cidr> = entries.iter().map(|e| e.parse().expect(e)).collect();
        DenyList::new(&cidrs)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect(text)
    }

    #[test]
    fn matches_hosts_networks_and_everything() {
        let deny = list(&["10.50.0.2/32", "192.168.0.0/16", "fd00::/8"]);
        assert!(deny.denies(ip("10.50.0.2")));
        assert!(!deny.denies(ip("10.50.0.3")));
        assert!(deny.denies(ip("192.168.77.1")));
        assert!(!deny.denies(ip("192.169.0.1")));
        assert!(deny.denies(ip("fd12::1")));
        assert!(!deny.denies(ip("fe80::1")));
        assert!(list(&["0.0.0.0/0"]).denies(ip("1.2.3.4")));
        assert!(!list(&["0.0.0.0/0"]).denies(ip("::1")));
        assert!(list(&["::/0"]).denies(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_clients_count_as_ipv4() {
        let deny = list(&["10.50.0.0/24"]);
        assert!(deny.denies(ip("::ffff:10.50.0.9")));
    }

    #[test]
    fn empty_denies_nothing() {
        let deny = DenyList::default();
        assert!(deny.is_empty());
        assert!(!deny.denies(ip("10.0.0.1")));
        assert!(!list(&["10.0.0.0/8"]).is_empty());
    }
}
