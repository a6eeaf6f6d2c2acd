//! Generation numbers take the deny-list lookup and the FIB lookup off the
//! established-flow path: BPF_PROG_TEST_RUN fixtures (in an `L4Net`
//! namespace) showing that an established flow reuses its deny-list check
//! and its cached next hop while their generations stay, and redoes them
//! at its next packet once userspace bumps them; plus the real route
//! watcher bumping on route and neighbour changes in a namespace.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{GEN_ACL, GEN_ROUTE, VipKey, flow_hash},
    maps,
    nat::NatPorts,
    vip_ports::VipPorts,
};
use elb_tests::{
    l4_fixture::*,
    netns::run,
    packet::PAYLOAD,
    require_root_and_bpf,
    xdp_fixture::{XdpAction, XdpFixture},
};
use elb_userspace::{
    l4::{generations::Generations, maps::L4Maps, plan::addr16, routes},
    sys::rtnetlink::RouteEvents,
};
use etherparse::PacketBuilder;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn vip() -> SocketAddr {
    sa(VIP_V4, 80)
}

fn client(port: u16) -> SocketAddr {
    sa(CLIENT_V4, port)
}

fn server() -> SocketAddr {
    sa(server_v4(0), 8080)
}

/// A TCP segment from the client side (SYN, or an established ACK).
fn tcp(src: SocketAddr, dst: SocketAddr, syn: bool) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_SIDE_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut frame = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut frame, PAYLOAD).expect("tcp frame");
    frame
}

/// The NAT port the program picks first for a flow.
fn first_port(client: SocketAddr) -> u16 {
    let hash = flow_hash(
        &addr16(client.ip()),
        &addr16(vip().ip()),
        client.port().to_be_bytes(),
        vip().port().to_be_bytes(),
        IPPROTO_TCP,
    );
    NatPorts::DEFAULT.hashed(hash)
}

/// The server's SYN-ACK (ISN 0) to `flow`'s NAT port, then the client's
/// ACK of it (`tcp`'s ACK 1): the flow completes its handshake and moves
/// from the embryonic table to the main one, whose entries keep the
/// generations they checked at.
fn establish(fixture: &mut XdpFixture, maps: &L4Maps, flow: SocketAddr) {
    let promotions = maps.global_stats().expect("stats").promotions;
    let b = PacketBuilder::ethernet2(server_mac(0), LB_SERVER_SIDE_MAC)
        .ipv4(server_v4(0).octets(), SNAT_V4.octets(), 64)
        .tcp(server().port(), first_port(flow), 0, 64240)
        .syn()
        .ack(1001);
    let mut syn_ack = Vec::with_capacity(b.size(0));
    b.write(&mut syn_ack, &[]).expect("syn-ack frame");
    assert_eq!(action(fixture, &syn_ack), XdpAction::Redirect, "SYN-ACK");
    assert_eq!(
        action(fixture, &tcp(flow, vip(), false)),
        XdpAction::Redirect,
        "ACK"
    );
    assert_eq!(
        maps.global_stats().expect("stats").promotions,
        promotions + 1,
        "the flow is established"
    );
}

/// `flow`'s SYN (forwarded), then [`establish`]: the flow is in the main
/// table.
fn open(fixture: &mut XdpFixture, maps: &L4Maps, flow: SocketAddr) {
    assert_eq!(
        action(fixture, &tcp(flow, vip(), true)),
        XdpAction::Redirect,
        "SYN"
    );
    establish(fixture, maps, flow);
}

/// `frame` as the program forwards it to server 0 with `dst_mac`.
fn to_server(frame: &[u8], client: SocketAddr, dst_mac: [u8; 6]) -> Vec<u8> {
    rewritten(
        frame,
        LB_SERVER_SIDE_MAC,
        dst_mac,
        sa(SNAT_V4, first_port(client)),
        server(),
    )
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fixture network's names, for `ip` commands run inside the test.
struct Names {
    ns: String,
    server_if: String,
}

impl Names {
    fn of(net: &L4Net) -> Self {
        // `N: name@peer: ...` lines; the one with the server-side ifindex.
        let out = net.lb.ip(&["-o", "link", "show"]).expect("ip link");
        let server_if = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut parts = line.split(": ");
                let index: u32 = parts.next()?.trim().parse().ok()?;
                let name = parts.next()?.split('@').next()?;
                (index == net.server_ifindex).then(|| name.to_owned())
            })
            .expect("the server-side interface");
        Self {
            ns: net.lb.name().to_owned(),
            server_if,
        }
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full).expect("ip command");
    }

    /// Server 0's neighbour entry, now with `mac` (no generation bump).
    fn move_server(&self, mac: [u8; 6]) {
        self.ip(&[
            "neigh",
            "replace",
            &server_v4(0).to_string(),
            "lladdr",
            &mac_text(mac),
            "dev",
            &self.server_if,
            "nud",
            "permanent",
        ]);
    }
}

