//! L4 end to end in network namespaces, once per data plane: the scenario
//! in `elb_tests::l4_e2e` (weights over 3,000 new connections, long-lived
//! connections through a weight change and a server removal, UDP, the
//! deny-list) runs through the XDP program and through the userspace
//! fallback ("The same test runs against the userspace fallback"), then
//! each test checks what only its data plane has.
use std::{net::SocketAddr, time::Duration};

use aya::maps::{HashMap, Map, MapData};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{FAMILY_IPV4, FlowEntry, FlowKey, flow_hash},
    nat::NatPorts,
};
use elb_tests::{
    l4_e2e::{
        CONNECTIONS, Dataplane, E2e, OK, VIP, client_xdp, connect, ipv6_step, port_reuse_step,
        scenario, upstream_doc,
    },
    require_root_and_bpf,
};
use elb_userspace::l4::{drain::drain_flows, plan::addr16};

/// Through XDP (driver mode on veth, `--l4-dataplane xdp`).
///
/// The elb-restart part of "a long-lived connection survives a weight
/// change and an elb restart" is XDP-only: the XDP data plane keeps
/// forwarding while no elb runs and the next elb adopts it, whereas the
/// fallback's flows end with its process. It is the `midway` step, which
/// runs with the long-lived connections open; the scenario checks
/// afterwards that each still answers from its server. Also XDP-only: a
/// connection whose server is drained (its flow entries marked) is reset
/// by XDP, and one whose entries are lost carries on.
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

    drained_connection_is_reset_step(&e2e);
    lost_entries_are_recreated_step(&e2e);

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
        stats["global"]["tcp_resets"].as_u64().unwrap_or_default() >= 1,
        "{stats:#}"
    );
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

/// The connection table elb pinned, opened as a second handle.
fn pinned_flows(e2e: &E2e) -> HashMap<MapData, FlowKey, FlowEntry> {
    pinned_table(e2e, elb_common::maps::FLOWS)
}

/// A connection table of the running elb (`elb_flows` or `elb_embryos`).
fn pinned_table(e2e: &E2e, name: &str) -> HashMap<MapData, FlowKey, FlowEntry> {
    let pin = format!("/sys/fs/bpf/elb/{}/{name}", e2e.name);
    let data = MapData::from_pin(&pin).expect("pinned connection table");
    HashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map")
}

