//! BPF_PROG_TEST_RUN fixtures for full NAT's capacity: 55,000 concurrent
//! flows per (server, SNAT address), SNAT pools whose capacity adds up, and
//! port exhaustion that fails fast, counted per server and globally, and
//! recovers when a flow ends. Embryonic reply entries a flood left without
//! their client side give their ports back. The program is loaded
//! with the NAT port range `--nat-ports` would give
//! (`XdpFixture::load_with_nat_ports`).
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use elb_common::{
    counters::IPPROTO_TCP,
    l4::{
        EMBRYO_ORPHAN_NS, FLOW_CLOSING, SERVICE_HAS_SNAT, SERVICE_SNAT_POOL, ServiceEntry,
        TCP_CLOSING_NS,
    },
    nat::{NAT_FULL_PROBES, NatPorts},
};
use elb_tests::{
    l4_fixture::*,
    packet::PAYLOAD,
    require_root_and_bpf,
    xdp_fixture::{XdpAction, XdpFixture, monotonic_coarse_ns},
};
use elb_userspace::{
    dataplane::TableSizes,
    l4::{maps::L4Maps, plan::addr16, sync::snat_pool},
};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};

/// The pool's second address (the first is the fixture's `SNAT_V4`).
const SNAT2_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn vip4() -> SocketAddr {
    sa(VIP_V4, 80)
}

/// A client that differs by port, then by address, for `i` up to 16.7 M.
fn client(i: u32) -> SocketAddr {
    let [_, a, b, c] = (i / 60_000).to_be_bytes();
    sa(
        Ipv4Addr::new(10, 77 + a, b, 2 + c),
        1024 + (i % 60_000) as u16,
    )
}

/// A TCP segment between two IPv4 endpoints.
fn segment(src: SocketAddr, dst: SocketAddr, syn: bool, fin: bool) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    if syn {
        b = b.syn();
    } else {
        b = b.ack(1);
    }
    if fin {
        b = b.fin();
    }
    let mut frame = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut frame, PAYLOAD).expect("tcp frame");
    frame
}

fn syn(i: u32) -> Vec<u8> {
    segment(client(i), vip4(), true, false)
}

/// The source (SNAT address, NAT port) of a forwarded frame.
fn nat_source(frame: &[u8]) -> SocketAddr {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("forwarded frame parses");
    let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
        panic!("IPv4 out")
    };
    let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
        panic!("TCP out")
    };
    sa(Ipv4Addr::from(ip.source), tcp.source_port)
}

/// Runs `test` in a fresh fixture network on a program loaded with NAT
/// ports `ports`, serving service 0 at `vip4()` over server 0
/// (`server_v4(0):8080`) with SNAT addresses `snat` (a pool if several).
fn with_nat(
    ports: NatPorts,
    snat: &'static [Ipv4Addr],
    test: impl FnOnce(&mut XdpFixture, &mut L4Maps) + Send + 'static,
) {
    require_root_and_bpf!();
    let net = L4Net::new().expect("fixture network");
    let result = net.lb.enter({
        let (client_ifindex, server_ifindex) = (net.client_ifindex, net.server_ifindex);
        move || {
            // New flows are embryonic (no handshake here): the embryonic
            // table must hold the 55,000 flows' 110,000 entries.
            let tables = TableSizes {
                embryos: 1 << 17,
                ..TableSizes::default()
            };
            let mut fixture =
                XdpFixture::load_configured(tables, Some(ports)).expect("load XDP fixture");
            let mut maps = fixture.l4_maps().expect("L4 maps");
            write_iface_addrs(&mut maps, client_ifindex, server_ifindex).expect("iface addrs");
            install(&mut maps, 0, vip4(), 0, snat);
            test(&mut fixture, &mut maps);
        }
    });
    drop(net);
    result.expect("fixture thread");
}

