//! `/__erulb__/acl`: the deny-list, as a JSON array of CIDRs.
//!
//! - GET: the entries in canonical form (`10.0.0.0/8`, a bare address as
//!   `/32` or `/128`), IPv4 first, sorted by network then prefix length.
//! - PUT `["10.0.0.0/8", ...]`: adds the entries (one transaction).
//! - DELETE `["10.0.0.0/8", ...]`: removes them; entries that are not in
//!   the list are ignored, as DELETE of an unknown domain is.
//!
//! An invalid entry (including one with host bits set, like `10.1.2.3/8`)
//! is a 400 naming it, and nothing changes.
use std::collections::HashSet;

use serde_json::Value;

use super::{AdminError, AdminResult, expect_string_list, ok};
use crate::{
    cidr::Cidr,
    config::{
        ConfigService,
        acl::{self, AclError, MAX_ACL_ENTRIES},
    },
    http_util::json,
    store::KvOp,
};

pub async fn get(config: &ConfigService) -> AdminResult {
    let body = config
        .read(|manager| {
            manager
                .acl()
                .iter()
                .map(|cidr| Value::String(cidr.to_string()))
                .collect::<Vec<_>>()
        })
        .await;
    Ok(json(http::StatusCode::OK, &Value::Array(body)))
}

pub async fn put(config: &ConfigService, body: Value) -> AdminResult {
    let entries = parse_body(&body)?;
    config
        .write(|manager| {
            let current: HashSet<&Cidr> = manager.acl().iter().collect();
            let added: Vec<&Cidr> = entries
                .iter()
                .filter(|cidr| !current.contains(cidr))
                .collect();
            let count = current.len() + added.len();
            if count > MAX_ACL_ENTRIES {
                return Err(AclError::TooMany { count }.to_string());
            }
            let ops = added
                .into_iter()
                .map(|cidr| KvOp::Put {
                    key: manager.layout().acl_key(cidr),
                    value: String::new(),
                })
                .collect();
            Ok((ops, ()))
        })
        .await?;
    ok()
}

pub async fn delete(config: &ConfigService, body: Value) -> AdminResult {
    let entries: HashSet<Cidr> = parse_body(&body)?.into_iter().collect();
    config
        .write(|manager| {
            // Every key holding the entry: hand-written keys (`1.2.3.4`)
            // need not be in canonical form.
            let ops = manager
                .acl_keys()
                .iter()
                .filter(|(_, cidr)| entries.contains(cidr))
                .map(|(key, _)| KvOp::Delete { key: key.clone() })
                .collect();
            Ok((ops, ()))
        })
        .await?;
    ok()
}

/// The body's entries, sorted and deduplicated; a 400 naming the first bad
/// one.
pub fn parse_body(body: &Value) -> Result<Vec<Cidr>, AdminError> {
    let texts = expect_string_list(body, "CIDRs like \"10.0.0.0/8\"")?;
    if texts.len() > MAX_ACL_ENTRIES {
        return Err(AdminError::bad_request(
            AclError::TooMany { count: texts.len() }.to_string(),
        ));
    }
    let entries = texts
        .iter()
        .map(|text| acl::parse_entry(text).map_err(|e| AdminError::bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(acl::normalize(entries))
}
