//! A Classic load balancer as the ELB API keeps it (its own record at
//! `/$ELBNAME/aws/loadbalancers/<name>`), and the elb configuration it
//! becomes (upstreams, policies, listeners, domains, L4 services): see the
//! README's "AWS ELB API" table. Pure.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use crate::config::KeyLayout;

/// What every elb object made for load balancer `lb` is named after.
pub fn object_name(lb: &str, port: u16) -> String {
    format!("aws-{lb}-{port}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub name: String,
    pub dns_name: String,
    pub region: String,
    /// ISO 8601, as DescribeLoadBalancers shows it.
    pub created: String,
    pub listeners: Vec<LbListener>,
    pub zones: Vec<String>,
    pub instances: Vec<LbInstance>,
    pub health_check: LbHealthCheck,
    pub connection_draining: bool,
    pub connection_draining_timeout: u32,
    pub cross_zone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbListener {
    /// `HTTP`, `HTTPS` or `TCP` (upper case, as AWS echoes it).
    pub protocol: String,
    pub load_balancer_port: u16,
    pub instance_protocol: String,
    pub instance_port: u16,
    /// HTTPS: the certificate (its last path segment names an elb
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_certificate_id: Option<String>,
}

impl LbListener {
    fn is_http(&self) -> bool {
        matches!(self.protocol.as_str(), "HTTP" | "HTTPS")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbInstance {
    pub id: String,
    pub address: IpAddr,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbHealthCheck {
    pub target: String,
    pub interval: u32,
    pub timeout: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl LbHealthCheck {
    /// AWS's default for a new Classic load balancer: a TCP connect to
    /// the first listener's instance port.
    pub fn default_for(listeners: &[LbListener]) -> Self {
        let port = listeners.first().map_or(80, |l| l.instance_port);
        Self {
            target: format!("TCP:{port}"),
            interval: 30,
            timeout: 5,
            healthy_threshold: 10,
            unhealthy_threshold: 2,
        }
    }
}

/// Parses one `Listeners.member.N` group.
pub fn parse_listener(fields: &BTreeMap<&str, &str>) -> Result<LbListener, ApiError> {
    let field = |name: &str| fields.get(name).copied().filter(|v| !v.is_empty());
    let protocol = field("Protocol")
        .ok_or_else(|| ApiError::validation("Listener Protocol is required"))?
        .to_ascii_uppercase();
    let port = |name: &str| -> Result<u16, ApiError> {
        let text = field(name)
            .ok_or_else(|| ApiError::validation(format!("Listener {name} is required")))?;
        text.parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "Listener {name} {text:?} is not a port between 1 and 65535"
                ))
            })
    };
    let load_balancer_port = port("LoadBalancerPort")?;
    let instance_port = port("InstancePort")?;
    let instance_protocol = field("InstanceProtocol")
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| protocol.clone());
    let supported = |p: &str| matches!(p, "HTTP" | "HTTPS" | "TCP");
    if !supported(&protocol) {
        return Err(ApiError::new(
            "UnsupportedProtocol",
            400,
            format!("Protocol {protocol:?} is not supported by elb (HTTP, HTTPS, TCP)"),
        ));
    }
    if !matches!(instance_protocol.as_str(), "HTTP" | "HTTPS" | "TCP" | "SSL") {
        return Err(ApiError::new(
            "UnsupportedProtocol",
            400,
            format!("InstanceProtocol {instance_protocol:?} is not HTTP, HTTPS, TCP or SSL"),
        ));
    }
    let http_front = matches!(protocol.as_str(), "HTTP" | "HTTPS");
    let http_back = matches!(instance_protocol.as_str(), "HTTP" | "HTTPS");
    if http_front != http_back {
        return Err(ApiError::validation(format!(
            "Listener protocol {protocol} and instance protocol {instance_protocol} must both be \
             HTTP/HTTPS or both TCP/SSL"
        )));
    }
    let ssl_certificate_id = field("SSLCertificateId").map(str::to_owned);
    if protocol == "HTTPS" && ssl_certificate_id.is_none() {
        return Err(ApiError::validation(
            "An HTTPS listener needs an SSLCertificateId",
        ));
    }
    Ok(LbListener {
        protocol,
        load_balancer_port,
        instance_protocol,
        instance_port,
        ssl_certificate_id: ssl_certificate_id.filter(|_| http_front),
    })
}

/// AWS: 1 to 32 alphanumerics or hyphens, not starting or ending with a
/// hyphen.
pub fn validate_lb_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "LoadBalancerName {name:?} must be 1 to 32 letters, digits or hyphens, and must not \
             start or end with a hyphen"
        )))
    }
}