/// Service `id` at `vip` over server `server` (id and index alike), with
/// `snat` as its one address or its pool.
fn install(maps: &mut L4Maps, id: u32, vip: SocketAddr, server: u8, snat: &[Ipv4Addr]) {
    let server_addr = sa(server_v4(server), 8080);
    let first = snat.first().map(|a| IpAddr::V4(*a));
    install_service(
        maps,
        id,
        vip,
        IPPROTO_TCP,
        &[(u32::from(server), server_addr, 1)],
        first,
    )
    .expect("service");
    if snat.len() > 1 {
        let addrs: Vec<IpAddr> = snat.iter().map(|a| IpAddr::V4(*a)).collect();
        maps.set_snat_pool(id, &snat_pool(&addrs)).expect("pool");
        let key = vip_key(vip, IPPROTO_TCP);
        let (_, entry) = maps
            .services()
            .expect("services")
            .into_iter()
            .find(|(k, _)| *k == key)
            .expect("installed");
        maps.set_service(
            &key,
            &ServiceEntry {
                flags: SERVICE_HAS_SNAT | SERVICE_SNAT_POOL,
                snat: addr16(first.expect("pool")),
                ..entry
            },
        )
        .expect("pool service");
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Opens flows `from..to`; each must be forwarded. Returns their (SNAT
/// address, NAT port) sources and each run's time.
fn open_flows(fixture: &mut XdpFixture, from: u32, to: u32) -> (Vec<SocketAddr>, Vec<Duration>) {
    let mut sources = Vec::new();
    let mut times = Vec::new();
    for i in from..to {
        let (run, took) = fixture.time(&syn(i), 1).expect("syn");
        assert_eq!(run.action, XdpAction::Redirect, "flow {i} is forwarded");
        sources.push(nat_source(&run.output));
        times.push(took);
    }
    (sources, times)
}

/// The target: at least 55,000 concurrent flows to one server
/// through one SNAT address, every one on its own NAT port (before: 12,768
/// ports, and 8 random tries that failed ever more often past half full).
#[test]
fn fifty_five_thousand_flows_to_one_server_get_distinct_nat_ports() {
    const FLOWS: u32 = 55_000;
    let ports = NatPorts::new(1024, 65535).expect("range");
    with_nat(ports, &[SNAT_V4], move |fixture, maps| {
        let (sources, times) = open_flows(fixture, 0, FLOWS);
        let distinct: HashSet<SocketAddr> = sources.iter().copied().collect();
        assert_eq!(distinct.len(), FLOWS as usize, "no NAT port twice");
        assert!(sources.iter().all(|s| s.ip() == IpAddr::V4(SNAT_V4)));
        assert!(sources.iter().all(|s| ports.contains(s.port())));
        let global = maps.global_stats().expect("stats");
        assert_eq!(global.port_alloc_failures, 0);
        assert_eq!(global.flow_misses, u64::from(FLOWS));
        let early = median(times[..1000].to_vec());
        let late = median(times[times.len() - 1000..].to_vec());
        eprintln!(
            "new flow, median of 1000 single runs: {} ns empty, {} ns at 54,000-55,000 of {} ports",
            early.as_nanos(),
            late.as_nanos(),
            ports.count()
        );
        // Every flow's replies still find their way back.
        let last = client(FLOWS - 1);
        let nat = sources[sources.len() - 1];
        let reply = server_reply(nat);
        let run = fixture.run(&reply).expect("reply");
        assert_eq!(run.action, XdpAction::Redirect);
        let headers = PacketHeaders::from_ethernet_slice(&run.output).expect("reply out");
        let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
            panic!("TCP reply")
        };
        assert_eq!(tcp.destination_port, last.port());
    });
}

/// A segment from server 0 to the NAT source `nat`.
fn server_reply(nat: SocketAddr) -> Vec<u8> {
    let IpAddr::V4(dst) = nat.ip() else {
        panic!("IPv4")
    };
    let b = PacketBuilder::ethernet2(server_mac(0), LB_SERVER_SIDE_MAC)
        .ipv4(server_v4(0).octets(), dst.octets(), 64)
        .tcp(8080, nat.port(), 5000, 64240)
        .syn()
        .ack(1001);
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).expect("reply frame");
    frame
}

/// A 2-address pool holds twice what one address holds, uses both, and
/// replies to either address go back to their clients.
#[test]
fn a_snat_pool_adds_up_its_addresses_ports() {
    const PORTS: u32 = 32;
    let ports = NatPorts::new(3000, 3000 + PORTS as u16 - 1).expect("range");
    with_nat(ports, &[SNAT_V4, SNAT2_V4], move |fixture, maps| {
        let (sources, _) = open_flows(fixture, 0, 2 * PORTS);
        let distinct: HashSet<SocketAddr> = sources.iter().copied().collect();
        assert_eq!(distinct.len(), 2 * PORTS as usize);
        for addr in [SNAT_V4, SNAT2_V4] {
            let on = sources
                .iter()
                .filter(|s| s.ip() == IpAddr::V4(addr))
                .count();
            assert_eq!(on, PORTS as usize, "{addr} holds a full range");
        }
        // The first flows already spread over both (the flow hash picks
        // the first address to try).
        let early: HashSet<IpAddr> = sources[..8].iter().map(|s| s.ip()).collect();
        assert_eq!(early.len(), 2, "{sources:?}");
        let run = fixture.run(&syn(2 * PORTS)).expect("syn");
        assert_eq!(run.action, XdpAction::Drop, "both addresses full");

        // Replies to the second address are translated back.
        let (i, nat) = sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.ip() == IpAddr::V4(SNAT2_V4))
            .expect("a flow on the second address");
        let run = fixture.run(&server_reply(*nat)).expect("reply");
        assert_eq!(run.action, XdpAction::Redirect);
        let headers = PacketHeaders::from_ethernet_slice(&run.output).expect("reply out");
        let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
            panic!("TCP reply")
        };
        assert_eq!(tcp.destination_port, client(i as u32).port());

        // The same range on one address (another service and server): half.
        let vip = sa(VIP_V4, 81);
        install(maps, 1, vip, 1, &[SNAT_V4]);
        let mut forwarded = 0;
        for i in 0..=PORTS {
            let run = fixture
                .run(&segment(client(1000 + i), vip, true, false))
                .expect("syn");
            if run.action == XdpAction::Redirect {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, PORTS, "one address holds one range");
    });
}

