//! L4 end to end in network namespaces, once per data plane: the scenario
//! in `elb_tests::l4_e2e` (weights over 3,000 new connections, long-lived
//! connections through a weight change and a server removal, UDP, the
//! deny-list) runs through the XDP program and through the userspace
//! fallback ("The same test runs against the userspace fallback"), then
//! each test checks what only its data plane has.
use std::time::Duration;

use elb_tests::{
    l4_e2e::{CONNECTIONS, Dataplane, E2e, connect, ipv6_step, port_reuse_step, scenario},
    require_root_and_bpf,
};

/// Through XDP (driver mode on veth, `--l4-dataplane xdp`).
///
/// The elb-restart part of "a long-lived connection survives a weight
/// change and an elb restart" is XDP-only: the XDP data plane keeps
/// forwarding while no elb runs and the next elb adopts it, whereas the
/// fallback's flows end with its process. It is the `midway` step, which
/// runs with the long-lived connections open; the scenario checks
/// afterwards that each still answers from its server.
#[test]
fn tcp_and_udp_through_xdp_follow_weights_survive_changes_and_obey_the_deny_list() {
    require_root_and_bpf!();
    let mut e2e = E2e::start(Dataplane::Xdp);
    let outcome = scenario(&mut e2e, |e2e| {
        // elb stops: the pinned program keeps forwarding established and
        // new flows with nobody in userspace.
        let status = e2e.elb.stop().expect("stop elb");
        assert!(status.success(), "{}", e2e.elb.log());
        let mut conn = connect(&e2e.net.client).expect("connect while elb is stopped");
        conn.ask().expect("a new connection while elb is stopped");
        // A new elb adopts the pinned maps and swaps its program in.
        e2e.elb = e2e.start_elb();
        e2e.elb
            .wait_for_log(Duration::from_secs(10), "L4 data plane: xdp")
            .expect("restarted on XDP");
        let log = e2e.elb.log();
        assert!(log.contains("adopted the pinned maps"), "{log}");
        assert!(log.contains("pinned link (hitless)"), "{log}");
        conn.ask()
            .expect("the connection opened while elb was stopped");
    });

    ipv6_step(&e2e);

    // A client reusing its port: the first connection is a new flow, the
    // next ones reopen it (same server, same NAT port) instead of claiming
    // a new NAT port each.
    let misses = |e2e: &E2e| e2e.stats()["global"]["flow_misses"].as_u64();
    let misses_before = misses(&e2e);
    port_reuse_step(&e2e, 20);
    assert_eq!(
        misses(&e2e)
            .zip(misses_before)
            .map(|(after, before)| after - before),
        Some(1),
        "20 connections from one client port: only the first is a new flow"
    );

    // `/__erulb__/stats` sums the per-CPU maps, which the restart kept.
    let stats = e2e.stats();
    assert_eq!(stats["dataplane"], "xdp", "{stats:#}");
    assert_eq!(
        stats["interfaces"].as_object().map(|o| o.len()),
        Some(4),
        "{stats:#}"
    );
    let web = &stats["services"]["web"];
    assert_eq!(web["vip"], "10.99.0.1:80", "{stats:#}");
    let new_flows = web["new_flows"].as_u64().unwrap_or_default();
    assert!(
        new_flows >= outcome.connections as u64,
        "web counted {new_flows} new flows, the scenario opened at least {}: {stats:#}",
        outcome.connections
    );
    for server in ["10.61.0.2:8080", "10.62.0.2:8080"] {
        let packets = web["servers"][server]["packets"]
            .as_u64()
            .unwrap_or_default();
        assert!(packets > 0, "{server}: {stats:#}");
    }
    assert!(
        stats["global"]["acl_drops"].as_u64().unwrap_or_default() >= 1,
        "{stats:#}"
    );
    assert_eq!(stats["global"]["port_alloc_failures"], 0, "{stats:#}");
    assert!(
        stats["services"]["dns"]["new_flows"]
            .as_u64()
            .unwrap_or_default()
            >= 1
    );
    let web6 = &stats["services"]["web6"];
    assert_eq!(web6["vip"], "[fd99::1]:80", "{stats:#}");
    assert!(
        web6["new_flows"].as_u64().unwrap_or_default() >= 200,
        "{stats:#}"
    );

    // bpftool reads the same counters by field name (BTF).
    let pin = format!("/sys/fs/bpf/elb/{}/elb_glob_stats", e2e.name);
    let dump = e2e
        .net
        .lb
        .exec("bpftool", &["map", "dump", "pinned", &pin])
        .expect("bpftool");
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("\"acl_drops\""), "{dump}");

    e2e.elb.stop().expect("stop elb");
}

/// Through the userspace fallback: `--l4-dataplane userspace`, no XDP, the
/// VIP on the LB namespace's `lo`. Needs root for the namespaces only.
#[test]
fn tcp_and_udp_through_the_userspace_fallback_make_the_same_choices() {
    require_root_and_bpf!();
    let mut e2e = E2e::start(Dataplane::Userspace);
    let outcome = scenario(&mut e2e, |_| {});
    ipv6_step(&e2e);
    port_reuse_step(&e2e, 20);

    let stats = e2e.stats();
    assert_eq!(stats["dataplane"], "userspace", "{stats:#}");
    assert_eq!(stats["l7_acl_drops"], 1, "{stats:#}");
    let web = &stats["services"]["web"];
    assert_eq!(web["listening"], true, "{stats:#}");
    assert_eq!(web["proto"], "tcp", "{stats:#}");
    let new_flows = web["new_flows"].as_u64().unwrap_or_default();
    assert!(
        new_flows >= outcome.connections as u64,
        "web counted {new_flows} new flows, the scenario opened at least {}: {stats:#}",
        outcome.connections
    );
    assert!(
        web["acl_drops"].as_u64().unwrap_or_default() >= 1,
        "{stats:#}"
    );
    assert_eq!(web["connect_failures"], 0, "{stats:#}");
    assert!(web["bytes_from_client"].as_u64().unwrap_or_default() > 0);
    assert!(web["bytes_to_client"].as_u64().unwrap_or_default() > 0);
    // The per-server counts of the weight check, and none to s3 after it
    // was removed (the last 50 connections).
    let s3 = web["servers"]["10.63.0.2:8080"]["new_flows"]
        .as_u64()
        .unwrap_or_default();
    assert!(
        s3 >= outcome.counts[2] as u64 && s3 < outcome.counts[2] as u64 + 30,
        "s3 counted {s3} new flows, the weight check sent it {} (of {CONNECTIONS}): {stats:#}",
        outcome.counts[2]
    );
    let dns = &stats["services"]["dns"];
    assert_eq!(dns["listening"], true, "{stats:#}");
    assert_eq!(dns["new_flows"], 1, "{stats:#}");
    assert!(dns["bytes_to_client"].as_u64().unwrap_or_default() >= 2);
    assert!(stats["totals"]["new_flows"].as_u64().unwrap_or_default() > new_flows);

    e2e.elb.stop().expect("stop elb");
    let log = e2e.elb.log();
    assert!(
        log.contains("L4 userspace data plane stopped"),
        "no clean stop:\n{log}"
    );
}
