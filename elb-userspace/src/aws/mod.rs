//! The AWS side: the official SDK's Auto Scaling client and elb's own
//! client for EC2's one call (`ec2`), shared by the ASG discovery provider
//! and the ELB API (`api`), which resolves instance IDs through EC2.
//!
//! Credentials and the region come from the SDK's standard chain
//! (environment, shared config/credentials files, instance metadata), and
//! `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_EC2` /
//! `AWS_ENDPOINT_URL_AUTO_SCALING`) points the clients at another endpoint,
//! which is how the tests reach moto.
pub mod api;
mod asg;
mod ec2;

pub use asg::{AsgMember, asg_instances};
pub use ec2::{Ec2CallError, Ec2Client, Ec2Instance, describe_instances};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Errors of the AWS look-ups. Each keeps the underlying error (the SDK's,
/// or EC2's [`Ec2CallError`]) as its source.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// EC2 does not know some of the instance IDs asked for (or one is
    /// malformed): `InvalidInstanceID.NotFound` / `.Malformed`.
    #[error("EC2 DescribeInstances: unknown instance ID(s) {ids}: {message}")]
    UnknownInstances {
        ids: String,
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other failure of an EC2 or Auto Scaling call (network,
    /// credentials, throttling, a service error).
    #[error("{service} {operation}: {message}")]
    Call {
        service: &'static str,
        operation: &'static str,
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer lacks something every instance has.
    #[error("{service} {operation}: {message}")]
    BadAnswer {
        service: &'static str,
        operation: &'static str,
        message: String,
    },
}

/// The clients elb uses, built once from one configuration.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub ec2: Ec2Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
}

impl AwsClients {
    /// Loads the standard configuration chain; `region` overrides the
    /// chain's region (`AWS_REGION`, profile) when given. The HTTPS client
    /// is rustls on ring, the TLS stack elb already uses.
    pub async fn load(region: Option<&str>) -> Self {
        Self::from_config(&load_sdk_config(region).await)
    }

    pub fn from_config(config: &SdkConfig) -> Self {
        Self {
            ec2: Ec2Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
        }
    }
}

/// The SDK configuration from the standard chain (see the module docs).
pub async fn load_sdk_config(region: Option<&str>) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    loader.load().await
}

/// An SDK error as one line with its causes (`Display` of an `SdkError`
/// alone says only "service error").
fn describe_sdk_error(err: &(dyn std::error::Error + 'static)) -> String {
    aws_sdk_autoscaling::error::DisplayErrorContext(err).to_string()
}
