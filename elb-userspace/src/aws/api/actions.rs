//! The ELB API's actions. Each write is one store transaction: the load
//! balancer's record plus the elb configuration derived from it
//! ([`model::derive`]), so it shows in `/__erulb__/` and survives restarts.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::SystemTime,
};

use super::{
    error::ApiError,
    model::{self, LbHealthCheck, LbInstance, LoadBalancer, derive, object_name},
    query::Params,
    sigv4::format_iso8601,
    xml::Xml,
};
use crate::{
    aws::{AwsError, describe_instances},
    config::{ConfigManager, ConfigService, WriteError, listener::addresses_overlap},
    store::KvOp,
    targets::TargetState,
};

/// What the actions need.
pub struct Context<'a> {
    pub config: &'a ConfigService,
    pub ec2: &'a crate::aws::Ec2Client,
    /// The IP load balancers' listeners take.
    pub bind: IpAddr,
    /// The signature's region: DNS names are in it.
    pub region: &'a str,
}

/// `/$ELBNAME/aws/loadbalancers/`.
pub fn records_prefix(manager: &ConfigManager) -> String {
    format!("{}aws/loadbalancers/", manager.layout().prefix())
}

fn record_key(manager: &ConfigManager, name: &str) -> String {
    format!("{}{name}", records_prefix(manager))
}

fn read_lb(manager: &ConfigManager, name: &str) -> Result<Option<LoadBalancer>, ApiError> {
    manager
        .kv()
        .get(&record_key(manager, name))
        .map(|text| {
            serde_json::from_str(text).map_err(|err| {
                ApiError::internal(format!(
                    "the stored record of load balancer {name:?}: {err}"
                ))
            })
        })
        .transpose()
}

fn all_lbs(manager: &ConfigManager) -> Vec<LoadBalancer> {
    let prefix = records_prefix(manager);
    manager
        .kv()
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(key, text)| match serde_json::from_str(text) {
            Ok(lb) => Some(lb),
            Err(error) => {
                tracing::warn!(key, %error, "skipping an unreadable load balancer record");
                None
            }
        })
        .collect()
}

fn existing(manager: &ConfigManager, name: &str) -> Result<LoadBalancer, ApiError> {
    read_lb(manager, name)?.ok_or_else(|| ApiError::lb_not_found(name))
}

/// Runs one action's action: the result XML (inside `<ActionResult>`).
pub async fn dispatch(
    ctx: &Context<'_>,
    action: &str,
    params: &Params,
) -> Result<String, ApiError> {
    match action {
        "CreateLoadBalancer" => create_load_balancer(ctx, params).await,
        "DescribeLoadBalancers" => describe_load_balancers(ctx, params).await,
        "DeleteLoadBalancer" => delete_load_balancer(ctx, params).await,
        "CreateLoadBalancerListeners" => create_listeners(ctx, params).await,
        "DeleteLoadBalancerListeners" => delete_listeners(ctx, params).await,
        "ConfigureHealthCheck" => configure_health_check(ctx, params).await,
        "RegisterInstancesWithLoadBalancer" => register(ctx, params).await,
        "DeregisterInstancesFromLoadBalancer" => deregister(ctx, params).await,
        "DescribeInstanceHealth" => describe_instance_health(ctx, params).await,
        "EnableAvailabilityZonesForLoadBalancer" => zones(ctx, params, true).await,
        "DisableAvailabilityZonesForLoadBalancer" => zones(ctx, params, false).await,
        "ModifyLoadBalancerAttributes" => modify_attributes(ctx, params).await,
        "DescribeLoadBalancerAttributes" => describe_attributes(ctx, params).await,
        other => Err(ApiError::new(
            "InvalidAction",
            400,
            format!("The action {other} is not valid for this web service."),
        )),
    }
}

