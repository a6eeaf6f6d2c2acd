//! Zero-downtime restart and upgrade (`elb run --takeover`).
//!
//! A running elb listens on `<run-dir>/<name>.sock` (mode 0600). A new elb
//! of the same name started with `--takeover` connects and says hello; the
//! old one stops writing the XDP maps and sends every listening socket it
//! has (static `--listen`, configured listeners, L4 userspace VIPs), each
//! tagged with what it is, plus its instance-lock file, over `SCM_RIGHTS`.
//! The new one loads its configuration, adopts the pins, serves on the
//! received sockets (binding fresh the ones it lacks, closing the ones it
//! does not use), then says `serving`; the old one answers `stopping` and
//! drains as on SIGTERM. Both share the same sockets, so no connection
//! waiting in an accept queue is lost.
//!
//! If the new one goes away before `serving` (bad flags, store down,
//! crash), the old one resumes writing the XDP maps and serves on: it
//! never stopped accepting.
//!
//! The instance lock is handed over as an open file: a `flock` belongs to
//! the open file description, so the new process holds the very same lock,
//! and there is no moment where nobody (or a third elb) could take it.
pub mod fdpass;
pub mod new;
pub mod old;
pub mod registry;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use new::{Handover, TakeoverError, request};
pub use old::{Offer, TakeoverServer, TakeoverStart};
pub use registry::{HandoverSockets, Inherited, Registration, SocketRegistry};

/// The protocol's version, in every hello.
pub const PROTOCOL: u32 = 1;

/// `<run-dir>/<name>.sock`.
pub fn socket_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// What a listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketKind {
    /// A `--listen` address.
    Listen,
    /// A configured listener (`/$ELBNAME/listeners/<name>`).
    Listener,
    /// An L4 service's TCP VIP, in the userspace data plane.
    L4Tcp,
    /// An L4 service's UDP VIP, in the userspace data plane.
    L4Udp,
}

impl SocketKind {
    /// TCP listening sockets are interchangeable whatever they were for
    /// (a `--listen` address may have become a configured listener); UDP
    /// ones only with UDP.
    pub fn is_udp(self) -> bool {
        self == Self::L4Udp
    }
}

/// A handed-over socket's label: the new process matches it to its own
/// configuration by address and transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketTag {
    pub kind: SocketKind,
    pub addr: SocketAddr,
    /// The listener's or L4 service's name (for the logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The messages, one per seqpacket, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Message {
    /// new → old: asks for the sockets.
    Hello { pid: u32, protocol: u32 },
    /// old → new: no takeover now (another one is under way, or the old
    /// one is already stopping).
    Refused { reason: String },
    /// old → new: what follows. The descriptors come in `fd_messages`
    /// [`Message::Fds`] messages: first the instance-lock file, then one
    /// per tag, in order.
    Sockets {
        pid: u32,
        sockets: Vec<SocketTag>,
        fd_messages: usize,
    },
    /// old → new: carries `count` descriptors.
    Fds { count: usize },
    /// new → old: the new process serves; the old one may stop.
    Serving { pid: u32 },
    /// old → new: the old process no longer accepts and drains.
    Stopping { pid: u32 },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        // A plain enum of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Spreads sockets over `workers` round-robin: worker `i` gets sockets
/// `i`, `i + workers`, ... A worker may serve several sockets of one
/// address; none is left over (closing one of a `SO_REUSEPORT` group
/// would drop the connections in its accept queue).
pub fn spread<T>(items: Vec<T>, workers: usize) -> Vec<Vec<T>> {
    let workers = workers.max(1);
    let mut out: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i % workers].push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_gives_every_socket_to_some_worker() {
        assert_eq!(spread(vec![1, 2, 3, 4, 5], 2), [vec![1, 3, 5], vec![2, 4]]);
        assert_eq!(spread(vec![1], 3), [vec![1], vec![], vec![]]);
        assert_eq!(spread::<u8>(vec![], 0), [Vec::<u8>::new()]);
    }

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let message = Message::Sockets {
            pid: 7,
            sockets: vec![SocketTag {
                kind: SocketKind::L4Udp,
                addr: "10.0.0.1:53".parse().expect("addr"),
                name: Some("dns".into()),
            }],
            fd_messages: 1,
        };
        let bytes = message.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(r#""op":"sockets""#), "{text}");
        assert!(text.contains(r#""kind":"l4-udp""#), "{text}");
        assert_eq!(Message::decode(&bytes).expect("decode"), message);
        assert!(Message::decode(br#"{"op":"dance"}"#).is_err());
    }
}
