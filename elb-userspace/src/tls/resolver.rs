//! rustls's certificate choice over the live configuration: every
//! handshake reads the current [`CertSet`], so a changed certificate serves
//! the next handshake while established connections keep theirs.
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};

use super::{certs::provider, sni::CertSet};
use crate::config::snapshot::Snapshot;

/// Sessions kept for resumption by session ID (TLS 1.2) and stateful
/// TLS 1.3 resumption; tickets need no server memory.
const SESSION_CACHE_SIZE: usize = 4096;

/// Where the current certificates are read from.
pub trait CertSource: Send + Sync + 'static {
    fn cert_set(&self) -> Arc<CertSet>;
}

/// The published configuration (what elb serves from).
impl CertSource for ArcSwap<Snapshot> {
    fn cert_set(&self) -> Arc<CertSet> {
        Arc::clone(self.load().certs())
    }
}

/// A set swapped by hand (tests, tools).
impl CertSource for ArcSwap<CertSet> {
    fn cert_set(&self) -> Arc<CertSet> {
        self.load_full()
    }
}

/// Chooses by SNI, falling back to the listener's default certificate.
pub struct SniResolver {
    source: Arc<dyn CertSource>,
    default_name: String,
}

impl SniResolver {
    pub fn new(source: Arc<dyn CertSource>, default_name: impl Into<String>) -> Self {
        Self {
            source,
            default_name: default_name.into(),
        }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("default_name", &self.default_name)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.source.cert_set();
        let chosen = set.choose(hello.server_name(), &self.default_name);
        if chosen.is_none() {
            // rustls then aborts the handshake. Debug, not warn: any client
            // can cause one per handshake; the listener reports a missing
            // default certificate.
            tracing::debug!(
                sni = hello.server_name(),
                default = self.default_name,
                "no certificate for this handshake: no SNI match and the default certificate does not exist"
            );
        }
        chosen.map(|cert| Arc::clone(&cert.key))
    }
}

/// The `ServerConfig` of a TLS listener: TLS 1.2 and 1.3 only, rustls's
/// default cipher suites (ring), session resumption by tickets and by the
/// session cache, ALPN `h2` (when `http2`) then `http/1.1`.
pub fn server_config(
    source: Arc<dyn CertSource>,
    default_name: &str,
    http2: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(source, default_name)));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
