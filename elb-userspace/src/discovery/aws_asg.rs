//! The AWS Auto Scaling group provider: the group's `InService` and
//! `Healthy` instances ([`crate::aws::asg_instances`]: Auto Scaling
//! `DescribeAutoScalingGroups`, then EC2 `DescribeInstances` for the
//! addresses), each at the document's port, its availability zone as
//! `zone=`. Asked at once, then every `interval`, failed or not.
//!
//! The SDK's standard chain gives the credentials (environment, shared
//! files, instance metadata) and the region unless the document names one;
//! `AWS_ENDPOINT_URL` points it elsewhere (the tests' moto).
//!
//! The address is the member's primary private IPv4, or with `"ip":
//! "ipv6"` its first IPv6 address; a member without one is left out, with a
//! log line when the set of such members changes.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::{Map, Value, json};

use super::{DiscoveredServer, NextResult, Provider, ProviderError};
use crate::{
    aws::{AsgMember, AwsClients, asg_instances},
    config::discovery::{AsgAddress, AwsAsg},
};

/// One look-up (both calls, the SDK's retries included) gives up after
/// this: a hung endpoint must not stop the provider for good.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AsgProvider {
    asg: AwsAsg,
    /// Built on the first call: loading the SDK's configuration reads files
    /// and the environment, and `discovery::build` must do no I/O.
    clients: Option<AwsClients>,
    /// The first result is asked for at once; every later one an interval
    /// after the previous call.
    asked: bool,
    /// Members left out last time (no address of the chosen family), so
    /// the log says it once per change, not every interval.
    left_out: BTreeSet<String>,
}

impl AsgProvider {
    pub fn new(asg: AwsAsg) -> Self {
        Self {
            asg,
            clients: None,
            asked: false,
            left_out: BTreeSet::new(),
        }
    }

    async fn poll(&mut self) -> Result<Vec<DiscoveredServer>, ProviderError> {
        if self.asked {
            tokio::time::sleep(self.asg.interval).await;
        }
        self.asked = true;
        let clients = match &self.clients {
            Some(clients) => clients,
            None => self
                .clients
                .insert(AwsClients::load(self.asg.region.as_deref()).await),
        };
        let group = &self.asg.group;
        let members = match tokio::time::timeout(CALL_TIMEOUT, asg_instances(clients, group)).await
        {
            Ok(Ok(members)) => members,
            Ok(Err(err)) => return Err(ProviderError(error_text(group, &err.to_string()))),
            Err(_) => {
                return Err(ProviderError(format!(
                    "Auto Scaling group {group:?}: DescribeAutoScalingGroups/DescribeInstances \
                     took longer than {CALL_TIMEOUT:?}"
                )));
            }
        };
        let mapped = servers(&members, self.asg.port, self.asg.ip);
        let left_out: BTreeSet<String> = mapped.left_out.into_iter().collect();
        if left_out != self.left_out {
            if !left_out.is_empty() {
                tracing::warn!(
                    group = %group,
                    instances = ?left_out,
                    ip = self.asg.ip.as_str(),
                    "Auto Scaling group members without an address of this family: left out"
                );
            }
            self.left_out = left_out;
        }
        Ok(mapped.servers)
    }
}

impl Provider for AsgProvider {
    fn next(&mut self) -> NextResult<'_> {
        Box::pin(self.poll())
    }

    fn state(&self) -> Map<String, Value> {
        let mut state = Map::new();
        state.insert("ip".into(), json!(self.asg.ip.as_str()));
        if !self.left_out.is_empty() {
            state.insert("left_out".into(), json!(self.left_out));
        }
        state
    }
}

/// A group's members as servers, and the instance IDs left out.
#[derive(Debug, PartialEq, Eq)]
struct Mapped {
    servers: Vec<DiscoveredServer>,
    left_out: Vec<String>,
}

