use super::*;

fn server(address: &str, weight: u32, zone: Option<&str>) -> ServerInput {
    ServerInput {
        address: address.to_owned(),
        weight,
        zone: zone.map(str::to_owned),
        backup: false,
        down: false,
    }
}

/// Upstream `web` (checked, one server up, one down, one draining),
/// `plain` (no policy), a domain and an L4 service on `web`.
fn input() -> StatusInput {
    StatusInput {
        name: "ELB".into(),
        version: "0.1.0".into(),
        uptime: Duration::from_secs(42),
        listeners: vec![
            ListenerInput {
                name: None,
                address: "127.0.0.1:8080".into(),
                protocol: "http".into(),
                http2: false,
                status: "serving".into(),
                error: None,
            },
            ListenerInput {
                name: Some("tls".into()),
                address: "0.0.0.0:443".into(),
                protocol: "https".into(),
                http2: true,
                status: "failed".into(),
                error: Some("address in use".into()),
            },
        ],
        domains: vec![DomainInput {
            name: "shop.test".into(),
            backends: vec!["web".into(), "10.0.0.9:80".into()],
        }],
        upstreams: vec![
            UpstreamInput {
                name: "web".into(),
                servers: vec![
                    server("10.0.0.1:80", 3, Some("a")),
                    server("10.0.0.2:80", 1, Some("b")),
                    server("10.0.0.3:80", 1, None),
                ],
            },
            UpstreamInput {
                name: "plain".into(),
                servers: vec![server("10.0.1.1:80", 1, None)],
            },
        ],
        health: json!({
            "web": {"fail_open": false, "health_checks": true, "servers": {
                "10.0.0.1:80": {"state": "healthy", "reason": "Passed 3 consecutive health checks", "routable": true, "seconds_in_state": 5.0},
                "10.0.0.2:80": {"state": "unhealthy", "reason": "Failed 2 consecutive health checks: Connection refused", "routable": false, "seconds_in_state": 1.5,
                    "last_check": {"passed": false, "status": null, "latency_ms": 1.0, "reason": "Connection refused", "seconds_ago": 0.2}},
                "10.0.0.3:80": {"state": "draining", "reason": "Target deregistration is in progress: marked down", "routable": false, "drain_seconds_left": 12.5},
                "10.0.0.4:80": {"state": "draining", "reason": "Target deregistration is in progress: removed from the upstream", "routable": false, "drain_seconds_left": 3.0}
            }},
            "plain": {"fail_open": false, "health_checks": false, "servers": {
                "10.0.1.1:80": {"state": "unused", "reason": "The upstream has no health-check policy", "routable": true}
            }}
        }),
        services: vec![ServiceInput {
            name: "dns".into(),
            vip: "10.9.9.9:53".into(),
            proto: "udp".into(),
            upstream: "web".into(),
        }],
        l4: Ok(json!({
            "dataplane": "xdp",
            "interfaces": {"eth0": "driver"},
            "global": {"flow_hits": 7},
            "services": {"dns": {"vip": "10.9.9.9:53", "proto": "udp", "installed": true,
                "packets": 10, "bytes": 1000, "new_flows": 2,
                "servers": {"10.0.0.1:80": {"packets": 9, "bytes": 900}}}}
        })),
        store: StoreInput {
            kind: "file".into(),
            location: "/var/lib/elb/ELB.json".into(),
            connected: true,
            error: None,
            seconds_in_state: 42.0,
        },
        traffic: None,
    }
}

fn upstream<'v>(doc: &'v Value, name: &str) -> &'v Value {
    doc["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no upstream {name} in {doc:#}"))
}

fn server_of<'v>(upstream: &'v Value, address: &str) -> &'v Value {
    upstream["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["address"] == address)
        .unwrap_or_else(|| panic!("no server {address} in {upstream:#}"))
}

#[test]
fn each_state_has_one_status_word() {
    assert_eq!(server_status("healthy", true, true), "up");
    assert_eq!(server_status("unhealthy", true, false), "down");
    // Failing open routes to an unhealthy server: still down.
    assert_eq!(server_status("unhealthy", true, true), "down");
    assert_eq!(server_status("initial", true, false), "starting");
    assert_eq!(server_status("draining", true, false), "draining");
    assert_eq!(server_status("unused", false, true), "unchecked");
    assert_eq!(server_status("unused", false, false), "out");
    assert_eq!(server_status("unused", true, false), "out");
}

#[test]
fn servers_carry_config_and_health() {
    let doc = assemble(&input());
    let web = upstream(&doc, "web");
    let up = server_of(web, "10.0.0.1:80");
    assert_eq!(up["status"], "up");
    assert_eq!(up["weight"], 3);
    assert_eq!(up["zone"], "a");
    let down = server_of(web, "10.0.0.2:80");
    assert_eq!(down["status"], "down");
    assert_eq!(
        down["reason"],
        "Failed 2 consecutive health checks: Connection refused"
    );
    assert_eq!(down["last_check"]["reason"], "Connection refused");
    let draining = server_of(web, "10.0.0.3:80");
    assert_eq!(draining["status"], "draining");
    assert_eq!(draining["drain_seconds_left"], 12.5);
    assert_eq!(draining["removed"], false);
    let removed = server_of(web, "10.0.0.4:80");
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["drain_seconds_left"], 3.0);
    assert_eq!(web["domains"], json!(["shop.test"]));
    assert_eq!(web["services"], json!(["dns"]));
    assert_eq!(
        server_of(upstream(&doc, "plain"), "10.0.1.1:80")["status"],
        "unchecked"
    );
}