/// Exhaustion: once every port is taken a SYN is dropped, counted per
/// server and globally, and costs no more than twice a normal new flow
/// (the space is marked full, so it probes NAT_FULL_PROBES ports, not the
/// old 8 failed inserts). A port frees up once its flow is over.
#[test]
fn exhaustion_fails_fast_is_counted_and_recovers() {
    const PORTS: u32 = 64;
    let ports = NatPorts::new(2000, 2000 + PORTS as u16 - 1).expect("range");
    with_nat(ports, &[SNAT_V4], move |fixture, maps| {
        let (sources, fill_times) = open_flows(fixture, 0, PORTS);
        assert_eq!(sources.iter().collect::<HashSet<_>>().len(), PORTS as usize);

        // The first refusal scans, marks the space full; the rest are
        // quick. Each is counted.
        const REFUSED: u32 = 200;
        let mut refused_times = Vec::new();
        for i in PORTS..PORTS + REFUSED {
            let (run, took) = fixture.time(&syn(i), 1).expect("syn");
            assert_eq!(run.action, XdpAction::Drop, "no port left for flow {i}");
            refused_times.push(took);
        }
        let global = maps.global_stats().expect("stats");
        assert_eq!(global.port_alloc_failures, u64::from(REFUSED));
        assert_eq!(
            maps.nat_failures(0).expect("per server"),
            u64::from(REFUSED)
        );
        assert_eq!(maps.nat_failures(1).expect("other server"), 0);
        assert!(maps.nat_cursor(0, 0).expect("cursor").full_at != 0);

        // Costs, as the kernel times them.
        let normal = median(fill_times);
        let refused = median(refused_times);
        const REPEAT: u32 = 10_000;
        let (run, repeated) = fixture.time(&syn(PORTS + REFUSED), REPEAT).expect("repeat");
        assert_eq!(run.action, XdpAction::Drop);
        eprintln!(
            "single runs, median: new flow {} ns, refused SYN {} ns; refused SYN x10000 mean {} ns",
            normal.as_nanos(),
            refused.as_nanos(),
            repeated.as_nanos()
        );
        assert!(
            refused <= 2 * normal,
            "a refused SYN ({refused:?}) costs at most twice a new flow ({normal:?})"
        );

        // A flow closes and idles out: its port is taken again, found by
        // the cursor within one sweep of the range. Each refused flow
        // probes NAT_FULL_PROBES ports and leaps an eighth of the range
        // (4 + 8 of 64 ports): 16 flows visit every port.
        let freed = sources[17];
        age_out(fixture, client(17), freed);
        let mut taken_by = None;
        let sweep = PORTS / NAT_FULL_PROBES + 2;
        for i in 0..sweep {
            let n = 10_000 + i;
            let run = fixture.run(&syn(n)).expect("syn");
            if run.action == XdpAction::Redirect {
                taken_by = Some((n, nat_source(&run.output)));
                break;
            }
        }
        let (n, source) = taken_by.expect("the freed port is handed out again");
        assert_eq!(source, freed);
        assert_eq!(
            maps.nat_cursor(0, 0).expect("cursor").full_at,
            0,
            "no longer full"
        );
        let failures = maps.global_stats().expect("stats").port_alloc_failures;
        // The refused SYNs, the repeated one, and those before the port
        // came back.
        assert_eq!(failures, u64::from(REFUSED + REPEAT + n - 10_000));
        assert_eq!(maps.nat_failures(0).expect("per server"), failures);
    });
}

