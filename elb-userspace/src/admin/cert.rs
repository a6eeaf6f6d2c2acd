//! `/__erulb__/cert`: TLS certificates, shaped like `/__erulb__/service`.
//! PUT `{"name": {"cert": "<PEM chain>", "key": "<PEM key>"}}` checks every
//! document (the chain parses, the key matches the leaf, the leaf is valid
//! now) and stores all or none. GET shows each certificate's DNS names,
//! validity and key type, never its key.
use std::time::SystemTime;

use serde_json::Value;

use super::{AdminResult, expect_object, expect_string_list, get_view, named, ok};
use crate::{
    config::{ConfigService, keys::validate_key_segment},
    store::KvOp,
    tls::Certificate,
};

pub async fn get(config: &ConfigService) -> AdminResult {
    get_view(config, |manager| {
        named(manager.certs(), |cert| cert.summary_json())
    })
    .await
}

/// Adds or replaces every certificate in the body, all or nothing.
pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let certs = expect_object(&body, "name: {\"cert\", \"key\"}")?;
    let now = SystemTime::now();
    config
        .write(|manager| {
            let mut ops = Vec::with_capacity(certs.len());
            for (name, doc) in certs {
                validate_key_segment("certificate", name)?;
                let cert = Certificate::from_value(name, doc, now).map_err(|e| e.to_string())?;
                ops.push(KvOp::Put {
                    key: manager.layout().cert_key(name),
                    value: cert.to_document().to_string(),
                });
            }
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// Deletes the named certificates; unknown names are ignored. A listener's
/// default certificate is refused (400 naming the listener): its
/// handshakes without a matching SNI name would all fail.
pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let names = expect_string_list(&body, "certificate names")?;
    config
        .write(|manager| {
            // Checked inside the write: a listener written meanwhile counts.
            if let Some((cert, listener)) = manager.listeners().values().find_map(|listener| {
                let cert = listener.default_certificate.as_ref()?;
                names.contains(cert).then_some((cert, &listener.name))
            }) {
                return Err(format!(
                    "certificate {cert:?} is the default_certificate of listener \
                     {listener:?}; change or delete the listener first"
                ));
            }
            let keys = names.iter().map(|name| manager.layout().cert_key(name));
            Ok((super::delete_ops(manager, keys), ()))
        })
        .await?;
    ok()
}
