//! BPF_PROG_TEST_RUN fixtures for the L4 path: packet in, exact packet and
//! action out. Expected packets are rebuilt with etherparse, which computes
//! every checksum from scratch, so the program's incremental (RFC 1624)
//! updates are checked against an independent routine.
//!
//! The runs happen inside a namespace with forwarding on and permanent
//! neighbour entries (`L4Net`), so the FIB gives a known next hop.
use std::net::{IpAddr, SocketAddr};

use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{
        EMBRYO_FLAGS, FLOW_CLOSING, FLOW_DRAINED, FLOW_REPLY, FlowEntry, FlowKey, NAT_PORT_MIN,
        TCP_CLOSING_NS, UDP_IDLE_NS, flow_hash,
    },
    nat::{NAT_SCAN_PROBES, NatPorts},
};
use elb_tests::{
    l4_fixture::*,
    packet::PAYLOAD,
    require_root_and_bpf,
    xdp_fixture::{XdpAction, XdpFixture, monotonic_coarse_ns},
};
use elb_userspace::{
    dataplane::TableSizes,
    l4::{maps::L4Maps, plan::addr16},
};
use etherparse::{
    IpDscp, IpEcn, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Header, PacketBuilder,
    PacketBuilderStep, TcpHeader, VlanId,
};

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A TCP segment from `src` to `dst` with the given flags, arriving from
/// the client side.
fn tcp(src: SocketAddr, dst: SocketAddr, syn: bool, ack: bool, fin: bool) -> Vec<u8> {
    tcp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, src, dst, syn, ack, fin)
}

fn tcp_from(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    fin: bool,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut b = ip.tcp(src.port(), dst.port(), 1000, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    if fin {
        b = b.fin();
    }
    let mut frame = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut frame, PAYLOAD).expect("tcp frame");
    frame
}

fn udp_from(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let b = ip.udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut frame, PAYLOAD).expect("udp frame");
    frame
}

/// The NAT port the program picks first for a flow (its hashed port).
fn first_port(client: SocketAddr, vip: SocketAddr, proto: u8) -> u16 {
    NatPorts::DEFAULT.hashed(flow_hash_of(client, vip, proto))
}

fn flow_hash_of(client: SocketAddr, vip: SocketAddr, proto: u8) -> u32 {
    flow_hash(
        &addr16(client.ip()),
        &addr16(vip.ip()),
        client.port().to_be_bytes(),
        vip.port().to_be_bytes(),
        proto,
    )
}

/// Runs `test` in a fresh fixture network, on a freshly loaded program
/// serving one service (id 0) over `servers` (id, server index, port).
fn with_service(
    proto: u8,
    vip: SocketAddr,
    servers: &'static [(u32, u8, u16)],
    test: impl FnOnce(&mut XdpFixture, &mut L4Maps) + Send + 'static,
) {
    with_service_tables(proto, vip, servers, TableSizes::default(), test);
}

const ONE_SERVER: &[(u32, u8, u16)] = &[(0, 0, 8080)];

fn vip4() -> SocketAddr {
    sa(VIP_V4, 80)
}

fn client4(port: u16) -> SocketAddr {
    sa(CLIENT_V4, port)
}

#[test]
fn new_tcp_flow_becomes_a_natted_syn_to_its_server() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40000);
        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("run");
        assert_eq!(run.action, XdpAction::Redirect);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, port),
            sa(server_v4(0), 8080),
        );
        assert_eq!(run.output, want);
        let stats = maps.service_stats(0).expect("service stats");
        assert_eq!((stats.packets, stats.new_flows), (1, 1));
        assert_eq!(stats.bytes, syn.len() as u64);
        assert_eq!(maps.server_stats(0).expect("server stats").packets, 1);
        let global = maps.global_stats().expect("global stats");
        assert_eq!((global.flow_misses, global.flow_hits), (1, 0));
    });
}

/// Fixtures reuse a verified program (the verifier takes seconds per
/// load): one given back by a test must come out with its maps as loaded.
/// NAT ports of this test's own keep other tests from taking it between.
#[test]
fn a_reused_program_starts_with_its_maps_as_loaded() {
    require_root_and_bpf!();
    let ports = NatPorts::new(20_000, 30_000).expect("ports");
    let net = L4Net::new().expect("fixture network");
    let (client_ifindex, server_ifindex) = (net.client_ifindex, net.server_ifindex);
    let result = net.lb.enter(move || {
        let syn = tcp(client4(40100), vip4(), true, false, false);
        let first = {
            let mut fixture = XdpFixture::load_with_nat_ports(ports).expect("load");
            let mut maps = fixture.l4_maps().expect("L4 maps");
            write_iface_addrs(&mut maps, client_ifindex, server_ifindex).expect("iface addrs");
            let servers = [(0, sa(server_v4(0), 8080), 1)];
            install_service(&mut maps, 0, vip4(), IPPROTO_TCP, &servers, None).expect("service");
            assert_eq!(fixture.run(&syn).expect("syn").action, XdpAction::Redirect);
            assert_eq!(
                fixture.entry_count().expect("entries"),
                2,
                "forward and reply"
            );
            fixture.program_id().expect("program id")
        };
        let mut fixture = XdpFixture::load_with_nat_ports(ports).expect("load again");
        assert_eq!(
            fixture.program_id().expect("program id"),
            first,
            "not reused"
        );
        assert_eq!(
            fixture.entry_count().expect("entries"),
            0,
            "connection tables"
        );
        let counters = fixture.proto_stats().expect("protocol counters");
        assert!(
            counters.iter().all(|(_, c)| *c == Default::default()),
            "protocol counters: {counters:?}"
        );
        let maps = fixture.l4_maps().expect("L4 maps");
        assert!(maps.services().expect("services").is_empty(), "services");
        assert_eq!(
            maps.global_stats().expect("global stats"),
            Default::default()
        );
        assert_eq!(maps.service_stats(0).expect("service stats").packets, 0);
        assert_eq!(maps.server_stats(0).expect("server stats").packets, 0);
        // No service now: the same SYN is no VIP's, and goes to the kernel.
        assert_eq!(
            fixture.run(&syn).expect("syn again").action,
            XdpAction::Pass
        );
    });
    drop(net);
    result.expect("fixture thread");
}

#[test]
fn established_flow_stays_on_its_server_after_a_table_change() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40001);
        fixture
            .run(&tcp(client, vip4(), true, false, false))
            .expect("syn");
        // Now every new flow goes to server 1 instead.
        let servers = [(1, sa(server_v4(1), 8080), 1)];
        install_service(maps, 0, vip4(), IPPROTO_TCP, &servers, None).expect("new table");

        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.action, XdpAction::Redirect);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let want = rewritten(
            &ack,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, port),
            sa(server_v4(0), 8080),
        );
        assert_eq!(run.output, want, "the established flow keeps server 0");

        let other = client4(40002);
        let syn = tcp(other, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("new syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V4, first_port(other, vip4(), IPPROTO_TCP)),
            sa(server_v4(1), 8080),
        );
        assert_eq!(run.output, want, "a new flow follows the new table");
        assert_eq!(maps.global_stats().expect("stats").flow_hits, 1);
    });
}

