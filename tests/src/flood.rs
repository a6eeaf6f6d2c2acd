//! A SYN flood for tests and benches: TCP SYNs from many spoofed sources,
//! written as whole Ethernet frames to an `AF_PACKET` socket on a link of
//! a namespace the test made. Bounded in count and in time; it stops by
//! itself.
//!
//! Source `n` (0-based) is `base + n % 65536` (a /16) with port
//! `1024 + n / 65536`, so `count` frames come from `count` distinct
//! address/port pairs (up to 65,536 × 64,512).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use etherparse::PacketBuilder;

use crate::netns::NetNs;

/// What to send, and from where.
#[derive(Clone, Debug)]
pub struct SynFlood {
    /// The link to send on (in the namespace given to [`SynFlood::run`]).
    pub interface: String,
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the balancer's end of the link).
    pub dst_mac: [u8; 6],
    /// First address of the /16 the sources come from.
    pub source_base: Ipv4Addr,
    pub target: SocketAddrV4,
    /// Frames to send, each from its own address/port pair.
    pub count: u64,
    /// Stop here even if `count` frames were not sent.
    pub max_time: Duration,
    /// Frames per second at most (the pace is kept per 1,024 frames).
    pub rate: u64,
}

/// What a flood did.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub sent: u64,
    /// Frames the socket refused (a full queue: `ENOBUFS`).
    pub refused: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl SynFlood {
    /// The source of frame `n`.
    pub fn source(&self, n: u64) -> SocketAddrV4 {
        let base = u32::from(self.source_base) & 0xffff_0000;
        let addr = Ipv4Addr::from(base | (n % 65_536) as u32);
        let port = 1024 + (n / 65_536) as u16;
        SocketAddrV4::new(addr, port)
    }

    /// Sends the flood from inside `ns` (blocking).
    pub fn run(&self, ns: &NetNs) -> Result<FloodReport> {
        ensure!(
            self.count <= 65_536 * 64_512,
            "{} frames: more than there are distinct sources",
            self.count
        );
        let plan = self.clone();
        ns.enter(move || plan.send())?
    }

    fn send(&self) -> Result<FloodReport> {
        let socket = packet_socket(&self.interface)?;
        let started = Instant::now();
        let (mut sent, mut refused) = (0u64, 0u64);
        let mut frame = Vec::with_capacity(64);
        let mut n = 0u64;
        while n < self.count {
            // The clock is read once per 64 frames: cheap enough, and the
            // bursts between two reads stay well within the veth's
            // 256-frame ring, so the flood does not keep it full.
            if n.is_multiple_of(64) {
                let elapsed = started.elapsed();
                if elapsed > self.max_time {
                    break;
                }
                let due = Duration::from_secs_f64(n as f64 / self.rate.max(1) as f64);
                if let Some(ahead) = due.checked_sub(elapsed) {
                    std::thread::sleep(ahead);
                }
            }
            frame.clear();
            let source = self.source(n);
            PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
                .ipv4(source.ip().octets(), self.target.ip().octets(), 64)
                .tcp(source.port(), self.target.port(), n as u32, 64240)
                .syn()
                .write(&mut frame, &[])
                .context("building a SYN")?;
            // SAFETY: the buffer is valid for its length; the socket is bound.
            let written =
                unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if written < 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(error).context("sending a SYN");
                }
                refused += 1;
                // Let the receiving side drain, then send this one again
                // (a sleep, not a spin: the receiving side needs the CPU).
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            sent += 1;
            n += 1;
        }
        Ok(FloodReport {
            sent,
            refused,
            elapsed: started.elapsed(),
        })
    }
}

/// An `AF_PACKET` raw socket bound to `interface` (this thread's namespace).
fn packet_socket(interface: &str) -> Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {interface:?}");
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: address is a valid sockaddr_ll of the given length.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("binding to {interface}"));
    }
    Ok(socket)
}

/// The first link of `ns` that is not `lo` (a test namespace's one veth).
pub fn only_link(ns: &NetNs) -> Result<String> {
    let out = ns.ip(&["-o", "link", "show"])?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .filter_map(|name| name.trim().split('@').next().map(str::to_owned))
        .find(|name| name != "lo")
        .context("the namespace has no link but lo")
}

/// The MAC address of `interface` in `ns`.
pub fn mac_of(ns: &NetNs, interface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", interface])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC in {text:?}"))?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {mac:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {mac:?} is not 6 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_has_its_own_source() {
        let flood = SynFlood {
            interface: "x".into(),
            src_mac: [0; 6],
            dst_mac: [0; 6],
            source_base: Ipv4Addr::new(10, 200, 7, 7),
            target: SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80),
            count: 0,
            max_time: Duration::ZERO,
            rate: 1,
        };
        assert_eq!(flood.source(0), "10.200.0.0:1024".parse().unwrap());
        assert_eq!(flood.source(65_535), "10.200.255.255:1024".parse().unwrap());
        assert_eq!(flood.source(65_536), "10.200.0.0:1025".parse().unwrap());
        let mut seen: Vec<_> = (0..200_000).map(|n| flood.source(n)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 200_000);
    }
}