/// Plans and commits a change of load balancer `name`: `change` gets the
/// current record (if any) and returns the new one (`None` deletes it)
/// and the reply.
async fn write_lb<R>(
    ctx: &Context<'_>,
    name: &str,
    change: impl FnOnce(
        &ConfigManager,
        Option<LoadBalancer>,
    ) -> Result<(Option<LoadBalancer>, R), ApiError>,
) -> Result<R, ApiError> {
    let mut failure: Option<ApiError> = None;
    let written = ctx
        .config
        .write(|manager| {
            let planned = read_lb(manager, name).and_then(|old| {
                let (new, reply) = change(manager, old.clone())?;
                let ops = plan_ops(manager, ctx.bind, name, old.as_ref(), new.as_ref())?;
                Ok((ops, reply))
            });
            planned.map_err(|error| {
                let message = error.message.clone();
                failure = Some(error);
                message
            })
        })
        .await;
    match written {
        Ok(reply) => Ok(reply),
        Err(WriteError::Invalid(message)) => {
            Err(failure.unwrap_or_else(|| ApiError::validation(message)))
        }
        Err(error @ WriteError::Store(_)) => Err(ApiError::internal(error.to_string())),
    }
}

/// The store operations that turn `old`'s configuration into `new`'s,
/// after checking what elb would refuse.
fn plan_ops(
    manager: &ConfigManager,
    bind: IpAddr,
    name: &str,
    old: Option<&LoadBalancer>,
    new: Option<&LoadBalancer>,
) -> Result<Vec<KvOp>, ApiError> {
    let layout = manager.layout();
    let old_entries = old.map(|lb| derive(lb, layout, bind)).unwrap_or_default();
    let new_entries = new.map(|lb| derive(lb, layout, bind)).unwrap_or_default();
    if let Some(lb) = new {
        check(manager, bind, lb, &old_entries)?;
    }
    let mut ops: Vec<KvOp> = old_entries
        .keys()
        .filter(|key| !new_entries.contains_key(*key))
        .map(|key| KvOp::Delete { key: key.clone() })
        .collect();
    ops.extend(
        new_entries
            .into_iter()
            .filter(|(key, value)| manager.kv().get(key) != Some(value))
            .map(|(key, value)| KvOp::Put { key, value }),
    );
    let key = record_key(manager, name);
    match new {
        Some(lb) => {
            let value = serde_json::to_string(lb)
                .map_err(|err| ApiError::internal(format!("encoding the record: {err}")))?;
            if manager.kv().get(&key) != Some(&value) {
                ops.push(KvOp::Put { key, value });
            }
        }
        None if old.is_some() => ops.push(KvOp::Delete { key }),
        None => {}
    }
    Ok(ops)
}

/// What elb would refuse: a listener address another listener, L4 service
/// or `--listen` address has; an instance that is elb itself; an unknown
/// certificate.
fn check(
    manager: &ConfigManager,
    bind: IpAddr,
    lb: &LoadBalancer,
    own_before: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let layout = manager.layout();
    for listener in &lb.listeners {
        let key_name = object_name(&lb.name, listener.load_balancer_port);
        let address = std::net::SocketAddr::new(bind, listener.load_balancer_port);
        let ours = |key: String| own_before.contains_key(&key);
        let clash = manager
            .listeners()
            .iter()
            .filter(|(name, _)| !ours(layout.listener_key(name)))
            .any(|(_, other)| addresses_overlap(other.address, address))
            || manager
                .services()
                .iter()
                .filter(|(name, _)| !ours(layout.service_key(name)))
                .any(|(_, service)| addresses_overlap(service.vip, address))
            || manager.own_addrs().check(&address.to_string()).is_err();
        if clash && !ours(layout.listener_key(&key_name)) && !ours(layout.service_key(&key_name)) {
            return Err(ApiError::new(
                "DuplicateListener",
                400,
                format!(
                    "LoadBalancerPort {}: elb already listens on {address}",
                    listener.load_balancer_port
                ),
            ));
        }
        if let Some(cert) = &listener.ssl_certificate_id {
            let cert_name = model::certificate_name(cert);
            if !manager.certs().contains_key(cert_name) {
                return Err(ApiError::new(
                    "CertificateNotFound",
                    400,
                    format!(
                        "SSLCertificateId {cert:?}: elb has no certificate {cert_name:?} \
                         (upload it with PUT /__erulb__/cert)"
                    ),
                ));
            }
        }
        for instance in &lb.instances {
            let server = std::net::SocketAddr::new(instance.address, listener.instance_port);
            if let Err(err) = manager.own_addrs().check(&server.to_string()) {
                return Err(ApiError::invalid_instance(format!(
                    "Instance {} at {server}: {err}",
                    instance.id
                )));
            }
        }
    }
    Ok(())
}

