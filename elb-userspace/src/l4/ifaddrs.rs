//! The node's interface addresses: full NAT's default source address for
//! flows leaving by each interface.
use std::{
    collections::BTreeMap,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use elb_common::l4::{IFACE_HAS_V4, IFACE_HAS_V6, IfaceAddrs};

/// ifindex → the first IPv4 and the first non-link-local IPv6 address.
pub fn interface_addresses() -> std::io::Result<BTreeMap<u32, IfaceAddrs>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`; it is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut by_index = BTreeMap::<u32, IfaceAddrs>::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated interface name.
        let index = unsafe { libc::if_nametoindex(CStr::from_ptr(entry.ifa_name).as_ptr()) };
        if index == 0 {
            continue;
        }
        let addrs = by_index.entry(index).or_default();
        // SAFETY: ifa_addr points at a sockaddr of the family it says.
        match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
            libc::AF_INET if addrs.flags & IFACE_HAS_V4 == 0 => {
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                addrs.v4 = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).octets();
                addrs.flags |= IFACE_HAS_V4;
            }
            libc::AF_INET6 if addrs.flags & IFACE_HAS_V6 == 0 => {
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !ip.is_unicast_link_local() {
                    addrs.v6 = ip.octets();
                    addrs.flags |= IFACE_HAS_V6;
                }
            }
            _ => {}
        }
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    by_index.retain(|_, addrs| addrs.flags != 0);
    Ok(by_index)
}

/// Every address of every interface, as the kernel lists them.
pub fn all_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`; it is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it says.
        match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                addrs.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address() {
        let addrs = interface_addresses().expect("getifaddrs");
        let lo = addrs.values().find(|a| a.v4 == [127, 0, 0, 1]);
        assert!(lo.is_some(), "{addrs:?}");
    }
}
