//! EC2 `DescribeInstances` by instance IDs.
use std::net::{IpAddr, Ipv6Addr};

use aws_sdk_ec2::error::ProvideErrorMetadata;

use super::{AwsError, describe_sdk_error};

/// One EC2 instance as elb needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub instance_id: String,
    /// The primary private IPv4 address; `None` only for an instance that
    /// has none (terminated).
    pub private_ip: Option<IpAddr>,
    /// The first IPv6 address of the primary interface, where configured.
    pub ipv6: Option<Ipv6Addr>,
    /// The availability zone (`us-east-1a`).
    pub zone: Option<String>,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`,
    /// `terminated`.
    pub state: String,
}

/// Describes exactly the instances `ids` (in EC2's order). An empty `ids`
/// asks nothing and returns nothing (EC2 would list every instance).
/// Unknown or malformed IDs give [`AwsError::UnknownInstances`].
pub async fn describe_instances(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Vec<Ec2Instance>, AwsError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut instances = Vec::with_capacity(ids.len());
    let mut next_token: Option<String> = None;
    loop {
        let output = ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .set_next_token(next_token.take())
            .send()
            .await
            .map_err(|err| {
                let code = err.code().unwrap_or_default().to_owned();
                let message = describe_sdk_error(&err);
                if code.starts_with("InvalidInstanceID") {
                    AwsError::UnknownInstances {
                        ids: ids.join(", "),
                        message,
                        source: Box::new(err),
                    }
                } else {
                    AwsError::Call {
                        service: "EC2",
                        operation: "DescribeInstances",
                        message,
                        source: Box::new(err),
                    }
                }
            })?;
        for reservation in output.reservations() {
            for instance in reservation.instances() {
                instances.push(convert(instance)?);
            }
        }
        match output.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
            _ => break,
        }
    }
    Ok(instances)
}

fn convert(instance: &aws_sdk_ec2::types::Instance) -> Result<Ec2Instance, AwsError> {
    let bad = |message: String| AwsError::BadAnswer {
        service: "EC2",
        operation: "DescribeInstances",
        message,
    };
    let instance_id = instance
        .instance_id()
        .ok_or_else(|| bad("an instance without an InstanceId".into()))?
        .to_owned();
    let private_ip = match instance.private_ip_address() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            bad(format!(
                "instance {instance_id}: PrivateIpAddress {text:?} is not an IP address"
            ))
        })?),
    };
    let ipv6 = instance
        .network_interfaces()
        .iter()
        .flat_map(|interface| interface.ipv6_addresses())
        .filter_map(|address| address.ipv6_address())
        .chain(instance.ipv6_address())
        .find_map(|text| text.parse::<Ipv6Addr>().ok());
    let zone = instance
        .placement()
        .and_then(|placement| placement.availability_zone())
        .map(str::to_owned);
    let state = instance
        .state()
        .and_then(|state| state.name())
        .map(|name| name.as_str().to_owned())
        .unwrap_or_default();
    Ok(Ec2Instance {
        instance_id,
        private_ip,
        ipv6,
        zone,
        state,
    })
}