fn listeners_param(params: &Params) -> Result<Vec<model::LbListener>, ApiError> {
    let listeners = params
        .structs("Listeners")
        .iter()
        .map(model::parse_listener)
        .collect::<Result<Vec<_>, _>>()?;
    if listeners.is_empty() {
        return Err(ApiError::validation(
            "1 validation error detected: Value null at 'listeners' failed to satisfy \
             constraint: Member must not be null",
        ));
    }
    Ok(listeners)
}

/// Adds `new` to `listeners`: a port already there must have the same
/// definition (`DuplicateListener` otherwise).
fn merge_listeners(
    listeners: &mut Vec<model::LbListener>,
    new: Vec<model::LbListener>,
) -> Result<(), ApiError> {
    for listener in new {
        match listeners
            .iter()
            .find(|l| l.load_balancer_port == listener.load_balancer_port)
        {
            Some(same) if *same == listener => {}
            Some(_) => {
                return Err(ApiError::new(
                    "DuplicateListener",
                    400,
                    format!(
                        "A listener already exists for LoadBalancerPort {} with a different \
                         definition",
                        listener.load_balancer_port
                    ),
                ));
            }
            None => listeners.push(listener),
        }
    }
    Ok(())
}

async fn create_load_balancer(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    model::validate_lb_name(&name)?;
    let mut listeners = Vec::new();
    merge_listeners(&mut listeners, listeners_param(params)?)?;
    let zones: Vec<String> = params
        .list("AvailabilityZones")
        .into_iter()
        .map(str::to_owned)
        .collect();
    if zones.is_empty() {
        let why = if params.list("Subnets").is_empty() {
            "AvailabilityZones is required"
        } else {
            "elb places load balancers by AvailabilityZones, not Subnets"
        };
        return Err(ApiError::validation(why));
    }
    for zone in &zones {
        crate::config::zones::validate_zone_name(zone).map_err(ApiError::validation)?;
    }
    let region = ctx.region.to_owned();
    let dns = format!(
        "{}-{}.{region}.elb.amazonaws.com",
        name.to_ascii_lowercase(),
        fastrand::u32(1_000_000_000..u32::MAX)
    );
    let dns_name = write_lb(ctx, &name, |_, old| {
        if let Some(old) = old {
            // AWS: the same definition again is answered, not refused.
            if old.listeners == listeners {
                let dns = old.dns_name.clone();
                return Ok((Some(old), dns));
            }
            return Err(ApiError::new(
                "DuplicateLoadBalancerName",
                400,
                format!("Load balancer {name:?} already exists with other listeners"),
            ));
        }
        let lb = LoadBalancer {
            name: name.clone(),
            dns_name: dns.clone(),
            region,
            created: format_iso8601(SystemTime::now()),
            health_check: LbHealthCheck::default_for(&listeners),
            listeners,
            zones: dedup(zones),
            instances: Vec::new(),
            connection_draining: false,
            connection_draining_timeout: 300,
            cross_zone: false,
        };
        Ok((Some(lb), dns))
    })
    .await?;
    let mut xml = Xml::new();
    xml.leaf("DNSName", dns_name);
    Ok(xml.into_string())
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}