/// The elb certificate an `SSLCertificateId` names: its last `/` or `:`
/// segment (`arn:aws:iam::123:server-certificate/web` → `web`).
pub fn certificate_name(id: &str) -> &str {
    id.rsplit(['/', ':']).next().unwrap_or(id)
}

/// Every store entry load balancer `lb` becomes, by key. `bind` is the IP
/// its listeners and L4 services take (the `--aws-api` address's).
pub fn derive(lb: &LoadBalancer, layout: &KeyLayout, bind: IpAddr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let enabled: BTreeSet<&str> = lb.zones.iter().map(String::as_str).collect();
    let instance_ports: BTreeSet<(u16, bool)> = lb
        .listeners
        .iter()
        .map(|l| {
            let tls = matches!(l.instance_protocol.as_str(), "HTTPS" | "SSL");
            (l.instance_port, tls)
        })
        .collect();
    let check = &lb.health_check;
    for &(port, tls) in &instance_ports {
        let upstream = object_name(&lb.name, port);
        for instance in &lb.instances {
            let server = std::net::SocketAddr::new(instance.address, port).to_string();
            let mut params = format!("zone={}", instance.zone);
            if tls {
                params.push_str(" tls");
            }
            // An instance in a zone the balancer does not use drains.
            if !enabled.contains(instance.zone.as_str()) {
                params.push_str(" down");
            }
            out.insert(layout.server_key(&upstream, &server), params);
        }
        let drain = if lb.connection_draining {
            lb.connection_draining_timeout
        } else {
            0
        };
        let policy = json!({
            "health_check": {
                "target": check.target,
                "interval": format!("{}s", check.interval),
                "timeout": format!("{}s", check.timeout),
                "healthy_threshold": check.healthy_threshold,
                "unhealthy_threshold": check.unhealthy_threshold,
            },
            "deregistration_delay": format!("{drain}s"),
            "cross_zone": lb.cross_zone,
        });
        out.insert(layout.policy_key(&upstream), policy.to_string());
    }
    let dns = lb.dns_name.to_ascii_lowercase();
    let mut default_domain_set = false;
    let mut sorted: Vec<&LbListener> = lb.listeners.iter().collect();
    sorted.sort_by_key(|l| l.load_balancer_port);
    for listener in sorted {
        let name = object_name(&lb.name, listener.load_balancer_port);
        let upstream = object_name(&lb.name, listener.instance_port);
        let address = std::net::SocketAddr::new(bind, listener.load_balancer_port).to_string();
        if listener.is_http() {
            let mut doc =
                json!({"address": address, "protocol": listener.protocol.to_ascii_lowercase()});
            if let (Some(cert), Some(object)) = (&listener.ssl_certificate_id, doc.as_object_mut())
            {
                object.insert(
                    "default_certificate".into(),
                    certificate_name(cert).to_owned().into(),
                );
            }
            out.insert(layout.listener_key(&name), doc.to_string());
            let rule = json!({"init": "b", "rules": {"b": {"type": "backend",
                "args": {"servername": upstream}}}})
            .to_string();
            out.insert(
                layout.rule_key(&format!("{dns}:{}", listener.load_balancer_port)),
                rule.clone(),
            );
            // Without a port in Host: the lowest-numbered HTTP listener.
            if !default_domain_set {
                out.insert(layout.rule_key(&dns), rule);
                default_domain_set = true;
            }
        } else {
            let doc = json!({"vip": address, "proto": "tcp", "upstream": upstream});
            out.insert(layout.service_key(&name), doc.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(protocol: &str, lb_port: u16, instance_port: u16) -> LbListener {
        LbListener {
            protocol: protocol.into(),
            load_balancer_port: lb_port,
            instance_protocol: protocol.into(),
            instance_port,
            ssl_certificate_id: None,
        }
    }

    fn tutorial() -> LoadBalancer {
        let listeners = vec![listener("HTTP", 80, 8080), listener("TCP", 443, 8443)];
        LoadBalancer {
            name: "my-lb".into(),
            dns_name: "my-lb-1.us-east-1.elb.amazonaws.com".into(),
            region: "us-east-1".into(),
            created: "2026-12-01T00:00:00.000Z".into(),
            health_check: LbHealthCheck::default_for(&listeners),
            listeners,
            zones: vec!["us-east-1a".into()],
            instances: vec![
                LbInstance {
                    id: "i-1".into(),
                    address: "127.0.0.5".parse().expect("ip"),
                    zone: "us-east-1a".into(),
                },
                LbInstance {
                    id: "i-2".into(),
                    address: "127.0.1.6".parse().expect("ip"),
                    zone: "us-east-1b".into(),
                },
            ],
            connection_draining: true,
            connection_draining_timeout: 20,
            cross_zone: false,
        }
    }

    #[test]
    fn the_tutorial_balancer_becomes_elb_configuration() {
        let layout = KeyLayout::new("E");
        let entries = derive(&tutorial(), &layout, "127.0.0.1".parse().expect("ip"));
        let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/E/listeners/aws-my-lb-80",
                "/E/policies/aws-my-lb-8080",
                "/E/policies/aws-my-lb-8443",
                "/E/rules/my-lb-1.us-east-1.elb.amazonaws.com",
                "/E/rules/my-lb-1.us-east-1.elb.amazonaws.com:80",
                "/E/services/aws-my-lb-443",
                "/E/upstreams/aws-my-lb-8080/127.0.0.5:8080",
                "/E/upstreams/aws-my-lb-8080/127.0.1.6:8080",
                "/E/upstreams/aws-my-lb-8443/127.0.0.5:8443",
                "/E/upstreams/aws-my-lb-8443/127.0.1.6:8443",
            ]
        );
        // Every derived document is one elb itself accepts.
        for (key, value) in &entries {
            match layout.parse(key) {
                Some(crate::config::keys::StoreKey::Listener { name }) => {
                    crate::config::Listener::parse(name, value).expect("listener");
                }
                Some(crate::config::keys::StoreKey::Policy { upstream }) => {
                    crate::config::policy::Policy::parse(upstream, value).expect("policy");
                }
                Some(crate::config::keys::StoreKey::Service { name }) => {
                    crate::config::l4::L4Service::parse(name, value).expect("service");
                }
                Some(crate::config::keys::StoreKey::Server { .. }) => {
                    crate::upstream::parse_params(value).expect("params");
                }
                Some(crate::config::keys::StoreKey::Rule { .. }) => {}
                other => panic!("{key}: {other:?}"),
            }
        }
        assert_eq!(
            entries["/E/upstreams/aws-my-lb-8080/127.0.1.6:8080"],
            "zone=us-east-1b down"
        );
        let policy: serde_json::Value =
            serde_json::from_str(&entries["/E/policies/aws-my-lb-8080"]).expect("json");
        assert_eq!(policy["deregistration_delay"], "20s");
        assert_eq!(policy["health_check"]["target"], "TCP:8080");
        assert!(entries["/E/services/aws-my-lb-443"].contains("\"vip\":\"127.0.0.1:443\""));
    }

    #[test]
    fn listeners_are_checked() {
        let fields = |pairs: &[(&'static str, &'static str)]| -> BTreeMap<&str, &str> {
            pairs.iter().copied().collect()
        };
        let ok = parse_listener(&fields(&[
            ("Protocol", "http"),
            ("LoadBalancerPort", "80"),
            ("InstancePort", "8080"),
        ]))
        .expect("valid");
        assert_eq!(ok.protocol, "HTTP");
        assert_eq!(ok.instance_protocol, "HTTP");
        for (pairs, code) in [
            (
                vec![
                    ("Protocol", "UDP"),
                    ("LoadBalancerPort", "80"),
                    ("InstancePort", "1"),
                ],
                "UnsupportedProtocol",
            ),
            (
                vec![
                    ("Protocol", "HTTP"),
                    ("LoadBalancerPort", "0"),
                    ("InstancePort", "1"),
                ],
                "ValidationError",
            ),
            (
                vec![("Protocol", "HTTP"), ("InstancePort", "1")],
                "ValidationError",
            ),
            (
                vec![
                    ("Protocol", "HTTP"),
                    ("LoadBalancerPort", "80"),
                    ("InstancePort", "1"),
                    ("InstanceProtocol", "TCP"),
                ],
                "ValidationError",
            ),
        ] {
            let err = parse_listener(&fields(&pairs)).expect_err("invalid");
            assert_eq!(err.code, code, "{pairs:?}: {err}");
        }
    }

    #[test]
    fn names_and_certificates() {
        assert!(validate_lb_name("my-lb").is_ok());
        for bad in ["", "-a", "a-", "a_b", &"x".repeat(33)] {
            assert!(validate_lb_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            certificate_name("arn:aws:iam::123456789012:server-certificate/web"),
            "web"
        );
        assert_eq!(certificate_name("main"), "main");
    }
}