/// A client that reuses its port for a new connection (a SYN on a flow
/// that saw FIN) keeps the flow's server and NAT port while the Maglev
/// table still picks that server, and both directions are live again. Once
/// the table moves the flow, the next reuse gets the new server.
#[test]
fn syn_on_a_closing_flow_reopens_it_while_its_server_is_still_chosen() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40012);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let to_server0 = |frame: &[u8]| nat_to_server0(frame, port);
        let syn = tcp(client, vip4(), true, false, false);
        fixture.run(&syn).expect("syn");
        let fin = tcp(client, vip4(), false, true, true);
        assert_eq!(fixture.run(&fin).expect("fin").output, to_server0(&fin));
        let server_fin = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            false,
            true,
            true,
        );
        fixture.run(&server_fin).expect("server fin");

        let run = fixture.run(&syn).expect("reused syn");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Redirect, to_server0(&syn))
        );
        let global = maps.global_stats().expect("stats");
        assert_eq!((global.flow_misses, global.port_alloc_failures), (1, 0));
        assert_eq!(maps.service_stats(0).expect("service").new_flows, 2);
        let reopened = |fixture: &mut XdpFixture, key: &FlowKey| {
            let entry = entry_at(fixture, key).expect("entry");
            entry.flags & FLOW_CLOSING == 0
        };
        let forward_key = tcp_key(client, vip4());
        let reply_key = tcp_key(sa(server_v4(0), 8080), sa(SNAT_V4, port));
        assert!(reopened(fixture, &forward_key), "forward entry reopened");
        assert!(reopened(fixture, &reply_key), "reply entry reopened");

        // The table now sends this flow to server 1: a reuse after the
        // next close is a new flow there.
        let servers = [(1, sa(server_v4(1), 8080), 1)];
        install_service(maps, 0, vip4(), IPPROTO_TCP, &servers, None).expect("new table");
        fixture.run(&fin).expect("fin again");
        let run = fixture.run(&syn).expect("syn after the table change");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V4, port),
            sa(server_v4(1), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        assert_eq!(maps.global_stats().expect("stats").flow_misses, 2);
    });
}

#[test]
fn reply_is_translated_back_to_the_client() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, _maps| {
        let client = client4(40003);
        fixture
            .run(&tcp(client, vip4(), true, false, false))
            .expect("syn");
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let reply = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            true,
            true,
            false,
        );
        let run = fixture.run(&reply).expect("reply");
        assert_eq!(run.action, XdpAction::Redirect);
        let want = rewritten(&reply, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip4(), client);
        assert_eq!(run.output, want);
    });
}

#[test]
fn packets_that_are_no_vip_and_no_reply_pass_untouched() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        for frame in [
            // The node's own services.
            tcp(
                client4(40004),
                sa(std::net::Ipv4Addr::new(10, 77, 0, 1), 22),
                true,
                false,
                false,
            ),
            // The VIP on another port, and on another protocol.
            tcp(client4(40004), sa(VIP_V4, 81), true, false, false),
            udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client4(40004), vip4()),
            // A NAT port nobody was given.
            tcp_from(
                server_mac(0),
                LB_SERVER_SIDE_MAC,
                sa(server_v4(0), 8080),
                sa(SNAT_V4, 25_000),
                false,
                true,
                false,
            ),
        ] {
            let run = fixture.run(&frame).expect("run");
            assert_eq!(run.action, XdpAction::Pass);
            assert_eq!(run.output, frame);
        }
        let stats = maps.global_stats().expect("stats");
        assert_eq!((stats.flow_hits, stats.flow_misses), (0, 0));
    });
}

#[test]
fn udp_flows_are_natted_both_ways() {
    require_root_and_bpf!();
    let vip = sa(VIP_V4, 53);
    with_service(IPPROTO_UDP, vip, &[(0, 2, 5353)], move |fixture, _maps| {
        let client = client4(40005);
        let query = udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip);
        let run = fixture.run(&query).expect("query");
        assert_eq!(run.action, XdpAction::Redirect);
        let port = first_port(client, vip, IPPROTO_UDP);
        let server = sa(server_v4(2), 5353);
        assert_eq!(
            run.output,
            rewritten(
                &query,
                LB_SERVER_SIDE_MAC,
                server_mac(2),
                sa(SNAT_V4, port),
                server
            )
        );
        let answer = udp_from(server_mac(2), LB_SERVER_SIDE_MAC, server, sa(SNAT_V4, port));
        let run = fixture.run(&answer).expect("answer");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(
            run.output,
            rewritten(&answer, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, client)
        );
    });
}

#[test]
fn ipv6_flows_are_natted_both_ways() {
    require_root_and_bpf!();
    let vip = sa(VIP_V6, 443);
    with_service(IPPROTO_TCP, vip, &[(0, 1, 8443)], move |fixture, _maps| {
        let client = sa(CLIENT_V6, 40006);
        let syn = tcp(client, vip, true, false, false);
        let run = fixture.run(&syn).expect("syn");
        assert_eq!(run.action, XdpAction::Redirect);
        let port = first_port(client, vip, IPPROTO_TCP);
        let server = sa(server_v6(1), 8443);
        assert_eq!(
            run.output,
            rewritten(
                &syn,
                LB_SERVER_SIDE_MAC,
                server_mac(1),
                sa(SNAT_V6, port),
                server
            )
        );
        let reply = tcp_from(
            server_mac(1),
            LB_SERVER_SIDE_MAC,
            server,
            sa(SNAT_V6, port),
            true,
            true,
            false,
        );
        let run = fixture.run(&reply).expect("reply");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(
            run.output,
            rewritten(&reply, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, client)
        );
    });
}

#[test]
fn denied_sources_are_dropped_at_vips_and_l7_ports_only() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        maps.set_acl(&[(24, [10, 77, 0, 0])], &[]).expect("acl");
        maps.set_l7_ports(&[8080]).expect("l7 ports");
        let node = std::net::Ipv4Addr::new(10, 77, 0, 1);
        let to_vip = tcp(client4(40007), vip4(), true, false, false);
        let to_l7 = tcp(client4(40007), sa(node, 8080), true, false, false);
        let to_ssh = tcp(client4(40007), sa(node, 22), true, false, false);
        assert_eq!(fixture.run(&to_vip).expect("run").action, XdpAction::Drop);
        assert_eq!(fixture.run(&to_l7).expect("run").action, XdpAction::Drop);
        let ssh = fixture.run(&to_ssh).expect("run");
        assert_eq!((ssh.action, &ssh.output), (XdpAction::Pass, &to_ssh));
        let stats = maps.global_stats().expect("stats");
        assert_eq!((stats.acl_drops, stats.flow_misses), (2, 0));

        maps.set_acl(&[], &[]).expect("acl cleared");
        assert_eq!(
            fixture.run(&to_vip).expect("run").action,
            XdpAction::Redirect
        );
    });
}