async fn describe_load_balancers(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let names: Vec<String> = params
        .list("LoadBalancerNames")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let lbs = ctx
        .config
        .read(|manager| -> Result<Vec<LoadBalancer>, ApiError> {
            if names.is_empty() {
                return Ok(all_lbs(manager));
            }
            names.iter().map(|name| existing(manager, name)).collect()
        })
        .await?;
    let mut xml = Xml::new();
    xml.members("LoadBalancerDescriptions", &lbs, |xml, lb| {
        xml.leaf("LoadBalancerName", &lb.name)
            .leaf("DNSName", &lb.dns_name)
            .leaf("CanonicalHostedZoneName", &lb.dns_name)
            .leaf("CanonicalHostedZoneNameID", "Z35SXDOTRQ7X7K");
        xml.members("ListenerDescriptions", &lb.listeners, |xml, listener| {
            xml.open("Listener")
                .leaf("Protocol", &listener.protocol)
                .leaf("LoadBalancerPort", listener.load_balancer_port)
                .leaf("InstanceProtocol", &listener.instance_protocol)
                .leaf("InstancePort", listener.instance_port);
            if let Some(cert) = &listener.ssl_certificate_id {
                xml.leaf("SSLCertificateId", cert);
            }
            xml.close("Listener");
            xml.text_members("PolicyNames", Vec::<String>::new());
        });
        xml.open("Policies")
            .text_members("AppCookieStickinessPolicies", Vec::<String>::new())
            .text_members("LBCookieStickinessPolicies", Vec::<String>::new())
            .text_members("OtherPolicies", Vec::<String>::new())
            .close("Policies");
        xml.text_members("BackendServerDescriptions", Vec::<String>::new());
        xml.text_members("AvailabilityZones", &lb.zones);
        xml.text_members("Subnets", Vec::<String>::new());
        xml.members("Instances", &lb.instances, |xml, instance| {
            xml.leaf("InstanceId", &instance.id);
        });
        health_check_xml(xml, &lb.health_check);
        xml.open("SourceSecurityGroup")
            .leaf("OwnerAlias", "amazon-elb")
            .leaf("GroupName", "amazon-elb-sg")
            .close("SourceSecurityGroup");
        xml.text_members("SecurityGroups", Vec::<String>::new());
        xml.leaf("CreatedTime", &lb.created)
            .leaf("Scheme", "internet-facing");
    });
    Ok(xml.into_string())
}

fn health_check_xml(xml: &mut Xml, check: &LbHealthCheck) {
    xml.open("HealthCheck")
        .leaf("Target", &check.target)
        .leaf("Interval", check.interval)
        .leaf("Timeout", check.timeout)
        .leaf("UnhealthyThreshold", check.unhealthy_threshold)
        .leaf("HealthyThreshold", check.healthy_threshold)
        .close("HealthCheck");
}

async fn delete_load_balancer(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    // AWS: deleting a balancer that does not exist succeeds.
    write_lb(ctx, &name, |_, _| Ok((None, ()))).await?;
    Ok(String::new())
}

async fn create_listeners(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let new = listeners_param(params)?;
    write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        merge_listeners(&mut lb.listeners, new)?;
        Ok((Some(lb), ()))
    })
    .await?;
    Ok(String::new())
}

async fn delete_listeners(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let ports = params
        .list("LoadBalancerPorts")
        .into_iter()
        .map(|text| {
            text.parse::<u16>().map_err(|_| {
                ApiError::validation(format!("LoadBalancerPorts: {text:?} is not a port"))
            })
        })
        .collect::<Result<BTreeSet<u16>, _>>()?;
    if ports.is_empty() {
        return Err(ApiError::validation("LoadBalancerPorts is required"));
    }
    write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        lb.listeners
            .retain(|l| !ports.contains(&l.load_balancer_port));
        Ok((Some(lb), ()))
    })
    .await?;
    Ok(String::new())
}