/// Pure: each member at `port` on its address of family `ip`, its
/// availability zone as the zone; members without such an address are
/// left out.
fn servers(members: &[AsgMember], port: u16, ip: AsgAddress) -> Mapped {
    let mut mapped = Mapped {
        servers: Vec::with_capacity(members.len()),
        left_out: Vec::new(),
    };
    for member in members {
        let addr = match ip {
            AsgAddress::Ipv4 => Some(member.private_ip).filter(IpAddr::is_ipv4),
            AsgAddress::Ipv6 => member.ipv6.map(IpAddr::V6),
        };
        match addr {
            Some(addr) => mapped.servers.push(DiscoveredServer {
                addr: SocketAddr::new(addr, port),
                zone: Some(member.zone.clone()).filter(|zone| !zone.is_empty()),
                weight: None,
            }),
            None => mapped.left_out.push(member.instance_id.clone()),
        }
    }
    mapped
}

/// The error as the admin API and the log show it: always naming the
/// group (the AWS error names the call; the Auto Scaling one also the
/// group, which is then not repeated).
fn error_text(group: &str, aws_error: &str) -> String {
    if aws_error.contains(&format!("group {group:?}")) {
        aws_error.to_owned()
    } else {
        format!("Auto Scaling group {group:?}: {aws_error}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn member(id: &str, v4: [u8; 4], v6: Option<&str>, zone: &str) -> AsgMember {
        AsgMember {
            instance_id: id.to_owned(),
            private_ip: IpAddr::from(v4),
            ipv6: v6.map(|text| text.parse::<Ipv6Addr>().expect("v6")),
            zone: zone.to_owned(),
        }
    }

    fn server(addr: &str, zone: &str) -> DiscoveredServer {
        DiscoveredServer {
            addr: addr.parse().expect("addr"),
            zone: Some(zone.to_owned()),
            weight: None,
        }
    }

    #[test]
    fn ipv4_members_become_servers_on_the_port_with_their_zone() {
        let members = [
            member("i-1", [10, 0, 0, 4], None, "us-east-1a"),
            member("i-2", [10, 0, 1, 5], Some("2001:db8::5"), "us-east-1b"),
        ];
        let mapped = servers(&members, 8080, AsgAddress::Ipv4);
        assert_eq!(
            mapped.servers,
            [
                server("10.0.0.4:8080", "us-east-1a"),
                server("10.0.1.5:8080", "us-east-1b")
            ]
        );
        assert!(mapped.left_out.is_empty());
        assert_eq!(servers(&[], 8080, AsgAddress::Ipv4).servers, []);
    }

    #[test]
    fn ipv6_takes_the_v6_address_and_leaves_out_members_without_one() {
        let members = [
            member("i-1", [10, 0, 0, 4], None, "us-east-1a"),
            member("i-2", [10, 0, 1, 5], Some("2001:db8::5"), "us-east-1b"),
        ];
        let mapped = servers(&members, 443, AsgAddress::Ipv6);
        assert_eq!(mapped.servers, [server("[2001:db8::5]:443", "us-east-1b")]);
        assert_eq!(mapped.left_out, ["i-1"]);
    }

    #[test]
    fn an_empty_zone_is_no_zone() {
        let mapped = servers(
            &[member("i-1", [10, 0, 0, 4], None, "")],
            80,
            AsgAddress::Ipv4,
        );
        assert_eq!(mapped.servers[0].zone, None);
    }

    #[test]
    fn errors_name_the_group_once() {
        assert_eq!(
            error_text(
                "web",
                "Auto Scaling DescribeAutoScalingGroups: group \"web\": dispatch failure"
            ),
            "Auto Scaling DescribeAutoScalingGroups: group \"web\": dispatch failure"
        );
        assert_eq!(
            error_text("web", "EC2 DescribeInstances: throttled"),
            "Auto Scaling group \"web\": EC2 DescribeInstances: throttled"
        );
    }
}