#[test]
fn configured_listener_ports_get_the_deny_list_too() {
    require_root_and_bpf!();
    let net = L4Net::new().expect("fixture network");
    let (client_ifindex, server_ifindex) = (net.client_ifindex, net.server_ifindex);
    let result = net.lb.enter(move || {
        use std::{collections::BTreeMap, sync::Arc};

        use elb_userspace::{
            cidr::Cidr,
            config::{Listener, ListenerProtocol, Snapshot},
            l4::sync::L4Sync,
        };
        let mut fixture = XdpFixture::load().expect("load XDP fixture");
        let mut maps = fixture.l4_maps().expect("L4 maps");
        write_iface_addrs(&mut maps, client_ifindex, server_ifindex).expect("iface addrs");
        let mut sync = L4Sync::new(maps).expect("sync");
        sync.set_static_l7_ports(&[8080]).expect("static ports");
        let node = std::net::Ipv4Addr::new(10, 77, 0, 1);
        let to_listener = tcp(client4(40007), sa(node, 9090), true, false, false);
        let acl: Arc<[Cidr]> = Arc::from(vec!["10.77.0.0/24".parse::<Cidr>().expect("cidr")]);
        let with_listener = |port: Option<u16>| {
            let listeners = port.map(|port| {
                let listener = Listener {
                    name: "extra".into(),
                    address: sa(std::net::Ipv4Addr::UNSPECIFIED, port),
                    protocol: ListenerProtocol::Http,
                    http2: false,
                    default_certificate: None,
                };
                ("extra".to_owned(), Arc::new(listener))
            });
            Snapshot::default()
                .with_l4(Arc::default(), Arc::clone(&acl))
                .with_listeners(Arc::new(listeners.into_iter().collect::<BTreeMap<_, _>>()))
        };
        sync.apply(&with_listener(None)).expect("apply");
        assert_eq!(
            fixture.run(&to_listener).expect("run").action,
            XdpAction::Pass
        );
        sync.apply(&with_listener(Some(9090))).expect("apply");
        assert_eq!(
            fixture.run(&to_listener).expect("run").action,
            XdpAction::Drop
        );
        let to_static = tcp(client4(40007), sa(node, 8080), true, false, false);
        assert_eq!(
            fixture.run(&to_static).expect("run").action,
            XdpAction::Drop
        );
        sync.apply(&with_listener(None)).expect("apply");
        assert_eq!(
            fixture.run(&to_listener).expect("run").action,
            XdpAction::Pass
        );
    });
    drop(net);
    result.expect("fixture thread");
}

/// Plants a reply entry holding `nat_port`: live, or one that closed longer
/// than `TCP_CLOSING_NS` ago. (An idle entry with an old `last_seen` would
/// need an uptime above `TCP_IDLE_NS`, an hour: not so on a fresh CI
/// machine.)
fn plant_reply(fixture: &mut XdpFixture, nat_port: u16, live: bool) {
    let now = monotonic_coarse_ns();
    let (flags, last_seen) = if live {
        (FLOW_REPLY, now)
    } else {
        let closed_at = now.checked_sub(TCP_CLOSING_NS + 1_000_000_000);
        (
            FLOW_REPLY | FLOW_CLOSING,
            closed_at.expect("uptime above 11 s"),
        )
    };
    let key = tcp_key(sa(server_v4(0), 8080), sa(SNAT_V4, nat_port));
    let entry = FlowEntry {
        flags,
        last_seen,
        ..FlowEntry::default()
    };
    fixture
        .flows()
        .expect("flows")
        .insert(&key, &entry, 0)
        .expect("plant");
}

#[test]
fn taken_nat_ports_are_skipped_and_exhaustion_drops() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        // The hashed port is held by a live flow: the cursor's first port
        // (a fresh cursor's: the range's first) is used.
        let client = client4(40008);
        let hashed = first_port(client, vip4(), IPPROTO_TCP);
        assert_ne!(hashed, NAT_PORT_MIN);
        plant_reply(fixture, hashed, true);
        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, NAT_PORT_MIN),
            sa(server_v4(0), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));

        // An expired holder is taken over.
        let client = client4(40009);
        let hashed = first_port(client, vip4(), IPPROTO_TCP);
        plant_reply(fixture, hashed, false);
        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, hashed),
            sa(server_v4(0), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));

        // The hashed port and every port of the cursor's scan taken:
        // dropped and counted.
        let client = client4(40010);
        plant_reply(fixture, first_port(client, vip4(), IPPROTO_TCP), true);
        for port in NAT_PORT_MIN + 1..=NAT_PORT_MIN + NAT_SCAN_PROBES as u16 {
            plant_reply(fixture, port, true);
        }
        let run = fixture
            .run(&tcp(client, vip4(), true, false, false))
            .expect("syn");
        assert_eq!(run.action, XdpAction::Drop);
        assert_eq!(maps.global_stats().expect("stats").port_alloc_failures, 1);
    });
}

#[test]
fn ipv4_options_are_kept_and_fragments_pass() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40011);
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4.octets(), VIP_V4.octets())
            .expect("ipv4");
        ip.options = Ipv4Options::try_from(&[1u8; 8][..]).expect("options");
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(client.port(), 80, 1000, 64240)
            .syn();
        let mut syn = Vec::new();
        b.write(&mut syn, PAYLOAD).expect("frame");
        let run = fixture.run(&syn).expect("run");
        assert_eq!(run.action, XdpAction::Redirect);
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, first_port(client, vip4(), IPPROTO_TCP)),
            sa(server_v4(0), 8080),
        );
        assert_eq!(run.output, want, "options stay, checksums follow");

        // A fragment to the VIP: passed untouched, never NAT'd.
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4.octets(), VIP_V4.octets())
            .expect("ipv4");
        ip.more_fragments = true;
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40012, 80, 1000, 64240)
            .syn();
        let mut fragment = Vec::new();
        b.write(&mut fragment, PAYLOAD).expect("frame");
        let run = fixture.run(&fragment).expect("run");
        assert_eq!((run.action, &run.output), (XdpAction::Pass, &fragment));
        let stats = maps.global_stats().expect("stats");
        assert_eq!((stats.flow_misses, stats.unsupported_passes), (1, 1));
    });
}

