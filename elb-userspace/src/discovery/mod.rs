//! Discovery: providers that own upstreams' server lists (a Consul
//! service, an AWS Auto Scaling group), run in the background by
//! [`runner::spawn`], each result written to the store as the upstream's
//! whole server list in one commit.
//!
//! - `provider`: the interface a provider implements.
//! - `plan`: a result as store operations (pure).
//! - `board`: each provider's state, for `GET /__erulb__/discovery`.
//! - `runner`: follows the discovery documents, runs the providers.
//! - `consul`: the Consul provider (blocking queries on the health API).
//! - `leader`: which node runs the providers (etcd election; the
//!   embedded store's single node always does), as the runner's gate.
//! - `aws_asg`: the AWS Auto Scaling group provider (polls every interval).
#[cfg(feature = "aws")]
pub mod aws_asg;
pub mod board;
pub mod consul;
pub mod leader;
pub mod plan;
pub mod provider;
pub mod runner;

pub use board::DiscoveryBoard;
pub use provider::{DiscoveredServer, NextResult, Provider, ProviderError};

use crate::config::discovery::{Discovery, Source};

/// A provider for `document`, or why this build has none. Cheap: no I/O
/// (a provider does its I/O in `next`).
///
/// The one place a provider is wired in.
pub fn build(document: &Discovery) -> Result<Box<dyn Provider>, ProviderError> {
    match &document.source {
        Source::Consul(consul) => Ok(Box::new(consul::ConsulProvider::new(consul.clone()))),
        #[cfg(feature = "aws")]
        Source::AwsAsg(asg) => Ok(Box::new(aws_asg::AsgProvider::new(asg.clone()))),
        #[cfg(not(feature = "aws"))]
        Source::AwsAsg(_) => Err(ProviderError(
            "provider aws_asg: this elb was built without the `aws` cargo feature".to_owned(),
        )),
    }
}

/// Whether this build can run `document`'s provider (admin PUT refuses
/// the document otherwise).
pub fn available(document: &Discovery) -> Result<(), ProviderError> {
    build(document).map(drop)
}
