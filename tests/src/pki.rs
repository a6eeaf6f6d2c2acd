//! Certificates made by the test (rcgen): a CA, a server certificate (for
//! etcd on 127.0.0.1, or for given names), and a client certificate, as PEM
//! files in a directory.
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

impl Chain {
    /// A new CA (named after `tag`) and the two leaf certificates it signs.
    pub fn new(tag: &str) -> Result<Self> {
        Self::with_server_names(tag, "etcd", &["127.0.0.1", "localhost"])
    }

    /// [`Chain::new`] with a server certificate for `names` (common name
    /// `cn`), e.g. a host name a TLS listener serves.
    pub fn with_server_names(tag: &str, cn: &str, names: &[&str]) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("elb test CA {tag}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str, usage| -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            names.iter().map(|name| (*name).to_owned()).collect(),
            cn,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        // Not an etcd user name: with auth enabled, etcd would take a
        // client certificate's CN as the user.
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "elb-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self {
            ca: ca_cert.pem(),
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