/// `frame` (Ethernet + IPv6 + TCP) with an 8-byte hop-by-hop options header
/// (one PadN option) between the IPv6 header and TCP.
fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    const IPV6_END: usize = 14 + 40;
    let mut out = frame[..IPV6_END].to_vec();
    let next_header = out[14 + 6];
    out[14 + 6] = 0;
    let payload_len = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + 8;
    out[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next_header, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[IPV6_END..]);
    out
}

/// IPv6 extension headers hide the ports: such packets to the VIP pass
/// untouched and are counted, and denied sources are dropped all the same.
#[test]
fn ipv6_extension_headers_pass_counted_unless_denied() {
    require_root_and_bpf!();
    let vip = sa(VIP_V6, 80);
    with_service(IPPROTO_TCP, vip, ONE_SERVER, move |fixture, maps| {
        let syn = with_hop_by_hop(&tcp(sa(CLIENT_V6, 40014), vip, true, false, false));
        let run = fixture.run(&syn).expect("run");
        assert_eq!((run.action, &run.output), (XdpAction::Pass, &syn));
        let stats = maps.global_stats().expect("stats");
        assert_eq!((stats.unsupported_passes, stats.flow_misses), (1, 0));

        maps.set_acl(&[], &[(64, addr16(CLIENT_V6.into()))])
            .expect("acl");
        let run = fixture.run(&syn).expect("run");
        assert_eq!(run.action, XdpAction::Drop);
        let stats = maps.global_stats().expect("stats");
        assert_eq!((stats.unsupported_passes, stats.acl_drops), (1, 1));
    });
}

#[test]
fn truncated_and_garbage_frames_never_forward() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let syn = tcp(client4(40013), vip4(), true, false, false);
        let headers = syn.len() - PAYLOAD.len();
        for len in 14..headers {
            let run = fixture.run(&syn[..len]).expect("run");
            assert_eq!(run.action, XdpAction::Pass, "length {len}");
            assert_eq!(run.output, &syn[..len], "length {len}");
        }
        let mut seed = 0x1234_5678u32;
        for i in 0..2000 {
            let len = 14 + (i % 120);
            let frame: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let run = fixture.run(&frame).expect("run");
            assert!(
                matches!(run.action, XdpAction::Pass | XdpAction::Drop),
                "garbage frame {i} got {:?}",
                run.action
            );
        }
        let stats = maps.global_stats().expect("stats");
        assert_eq!(stats.flow_misses, 0, "no garbage frame became a flow");
    });
}

/// A TCP segment from the client side with `payload` and the flags
/// `flags` sets on the builder (seq 1000).
fn segment(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    flags: impl FnOnce(PacketBuilderStep<TcpHeader>) -> PacketBuilderStep<TcpHeader>,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let b = flags(ip.tcp(src.port(), dst.port(), 1000, 64240));
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload).expect("tcp frame");
    frame
}

/// The RST elb must send from `vip` back to `client`, written out with
/// etherparse: MACs swapped, TTL 64, IPv4 DF with id 0, no options, window
/// 0, `seq`, and ACK with `ack` when given.
fn rst_to(client: SocketAddr, vip: SocketAddr, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(LB_CLIENT_SIDE_MAC, CLIENT_MAC);
    let ip = match (vip.ip(), client.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut b = ip.tcp(vip.port(), client.port(), seq, 0).rst();
    if let Some(ack) = ack {
        b = b.ack(ack);
    }
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).expect("rst frame");
    frame
}

/// Entries of both connection tables (main and embryonic), both
/// directions.
fn flow_count(fixture: &mut XdpFixture) -> usize {
    fixture.entry_count().expect("flows")
}

/// Opens a flow from `client` with a SYN (a new flow to server
/// `server_id`), then marks it drained through the real userspace
/// function, as the end of its server's drain does: both entries.
fn drained_flow(
    fixture: &mut XdpFixture,
    maps: &mut L4Maps,
    client: SocketAddr,
    vip: SocketAddr,
    server_id: u32,
) {
    let syn = tcp(client, vip, true, false, false);
    let run = fixture.run(&syn).expect("syn");
    assert_eq!(run.action, XdpAction::Redirect, "the flow opens");
    assert_eq!(
        maps.drain_flows_of_server(server_id).expect("drain"),
        2,
        "both entries marked"
    );
}

/// The entry at `key`, if any, in either table.
fn entry_at(fixture: &mut XdpFixture, key: &FlowKey) -> Option<FlowEntry> {
    fixture.entry(key).expect("flows").map(|(entry, _)| entry)
}

fn udp_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    FlowKey {
        proto: IPPROTO_UDP,
        ..tcp_key(src, dst)
    }
}

/// The regression the drain must not bring back: a mid-stream segment
/// whose entry was lost (evicted under a SYN flood, idle, maps re-created)
/// starts a new flow, which Maglev gives the same server and the first NAT
/// port candidate the same port, so the connection carries on. No RST.
#[test]
fn mid_stream_segments_without_an_entry_start_a_new_flow() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40020);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        let want = rewritten(
            &ack,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, port),
            sa(server_v4(0), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        // The server's answer goes back to the client.
        let reply = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            false,
            true,
            false,
        );
        let run = fixture.run(&reply).expect("reply");
        let want = rewritten(&reply, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip4(), client);
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));

        // IPv6 is no different; nor is a FIN without ACK.
        let vip6 = sa(VIP_V6, 80);
        install_service(
            maps,
            1,
            vip6,
            IPPROTO_TCP,
            &[(1, sa(server_v6(1), 8443), 1)],
            None,
        )
        .expect("v6 service");
        let client6 = sa(CLIENT_V6, 40020);
        let fin = segment(client6, vip6, PAYLOAD, |b| b.fin());
        let run = fixture.run(&fin).expect("v6 fin");
        let want = rewritten(
            &fin,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V6, first_port(client6, vip6, IPPROTO_TCP)),
            sa(server_v6(1), 8443),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));

        assert_resets_misses_hits(maps, (0, 2, 1), "");
        assert_eq!(flow_count(fixture), 4);
    });
}

