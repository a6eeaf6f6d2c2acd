//! TLS termination pieces that do not depend on listeners: certificates as
//! stored documents ([`certs`]), the SNI choice ([`sni`]), the rustls
//! certificate resolver over the live configuration ([`resolver`]) and the
//! `ServerConfig` a TLS listener uses ([`server_config`]); the client side
//! towards `tls` upstream servers ([`client`]).
pub mod certs;
pub mod client;
pub mod resolver;
pub mod sni;

pub use certs::{CertError, Certificate};
pub use client::{UpstreamCaError, UpstreamTls};
pub use resolver::{CertSource, SniResolver, server_config};
pub use sni::CertSet;

#[cfg(test)]
mod tests;
