//! BPF_PROG_TEST_RUN fixtures for the embryonic table (issue 16): a new
//! flow's entries live in `elb_embryos` until its handshake is complete
//! (the server answered, then the client acknowledged the answer), and
//! only then move to `elb_flows`, so a flood of new flows cannot evict
//! established ones. Each handshake fixture is an ordered table of steps:
//! what, frame, action, expected frame, and the tables and counters after.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    embryo::ACK_WINDOW,
    l4::TCP_EMBRYONIC_NS,
};
use elb_tests::{
    l4_fixture::*,
    packet::PAYLOAD,
    require_root_and_bpf,
    xdp_fixture::{XdpAction, XdpFixture, monotonic_coarse_ns},
};
use elb_userspace::{dataplane::TableSizes, l4::maps::L4Maps};
use etherparse::{PacketBuilder, PacketHeaders, TransportHeader};

const SERVER: &[(u32, u8, u16)] = &[(0, 0, 8080)];

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn vip() -> SocketAddr {
    sa(VIP_V4, 80)
}

fn server() -> SocketAddr {
    sa(server_v4(0), 8080)
}

/// TCP flags of a test segment.
#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    RstAck,
}

/// A TCP segment between `src` and `dst` with `seq`, `ack`, `flags`; from
/// the client side unless `from_server`.
fn segment(
    from_server: bool,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: Flags,
) -> Vec<u8> {
    let (src_mac, dst_mac) = if from_server {
        (server_mac(0), LB_SERVER_SIDE_MAC)
    } else {
        (CLIENT_MAC, LB_CLIENT_SIDE_MAC)
    };
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only");
    };
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(src.port(), dst.port(), seq, 64240);
    let b = match flags {
        Flags::Syn => b.syn(),
        Flags::SynAck => b.syn().ack(ack),
        Flags::Ack => b.ack(ack),
        Flags::RstAck => b.rst().ack(ack),
    };
    let payload: &[u8] = match flags {
        Flags::Syn | Flags::SynAck => &[],
        _ => PAYLOAD,
    };
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload).expect("tcp frame");
    frame
}

fn datagram(from_server: bool, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_mac, dst_mac) = if from_server {
        (server_mac(0), LB_SERVER_SIDE_MAC)
    } else {
        (CLIENT_MAC, LB_CLIENT_SIDE_MAC)
    };
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only");
    };
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut frame, PAYLOAD).expect("udp frame");
    frame
}

/// `frame` (client → VIP) as XDP sends it to the server from NAT `port`.
fn to_server(frame: &[u8], port: u16, to: SocketAddr) -> Vec<u8> {
    rewritten(
        frame,
        LB_SERVER_SIDE_MAC,
        server_mac(0),
        sa(SNAT_V4, port),
        to,
    )
}

/// `frame` (server → NAT port) as XDP sends it back to `client`.
fn to_client(frame: &[u8], vip: SocketAddr, client: SocketAddr) -> Vec<u8> {
    rewritten(frame, LB_CLIENT_SIDE_MAC, CLIENT_MAC, vip, client)
}

/// The NAT port XDP gave a frame it sent to a server.
fn nat_port_of(output: &[u8]) -> u16 {
    match PacketHeaders::from_ethernet_slice(output)
        .expect("a parsable output")
        .transport
    {
        Some(TransportHeader::Tcp(tcp)) => tcp.source_port,
        Some(TransportHeader::Udp(udp)) => udp.source_port,
        other => panic!("no TCP or UDP output: {other:?}"),
    }
}

/// One step of a handshake fixture.
struct Step {
    what: &'static str,
    frame: Vec<u8>,
    action: XdpAction,
    expected: Vec<u8>,
    /// Entries in the main table and in the embryonic table afterwards,
    /// and the promotions counted so far.
    after: (usize, usize, u64),
}

fn run_steps(fixture: &mut XdpFixture, maps: &L4Maps, steps: Vec<Step>) {
    for (n, step) in steps.into_iter().enumerate() {
        let run = fixture.run(&step.frame).expect(step.what);
        assert_eq!(run.action, step.action, "step {n}: {}", step.what);
        assert_eq!(run.output, step.expected, "step {n}: {}", step.what);
        let main = fixture.flows().expect("flows").keys().count();
        let embryonic = fixture.embryos().expect("embryos").keys().count();
        let promotions = maps.global_stats().expect("stats").promotions;
        assert_eq!(
            (main, embryonic, promotions),
            step.after,
            "step {n}: {} (main entries, embryonic entries, promotions)",
            step.what
        );
    }
}