/// A flood evicts embryonic client-side entries and leaves their reply
/// entries, which hold NAT ports (and the allocator's lookups keep them
/// recently used). Such an orphan gives its port to a new flow once its
/// server has been silent for `EMBRYO_ORPHAN_NS` (250 ms), not
/// `TCP_EMBRYONIC_NS` (120 s); one whose client side is there, or that is
/// younger, keeps it.
#[test]
fn an_embryonic_reply_entry_without_its_client_side_gives_up_its_port() {
    const PORTS: u32 = 8;
    let ports = NatPorts::new(4000, 4000 + PORTS as u16 - 1).expect("range");
    with_nat(ports, &[SNAT_V4], move |fixture, maps| {
        let (sources, _) = open_flows(fixture, 0, PORTS);
        let mut sweep = Sweep {
            syns: PORTS,
            next_client: PORTS,
            refused: 0,
        };
        assert_eq!(sweep.run(fixture), None, "full");
        let seen = |fixture: &mut XdpFixture, nat: SocketAddr, ago: u64| {
            let mut embryos = fixture.embryos().expect("embryos");
            let key = tcp_key(server_addr(), nat);
            let mut entry = embryos.get(&key, 0).expect("reply entry");
            entry.last_seen = monotonic_coarse_ns().checked_sub(ago).expect("uptime");
            embryos.insert(&key, &entry, 0).expect("set last_seen");
        };
        let silent = EMBRYO_ORPHAN_NS + 1_000_000_000;

        // Silent server, client side there: held.
        seen(fixture, sources[5], silent);
        assert_eq!(
            sweep.run(fixture),
            None,
            "a live client side holds its port"
        );
        // Client side evicted, server heard from just now (a sweep takes
        // far less than EMBRYO_ORPHAN_NS): held.
        fixture
            .embryos()
            .expect("embryos")
            .remove(&tcp_key(client(3), vip4()))
            .expect("evict flow 3's client side");
        seen(fixture, sources[3], 0);
        assert_eq!(sweep.run(fixture), None, "a fresh orphan holds its port");
        // Both: the port goes to a new flow.
        seen(fixture, sources[3], silent);
        let (taker, source) = sweep.run(fixture).expect("the orphan's port is taken");
        assert_eq!(source, sources[3]);
        let taken = fixture
            .embryos()
            .expect("embryos")
            .get(&tcp_key(server_addr(), source), 0)
            .expect("the new flow's reply entry");
        assert_eq!(
            (taken.new_dst, taken.new_dst_port),
            (addr16(taker.ip()), taker.port().to_be_bytes()),
            "it translates back to the new client"
        );
        assert_eq!(sweep.run(fixture), None, "full again");
        assert_eq!(maps.nat_failures(0).expect("per server"), sweep.refused);
    });
}

/// New SYNs from fresh clients, counting the refused ones.
struct Sweep {
    /// SYNs a sweep sends at most: one per port.
    syns: u32,
    next_client: u32,
    refused: u64,
}

impl Sweep {
    /// Up to `syns` SYNs (each probes at least NAT_FULL_PROBES ports, so
    /// they visit every port): the client and NAT source of the first one
    /// forwarded, if any.
    fn run(&mut self, fixture: &mut XdpFixture) -> Option<(SocketAddr, SocketAddr)> {
        for _ in 0..self.syns {
            self.next_client += 1;
            let run = fixture.run(&syn(self.next_client)).expect("syn");
            if run.action == XdpAction::Redirect {
                return Some((client(self.next_client), nat_source(&run.output)));
            }
            assert_eq!(run.action, XdpAction::Drop);
            self.refused += 1;
        }
        None
    }
}

fn server_addr() -> SocketAddr {
    sa(server_v4(0), 8080)
}

/// Makes the flow of `client` (NAT'd to `nat`) one that closed longer than
/// `TCP_CLOSING_NS` ago, in both directions.
fn age_out(fixture: &mut XdpFixture, client: SocketAddr, nat: SocketAddr) {
    let old = monotonic_coarse_ns()
        .checked_sub(TCP_CLOSING_NS + 1_000_000_000)
        .expect("uptime above 11 s");
    for key in [tcp_key(client, vip4()), tcp_key(server_addr(), nat)] {
        let (mut entry, _) = fixture.entry(&key).expect("tables").expect("flow entry");
        entry.flags |= FLOW_CLOSING;
        entry.last_seen = old;
        fixture.put_entry(&key, &entry).expect("age");
    }
}
