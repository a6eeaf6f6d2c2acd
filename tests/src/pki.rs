//! Certificates made by the test (rcgen): a CA that signs server
//! certificates, and an etcd chain (a server certificate for 127.0.0.1 and
//! a client certificate) as PEM files in a directory.
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// One chain of trust, in PEM.
pub struct Chain {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// The paths [`Chain::write`] wrote.
#[derive(Clone, Debug)]
pub struct ChainFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A test CA that signs leaf certificates.
pub struct Authority {
    /// The CA certificate, PEM: what a client trusts.
    pub ca: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new CA named after `tag`.
    pub fn new(tag: &str) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("elb test CA {tag}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        Ok(Self {
            ca: ca_cert.pem(),
            issuer: Issuer::new(ca_params, ca_key),
        })
    }

    /// A leaf certificate (ECDSA P-256) for `names` (DNS names or IPs)
    /// with common name `cn`: `(certificate PEM, key PEM)`.
    pub fn leaf(
        &self,
        names: &[&str],
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A server certificate: [`Authority::leaf`] for TLS servers.
    pub fn server(&self, names: &[&str], cn: &str) -> Result<(String, String)> {
        self.leaf(names, cn, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

impl Chain {
    /// A new CA (named after `tag`) and the two leaf certificates it signs.
    pub fn new(tag: &str) -> Result<Self> {
        let authority = Authority::new(tag)?;
        let (server_cert, server_key) = authority.server(&["127.0.0.1", "localhost"], "etcd")?;
        // Not an etcd user name: with auth enabled, etcd would take a
        // client certificate's CN as the user.
        let (client_cert, client_key) =
            authority.leaf(&[], "elb-client", ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(Self {
            ca: authority.ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes (or overwrites) the five files in `dir`.
    pub fn write(&self, dir: &Path) -> Result<ChainFiles> {
        std::fs::create_dir_all(dir)?;
        let files = ChainFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, pem) in [
            (&files.ca, &self.ca),
            (&files.server_cert, &self.server_cert),
            (&files.server_key, &self.server_key),
            (&files.client_cert, &self.client_cert),
            (&files.client_key, &self.client_key),
        ] {
            std::fs::write(path, pem)?;
        }
        Ok(files)
    }
}
