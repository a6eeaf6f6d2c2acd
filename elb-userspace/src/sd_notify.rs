//! systemd's readiness protocol (`Type=notify`): a datagram to
//! `$NOTIFY_SOCKET`. Without that variable (not under systemd) nothing is
//! sent.
use std::{
    io,
    os::{
        fd::AsRawFd,
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

/// How long [`notify`] waits for systemd to have read the message.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

fn notify_socket() -> Option<std::ffi::OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|path| !path.is_empty())
}

/// Sends `state` (e.g. `READY=1`) and waits until systemd has processed it
/// (`BARRIER=1`), so that a `MAINPID=` change is known before anything
/// that depends on it happens. Returns false when not under systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = notify_socket() else {
        return Ok(false);
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    barrier(&socket, &addr)?;
    Ok(true)
}

/// `BARRIER=1` with a pipe's write end: systemd closes it once it has
/// processed every earlier message.
fn barrier(socket: &UnixDatagram, addr: &SocketAddr) -> io::Result<()> {
    let (read, write) = std::io::pipe()?;
    socket.connect_addr(addr)?;
    crate::takeover::fdpass::send_fds(socket.as_raw_fd(), b"BARRIER=1", &[write.as_raw_fd()])?;
    drop(write);
    let mut pollfd = libc::pollfd {
        fd: read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe {
        libc::poll(
            &raw mut pollfd,
            1,
            BARRIER_TIMEOUT.as_millis() as libc::c_int,
        )
    };
    if ready <= 0 {
        tracing::warn!("systemd did not confirm the notification within 5 s");
    }
    Ok(())
}
