//! An Auto Scaling group's serving instances, with their addresses.
use std::net::{IpAddr, Ipv6Addr};

use aws_sdk_autoscaling::types::LifecycleState;

use super::{AwsClients, AwsError, describe_instances, describe_sdk_error};

/// One instance of an Auto Scaling group that is `InService` and
/// `Healthy`, joined with EC2 for its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgMember {
    pub instance_id: String,
    /// The primary private IPv4 address (from EC2 `DescribeInstances`).
    pub private_ip: IpAddr,
    /// The first IPv6 address, where the instance has one.
    pub ipv6: Option<Ipv6Addr>,
    /// The availability zone Auto Scaling placed it in: the server's
    /// `zone=` parameter.
    pub zone: String,
}

/// The instances of Auto Scaling group `group` that are `InService` and
/// `Healthy`, sorted by instance ID, each with its zone (from Auto Scaling)
/// and its private IPv4 and IPv6 addresses (from EC2 `DescribeInstances`).
///
/// - A group that does not exist, or has no such instance, is `Ok` and
///   empty: the API answered, and the answer is an empty group.
/// - Any failed call is an `Err`, so a caller can keep its last good list.
/// - An instance EC2 reports without a private IPv4 address is left out
///   (logged): there is nothing to send traffic to.
///
/// This is what the `aws_asg` discovery provider calls every interval.
pub async fn asg_instances(clients: &AwsClients, group: &str) -> Result<Vec<AsgMember>, AwsError> {
    let output = clients
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|err| AwsError::Call {
            service: "Auto Scaling",
            operation: "DescribeAutoScalingGroups",
            message: format!("group {group:?}: {}", describe_sdk_error(&err)),
            source: Box::new(err),
        })?;
    let mut zones: Vec<(String, String)> = output
        .auto_scaling_groups()
        .iter()
        .filter(|found| found.auto_scaling_group_name() == Some(group))
        .flat_map(|found| found.instances())
        .filter(|instance| {
            instance.lifecycle_state() == Some(&LifecycleState::InService)
                && instance.health_status() == Some("Healthy")
        })
        .filter_map(|instance| {
            Some((
                instance.instance_id()?.to_owned(),
                instance.availability_zone()?.to_owned(),
            ))
        })
        .collect();
    zones.sort();
    let ids: Vec<String> = zones.iter().map(|(id, _)| id.clone()).collect();
    let described = describe_instances(&clients.ec2, &ids).await?;
    let mut members = Vec::with_capacity(zones.len());
    for (instance_id, zone) in zones {
        let Some(instance) = described.iter().find(|i| i.instance_id == instance_id) else {
            tracing::warn!(
                group,
                instance_id,
                "EC2 does not describe this group member: left out"
            );
            continue;
        };
        let Some(private_ip) = instance.private_ip else {
            tracing::warn!(
                group,
                instance_id,
                "group member without a private IPv4 address: left out"
            );
            continue;
        };
        members.push(AsgMember {
            instance_id,
            private_ip,
            ipv6: instance.ipv6,
            zone,
        });
    }
    Ok(members)
}