/// The drain's client-side half: the next segment of a drained flow gets a
/// RST from XDP at once, both entries go, and the client's new connection
/// on that port is a normal new flow.
#[test]
fn drained_flow_mid_stream_ack_is_answered_with_a_rst() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40021);
        drained_flow(fixture, maps, client, vip4(), 0);
        // ACK 1 (the builder's), 19 bytes of data.
        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.action, XdpAction::Tx, "sent back out the ingress");
        assert_eq!(run.output, rst_to(client, vip4(), 1, None));
        assert_resets_misses_hits(maps, (1, 1, 0), "");
        assert_eq!(flow_count(fixture), 0, "both entries gone");
        // The RST is nobody's traffic: only the SYN was counted.
        assert_eq!(maps.service_stats(0).expect("service").packets, 1);
        assert_eq!(maps.server_stats(0).expect("server").packets, 1);

        // SYN|ACK starts nothing: RST at its ACK number.
        drained_flow(fixture, maps, client, vip4(), 0);
        let syn_ack = segment(client, vip4(), &[], |b| b.syn().ack(0xDEAD_BEEF));
        let run = fixture.run(&syn_ack).expect("syn-ack");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Tx, rst_to(client, vip4(), 0xDEAD_BEEF, None))
        );
        assert_eq!(flow_count(fixture), 0);

        // The client's own new connection on that port is a normal flow.
        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(0),
            sa(SNAT_V4, first_port(client, vip4(), IPPROTO_TCP)),
            sa(server_v4(0), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        let global = maps.global_stats().expect("stats");
        assert_eq!((global.tcp_resets, global.flow_misses), (2, 3));
        let forward = entry_at(fixture, &tcp_key(client, vip4())).expect("new entry");
        assert_eq!(forward.flags & FLOW_DRAINED, 0, "a fresh entry");
    });
}

#[test]
fn ipv6_drained_flow_segments_are_answered_with_a_rst() {
    require_root_and_bpf!();
    let vip = sa(VIP_V6, 443);
    with_service(IPPROTO_TCP, vip, &[(0, 1, 8443)], move |fixture, maps| {
        let client = sa(CLIENT_V6, 40022);
        drained_flow(fixture, maps, client, vip, 0);
        let ack = segment(client, vip, PAYLOAD, |b| b.ack(77_777).psh());
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Tx, rst_to(client, vip, 77_777, None))
        );
        assert_eq!(flow_count(fixture), 0);

        // A segment without ACK: RST|ACK at seq + data + FIN.
        drained_flow(fixture, maps, client, vip, 0);
        let fin = segment(client, vip, PAYLOAD, |b| b.fin());
        let run = fixture.run(&fin).expect("fin");
        let want = rst_to(client, vip, 0, Some(1000 + PAYLOAD.len() as u32 + 1));
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));

        // Traffic class EF with CE: the RST keeps EF, clears ECN and the
        // flow label, and its hop limit is 64 whatever the client's.
        drained_flow(fixture, maps, client, vip, 0);
        let ip = |traffic_class, flow_label, hop_limit, source, destination| Ipv6Header {
            traffic_class,
            flow_label,
            payload_length: 0,
            next_header: IpNumber::TCP,
            hop_limit,
            source,
            destination,
        };
        let label = etherparse::Ipv6FlowLabel::try_new(0x12345).expect("label");
        let ef = IpDscp::EF.value() << 2;
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
            .ip(IpHeaders::Ipv6(
                ip(ef | 0b11, label, 17, CLIENT_V6.octets(), VIP_V6.octets()),
                Default::default(),
            ))
            .tcp(client.port(), vip.port(), 1000, 64240)
            .ack(9);
        let mut ack = Vec::new();
        b.write(&mut ack, PAYLOAD).expect("frame");
        let b = PacketBuilder::ethernet2(LB_CLIENT_SIDE_MAC, CLIENT_MAC)
            .ip(IpHeaders::Ipv6(
                ip(
                    ef,
                    Default::default(),
                    64,
                    VIP_V6.octets(),
                    CLIENT_V6.octets(),
                ),
                Default::default(),
            ))
            .tcp(vip.port(), client.port(), 9, 0)
            .rst();
        let mut want = Vec::new();
        b.write(&mut want, &[]).expect("frame");
        let run = fixture.run(&ack).expect("run");
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));
        let global = maps.global_stats().expect("stats");
        assert_eq!((global.tcp_resets, global.flow_misses), (3, 3));
        assert_eq!(flow_count(fixture), 0);
    });
}

/// Without ACK the RST acknowledges the segment: RST|ACK, seq 0, ack =
/// seq + data length (+1 for FIN), by the IP length, not the frame's.
#[test]
fn drained_flow_segments_without_ack_get_rst_ack_covering_them() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40023);
        drained_flow(fixture, maps, client, vip4(), 0);
        let fin = tcp(client, vip4(), false, false, true);
        let run = fixture.run(&fin).expect("fin");
        let want = rst_to(client, vip4(), 0, Some(1000 + PAYLOAD.len() as u32 + 1));
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));

        drained_flow(fixture, maps, client, vip4(), 0);
        let bare = tcp(client, vip4(), false, false, false);
        let run = fixture.run(&bare).expect("bare");
        let want = rst_to(client, vip4(), 0, Some(1000 + PAYLOAD.len() as u32));
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));

        // No data, padded to Ethernet's 60 bytes: the padding is no data.
        drained_flow(fixture, maps, client, vip4(), 0);
        let mut padded = segment(client, vip4(), &[], |b| b);
        assert_eq!(padded.len(), 54);
        padded.extend_from_slice(&[0xEE; 6]);
        let run = fixture.run(&padded).expect("padded");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Tx, rst_to(client, vip4(), 0, Some(1000)))
        );

        // The sequence number wraps.
        drained_flow(fixture, maps, client, vip4(), 0);
        let mut wrapping = segment(client, vip4(), PAYLOAD, |b| b.fin());
        let ip = 14;
        wrapping[ip + 20 + 4..ip + 20 + 8].copy_from_slice(&(u32::MAX - 4).to_be_bytes());
        let wrapping = rewritten(&wrapping, CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip4());
        let run = fixture.run(&wrapping).expect("wrapping");
        let want = rst_to(client, vip4(), 0, Some(PAYLOAD.len() as u32 + 1 - 5));
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));

        let global = maps.global_stats().expect("stats");
        assert_eq!((global.tcp_resets, global.flow_misses), (4, 4));
        assert_eq!(flow_count(fixture), 0);
    });
}

/// The client's IPv4 options are not echoed (they describe its way to the
/// VIP), its DSCP is kept and ECN cleared, VLAN tags stay.
#[test]
fn ipv4_rst_drops_ip_options_keeps_dscp_and_vlan() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40024);
        drained_flow(fixture, maps, client, vip4(), 0);
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4.octets(), VIP_V4.octets())
            .expect("ipv4");
        ip.options = Ipv4Options::try_from(&[1u8; 8][..]).expect("options");
        ip.dscp = IpDscp::EF;
        ip.ecn = IpEcn::CongestionExperienced;
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
            .single_vlan(VlanId::try_new(100).expect("vlan"))
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(client.port(), 80, 1000, 64240)
            .ack(4242);
        let mut ack = Vec::new();
        b.write(&mut ack, PAYLOAD).expect("frame");

        let mut reply = Ipv4Header::new(20, 64, IpNumber::TCP, VIP_V4.octets(), CLIENT_V4.octets())
            .expect("ipv4");
        reply.dscp = IpDscp::EF;
        let b = PacketBuilder::ethernet2(LB_CLIENT_SIDE_MAC, CLIENT_MAC)
            .single_vlan(VlanId::try_new(100).expect("vlan"))
            .ip(IpHeaders::Ipv4(reply, Default::default()))
            .tcp(80, client.port(), 4242, 0)
            .rst();
        let mut want = Vec::new();
        b.write(&mut want, &[]).expect("frame");

        let run = fixture.run(&ack).expect("run");
        assert_eq!((run.action, run.output), (XdpAction::Tx, want));
        assert_eq!(flow_count(fixture), 0);
    });
}

