//! A `SOCK_SEQPACKET` Unix socket that carries whole messages, each with
//! optional file descriptors (`SCM_RIGHTS`). Message boundaries are kept,
//! so a descriptor can never be read past and silently closed, as it can
//! be on a stream socket.
use std::{
    io,
    mem::{size_of, zeroed},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::Path,
    time::Duration,
};

/// Most descriptors in one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;
/// Largest message body; the socket list of a big configuration fits.
pub const MAX_MESSAGE: usize = 256 << 10;

/// One end of a connected seqpacket socket, blocking, with timeouts.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A listening seqpacket socket.
#[derive(Debug)]
pub struct ChannelListener {
    fd: OwnedFd,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = check(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes (choose a shorter --run-dir)",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

impl ChannelListener {
    /// Binds `path` with mode 0600, atomically replacing a socket file
    /// already there (a connection to the old one is not affected).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        // Bound under a temporary name, made 0600, then renamed into
        // place: only the owner may ever connect (the socket hands out
        // listening sockets), and the path never goes missing.
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", std::process::id()));
        let temp = std::path::PathBuf::from(temp);
        let (addr, len) = unix_addr(&temp)?;
        let _ = std::fs::remove_file(&temp);
        // SAFETY: addr is a valid sockaddr_un of length len.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(error) = placed {
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
        // SAFETY: listen(2) on our own socket.
        check(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
        Ok(Self { fd })
    }

    /// Waits for the next connection (blocking).
    pub fn accept(&self) -> io::Result<Channel> {
        loop {
            // SAFETY: accept4 without an address; the fd is owned at once.
            let result = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            match check(result) {
                // SAFETY: a new fd from accept4, owned by nobody else.
                Ok(fd) => return Ok(Channel::from_owned(unsafe { OwnedFd::from_raw_fd(fd) })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes a blocked [`ChannelListener::accept`] return with an error.
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on our own socket.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Channel {
    fn from_owned(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Connects to the listener at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let (addr, len) = unix_addr(path)?;
        // SAFETY: addr is a valid sockaddr_un of length len.
        check(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        Ok(Self { fd })
    }

    /// Reads and writes fail with `WouldBlock`/`TimedOut` after `limit`.
    pub fn set_timeout(&self, limit: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_usec: limit.subsec_micros() as libc::suseconds_t,
        };
        for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: tv is a valid timeval for these options.
            check(unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// The peer's user id (SO_PEERCRED).
    pub fn peer_uid(&self) -> io::Result<u32> {
        // SAFETY: ucred is plain data.
        let mut cred: libc::ucred = unsafe { zeroed() };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: cred and len describe a buffer of the right size.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        })?;
        Ok(cred.uid)
    }

    /// Sends one message carrying `fds` (at most [`MAX_FDS`]).
    pub fn send(&self, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
        send_fds(self.fd.as_raw_fd(), body, fds)
    }

    /// Receives one message and the descriptors it carries. An empty body
    /// means the peer closed the connection.
    pub fn recv(&self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut iov = libc::iovec {
            iov_base: body.as_mut_ptr().cast(),
            iov_len: body.len(),
        };
        // SAFETY: a pure size computation.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; all zeroes is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let read = loop {
            // SAFETY: msg points at live buffers for the whole call.
            let read =
                unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
            if read >= 0 {
                break read as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: walks the control messages the kernel wrote into
        // `control`, within msg_controllen; each SCM_RIGHTS descriptor is
        // new in this process and owned once.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&raw const msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_RIGHTS
                {
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                header = libc::CMSG_NXTHDR(&raw const msg, header);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "takeover message truncated",
            ));
        }
        body.truncate(read);
        Ok((body, fds))
    }
}

/// Sends one message on the connected socket `socket` carrying `fds`
/// (at most [`MAX_FDS`]).
pub fn send_fds(socket: RawFd, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS || body.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a message needs a body and at most MAX_FDS descriptors",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header with
        // fds.len() descriptors (CMSG_SPACE above).
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&raw const msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(header).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points at live buffers for the whole call.
        let sent = unsafe { libc::sendmsg(socket, &raw const msg, libc::MSG_NOSIGNAL) };
        match check(sent as libc::c_int) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_cross_with_their_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let listener = ChannelListener::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let client = Channel::connect(&path).expect("connect");
        let server = listener.accept().expect("accept");
        assert_eq!(server.peer_uid().expect("uid"), unsafe { libc::getuid() });
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        client.send(b"one", &[b.as_raw_fd()]).expect("send");
        client.send(b"two", &[]).expect("send");
        let (body, fds) = server.recv().expect("recv");
        assert_eq!((body.as_slice(), fds.len()), (&b"one"[..], 1));
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().expect("fd"));
        passed.write_all(b"x").expect("write");
        let mut got = [0u8; 1];
        a.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"x");
        let (body, fds) = server.recv().expect("recv");
        assert_eq!((body.as_slice(), fds.len()), (&b"two"[..], 0));
        drop(client);
        assert!(server.recv().expect("eof").0.is_empty());
    }
}