#[test]
fn the_summary_counts_and_names_the_problems() {
    let doc = assemble(&input());
    let summary = &doc["summary"];
    assert_eq!(
        summary["servers"],
        json!({"up": 1, "down": 1, "starting": 0, "draining": 2, "out": 0, "unchecked": 1})
    );
    assert_eq!(summary["servers_total"], 5);
    assert_eq!(summary["listeners_failed"], 1);
    assert_eq!(summary["upstreams_fail_open"], json!([]));
    let problems: Vec<&str> = summary["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        problems,
        [
            "listener tls on 0.0.0.0:443 failed: address in use",
            "upstream web: server 10.0.0.2:80 is down: Failed 2 consecutive health checks: \
             Connection refused",
        ]
    );
}

#[test]
fn fail_open_is_a_problem_and_listed() {
    let mut input = input();
    input.health["web"]["fail_open"] = json!(true);
    let doc = assemble(&input);
    assert_eq!(doc["summary"]["upstreams_fail_open"], json!(["web"]));
    assert_eq!(upstream(&doc, "web")["fail_open"], true);
    assert_eq!(doc["l4"]["services"][0]["fail_open"], true);
    assert!(
        doc["summary"]["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("failing open")))
    );
}

#[test]
fn domains_split_upstreams_from_addresses() {
    let doc = assemble(&input());
    assert_eq!(
        doc["domains"],
        json!([{"name": "shop.test", "upstreams": ["web"], "servers": ["10.0.0.9:80"]}])
    );
}

#[test]
fn l4_services_get_their_servers_traffic_and_health() {
    let doc = assemble(&input());
    let l4 = &doc["l4"];
    assert_eq!(l4["dataplane"], "xdp");
    assert_eq!(l4["interfaces"], json!({"eth0": "driver"}));
    assert_eq!(l4["totals"], json!({"flow_hits": 7}));
    let dns = &l4["services"][0];
    assert_eq!(dns["vip"], "10.9.9.9:53");
    assert_eq!(
        dns["counters"],
        json!({"packets": 10, "bytes": 1000, "new_flows": 2})
    );
    assert_eq!(dns["installed"], true);
    let servers = dns["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 4);
    assert_eq!(
        servers[0],
        json!({"address": "10.0.0.1:80", "status": "up", "counters": {"packets": 9, "bytes": 900}})
    );
    assert_eq!(servers[1]["status"], "down");
    assert_eq!(servers[1]["counters"], json!({}));
}

#[test]
fn userspace_totals_and_a_missing_data_plane() {
    let mut input = input();
    input.l4 = Ok(json!({"dataplane": "userspace", "totals": {"new_flows": 3},
        "services": {"dns": {"listening": false, "error": "cannot bind 10.9.9.9:53", "new_flows": 3, "servers": {}}},
        "l7_acl_drops": 0}));
    let doc = assemble(&input);
    assert_eq!(doc["l4"]["totals"], json!({"new_flows": 3}));
    assert_eq!(doc["l4"]["services"][0]["listening"], false);
    let problems = doc["summary"]["problems"].to_string();
    assert!(
        problems.contains("L4 service dns: cannot bind 10.9.9.9:53"),
        "{problems}"
    );

    input.l4 = Err("the L4 data plane is still starting".into());
    let doc = assemble(&input);
    assert_eq!(doc["l4"]["dataplane"], Value::Null);
    assert_eq!(doc["l4"]["services"][0]["name"], "dns");
    assert!(
        doc["summary"]["problems"]
            .to_string()
            .contains("still starting")
    );
}

#[test]
fn a_disconnected_store_is_a_problem() {
    let mut input = input();
    input.store = StoreInput {
        kind: "etcd".into(),
        location: "http://127.0.0.1:2379".into(),
        connected: false,
        error: Some("connect error".into()),
        seconds_in_state: 3.0,
    };
    let doc = assemble(&input);
    assert_eq!(doc["store"]["connected"], false);
    assert!(
        doc["summary"]["problems"]
            .to_string()
            .contains("store etcd http://127.0.0.1:2379 is not connected (connect error)")
    );
}

#[test]
fn traffic_is_per_upstream_when_counted() {
    let doc = assemble(&input());
    assert_eq!(doc["summary"]["traffic_counted"], false);
    assert!(upstream(&doc, "web").get("traffic").is_none());
    let mut input = input();
    input.traffic = Some(BTreeMap::from([(
        "web".to_owned(),
        UpstreamTraffic {
            requests: 100,
            errors: 7,
        },
    )]));
    let doc = assemble(&input);
    assert_eq!(doc["summary"]["traffic_counted"], true);
    assert_eq!(
        upstream(&doc, "web")["traffic"],
        json!({"requests": 100, "errors_5xx": 7})
    );
    assert_eq!(
        upstream(&doc, "plain")["traffic"],
        json!({"requests": 0, "errors_5xx": 0})
    );
}