/// The first packet's NAT port: a SYN run on a copy of the program would
/// change the tables, so the port comes from the step's own output.
fn first_syn(fixture: &mut XdpFixture, client: SocketAddr, vip: SocketAddr) -> (Vec<u8>, u16) {
    let syn = segment(false, client, vip, 100, 0, Flags::Syn);
    let run = fixture.run(&syn).expect("syn");
    assert_eq!(
        run.action,
        XdpAction::Redirect,
        "the SYN goes to the server"
    );
    let port = nat_port_of(&run.output);
    assert_eq!(run.output, to_server(&syn, port, server()));
    (syn, port)
}

#[test]
fn a_flow_is_promoted_when_the_client_acknowledges_the_servers_syn_ack() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            let client = sa(CLIENT_V4, 41_000);
            let (syn, port) = first_syn(fixture, client, vip());
            assert_eq!(
                (
                    fixture.flows().expect("flows").keys().count(),
                    fixture.embryos().expect("embryos").keys().count()
                ),
                (0, 2),
                "the SYN's two entries are embryonic"
            );
            let nat = sa(SNAT_V4, port);
            let isn = 5_000;
            let client_ack = |ack: u32| segment(false, client, vip(), 101, ack, Flags::Ack);
            let server_seg = |flags: Flags| segment(true, server(), nat, isn, 101, flags);
            let early_ack = client_ack(isn + 1);
            let syn_ack = server_seg(Flags::SynAck);
            let blind = client_ack(isn + 1 + ACK_WINDOW);
            let stale = client_ack(isn);
            let good = client_ack(isn + 1);
            let data = segment(true, server(), nat, isn + 1, 120, Flags::Ack);
            let steps = vec![
                Step {
                    what: "an ACK before the server answered: forwarded, still embryonic",
                    expected: to_server(&early_ack, port, server()),
                    frame: early_ack,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the server's SYN-ACK (ISN 5000): translated back to the client",
                    expected: to_client(&syn_ack, vip(), client),
                    frame: syn_ack,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "an ACK beyond the window (a blind guess): forwarded, not promoted",
                    expected: to_server(&blind, port, server()),
                    frame: blind,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "an ACK of the ISN itself: not promoted",
                    expected: to_server(&stale, port, server()),
                    frame: stale,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "a retransmitted SYN: the same server and port, not promoted",
                    expected: to_server(&syn, port, server()),
                    frame: syn.clone(),
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the ACK of ISN + 1: promoted, both entries in the main table",
                    expected: to_server(&good, port, server()),
                    frame: good.clone(),
                    action: XdpAction::Redirect,
                    after: (2, 0, 1),
                },
                Step {
                    what: "the server's data: from the main table",
                    expected: to_client(&data, vip(), client),
                    frame: data,
                    action: XdpAction::Redirect,
                    after: (2, 0, 1),
                },
                Step {
                    what: "the client's data: from the main table",
                    expected: to_server(&good, port, server()),
                    frame: good,
                    action: XdpAction::Redirect,
                    after: (2, 0, 1),
                },
            ];
            run_steps(fixture, maps, steps);
            let global = maps.global_stats().expect("stats");
            assert_eq!((global.flow_misses, global.flow_hits), (1, 8));
            let reply_key = tcp_key(server(), nat);
            let reply = fixture
                .flows()
                .expect("flows")
                .get(&reply_key, 0)
                .expect("reply entry");
            assert_eq!(
                reply.flags,
                elb_common::l4::FLOW_REPLY,
                "embryonic marks cleared"
            );
            assert_eq!(reply.server_isn, [0; 4]);
        },
    );
}

#[test]
fn a_servers_rst_is_no_answer() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            // A mid-stream segment whose entry was lost starts a flow; the
            // server knows no such connection and resets it.
            let client = sa(CLIENT_V4, 41_001);
            let ack = segment(false, client, vip(), 101, 7, Flags::Ack);
            let run = fixture.run(&ack).expect("ack");
            let port = nat_port_of(&run.output);
            let rst = segment(true, server(), sa(SNAT_V4, port), 7, 120, Flags::RstAck);
            let again = segment(false, client, vip(), 120, 7, Flags::Ack);
            let steps = vec![
                Step {
                    what: "the server's RST goes back to the client",
                    expected: to_client(&rst, vip(), client),
                    frame: rst,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the client's next segment: not promoted",
                    expected: to_server(&again, port, server()),
                    frame: again,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
            ];
            run_steps(fixture, maps, steps);
        },
    );
}