/// Runs `test` in a fresh fixture network on a freshly loaded program
/// serving one TCP service (id 0) on server 0.
fn with_service(test: impl FnOnce(&mut XdpFixture, &mut L4Maps, &Names) + Send + 'static) {
    let net = L4Net::new().expect("fixture network");
    let names = Names::of(&net);
    let result = net.lb.enter({
        let (client_ifindex, server_ifindex) = (net.client_ifindex, net.server_ifindex);
        move || {
            let mut fixture = XdpFixture::load().expect("load XDP fixture");
            let mut maps = fixture.l4_maps().expect("L4 maps");
            write_iface_addrs(&mut maps, client_ifindex, server_ifindex).expect("iface addrs");
            install_service(&mut maps, 0, vip(), IPPROTO_TCP, &[(0, server(), 1)], None)
                .expect("service");
            test(&mut fixture, &mut maps, &names);
        }
    });
    drop(net);
    result.expect("fixture thread");
}

fn action(fixture: &mut XdpFixture, frame: &[u8]) -> XdpAction {
    fixture.run(frame).expect("run").action
}

/// The deny-list's IPv4 trie, written behind L4Maps' back (no bump).
fn acl_v4(fixture: &XdpFixture) -> LpmTrie<aya::maps::MapData, [u8; 4], u32> {
    let map = fixture.map_named(maps::ACL_V4).expect("ACL map");
    LpmTrie::try_from(map).expect("an LPM trie")
}

#[test]
fn an_established_flow_skips_the_deny_list_until_it_changes_then_is_cut() {
    require_root_and_bpf!();
    with_service(|fixture, maps, _| {
        let gens = maps.generations().expect("generations");
        let flow = client(40100);
        let ack = tcp(flow, vip(), false);
        open(fixture, maps, flow);
        assert_eq!(action(fixture, &ack), XdpAction::Redirect);

        // An unrelated deny-list change: the flow is checked again, passes.
        let before = gens.current(GEN_ACL).expect("ACL generation");
        maps.set_acl(&[(24, [192, 0, 2, 0])], &[]).expect("acl");
        assert_ne!(gens.current(GEN_ACL).expect("generation"), before);
        assert_eq!(action(fixture, &ack), XdpAction::Redirect);
        // Writing the same list again changes nothing, bumps nothing.
        let unchanged = gens.current(GEN_ACL).expect("generation");
        maps.set_acl(&[(24, [192, 0, 2, 0])], &[]).expect("acl");
        assert_eq!(gens.current(GEN_ACL).expect("generation"), unchanged);

        // The source denied in the map without a bump: the established
        // flow's packets do not look at the trie (the old check stands),
        // while a new flow from it is checked, and dropped.
        let mut trie = acl_v4(fixture);
        let client_key = Key::new(32, CLIENT_V4.octets());
        trie.insert(&client_key, &1, 0)
            .expect("deny behind the API");
        assert_eq!(action(fixture, &ack), XdpAction::Redirect, "no lookup");
        assert_eq!(
            action(fixture, &tcp(client(40101), vip(), true)),
            XdpAction::Drop,
            "a new flow is always checked"
        );
        trie.remove(&client_key).expect("undo");

        // Denied through the API (which bumps): cut at its next packet.
        let drops = maps.global_stats().expect("stats").acl_drops;
        maps.set_acl(&[(24, [192, 0, 2, 0]), (32, CLIENT_V4.octets())], &[])
            .expect("acl");
        assert_eq!(action(fixture, &ack), XdpAction::Drop, "cut at once");
        assert_eq!(action(fixture, &ack), XdpAction::Drop, "and stays cut");
        assert_eq!(maps.global_stats().expect("stats").acl_drops, drops + 2);

        // Allowed again: the flow's entry is still there, it carries on.
        maps.set_acl(&[], &[]).expect("acl cleared");
        let run = fixture.run(&ack).expect("run");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(run.output, to_server(&ack, flow, server_mac(0)));
    });
}

