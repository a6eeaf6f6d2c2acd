//! How a listener's connections are spoken to: plaintext HTTP/1.1, h2c by
//! prior knowledge, or TLS with ALPN choosing HTTP/2 or HTTP/1.1.
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::{
    config::{Listener, ListenerProtocol},
    tls::{CertSource, server_config},
};

pub struct Entrance {
    /// A configured listener's name (logs, statsd); `None` for `--listen`.
    pub listener: Option<Arc<str>>,
    /// TLS with SNI over the live certificates.
    pub tls: Option<TlsAcceptor>,
    /// HTTP/2 to clients: offered by ALPN over TLS; on plaintext, taken
    /// when the connection begins with HTTP/2's preface (h2c).
    pub http2: bool,
}

impl Entrance {
    /// A `--listen` listener: plaintext HTTP/1.1.
    pub fn static_http() -> Self {
        Self {
            listener: None,
            tls: None,
            http2: false,
        }
    }

    /// A configured listener; an https one reads `certs` at each handshake.
    pub fn for_listener(
        listener: &Listener,
        certs: Arc<dyn CertSource>,
    ) -> Result<Self, rustls::Error> {
        let tls = match listener.protocol {
            ListenerProtocol::Http => None,
            ListenerProtocol::Https => {
                // Parsing requires a default certificate for https.
                let default = listener.default_certificate.as_deref().unwrap_or_default();
                Some(TlsAcceptor::from(server_config(
                    certs,
                    default,
                    listener.http2,
                )?))
            }
        };
        Ok(Self {
            listener: Some(Arc::from(listener.name.as_str())),
            tls,
            http2: listener.http2,
        })
    }
}