/// A RST is never answered (two resetting ends could loop): on a drained
/// flow it is dropped, nothing sent, and the flow ends all the same (both
/// entries go). So is a segment whose IP length cannot hold its own
/// headers.
#[test]
fn incoming_rst_on_a_drained_flow_is_dropped_and_ends_it() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40025);
        for rst in [
            segment(client, vip4(), &[], |b| b.rst()),
            segment(client, vip4(), &[], |b| b.rst().ack(5)),
        ] {
            drained_flow(fixture, maps, client, vip4(), 0);
            let run = fixture.run(&rst).expect("rst");
            assert_eq!(run.action, XdpAction::Drop);
            assert_eq!(flow_count(fixture), 0, "both entries gone");
        }
        // An IPv4 total length shorter than the headers it carries gives
        // no data length to acknowledge: dropped too.
        drained_flow(fixture, maps, client, vip4(), 0);
        let mut short = segment(client, vip4(), PAYLOAD, |b| b.fin());
        short[14 + 2..14 + 4].copy_from_slice(&39u16.to_be_bytes());
        assert_eq!(fixture.run(&short).expect("short").action, XdpAction::Drop);
        assert_eq!(flow_count(fixture), 0);
        assert_resets_misses_hits(maps, (0, 3, 0), "");
    });
}

/// The whole drain: an established flow, its server's entries marked by
/// the real userspace function (another server's are not); the server's
/// late segment is dropped, the client's next one gets a RST and ends the
/// flow, and a new SYN from the same client port is a normal new flow on
/// the same NAT port.
#[test]
fn drained_flow_gets_a_rst_and_its_port_starts_afresh() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40026);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let to_server0 = |frame: &[u8]| nat_to_server0(frame, port);
        let syn = tcp(client, vip4(), true, false, false);
        assert_eq!(fixture.run(&syn).expect("syn").output, to_server0(&syn));
        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Redirect, to_server0(&ack))
        );

        // Another server's flow, both directions.
        let other_forward = tcp_key(client4(40027), vip4());
        let other_reply = tcp_key(sa(server_v4(1), 8080), sa(SNAT_V4, 21_000));
        for (key, flags) in [(other_forward, 0), (other_reply, FLOW_REPLY)] {
            let entry = FlowEntry {
                server_id: 1,
                flags,
                last_seen: monotonic_coarse_ns(),
                ..FlowEntry::default()
            };
            fixture
                .flows()
                .expect("flows")
                .insert(&key, &entry, 0)
                .expect("plant");
        }
        assert_eq!(flow_count(fixture), 4);

        assert_eq!(maps.drain_flows_of_server(0).expect("drain"), 2);
        assert_eq!(flow_count(fixture), 4, "marked, not deleted");
        let forward_key = tcp_key(client, vip4());
        let reply_key = tcp_key(sa(server_v4(0), 8080), sa(SNAT_V4, port));
        for key in [forward_key, reply_key] {
            let entry = entry_at(fixture, &key).expect("entry");
            assert_ne!(entry.flags & FLOW_DRAINED, 0, "{key:?} marked");
        }
        for key in [other_forward, other_reply] {
            let entry = entry_at(fixture, &key).expect("server 1's entry");
            assert_eq!(entry.flags & FLOW_DRAINED, 0, "{key:?} untouched");
        }
        assert_eq!(maps.drain_flows_of_server(0).expect("again"), 0);
        let server_packets = maps.server_stats(0).expect("server").packets;

        // The server's late segment: dropped, the client is told by XDP.
        let late = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            false,
            true,
            false,
        );
        assert_eq!(fixture.run(&late).expect("late").action, XdpAction::Drop);
        assert_eq!(maps.global_stats().expect("stats").drained_drops, 1);
        assert_eq!(flow_count(fixture), 4);

        let run = fixture.run(&ack).expect("ack after the drain");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Tx, rst_to(client, vip4(), 1, None))
        );
        assert_eq!(flow_count(fixture), 2, "only server 1's entries are left");
        assert!(entry_at(fixture, &forward_key).is_none());
        assert!(entry_at(fixture, &reply_key).is_none());
        assert_eq!(
            maps.server_stats(0).expect("server").packets,
            server_packets,
            "neither the drop nor the RST is the server's traffic"
        );
        // Later segments of the server find no entry: the kernel's.
        assert_eq!(fixture.run(&late).expect("later").action, XdpAction::Pass);

        let run = fixture.run(&syn).expect("new syn");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Redirect, to_server0(&syn))
        );
        let global = maps.global_stats().expect("stats");
        assert_eq!(
            (
                global.tcp_resets,
                global.flow_misses,
                global.flow_hits,
                global.drained_drops
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(maps.service_stats(0).expect("service").new_flows, 2);
        assert_eq!(flow_count(fixture), 4);
    });
}

/// A SYN on a drained flow (a client reusing its port) ends it and starts
/// a new flow, which Maglev now gives a live server.
#[test]
fn syn_on_a_drained_flow_is_a_new_flow_on_a_live_server() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40028);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        drained_flow(fixture, maps, client, vip4(), 0);
        let servers = [(1, sa(server_v4(1), 8080), 1)];
        install_service(maps, 0, vip4(), IPPROTO_TCP, &servers, None).expect("new table");

        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V4, port),
            sa(server_v4(1), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        let old_reply = tcp_key(sa(server_v4(0), 8080), sa(SNAT_V4, port));
        assert!(
            entry_at(fixture, &old_reply).is_none(),
            "old reply entry gone"
        );
        let forward = entry_at(fixture, &tcp_key(client, vip4())).expect("forward");
        assert_eq!((forward.server_id, forward.flags & !EMBRYO_FLAGS), (1, 0));
        assert_eq!(flow_count(fixture), 2);
        assert_resets_misses_hits(maps, (0, 2, 0), "");
    });
}

