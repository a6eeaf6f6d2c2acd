//! An rtnetlink socket subscribed to the kernel's route, neighbour and link
//! notifications. Only whether something changed matters to elb (see
//! [`crate::l4::routes`]), so messages are read and dropped, not parsed.
use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// Routes (IPv4, IPv6), neighbour entries and links.
const GROUPS: u32 =
    (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE | libc::RTMGRP_NEIGH | libc::RTMGRP_LINK)
        as u32;
/// Room for bursts (a link going down withdraws many routes at once); an
/// overflow is not lost either, it reads as a change (`ENOBUFS`).
const RECEIVE_BUFFER: libc::c_int = 1 << 20;
/// Datagrams one `drain` reads at most: a steady stream of notifications
/// must not keep it from returning (the rest stay queued for the next).
const DRAIN_AT_MOST: usize = 1024;

/// A non-blocking `NETLINK_ROUTE` socket bound to [`GROUPS`], in the
/// network namespace of the thread that opened it.
pub struct RouteEvents {
    fd: OwnedFd,
}

impl RouteEvents {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to us, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a valid int option value and its size. A failure only
        // leaves the default buffer, where overflows are still noticed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&RECEIVE_BUFFER as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = GROUPS;
        // SAFETY: addr is a sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads the queued notifications (up to [`DRAIN_AT_MOST`]) without
    /// blocking; returns how many datagrams there were. A receive-queue
    /// overflow (`ENOBUFS`: the kernel dropped notifications) counts as
    /// one: something changed.
    pub fn drain(&self) -> io::Result<usize> {
        let mut buf = [0u8; 16 * 1024];
        let mut count = 0;
        while count < DRAIN_AT_MOST {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                count += 1;
                continue;
            }
            if n == 0 {
                return Ok(count);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(count),
                Some(libc::ENOBUFS) => count += 1,
                Some(libc::EINTR) => {}
                _ => return Err(error),
            }
        }
        Ok(count)
    }
}

impl AsFd for RouteEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RouteEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