#[test]
fn a_mid_stream_flow_is_promoted_after_the_servers_segment() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            // The entry was lost (evicted, maps re-created) while the
            // connection lives on: the server answers with data, no SYN-ACK,
            // so there is no ISN to check.
            let client = sa(CLIENT_V4, 41_002);
            let ack = segment(false, client, vip(), 101, 7, Flags::Ack);
            let run = fixture.run(&ack).expect("ack");
            let port = nat_port_of(&run.output);
            let data = segment(true, server(), sa(SNAT_V4, port), 7, 120, Flags::Ack);
            let next = segment(false, client, vip(), 120, 26, Flags::Ack);
            let steps = vec![
                Step {
                    what: "the server's data goes back to the client",
                    expected: to_client(&data, vip(), client),
                    frame: data,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the client's next segment promotes the flow",
                    expected: to_server(&next, port, server()),
                    frame: next,
                    action: XdpAction::Redirect,
                    after: (2, 0, 1),
                },
            ];
            run_steps(fixture, maps, steps);
        },
    );
}

#[test]
fn udp_is_promoted_by_the_clients_datagram_after_an_answer() {
    require_root_and_bpf!();
    let dns = sa(VIP_V4, 53);
    with_service_tables(
        IPPROTO_UDP,
        dns,
        SERVER,
        TableSizes::default(),
        move |fixture, maps| {
            let client = sa(CLIENT_V4, 41_003);
            let query = datagram(false, client, dns);
            let run = fixture.run(&query).expect("query");
            let port = nat_port_of(&run.output);
            let answer = datagram(true, server(), sa(SNAT_V4, port));
            let steps = vec![
                Step {
                    what: "a second query before any answer: still embryonic",
                    expected: to_server(&query, port, server()),
                    frame: query.clone(),
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the answer",
                    expected: to_client(&answer, dns, client),
                    frame: answer,
                    action: XdpAction::Redirect,
                    after: (0, 2, 0),
                },
                Step {
                    what: "the query after the answer promotes",
                    expected: to_server(&query, port, server()),
                    frame: query,
                    action: XdpAction::Redirect,
                    after: (2, 0, 1),
                },
            ];
            run_steps(fixture, maps, steps);
        },
    );
}

/// An embryonic flow idle for longer than `TCP_EMBRYONIC_NS` (conntrack's
/// SYN_SENT timeout) is over: the client's next SYN is a new flow, and its
/// NAT port may be taken by another flow.
#[test]
fn an_idle_embryonic_flow_expires() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            let client = sa(CLIENT_V4, 41_004);
            let (syn, port) = first_syn(fixture, client, vip());
            let long_ago = monotonic_coarse_ns()
                .checked_sub(TCP_EMBRYONIC_NS + 1_000_000_000)
                .expect("uptime above 121 s");
            for key in [tcp_key(client, vip()), tcp_key(server(), sa(SNAT_V4, port))] {
                let mut embryos = fixture.embryos().expect("embryos");
                let mut entry = embryos.get(&key, 0).expect("embryonic entry");
                entry.last_seen = long_ago;
                embryos.insert(&key, &entry, 0).expect("age it");
            }
            let run = fixture.run(&syn).expect("syn again");
            assert_eq!(run.action, XdpAction::Redirect);
            let global = maps.global_stats().expect("stats");
            assert_eq!((global.flow_misses, global.flow_hits), (2, 0), "a new flow");
            let forward = fixture
                .embryos()
                .expect("embryos")
                .get(&tcp_key(client, vip()), 0)
                .expect("entry");
            assert!(forward.last_seen > long_ago, "a fresh entry");
            // Younger than the timeout, it is still the same flow.
            let run = fixture.run(&syn).expect("syn once more");
            assert_eq!(run.action, XdpAction::Redirect);
            assert_eq!(maps.global_stats().expect("stats").flow_misses, 2);
        },
    );
}

/// No two flows share a NAT port, whichever table holds them: 500 flows
/// promoted, then 3,000 new ones, all to one server. A new flow's claim of
/// a port in the embryonic table is checked against the main table.
#[test]
fn nat_ports_are_unique_across_both_tables() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            let mut ports = Vec::new();
            for n in 0..500u16 {
                let client = sa(CLIENT_V4, 20_000 + n);
                let (_, port) = first_syn(fixture, client, vip());
                establish(fixture, client, port);
                ports.push(port);
            }
            assert_eq!(maps.global_stats().expect("stats").promotions, 500);
            for n in 0..3_000u16 {
                let (_, port) = first_syn(fixture, sa(CLIENT_V4, 30_000 + n), vip());
                ports.push(port);
            }
            let total = ports.len();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), total, "every flow has its own NAT port");
            assert_eq!(fixture.flows().expect("flows").keys().count(), 1_000);
            assert_eq!(fixture.embryos().expect("embryos").keys().count(), 6_000);
        },
    );
}