/// An established flow's packet is checked against its service's VIP in
/// `elb_svc_vips` instead of the VIP's `elb_services` entry: forwarded only
/// while its service still serves that VIP. A service moved to another
/// address or removed leaves its old VIP's flows to the kernel, as before
/// the shortcut, even while another service keeps the port in
/// `elb_vip_ports` (so the flow is looked up first); put back, the flow
/// carries on. `elb_vip_ports` only saves lookups: emptied, the flow is
/// still forwarded.
#[test]
fn an_established_flow_is_forwarded_only_while_its_service_serves_its_vip() {
    require_root_and_bpf!();
    with_service(|fixture, maps, _| {
        let flow = client(40300);
        let ack = tcp(flow, vip(), false);
        open(fixture, maps, flow);
        assert_eq!(
            maps.service_vip(0).expect("service VIP"),
            vip_key(vip(), IPPROTO_TCP)
        );
        let port_80: VipPorts = [80].into_iter().collect();
        assert_eq!(maps.vip_ports().expect("VIP ports"), port_80);
        let hits = |maps: &L4Maps| maps.global_stats().expect("stats").flow_hits;
        let forwarded = |fixture: &mut XdpFixture, why: &str| {
            let run = fixture.run(&ack).expect("run");
            assert_eq!(run.action, XdpAction::Redirect, "{why}");
            assert_eq!(run.output, to_server(&ack, flow, server_mac(0)), "{why}");
        };
        let passed = |fixture: &mut XdpFixture, maps: &L4Maps, why: &str| {
            let before = hits(maps);
            let run = fixture.run(&ack).expect("run");
            assert_eq!(run.action, XdpAction::Pass, "{why}");
            assert_eq!(run.output, ack, "{why}: untouched");
            assert_eq!(hits(maps), before, "{why}: no flow hit");
        };
        let before = hits(maps);
        forwarded(fixture, "established");
        assert_eq!(hits(maps), before + 1);

        let mut ports: Array<MapData, VipPorts> =
            Array::try_from(fixture.map_named(maps::VIP_PORTS).expect("VIP ports map"))
                .expect("an array");
        ports.set(0, &VipPorts::EMPTY, 0).expect("emptied");
        forwarded(fixture, "found after the service lookup");
        ports.set(0, &port_80, 0).expect("restored");

        // Moved to another address on the same port, as the sync moves a
        // service: installed at its new VIP, then its old VIP removed.
        let other = sa(Ipv4Addr::new(10, 77, 0, 101), 80);
        install_service(maps, 0, other, IPPROTO_TCP, &[(0, server(), 1)], None)
            .expect("service at its new VIP");
        maps.remove_service(&vip_key(vip(), IPPROTO_TCP))
            .expect("old VIP removed");
        assert_eq!(
            maps.service_vip(0).expect("service VIP"),
            vip_key(other, IPPROTO_TCP)
        );
        assert_eq!(maps.vip_ports().expect("VIP ports"), port_80);
        passed(fixture, maps, "the old VIP is served no more");

        // Back at its old VIP: the flow's entry is still there.
        install_service(maps, 0, vip(), IPPROTO_TCP, &[(0, server(), 1)], None)
            .expect("service back");
        maps.remove_service(&vip_key(other, IPPROTO_TCP))
            .expect("the other VIP removed");
        forwarded(fixture, "back at its VIP");

        // Removed while another service keeps port 80 listed.
        install_service(maps, 1, other, IPPROTO_TCP, &[(0, server(), 1)], None)
            .expect("another service");
        maps.remove_service(&vip_key(vip(), IPPROTO_TCP))
            .expect("removed");
        assert_eq!(maps.service_vip(0).expect("service VIP"), VipKey::default());
        assert_eq!(maps.vip_ports().expect("VIP ports"), port_80);
        passed(fixture, maps, "its service is gone");
        maps.remove_service(&vip_key(other, IPPROTO_TCP))
            .expect("the other service removed");
        assert_eq!(maps.vip_ports().expect("VIP ports"), VipPorts::EMPTY);
        passed(fixture, maps, "no service at all");
    });
}