/// The connection-table key of a client's connection to the web VIP.
fn web_key(client: SocketAddr) -> FlowKey {
    FlowKey {
        src: addr16(client.ip()),
        dst: addr16(VIP.parse().expect("vip")),
        src_port: client.port().to_be_bytes(),
        dst_port: 80u16.to_be_bytes(),
        proto: IPPROTO_TCP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// The end of a drain as a real client sees it: an established
/// connection's server is drained by the real userspace function
/// (`drain_flows`, which `L4Maps::drain_flows_of_server` calls; run here on
/// the pinned table, as L4Maps cannot be opened from pins), and the
/// client's next request fails at once with a reset sent by XDP, not after
/// its read timeout.
fn drained_connection_is_reset_step(e2e: &E2e) {
    let _client_xdp = client_xdp(&e2e.net.client);
    let mut conn = connect(&e2e.net.client).expect("connect");
    conn.ask().expect("the connection works before the drain");
    let client = conn.local_addr().expect("client address");
    let mut flows = pinned_flows(e2e);
    let server_id = flows
        .get(&web_key(client), 0)
        .expect("the connection's entry")
        .server_id;
    let marked = drain_flows(&mut flows, u32::from(server_id)).expect("drain");
    assert!(marked >= 2, "{marked} entries marked");
    let counter = |name: &str| e2e.stats()["global"][name].as_u64().unwrap_or_default();
    let (misses, resets) = (counter("flow_misses"), counter("tcp_resets"));
    let started = std::time::Instant::now();
    let error = conn.ask().expect_err("the drained connection must fail");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{error} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the reset took {:?}",
        started.elapsed()
    );
    assert_eq!(
        counter("flow_misses"),
        misses,
        "the drained flow's segment must not become a new flow"
    );
    assert!(counter("tcp_resets") > resets, "{}", e2e.stats());
    assert!(
        flows.get(&web_key(client), 0).is_err(),
        "XDP removed the drained flow's entry"
    );
    // A new connection works as before.
    connect(&e2e.net.client)
        .and_then(|mut conn| conn.ask())
        .expect("a new connection after the drain");
}

/// A live connection whose entries are lost (evicted, or maps re-created)
/// carries on: its next segment is a new flow to the same server on the
/// same NAT port, so the server's socket still matches. That needs the
/// flow to have had its first NAT port candidate; a connection that had
/// to take another (the first was held) is skipped for the next one.
fn lost_entries_are_recreated_step(e2e: &E2e) {
    let mut flows = pinned_flows(e2e);
    for _ in 0..10 {
        let mut conn = connect(&e2e.net.client).expect("connect");
        let server = conn.ask().expect("the connection works");
        let client = conn.local_addr().expect("client address");
        let key = web_key(client);
        let forward = flows.get(&key, 0).expect("the connection's entry");
        let hash = flow_hash(&key.src, &key.dst, key.src_port, key.dst_port, key.proto);
        if forward.new_src_port != NatPorts::DEFAULT.hashed(hash).to_be_bytes() {
            continue;
        }
        let reply = FlowKey {
            src: forward.new_dst,
            dst: forward.new_src,
            src_port: forward.new_dst_port,
            dst_port: forward.new_src_port,
            ..key
        };
        flows.remove(&key).expect("delete the forward entry");
        flows.remove(&reply).expect("delete the reply entry");
        let counter = |name: &str| e2e.stats()["global"][name].as_u64().unwrap_or_default();
        let (misses, resets) = (counter("flow_misses"), counter("tcp_resets"));
        assert_eq!(
            conn.ask()
                .expect("the connection survives the loss of its entries"),
            server
        );
        assert_eq!(
            counter("flow_misses"),
            misses + 1,
            "re-created as a new flow"
        );
        assert_eq!(counter("tcp_resets"), resets, "no RST");
        // A new flow, so embryonic until the client's next segment after
        // the server's answer (it may have sent its ACK already).
        let embryos = pinned_table(e2e, elb_common::maps::EMBRYOS);
        assert!(
            flows.get(&key, 0).is_ok() || embryos.get(&key, 0).is_ok(),
            "the entry is back"
        );
        return;
    }
    panic!("none of 10 connections had its first NAT port candidate");
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

/// Port exhaustion end to end (issue 16): with `--nat-ports` holding four
/// ports, open connections to the one server take them all; the next
/// SYNs find no port, are dropped (the connect times out), counted per
/// server, and elb's log says once, rate-limited, which service, VIP and
/// server ran out, however many SYNs it drops.
#[test]
fn port_exhaustion_is_counted_and_logged_once_naming_service_vip_and_server() {
    require_root_and_bpf!();
    let mut e2e = E2e::start_with(Dataplane::Xdp, &["--nat-ports", "20000-20003"]);
    e2e.elb
        .wait_for_log(Duration::from_secs(5), Dataplane::Xdp.log_line())
        .expect("elb names its L4 data plane");
    assert_eq!(e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1)])), OK);
    let service = format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
    assert_eq!(e2e.admin("PUT", "service", &service), OK);
    e2e.wait_serving();

    // The closed connections of `wait_serving` keep their ports for the
    // closing timeout (10 s), so fewer than four open here.
    let mut open = Vec::new();
    let refused = loop {
        match connect(&e2e.net.client).and_then(|mut c| c.ask().map(|_| c)) {
            Ok(conn) => open.push(conn),
            Err(err) => break err,
        }
        assert!(
            open.len() <= 4,
            "more connections than NAT ports\n{}",
            e2e.elb.log()
        );
    };
    assert!(!open.is_empty(), "no connection got a port: {refused}");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::TimedOut,
        "a SYN with no port is dropped, not answered: {refused}"
    );

    let server = "10.61.0.2:8080";
    let failures = |e2e: &E2e| {
        e2e.stats()["services"]["web"]["servers"][server]["nat_port_failures"]
            .as_u64()
            .unwrap_or_default()
    };
    assert!(failures(&e2e) >= 1, "{:#}", e2e.stats());
    const LINE: &str = "no free NAT port";
    e2e.elb
        .wait_for_log(Duration::from_secs(5), LINE)
        .unwrap_or_else(|_| panic!("no exhaustion line:\n{}", e2e.elb.log()));
    let log = e2e.elb.plain_log();
    let line = log
        .lines()
        .find(|l| l.contains(LINE))
        .expect("the line")
        .to_owned();
    for field in [
        "WARN",
        "web",
        &format!("vip={VIP}:80"),
        &format!("server={server}"),
    ] {
        assert!(line.contains(field), "{field:?} missing from: {line}");
    }

    // More refused SYNs within the rate limit's 10 s: counted, no new line.
    let before = failures(&e2e);
    assert!(connect(&e2e.net.client).is_err(), "still no port");
    assert!(failures(&e2e) > before, "{:#}", e2e.stats());
    std::thread::sleep(Duration::from_millis(1500));
    let lines = e2e.elb.plain_log().matches(LINE).count();
    assert_eq!(lines, 1, "one line per 10 s:\n{}", e2e.elb.log());
    // The held connections still work.
    for conn in &mut open {
        conn.ask().expect("a held connection still answers");
    }
}
