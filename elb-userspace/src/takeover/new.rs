//! The new elb's side: asks the running one for its sockets, and tells it
//! to stop once serving.
use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Inherited, Message, PROTOCOL, fdpass::Channel};

/// How long each answer of the old process may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(
        "cannot reach the running elb's takeover socket {path}: {source} (an elb without \
         --takeover support must be stopped first)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the running elb refused the takeover: {0}")]
    Refused(String),
    #[error("takeover: {step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("takeover: {0}")]
    Protocol(String),
}

/// Sockets and lock received from the old process; [`Handover::serving`]
/// tells it to stop.
pub struct Handover {
    channel: Channel,
    pub old_pid: u32,
    /// The instance-lock file, locked (the lock came with it).
    pub lock: OwnedFd,
    pub inherited: Inherited,
}

fn io(step: &'static str) -> impl Fn(std::io::Error) -> TakeoverError {
    move |source| TakeoverError::Io { step, source }
}

fn receive(
    channel: &Channel,
    step: &'static str,
) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
    let (body, fds) = channel.recv().map_err(io(step))?;
    if body.is_empty() {
        return Err(TakeoverError::Protocol(format!(
            "{step}: the running elb closed the connection"
        )));
    }
    let message = Message::decode(&body)
        .map_err(|e| TakeoverError::Protocol(format!("{step}: bad message: {e}")))?;
    Ok((message, fds))
}

/// Connects to the running elb at `path` and receives its sockets.
pub fn request(path: &Path) -> Result<Handover, TakeoverError> {
    let channel = Channel::connect(path).map_err(|source| TakeoverError::Connect {
        path: path.to_owned(),
        source,
    })?;
    channel
        .set_timeout(ANSWER_TIMEOUT)
        .map_err(io("setting a timeout"))?;
    let hello = Message::Hello {
        pid: std::process::id(),
        protocol: PROTOCOL,
    };
    channel
        .send(&hello.encode(), &[])
        .map_err(io("sending hello"))?;
    let (old_pid, tags, fd_messages) = match receive(&channel, "waiting for the sockets")?.0 {
        Message::Sockets {
            pid,
            sockets,
            fd_messages,
        } => (pid, sockets, fd_messages),
        Message::Refused { reason } => return Err(TakeoverError::Refused(reason)),
        other => {
            return Err(TakeoverError::Protocol(format!(
                "expected the socket list, got {other:?}"
            )));
        }
    };
    let mut fds = Vec::new();
    for _ in 0..fd_messages {
        match receive(&channel, "receiving the sockets")? {
            (Message::Fds { count }, received) if received.len() == count => fds.extend(received),
            (other, received) => {
                return Err(TakeoverError::Protocol(format!(
                    "expected descriptors, got {other:?} with {} of them",
                    received.len()
                )));
            }
        }
    }
    if fds.len() != tags.len() + 1 {
        return Err(TakeoverError::Protocol(format!(
            "{} descriptors for {} sockets and the lock",
            fds.len(),
            tags.len()
        )));
    }
    let mut fds = fds.into_iter();
    let lock = fds
        .next()
        .ok_or_else(|| TakeoverError::Protocol("no lock file".into()))?;
    let sockets = tags.into_iter().zip(fds).collect::<Vec<_>>();
    for (tag, _) in &sockets {
        tracing::info!(
            kind = ?tag.kind,
            addr = %tag.addr,
            name = tag.name.as_deref().unwrap_or(""),
            "takeover: received a listening socket"
        );
    }
    Ok(Handover {
        channel,
        old_pid,
        lock,
        inherited: Inherited::new(sockets),
    })
}

impl Handover {
    /// Tells the old process that this one serves; returns once it
    /// confirmed it stops. It drains once this handover is dropped.
    pub fn serving(&self) -> Result<u32, TakeoverError> {
        let serving = Message::Serving {
            pid: std::process::id(),
        };
        self.channel
            .send(&serving.encode(), &[])
            .map_err(io("saying serving"))?;
        match receive(&self.channel, "waiting for the old elb to stop")?.0 {
            Message::Stopping { pid } => Ok(pid),
            other => Err(TakeoverError::Protocol(format!(
                "expected stopping, got {other:?}"
            ))),
        }
    }
}