/// A drained flow that was closing, while the Maglev table still picks its
/// server (as when the id went to a new server at the same address): a SYN
/// is a new flow, never a reopen, which would keep the drained entries and
/// reset the new connection's next segment.
#[test]
fn syn_on_a_drained_closing_flow_is_not_reopened() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40029);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        let to_server0 = |frame: &[u8]| nat_to_server0(frame, port);
        let syn = tcp(client, vip4(), true, false, false);
        fixture.run(&syn).expect("syn");
        let fin = tcp(client, vip4(), false, true, true);
        fixture.run(&fin).expect("fin");
        let server_fin = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            false,
            true,
            true,
        );
        fixture.run(&server_fin).expect("server fin");
        assert_eq!(maps.drain_flows_of_server(0).expect("drain"), 2);

        let run = fixture.run(&syn).expect("reused syn");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Redirect, to_server0(&syn))
        );
        let global = maps.global_stats().expect("stats");
        assert_eq!(
            (global.flow_misses, global.flow_hits),
            (2, 2),
            "a new flow, not a reopen"
        );
        for key in [
            tcp_key(client, vip4()),
            tcp_key(sa(server_v4(0), 8080), sa(SNAT_V4, port)),
        ] {
            let entry = entry_at(fixture, &key).expect("entry");
            assert_eq!(entry.flags & (FLOW_DRAINED | FLOW_CLOSING), 0, "{key:?}");
        }
        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Redirect, to_server0(&ack))
        );
        assert_eq!(maps.global_stats().expect("stats").tcp_resets, 0);
    });
}

/// A drained entry left behind after its server id went to another server:
/// the old flow's packets end it without being counted as the new
/// server's, and the client's next flow goes to the new server.
#[test]
fn a_drained_entry_left_behind_does_not_touch_the_server_that_reuses_its_id() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        let client = client4(40030);
        let port = first_port(client, vip4(), IPPROTO_TCP);
        drained_flow(fixture, maps, client, vip4(), 0);
        // Id 0 is now another server's, with fresh counters (as the sync
        // does for a new id).
        let servers = [(0, sa(server_v4(1), 8080), 1)];
        install_service(maps, 0, vip4(), IPPROTO_TCP, &servers, None).expect("new table");
        maps.reset_server_stats(0).expect("reset");

        let late = tcp_from(
            server_mac(0),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(0), 8080),
            sa(SNAT_V4, port),
            false,
            true,
            false,
        );
        assert_eq!(fixture.run(&late).expect("late").action, XdpAction::Drop);
        let ack = tcp(client, vip4(), false, true, false);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(
            (run.action, run.output),
            (XdpAction::Tx, rst_to(client, vip4(), 1, None))
        );
        assert_eq!(maps.server_stats(0).expect("server").packets, 0);

        let syn = tcp(client, vip4(), true, false, false);
        let run = fixture.run(&syn).expect("syn");
        let want = rewritten(
            &syn,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V4, port),
            sa(server_v4(1), 8080),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        assert_eq!(maps.server_stats(0).expect("server").packets, 1);
    });
}

/// UDP has no RST: a datagram on a drained flow ends it and moves to a
/// live server as a new flow; the old server's late answer is dropped
/// before, and finds nothing after.
#[test]
fn udp_on_a_drained_flow_moves_to_a_live_server() {
    require_root_and_bpf!();
    let vip = sa(VIP_V4, 53);
    with_service(IPPROTO_UDP, vip, &[(0, 2, 5353)], move |fixture, maps| {
        let client = client4(40031);
        let port = first_port(client, vip, IPPROTO_UDP);
        let query = udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip);
        assert_eq!(
            fixture.run(&query).expect("query").action,
            XdpAction::Redirect
        );
        assert_eq!(maps.drain_flows_of_server(0).expect("drain"), 2);
        let old = sa(server_v4(2), 5353);
        let late = udp_from(server_mac(2), LB_SERVER_SIDE_MAC, old, sa(SNAT_V4, port));
        assert_eq!(fixture.run(&late).expect("late").action, XdpAction::Drop);

        let servers = [(1, sa(server_v4(1), 5353), 1)];
        install_service(maps, 0, vip, IPPROTO_UDP, &servers, None).expect("new table");
        let run = fixture.run(&query).expect("query after the drain");
        let want = rewritten(
            &query,
            LB_SERVER_SIDE_MAC,
            server_mac(1),
            sa(SNAT_V4, port),
            sa(server_v4(1), 5353),
        );
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        assert!(entry_at(fixture, &udp_key(old, sa(SNAT_V4, port))).is_none());
        let forward = entry_at(fixture, &udp_key(client, vip)).expect("forward");
        assert_eq!((forward.server_id, forward.flags & !EMBRYO_FLAGS), (1, 0));
        assert_eq!(flow_count(fixture), 2);
        assert_eq!(fixture.run(&late).expect("later").action, XdpAction::Pass);

        let answer = udp_from(
            server_mac(1),
            LB_SERVER_SIDE_MAC,
            sa(server_v4(1), 5353),
            sa(SNAT_V4, port),
        );
        let run = fixture.run(&answer).expect("answer");
        let want = rewritten(&answer, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, client);
        assert_eq!((run.action, run.output), (XdpAction::Redirect, want));
        let global = maps.global_stats().expect("stats");
        assert_eq!(
            (
                global.tcp_resets,
                global.flow_misses,
                global.flow_hits,
                global.drained_drops
            ),
            (0, 2, 1, 1)
        );
    });
}

/// A client port whose flow's first NAT port candidate is `port`, for a
/// flow from `CLIENT_V4` to `vip`, other than `not`.
fn client_with_first_port(vip: SocketAddr, proto: u8, port: u16, not: u16) -> SocketAddr {
    (1..=u16::MAX)
        .filter(|&p| p != not)
        .map(client4)
        .find(|&c| first_port(c, vip, proto) == port)
        .expect("some client port hashes to any NAT port")
}

/// Found by the XDP fuzzer (`fuzz_xdp`, a known reply translated to
/// another client than the one whose flow holds its NAT port): a flow's
/// reply entry idles out when its server is silent (one-way UDP; TCP after
/// the server's FIN), while the client keeps the flow alive. A new flow
/// whose first port candidate is that port then took it over, and the
/// server's next packets for the old flow went to the new client, while
/// the old client kept sending from the same NAT port (two flows on one
/// server-side tuple). An idle reply entry may only be taken over once its
/// flow is idle in both directions.
#[test]
fn a_live_flow_keeps_its_nat_port_when_its_reply_entry_idles_out() {
    require_root_and_bpf!();
    let vip = sa(VIP_V4, 53);
    with_service(IPPROTO_UDP, vip, &[(0, 0, 5353)], move |fixture, _maps| {
        let server = sa(server_v4(0), 5353);
        let old = client4(40100);
        let port = first_port(old, vip, IPPROTO_UDP);
        let query = udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, old, vip);
        let run = fixture.run(&query).expect("old client's datagram");
        assert_eq!(run.output, nat_to(&query, port, server));

        // The server has been silent for longer than the UDP idle time;
        // the client has just sent (its own entry is fresh).
        let reply_key = udp_key(server, sa(SNAT_V4, port));
        let mut reply = entry_at(fixture, &reply_key).expect("reply entry");
        reply.last_seen = monotonic_coarse_ns()
            .checked_sub(UDP_IDLE_NS + 1_000_000_000)
            .expect("uptime above 31 s");
        fixture
            .put_entry(&reply_key, &reply)
            .expect("age the reply entry");

        let new = client_with_first_port(vip, IPPROTO_UDP, port, old.port());
        let datagram = udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, new, vip);
        let run = fixture.run(&datagram).expect("new client's datagram");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_ne!(port, NAT_PORT_MIN);
        assert_eq!(
            run.output,
            nat_to(&datagram, NAT_PORT_MIN, server),
            "the new flow takes the cursor's port, not the live flow's"
        );

        let answer = udp_from(server_mac(0), LB_SERVER_SIDE_MAC, server, sa(SNAT_V4, port));
        let run = fixture.run(&answer).expect("server's late answer");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(
            run.output,
            rewritten(&answer, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, old),
            "the answer goes to the client whose flow holds the port"
        );
        let run = fixture.run(&query).expect("old client again");
        assert_eq!(run.output, nat_to(&query, port, server));
    });
}

