//! One certificate document, `/$ELBNAME/certs/<name>` =
//! `{"cert": "<PEM chain>", "key": "<PEM key>"}`: parsed, checked (the chain
//! parses, the key matches the leaf, the leaf is valid now) and described
//! (DNS names, not-after, key type) for the admin API.
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::http_util::json_kind;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use serde_json::{Value, json};
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
        OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    },
    prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

/// A usable certificate and what the admin API shows of it.
pub struct Certificate {
    pub name: String,
    /// Lower case, as SNI is compared; `*.example.com` for a wildcard.
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`, ...
    pub key_type: String,
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The document as given, for `dump` (never shown by GET).
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Certificate {
    // No key material in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("dns_names", &self.dns_names)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

/// Why a certificate document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate {name:?}: {reason}")]
pub struct CertError {
    pub name: String,
    pub reason: String,
}

impl Certificate {
    /// Parses the stored text of `/$ELBNAME/certs/<name>`.
    pub fn parse(name: &str, text: &str, now: SystemTime) -> Result<Self, CertError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| error(name, format!("the document is not valid JSON: {e}")))?;
        Self::from_value(name, &value, now)
    }

    /// Checks one document; `now` decides expiry.
    pub fn from_value(name: &str, value: &Value, now: SystemTime) -> Result<Self, CertError> {
        let fail = |reason: String| error(name, reason);
        let object = value.as_object().ok_or_else(|| {
            fail(format!(
                "the document must be {{\"cert\": \"<PEM chain>\", \"key\": \"<PEM key>\"}}, got {}",
                json_kind(value)
            ))
        })?;
        if let Some(field) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "cert" | "key"))
        {
            return Err(fail(format!("unknown field {field:?}")));
        }
        let field = |field: &str| -> Result<String, CertError> {
            object
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| fail(format!("field {field:?} must be a PEM string")))
        };
        let (cert_pem, key_pem) = (field("cert")?, field("key")?);

        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("the certificate chain is not valid PEM: {e}")))?;
        let Some(leaf_der) = chain.first() else {
            return Err(fail(
                "the \"cert\" field has no CERTIFICATE block".to_owned(),
            ));
        };
        for (i, der) in chain.iter().enumerate().skip(1) {
            X509Certificate::from_der(der)
                .map_err(|e| fail(format!("certificate {i} of the chain does not parse: {e}")))?;
        }
        let (_, leaf) = X509Certificate::from_der(leaf_der)
            .map_err(|e| fail(format!("the leaf certificate does not parse: {e}")))?;

        let not_before = to_system_time(leaf.validity().not_before.timestamp());
        let not_after = to_system_time(leaf.validity().not_after.timestamp());
        if now < not_before {
            return Err(fail(format!(
                "the certificate is not valid before {}",
                rfc3339(not_before)
            )));
        }
        if now > not_after {
            return Err(fail(format!(
                "the certificate expired on {}",
                rfc3339(not_after)
            )));
        }
        let dns_names = dns_names(&leaf).map_err(fail)?;
        let key_type = key_type(leaf.public_key());

        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            fail(format!(
                "the \"key\" field has no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
            ))
        })?;
        let certified = certified_key(chain, key).map_err(fail)?;
        Ok(Self {
            name: name.to_owned(),
            dns_names,
            not_before,
            not_after,
            key_type,
            key: Arc::new(certified),
            cert_pem,
            key_pem,
        })
    }

    /// What GET shows: never the key.
    pub fn summary_json(&self) -> Value {
        json!({
            "dns_names": self.dns_names,
            "not_before": rfc3339(self.not_before),
            "not_after": rfc3339(self.not_after),
            "key_type": self.key_type,
        })
    }

    /// The stored document (for `dump`).
    pub fn to_document(&self) -> Value {
        json!({ "cert": self.cert_pem, "key": self.key_pem })
    }
}

fn error(name: &str, reason: String) -> CertError {
    CertError {
        name: name.to_owned(),
        reason,
    }
}

/// The key loaded by the provider rustls serves with, and proven to be the
/// leaf's (an unprovable match is refused too).
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("the private key does not match the certificate's public key".to_owned())
        }
        Err(e) => Err(format!(
            "cannot check that the private key matches the certificate: {e}"
        )),
    }
}

/// The crypto provider elb's TLS uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SAN's DNS names; the subject CN only when there is no SAN
/// extension (RFC 6125 clients ignore the CN when a SAN exists).
fn dns_names(leaf: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("the subjectAltName extension does not parse: {e}"))?;
    let mut names: Vec<String> = match san {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(normalize(dns)),
                _ => None,
            })
            .collect(),
        None => leaf
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(normalize)
            .collect(),
    };
    names.dedup();
    Ok(names)
}

/// Lower case, no trailing dot: how SNI is compared.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(oid) if oid == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(oid) if oid == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(oid) if oid == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(oid) => format!("ECDSA {oid}"),
            None => "ECDSA".to_owned(),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(key) => format!("RSA {}", key.key_size()),
            Err(_) => "RSA".to_owned(),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    algorithm.to_id_string()
}

/// Clamped to 1970..=9999 so formatting cannot fail (humantime's range);
/// a certificate's own dates may lie outside it.
fn to_system_time(unix: i64) -> SystemTime {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let secs = u64::try_from(unix).unwrap_or(0).min(LAST_SECOND_OF_9999);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339, seconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
