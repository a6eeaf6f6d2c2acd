//! The L4 families, from the running data plane's statistics (the same
//! reading as `/__erulb__/stats`: BPF maps for XDP, atomics for the
//! userspace fallback), taken at scrape time.
use std::{collections::BTreeMap, fmt};

use prometheus_client::encoding::DescriptorEncoder;
use serde_json::Value;

use super::encode::{counters, gauges};

/// Fields that are levels, not counts.
const GAUGE_FIELDS: [&str; 2] = ["active_flows", "services_listening"];
/// What marks the 1-valued "which one" gauges (data plane, interfaces).
const INFO_FIELD: &str = "";
/// Fields that are neither (labels, flags, other shapes).
const SKIPPED: [&str; 7] = [
    "vip",
    "proto",
    "installed",
    "listening",
    "error",
    "servers",
    "services_total",
];

/// One family: `(labels, value)` samples; label values owned because the
/// statistics are a fresh reading.
#[derive(Debug, Default, PartialEq)]
pub struct Family {
    pub gauge: bool,
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// The families of one statistics reading, by metric name (without
/// `_total`). Pure, so the mapping is tested apart from the data planes.
pub fn families(stats: &Value) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let mut add = |name: String, labels: Vec<(&'static str, String)>, field: &str, value: u64| {
        let family = out.entry(name).or_default();
        family.gauge = GAUGE_FIELDS.contains(&field) || INFO_FIELD == field;
        family.samples.push((labels, value));
    };
    let dataplane = stats["dataplane"].as_str().unwrap_or("none").to_owned();
    add(
        "elb_l4_dataplane".to_owned(),
        vec![("dataplane", dataplane)],
        INFO_FIELD,
        1,
    );
    // XDP's global counters; the fallback's totals over its services.
    let global = stats.get("global").or_else(|| stats.get("totals"));
    for (field, value) in numbers(global) {
        add(format!("elb_l4_{field}"), Vec::new(), field, value);
    }
    for (field, value) in numbers(Some(stats)) {
        add(format!("elb_l4_{field}"), Vec::new(), field, value);
    }
    for (iface, how) in stats["interfaces"].as_object().into_iter().flatten() {
        add(
            "elb_l4_xdp_interface".to_owned(),
            vec![
                ("interface", iface.clone()),
                ("mode", how.as_str().unwrap_or_default().to_owned()),
            ],
            INFO_FIELD,
            1,
        );
    }
    for (service, entry) in stats["services"].as_object().into_iter().flatten() {
        for (field, value) in numbers(Some(entry)) {
            add(
                format!("elb_l4_service_{field}"),
                vec![("service", service.clone())],
                field,
                value,
            );
        }
        for (server, counts) in entry["servers"].as_object().into_iter().flatten() {
            for (field, value) in numbers(Some(counts)) {
                add(
                    format!("elb_l4_server_{field}"),
                    vec![("service", service.clone()), ("server", server.clone())],
                    field,
                    value,
                );
            }
        }
    }
    out
}

/// The numeric fields of an object, skipping labels and flags.
fn numbers(object: Option<&Value>) -> impl Iterator<Item = (&str, u64)> {
    object
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(field, _)| !SKIPPED.contains(&field.as_str()))
        .filter_map(|(field, value)| Some((field.as_str(), value.as_u64()?)))
}

pub fn encode(stats: &Value, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
    for (name, family) in families(stats) {
        let help = help(&name);
        let samples = family
            .samples
            .iter()
            .map(|(labels, value)| (labels.as_slice(), *value));
        if family.gauge {
            gauges(encoder, &name, &help, samples)?;
        } else {
            counters(encoder, &name, &help, samples)?;
        }
    }
    Ok(())
}

fn help(name: &str) -> String {
    match name {
        "elb_l4_dataplane" => "1 for the L4 data plane in use (xdp, userspace)".to_owned(),
        "elb_l4_xdp_interface" => {
            "1 per interface the XDP program is attached to, with its mode".to_owned()
        }
        _ => format!(
            "L4 data plane statistic {} (as in /__erulb__/stats)",
            name.trim_start_matches("elb_l4_")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xdp_statistics_become_families() {
        let stats = json!({
            "dataplane": "xdp",
            "interfaces": {"eth0": "native"},
            "global": {"flow_hits": 5, "acl_drops": 1},
            "services": {
                "web": {"vip": "10.0.0.1:80", "proto": "tcp", "installed": true,
                        "packets": 9, "bytes": 900, "new_flows": 2,
                        "servers": {"10.1.0.1:80": {"packets": 4, "bytes": 400}}},
                "off": {"vip": "10.0.0.2:80", "proto": "udp", "installed": false},
            },
        });
        let families = families(&stats);
        let sample = |name: &str| &families[name].samples;
        assert_eq!(
            sample("elb_l4_dataplane")[0].0,
            [("dataplane", "xdp".to_owned())]
        );
        assert_eq!(sample("elb_l4_flow_hits"), &[(vec![], 5)]);
        assert_eq!(
            sample("elb_l4_service_packets"),
            &[(vec![("service", "web".to_owned())], 9)]
        );
        assert_eq!(
            sample("elb_l4_server_bytes"),
            &[(
                vec![
                    ("service", "web".to_owned()),
                    ("server", "10.1.0.1:80".to_owned())
                ],
                400
            )]
        );
        assert!(!families.contains_key("elb_l4_service_vip"));
        assert!(!families.contains_key("elb_l4_service_installed"));
        assert!(!families["elb_l4_service_packets"].gauge);
    }

    #[test]
    fn fallback_levels_are_gauges() {
        let stats = json!({
            "dataplane": "userspace",
            "totals": {"new_flows": 3, "active_flows": 1},
            "services_listening": 1,
            "services_total": 1,
            "l7_acl_drops": 0,
            "services": {"s": {"vip": "127.0.0.1:9", "listening": true, "active_flows": 1,
                               "servers": {"127.0.0.1:10": {"active_flows": 1, "bytes": 5}}}},
        });
        let families = families(&stats);
        assert!(families["elb_l4_active_flows"].gauge);
        assert!(families["elb_l4_server_active_flows"].gauge);
        assert!(!families["elb_l4_server_bytes"].gauge);
        assert!(families.contains_key("elb_l4_l7_acl_drops"));
        assert!(!families.contains_key("elb_l4_services_total"));
    }
}