async fn configure_health_check(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let target = params.required("HealthCheck.Target")?.to_owned();
    let number = |field: &str, range| -> Result<u32, ApiError> {
        let name = format!("HealthCheck.{field}");
        params.required(&name)?;
        let value = params.int(&name, range)?.unwrap_or_default();
        Ok(u32::try_from(value).unwrap_or_default())
    };
    let check = LbHealthCheck {
        interval: number("Interval", 5..=300)?,
        timeout: number("Timeout", 2..=60)?,
        healthy_threshold: number("HealthyThreshold", 2..=10)?,
        unhealthy_threshold: number("UnhealthyThreshold", 2..=10)?,
        target: target.clone(),
    };
    if check.timeout >= check.interval {
        return Err(ApiError::validation(
            "HealthCheck Timeout must be smaller than Interval",
        ));
    }
    // AWS wants `PROTO:PORT[/PATH]`; elb's target parser checks the rest.
    let parsed = crate::config::policy::parse_target(&target)
        .map_err(|why| ApiError::validation(format!("HealthCheck Target {target:?}: {why}")))?;
    if parsed.port.is_none() {
        return Err(ApiError::validation(format!(
            "HealthCheck Target {target:?} must name a port (HTTP:8080/health, TCP:8080)"
        )));
    }
    let reply = check.clone();
    write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        lb.health_check = check;
        Ok((Some(lb), ()))
    })
    .await?;
    let mut xml = Xml::new();
    health_check_xml(&mut xml, &reply);
    Ok(xml.into_string())
}

fn instance_ids(params: &Params) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = params
        .structs("Instances")
        .iter()
        .map(|fields| {
            fields
                .get("InstanceId")
                .filter(|id| !id.is_empty())
                .map(|id| (*id).to_owned())
                .ok_or_else(|| ApiError::validation("Instances: a member without InstanceId"))
        })
        .collect::<Result<_, _>>()?;
    Ok(dedup(ids))
}

fn instances_xml(lb: &LoadBalancer) -> String {
    let mut xml = Xml::new();
    xml.members("Instances", &lb.instances, |xml, instance| {
        xml.leaf("InstanceId", &instance.id);
    });
    xml.into_string()
}

async fn register(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let ids = instance_ids(params)?;
    if ids.is_empty() {
        return Err(ApiError::validation("Instances is required"));
    }
    ctx.config
        .read(|manager| existing(manager, &name).map(|_| ()))
        .await?;
    let described = describe_instances(ctx.ec2, &ids)
        .await
        .map_err(|err| match err {
            AwsError::UnknownInstances { .. } => {
                ApiError::invalid_instance(format!("EC2 instance(s) {} not found", ids.join(", ")))
            }
            other => ApiError::internal(format!("looking the instances up in EC2: {other}")),
        })?;
    let mut found = Vec::with_capacity(ids.len());
    for id in &ids {
        let instance = described
            .iter()
            .find(|i| i.instance_id == *id)
            .ok_or_else(|| ApiError::invalid_instance(format!("EC2 instance {id} not found")))?;
        if matches!(instance.state.as_str(), "terminated" | "shutting-down") {
            return Err(ApiError::invalid_instance(format!(
                "EC2 instance {id} is {}",
                instance.state
            )));
        }
        let (Some(address), Some(zone)) = (instance.private_ip, instance.zone.clone()) else {
            return Err(ApiError::invalid_instance(format!(
                "EC2 instance {id} has no private IP address or zone"
            )));
        };
        found.push(LbInstance {
            id: id.clone(),
            address,
            zone,
        });
    }
    let lb = write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        for instance in found {
            match lb.instances.iter_mut().find(|i| i.id == instance.id) {
                Some(known) => *known = instance,
                None => lb.instances.push(instance),
            }
        }
        Ok((Some(lb.clone()), lb))
    })
    .await?;
    Ok(instances_xml(&lb))
}

async fn deregister(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let ids = instance_ids(params)?;
    if ids.is_empty() {
        return Err(ApiError::validation("Instances is required"));
    }
    let lb = write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        if let Some(unknown) = ids
            .iter()
            .find(|id| !lb.instances.iter().any(|i| i.id == **id))
        {
            return Err(ApiError::invalid_instance(format!(
                "The instance {unknown} is not registered with load balancer {name}"
            )));
        }
        lb.instances.retain(|i| !ids.contains(&i.id));
        Ok((Some(lb.clone()), lb))
    })
    .await?;
    Ok(instances_xml(&lb))
}