/// The other direction of the same fault: a flow's client-side entry
/// idles out while its server keeps sending (a UDP stream to a silent
/// client). The client's next datagram made a new flow on another NAT
/// port, so the server saw a new peer. It keeps the flow's port.
#[test]
fn a_live_flow_keeps_its_nat_port_when_its_client_side_idles_out() {
    require_root_and_bpf!();
    let vip = sa(VIP_V4, 53);
    with_service(IPPROTO_UDP, vip, &[(0, 0, 5353)], move |fixture, maps| {
        let server = sa(server_v4(0), 5353);
        let client = client4(40101);
        let port = first_port(client, vip, IPPROTO_UDP);
        let query = udp_from(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip);
        let run = fixture.run(&query).expect("client's datagram");
        assert_eq!(run.output, nat_to(&query, port, server));

        let forward_key = udp_key(client, vip);
        let mut forward = entry_at(fixture, &forward_key).expect("client-side entry");
        forward.last_seen = monotonic_coarse_ns()
            .checked_sub(UDP_IDLE_NS + 1_000_000_000)
            .expect("uptime above 31 s");
        fixture
            .put_entry(&forward_key, &forward)
            .expect("age the client-side entry");
        // The server has just sent.
        let stream = udp_from(server_mac(0), LB_SERVER_SIDE_MAC, server, sa(SNAT_V4, port));
        let run = fixture.run(&stream).expect("server's datagram");
        assert_eq!(
            (run.action, run.output),
            (
                XdpAction::Redirect,
                rewritten(&stream, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, client)
            )
        );

        let run = fixture.run(&query).expect("client again");
        assert_eq!(
            run.output,
            nat_to(&query, port, server),
            "the client keeps its NAT port"
        );
        let global = maps.global_stats().expect("stats");
        assert_eq!((global.flow_misses, global.flow_hits), (1, 2));
        assert_eq!(flow_count(fixture), 2, "no second flow");
    });
}

/// `frame` as XDP sends it to `server` (behind server 0's MAC) from the
/// SNAT address's NAT `port`.
fn nat_to(frame: &[u8], port: u16, server: SocketAddr) -> Vec<u8> {
    rewritten(
        frame,
        LB_SERVER_SIDE_MAC,
        server_mac(0),
        sa(SNAT_V4, port),
        server,
    )
}

/// The drain on a table of 100,000 entries (a quarter of them the drained
/// server's, both directions) marks exactly those and leaves the rest as
/// they were; prints its time.
#[test]
fn drain_of_a_large_table_marks_exactly_the_servers_entries() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |fixture, maps| {
        const ENTRIES: u32 = 100_000;
        let now = monotonic_coarse_ns();
        let key_of = |i: u32| {
            let src = std::net::Ipv4Addr::from(0x0A40_0000 + i);
            tcp_key(sa(src, (i % 50_000) as u16 + 1024), vip4())
        };
        let entry_of = |i: u32| FlowEntry {
            server_id: (i % 4) as u16 + 5,
            flags: if i.is_multiple_of(2) { 0 } else { FLOW_REPLY },
            last_seen: now,
            ..FlowEntry::default()
        };
        {
            let mut flows = fixture.flows().expect("flows");
            for i in 0..ENTRIES {
                flows.insert(&key_of(i), &entry_of(i), 0).expect("plant");
            }
        }
        assert_eq!(flow_count(fixture), ENTRIES as usize);
        let started = std::time::Instant::now();
        let marked = maps.drain_flows_of_server(6).expect("drain");
        let took = started.elapsed();
        eprintln!(
            "drain: {marked} of {ENTRIES} entries marked in {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        assert_eq!(marked, (ENTRIES / 4) as usize);
        let flows = fixture.flows().expect("flows");
        for i in 0..ENTRIES {
            let entry = flows.get(&key_of(i), 0).expect("every entry stays");
            let mut want = entry_of(i);
            if want.server_id == 6 {
                want.flags |= FLOW_DRAINED;
            }
            assert_eq!(entry, want, "entry {i}");
        }
        assert_eq!(maps.drain_flows_of_server(6).expect("again"), 0);
    });
}

/// The kernel says ENOENT for a key that is not there; removing a service
/// that is already gone is no error.
#[test]
fn removing_an_absent_service_is_not_an_error() {
    require_root_and_bpf!();
    with_service(IPPROTO_TCP, vip4(), ONE_SERVER, |_fixture, maps| {
        let key = vip_key(vip4(), IPPROTO_TCP);
        maps.remove_service(&key).expect("removed");
        maps.remove_service(&key).expect("already gone");
        assert!(maps.services().expect("services").is_empty());
    });
}

#[test]
fn fixture_helpers_are_consistent() {
    // Not privileged: the expected-packet builder is the identity for an
    // unchanged packet, so fixture mismatches are the program's.
    let frame = tcp(client4(1), vip4(), true, false, false);
    assert_eq!(
        rewritten(&frame, CLIENT_MAC, LB_CLIENT_SIDE_MAC, client4(1), vip4()),
        frame
    );
}

/// `frame` as XDP sends it to server 0 (IPv4, port 8080) from the SNAT
/// address's NAT `port`.
fn nat_to_server0(frame: &[u8], port: u16) -> Vec<u8> {
    rewritten(
        frame,
        LB_SERVER_SIDE_MAC,
        server_mac(0),
        sa(SNAT_V4, port),
        sa(server_v4(0), 8080),
    )
}

/// The global counters a drain fixture checks: (tcp_resets, flow_misses,
/// flow_hits).
fn assert_resets_misses_hits(maps: &L4Maps, expected: (u64, u64, u64), why: &str) {
    let global = maps.global_stats().expect("stats");
    assert_eq!(
        (global.tcp_resets, global.flow_misses, global.flow_hits),
        expected,
        "{why}"
    );
}
