//! The `$server` part of `/$ELBNAME/upstreams/$upstream/$server`: `host:port`.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::ParamsError;

/// Longest DNS name and label (RFC 1035).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Accepts `IPv4:port`, `[IPv6]:port` and `dns-name:port` with a port in
/// 1..=65535. DNS names use letters, digits, `-` and `.` (one trailing dot,
/// as in a fully qualified name, is allowed).
pub fn validate_server_address(server: &str) -> Result<(), ParamsError> {
    check_address(server).map_err(|reason| ParamsError::BadAddress {
        server: server.to_owned(),
        reason,
    })
}

fn check_address(server: &str) -> Result<(), &'static str> {
    if let Some(bracketed) = server.strip_prefix('[') {
        let (ip, after) = bracketed
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| "the text between '[' and ']' is not an IPv6 address")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after the bracketed IPv6 address")?;
        return check_port(port);
    }
    let (host, port) = server
        .rsplit_once(':')
        .ok_or("missing ':port' (expected host:port)")?;
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, e.g. [::1]:80");
    }
    check_host(host)?;
    check_port(port)
}

fn check_port(port: &str) -> Result<(), &'static str> {
    if port.is_empty() {
        return Err("missing port after ':'");
    }
    // Checked by hand because `str::parse` would also accept a leading '+'.
    if !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => Err("the port must be between 1 and 65535"),
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("missing host before ':port'");
    }
    // Digits and dots only: meant as IPv4, so it must be a valid one rather
    // than slip through as a "DNS name" like 256.1.1.1.
    if host
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.')
    {
        return host
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "not a valid IPv4 address");
    }
    check_dns_name(host)
}

fn check_dns_name(host: &str) -> Result<(), &'static str> {
    if host.len() > MAX_NAME_LEN {
        return Err("the host name is longer than 253 characters");
    }
    if !host
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
    {
        return Err("the host name may contain only letters, digits, '-' and '.'");
    }
    let without_root = host.strip_suffix('.').unwrap_or(host);
    for label in without_root.split('.') {
        if label.is_empty() {
            return Err("the host name has an empty label (\"..\" or a leading '.')");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label of the host name is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host name starts or ends with '-'");
        }
    }
    Ok(())
}