/// One instance's `(State, ReasonCode, Description)` as AWS words them,
/// from elb's target state.
/// `(State, ReasonCode, Description)`.
pub type InstanceState = (&'static str, &'static str, &'static str);

pub fn instance_state(state: Option<TargetState>, zone_enabled: bool) -> InstanceState {
    if !zone_enabled {
        return (
            "OutOfService",
            "ELB",
            "Instance is in the EC2 Availability Zone for which LoadBalancer is not configured \
             to route traffic to.",
        );
    }
    match state {
        Some(TargetState::Healthy) => ("InService", "N/A", "N/A"),
        Some(TargetState::Initial) => (
            "OutOfService",
            "ELB",
            "Instance registration is still in progress.",
        ),
        Some(TargetState::Unhealthy) => (
            "OutOfService",
            "Instance",
            "Instance has failed at least the UnhealthyThreshold number of health checks \
             consecutively.",
        ),
        Some(TargetState::Draining) => (
            "OutOfService",
            "ELB",
            "Instance deregistration currently in progress.",
        ),
        Some(TargetState::Unused) | None => (
            "Unknown",
            "ELB",
            "A transient error occurred. Please try again later.",
        ),
    }
}

async fn describe_instance_health(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let ids = instance_ids(params)?;
    let rows = ctx
        .config
        .read(
            |manager| -> Result<Vec<(String, InstanceState)>, ApiError> {
                let lb = existing(manager, &name)?;
                // Every upstream of the balancer has the same check; the first
                // listener's is the one asked.
                let port = lb.listeners.first().map(|l| l.instance_port);
                let view = manager.targets().health_view();
                let upstream = port.map(|port| object_name(&lb.name, port));
                // By address: one look-up per instance (a balancer may have
                // thousands).
                let servers: std::collections::HashMap<String, TargetState> = upstream
                    .and_then(|upstream| view.into_iter().find(|u| u.upstream == upstream))
                    .map(|u| u.servers.into_iter().map(|s| (s.server, s.state)).collect())
                    .unwrap_or_default();
                let selected: Vec<&LbInstance> = if ids.is_empty() {
                    lb.instances.iter().collect()
                } else {
                    ids.iter()
                        .map(|id| {
                            lb.instances.iter().find(|i| i.id == *id).ok_or_else(|| {
                                ApiError::invalid_instance(format!(
                                    "The instance {id} is not registered with load balancer {name}"
                                ))
                            })
                        })
                        .collect::<Result<_, _>>()?
                };
                Ok(selected
                    .into_iter()
                    .map(|instance| {
                        let state = port.and_then(|port| {
                            let server =
                                std::net::SocketAddr::new(instance.address, port).to_string();
                            servers.get(&server).copied()
                        });
                        let enabled = lb.zones.contains(&instance.zone);
                        (instance.id.clone(), instance_state(state, enabled))
                    })
                    .collect())
            },
        )
        .await?;
    let mut xml = Xml::new();
    xml.members(
        "InstanceStates",
        rows,
        |xml, (id, (state, reason, description))| {
            xml.leaf("InstanceId", id)
                .leaf("State", state)
                .leaf("ReasonCode", reason)
                .leaf("Description", description);
        },
    );
    Ok(xml.into_string())
}

async fn zones(ctx: &Context<'_>, params: &Params, enable: bool) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let asked: Vec<String> = params
        .list("AvailabilityZones")
        .into_iter()
        .map(str::to_owned)
        .collect();
    if asked.is_empty() {
        return Err(ApiError::validation("AvailabilityZones is required"));
    }
    for zone in &asked {
        crate::config::zones::validate_zone_name(zone).map_err(ApiError::validation)?;
    }
    let zones = write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        if enable {
            let mut all = lb.zones.clone();
            all.extend(asked);
            lb.zones = dedup(all);
        } else {
            lb.zones.retain(|zone| !asked.contains(zone));
            if lb.zones.is_empty() {
                return Err(ApiError::validation(
                    "A load balancer must keep at least one Availability Zone",
                ));
            }
        }
        Ok((Some(lb.clone()), lb.zones))
    })
    .await?;
    let mut xml = Xml::new();
    xml.text_members("AvailabilityZones", zones);
    Ok(xml.into_string())
}

