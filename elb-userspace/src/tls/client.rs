//! The TLS client towards upstream servers with the `tls` parameter, and
//! for `HTTPS:` health checks: TLS 1.2 and 1.3 (ring), the certificate
//! verified against `--upstream-ca` when given, else the system roots,
//! with SNI the server's host name (or its IP address, which is then what
//! the certificate must name).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::certs::provider;

/// Why `--upstream-ca` cannot be used (elb does not start).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamCaError {
    #[error("--upstream-ca {}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--upstream-ca {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot set up the upstream TLS client: {0}")]
    Config(#[from] rustls::Error),
}

/// Which application protocol a TLS connection asks for (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// The client side of upstream TLS, shared by every worker and the health
/// checks (one session cache: reconnections resume).
pub struct UpstreamTls {
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Trusts the CAs of `ca` (a PEM file) when given, else the system's.
    pub fn load(ca: Option<&Path>) -> Result<Self, UpstreamCaError> {
        let roots = match ca {
            Some(path) => ca_file_roots(path)?,
            None => system_roots(
                "upstream TLS",
                "`tls` upstream servers (give --upstream-ca)",
            ),
        };
        Ok(Self::with_roots(roots)?)
    }

    pub fn with_roots(roots: RootCertStore) -> Result<Self, rustls::Error> {
        let roots = Arc::new(roots);
        let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, rustls::Error> {
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Self {
            http1: config(b"http/1.1")?,
            h2: config(b"h2")?,
        })
    }

    /// The TLS handshake with `server` (`host:port`) over `stream`. A
    /// refused certificate is an `InvalidData` error whose inner error is
    /// the `rustls::Error` (see [`handshake_reason`]).
    pub async fn connect(
        &self,
        stream: TcpStream,
        server: &str,
        alpn: Alpn,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = server_name(server).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{server:?} has no host name or IP address to verify"),
            )
        })?;
        let config = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
        };
        TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await
    }
}

/// Whether the server chose HTTP/2 in the handshake.
pub fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// What went wrong in a handshake, in rustls's words when rustls refused
/// it (e.g. "invalid peer certificate: UnknownIssuer").
pub fn handshake_reason(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls) => rustls.to_string(),
        None => error.to_string(),
    }
}

/// Whether the server refused the handshake for want of a protocol it
/// speaks among those offered (ALPN, RFC 7301 §3.2).
pub fn refused_alpn(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| {
            matches!(
                error,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        })
}

/// The name the server's certificate must have: the host of `host:port`
/// (without a final dot), an IP address for `IPv4:port` and `[IPv6]:port`.
pub fn server_name(server: &str) -> Option<ServerName<'static>> {
    let host = match server.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?.0,
        None => server.rsplit_once(':')?.0,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

fn ca_file_roots(path: &Path) -> Result<RootCertStore, UpstreamCaError> {
    let invalid = |reason: String| UpstreamCaError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| UpstreamCaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM file of certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM CERTIFICATE block in it".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            invalid(format!(
                "certificate {} cannot be a trust anchor: {e}",
                index + 1
            ))
        })?;
    }
    tracing::info!(ca = %path.display(), certificates = roots.len(), "upstream TLS trusts --upstream-ca");
    Ok(roots)
}

/// The system's trusted CAs (the platform's store, e.g. /etc/ssl/certs)
/// for `user` (upstream TLS, the AWS clients); none found is not fatal:
/// `unverifiable` is what fails verification then (logged).
pub(crate) fn system_roots(user: &str, unverifiable: &str) -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found: {unverifiable} will fail verification");
    } else {
        tracing::debug!(added, ignored, "{user} trusts the system's CAs");
    }
    roots
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn the_certificate_must_name_the_host_or_the_ip() {
        let dns = |name: &str| ServerName::try_from(name.to_owned()).expect("name");
        assert_eq!(server_name("localhost:8443"), Some(dns("localhost")));
        assert_eq!(
            server_name("api.example.com.:443"),
            Some(dns("api.example.com"))
        );
        let ip = |text: &str| ServerName::IpAddress(text.parse::<IpAddr>().expect("ip").into());
        assert_eq!(server_name("10.0.0.1:443"), Some(ip("10.0.0.1")));
        assert_eq!(server_name("[::1]:443"), Some(ip("::1")));
        assert_eq!(server_name("no-port"), None);
        assert_eq!(server_name("[::1:443"), None);
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_the_flag_the_file_and_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let message = UpstreamTls::load(Some(&missing))
            .expect_err("missing file")
            .to_string();
        assert!(message.starts_with("--upstream-ca ") && message.contains("missing.pem"));
        assert!(message.contains("cannot read it"), "{message}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let message = UpstreamTls::load(Some(&empty))
            .expect_err("no PEM")
            .to_string();
        assert!(message.contains("no PEM CERTIFICATE"), "{message}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let message = UpstreamTls::load(Some(&broken))
            .expect_err("not a certificate")
            .to_string();
        assert!(message.contains("cannot be a trust anchor"), "{message}");
    }

    #[test]
    fn a_ca_file_with_a_real_certificate_loads() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, cert.pem()).expect("write");
        assert!(UpstreamTls::load(Some(&file)).is_ok());
    }
}