/// The server's SYN-ACK and the client's ACK for the flow of `client`
/// (whose SYN went out from NAT `port`): promoted.
fn establish(fixture: &mut XdpFixture, client: SocketAddr, port: u16) {
    let syn_ack = segment(true, server(), sa(SNAT_V4, port), 9_000, 101, Flags::SynAck);
    assert_eq!(
        fixture.run(&syn_ack).expect("syn-ack").action,
        XdpAction::Redirect
    );
    let ack = segment(false, client, vip(), 101, 9_001, Flags::Ack);
    assert_eq!(fixture.run(&ack).expect("ack").action, XdpAction::Redirect);
}

/// The point of the embryonic table, in miniature: a main table of 2,048
/// entries holds 100 established flows while 20,000 new flows (a flood
/// that never completes a handshake) go through; every established flow
/// still finds its entry afterwards. With one table for both, the flood's
/// 40,000 inserts evict them all many times over.
#[test]
fn new_flows_churn_only_the_embryonic_table() {
    require_root_and_bpf!();
    let tables = TableSizes {
        flows: 2_048,
        embryos: 1_024,
    };
    with_service_tables(IPPROTO_TCP, vip(), SERVER, tables, |fixture, maps| {
        let established: Vec<(SocketAddr, u16)> = (0..100u16)
            .map(|n| {
                let client = sa(CLIENT_V4, 20_000 + n);
                let (_, port) = first_syn(fixture, client, vip());
                establish(fixture, client, port);
                (client, port)
            })
            .collect();
        for n in 0..20_000u32 {
            let source = sa(Ipv4Addr::from(0x0A64_0000 + n), 1024 + (n % 7) as u16);
            let syn = segment(false, source, vip(), n, 0, Flags::Syn);
            assert_eq!(
                fixture.run(&syn).expect("flood syn").action,
                XdpAction::Redirect
            );
        }
        let misses = maps.global_stats().expect("stats").flow_misses;
        for (client, port) in &established {
            let data = segment(false, *client, vip(), 101, 9_001, Flags::Ack);
            let run = fixture.run(&data).expect("data");
            assert_eq!(run.output, to_server(&data, *port, server()), "{client}");
        }
        let global = maps.global_stats().expect("stats");
        assert_eq!(global.flow_misses, misses, "no established flow was lost");
        assert_eq!(global.promotions, 100);
        assert_eq!(fixture.flows().expect("flows").keys().count(), 200);
        assert!(fixture.embryos().expect("embryos").keys().count() <= 1_024);
    });
}

/// A flood evicts the embryonic table entry by entry, so a legitimate
/// flow may lose one of its two entries. Lost client side: its next packet
/// finds its own reply entry at its hashed port and keeps that port (the
/// server's connection still matches). Lost reply side: the client's next
/// packet puts it back, so the server's answers are translated, not handed
/// to the kernel (which would reset the connection).
#[test]
fn a_flow_that_lost_one_embryonic_entry_keeps_its_port_and_its_answers() {
    require_root_and_bpf!();
    with_service_tables(
        IPPROTO_TCP,
        vip(),
        SERVER,
        TableSizes::default(),
        |fixture, maps| {
            // The client side lost.
            let client = sa(CLIENT_V4, 41_010);
            let (_, port) = first_syn(fixture, client, vip());
            fixture
                .embryos()
                .expect("embryos")
                .remove(&tcp_key(client, vip()))
                .expect("evict the client side");
            let ack = segment(false, client, vip(), 101, 1, Flags::Ack);
            let run = fixture.run(&ack).expect("ack");
            assert_eq!(
                run.output,
                to_server(&ack, port, server()),
                "the same NAT port"
            );
            assert_eq!(maps.global_stats().expect("stats").port_alloc_failures, 0);

            // The reply side lost.
            let client = sa(CLIENT_V4, 41_011);
            let (_, port) = first_syn(fixture, client, vip());
            let nat = sa(SNAT_V4, port);
            fixture
                .embryos()
                .expect("embryos")
                .remove(&tcp_key(server(), nat))
                .expect("evict the reply side");
            let syn_ack = segment(true, server(), nat, 5_000, 101, Flags::SynAck);
            assert_eq!(
                fixture.run(&syn_ack).expect("syn-ack").action,
                XdpAction::Pass,
                "without the reply entry the answer goes to the kernel"
            );
            let ack = segment(false, client, vip(), 101, 1, Flags::Ack);
            assert_eq!(fixture.run(&ack).expect("ack").action, XdpAction::Redirect);
            let run = fixture.run(&syn_ack).expect("syn-ack again");
            assert_eq!(
                (run.action, run.output),
                (XdpAction::Redirect, to_client(&syn_ack, vip(), client)),
                "the reply entry is back"
            );
            // And the handshake completes as usual.
            let good = segment(false, client, vip(), 101, 5_001, Flags::Ack);
            assert_eq!(fixture.run(&good).expect("ack").action, XdpAction::Redirect);
            assert_eq!(maps.global_stats().expect("stats").promotions, 1);
        },
    );
}