fn attributes_xml(xml: &mut Xml, lb: &LoadBalancer) {
    xml.open("LoadBalancerAttributes")
        .open("CrossZoneLoadBalancing")
        .leaf("Enabled", lb.cross_zone)
        .close("CrossZoneLoadBalancing")
        .open("AccessLog")
        .leaf("Enabled", false)
        .close("AccessLog")
        .open("ConnectionDraining")
        .leaf("Enabled", lb.connection_draining)
        .leaf("Timeout", lb.connection_draining_timeout)
        .close("ConnectionDraining")
        .open("ConnectionSettings")
        .leaf("IdleTimeout", 60)
        .close("ConnectionSettings")
        .close("LoadBalancerAttributes");
}

async fn modify_attributes(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let prefix = "LoadBalancerAttributes.";
    let cross_zone = params.bool(&format!("{prefix}CrossZoneLoadBalancing.Enabled"))?;
    let draining = params.bool(&format!("{prefix}ConnectionDraining.Enabled"))?;
    let timeout = params.int(&format!("{prefix}ConnectionDraining.Timeout"), 1..=3600)?;
    if params.bool(&format!("{prefix}AccessLog.Enabled"))? == Some(true) {
        return Err(ApiError::validation(
            "AccessLog: elb writes access logs with --access-log, not to S3",
        ));
    }
    if let Some(idle) = params.int(&format!("{prefix}ConnectionSettings.IdleTimeout"), 1..=4000)?
        && idle != 60
    {
        return Err(ApiError::validation(
            "ConnectionSettings.IdleTimeout: elb keeps its own idle timeouts (only 60 is accepted)",
        ));
    }
    let lb = write_lb(ctx, &name, |_, old| {
        let mut lb = old.ok_or_else(|| ApiError::lb_not_found(&name))?;
        if let Some(enabled) = cross_zone {
            lb.cross_zone = enabled;
        }
        if let Some(enabled) = draining {
            lb.connection_draining = enabled;
        }
        if let Some(seconds) = timeout {
            lb.connection_draining_timeout = u32::try_from(seconds).unwrap_or(300);
        }
        Ok((Some(lb.clone()), lb))
    })
    .await?;
    let mut xml = Xml::new();
    xml.leaf("LoadBalancerName", &lb.name);
    attributes_xml(&mut xml, &lb);
    Ok(xml.into_string())
}

async fn describe_attributes(ctx: &Context<'_>, params: &Params) -> Result<String, ApiError> {
    let name = params.required("LoadBalancerName")?.to_owned();
    let lb = ctx.config.read(|manager| existing(manager, &name)).await?;
    let mut xml = Xml::new();
    attributes_xml(&mut xml, &lb);
    Ok(xml.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_states_map_to_aws_reason_codes() {
        assert_eq!(
            instance_state(Some(TargetState::Healthy), true),
            ("InService", "N/A", "N/A")
        );
        let (state, reason, _) = instance_state(Some(TargetState::Unhealthy), true);
        assert_eq!((state, reason), ("OutOfService", "Instance"));
        let (state, reason, text) = instance_state(Some(TargetState::Initial), true);
        assert_eq!((state, reason), ("OutOfService", "ELB"));
        assert!(text.contains("registration"));
        let (state, reason, text) = instance_state(Some(TargetState::Healthy), false);
        assert_eq!((state, reason), ("OutOfService", "ELB"));
        assert!(text.contains("Availability Zone"));
        assert_eq!(instance_state(None, true).0, "Unknown");
    }
}