#[test]
fn a_cached_next_hop_serves_until_the_route_generation_changes() {
    require_root_and_bpf!();
    with_service(|fixture, maps, names| {
        let mut gens: Generations = maps.generations().expect("generations");
        let flow = client(40200);
        let ack = tcp(flow, vip(), false);
        let syn = tcp(flow, vip(), true);
        let run = fixture.run(&syn).expect("syn");
        assert_eq!(run.output, to_server(&syn, flow, server_mac(0)));
        establish(fixture, maps, flow);

        // The server's MAC changes, and nobody tells the data plane: the
        // flow keeps its cached next hop (no FIB lookup), even after the
        // old one-second lifetime of the cache.
        let moved = [0x02, 0, 0, 0, 0, 0x99];
        names.move_server(moved);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.output, to_server(&ack, flow, server_mac(0)), "cached");
        std::thread::sleep(Duration::from_millis(1200));
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.output, to_server(&ack, flow, server_mac(0)), "no TTL");
        // A new flow looks its next hop up.
        let other = client(40201);
        let run = fixture.run(&tcp(other, vip(), true)).expect("syn");
        assert_eq!(
            run.output,
            to_server(&tcp(other, vip(), true), other, moved),
            "a new flow looks up"
        );

        // The watcher's bump: the next packet looks the next hop up again.
        gens.bump_route().expect("bump");
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(run.output, to_server(&ack, flow, moved), "new next hop");

        // No neighbour at all: the packet goes to the kernel, counted, and
        // the cache stays invalid, so the entry's next packet looks up
        // again (here finding a neighbour that came back, with no bump).
        names.ip(&[
            "neigh",
            "del",
            &server_v4(0).to_string(),
            "dev",
            &names.server_if,
        ]);
        gens.bump_route().expect("bump");
        let fallbacks = maps.global_stats().expect("stats").fib_fallbacks;
        assert_eq!(action(fixture, &ack), XdpAction::Pass);
        assert_eq!(
            maps.global_stats().expect("stats").fib_fallbacks,
            fallbacks + 1
        );
        let back = [0x02, 0, 0, 0, 0, 0x98];
        names.move_server(back);
        let run = fixture.run(&ack).expect("ack");
        assert_eq!(run.action, XdpAction::Redirect);
        assert_eq!(run.output, to_server(&ack, flow, back), "looked up again");
    });
}

/// Waits (bounded) until the route generation is no longer `from`.
async fn changed_from(gens: &Generations, from: u32, why: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = gens.current(GEN_ROUTE).expect("route generation");
        if now != from {
            return now;
        }
        assert!(Instant::now() < deadline, "no bump within 5 s after {why}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn the_route_watcher_bumps_on_neighbour_route_and_link_changes() {
    require_root_and_bpf!();
    let net = L4Net::new().expect("fixture network");
    let names = Names::of(&net);
    let result = net.lb.enter(move || {
        let mut fixture = XdpFixture::load().expect("load XDP fixture");
        let maps = fixture.l4_maps().expect("L4 maps");
        let gens = maps.generations().expect("generations");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            // Opened on this thread: in the fixture's namespace.
            let events = RouteEvents::open().expect("rtnetlink socket");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let start = gens.current(GEN_ROUTE).expect("generation");
            let task = routes::spawn(events, maps.generations().expect("handle"), stopped)
                .expect("watcher");
            let mut current = changed_from(&gens, start, "the watcher started").await;

            names.move_server([0x02, 0, 0, 0, 0, 0x97]);
            current = changed_from(&gens, current, "ip neigh replace").await;
            names.ip(&["route", "add", "10.99.0.0/24", "via", "10.88.0.10"]);
            current = changed_from(&gens, current, "ip route add").await;
            names.ip(&["link", "set", "dev", &names.server_if, "mtu", "1400"]);
            changed_from(&gens, current, "ip link set mtu").await;

            stop.send(true).expect("watcher listening");
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the watcher stops on shutdown")
                .expect("watcher task");
        });
    });
    drop(net);
    result.expect("fixture thread");
}
