//! The XDP fuzzer: a fixed budget of generated packets through the real
//! program (root only), and the checker itself on hand-made outputs, so
//! that a broken rewrite, a forward that should not be and a missed drop
//! are shown to be caught.
use std::net::{IpAddr, SocketAddr};

use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::flow_hash,
    nat::NatPorts,
};
use elb_tests::{
    l4_fixture::{
        CLIENT_MAC, CLIENT_V4, LB_CLIENT_SIDE_MAC, LB_SERVER_SIDE_MAC, SNAT_V4, VIP_V4, rewritten,
        server_mac, server_v4,
    },
    packet::PAYLOAD,
    require_root_and_bpf,
    xdp_fixture::XdpAction,
    xdp_fuzz::{
        self, Config,
        check::{Verdict, check},
        classify::classify,
        model::{Binding, Model, ReplyKey},
        world::{DENIED_V4, World},
    },
};
use elb_userspace::l4::plan::addr16;
use etherparse::PacketBuilder;

/// 20 s or 200,000 packets, whichever comes first; a fixed seed unless
/// `ELB_FUZZ_SEED` gives one (decimal), so CI runs are reproducible.
#[test]
fn generated_packets_break_no_invariant() {
    require_root_and_bpf!();
    let seed = std::env::var("ELB_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("ELB_FUZZ_SEED is a decimal u64"))
        .unwrap_or(0x5eed_0001);
    let mut config = Config::new(20.0, 200_000, seed);
    // Drains early and often, so even a slow run answers drained flows.
    config.drain_every = 5_000;
    let summary = xdp_fuzz::run(&config).expect("fuzz run");
    eprintln!("seed {seed:#x}\n{}\n{}", summary.detail(), summary.line());
    assert_eq!(summary.violations, 0, "see the VIOLATION lines above");
    assert_eq!(
        summary.packets,
        summary.rewritten + summary.passed + summary.dropped + summary.aborted
    );
    // Every path was taken, or the budget proved little.
    assert!(
        summary.packets >= 20_000,
        "only {} packets",
        summary.packets
    );
    for (what, n) in [
        ("NAT'd to servers", summary.to_server),
        ("NAT'd back to clients", summary.to_client),
        ("NAT'd and passed up", summary.nat_passed_up),
        ("RSTs", summary.resets),
        ("passed", summary.passed),
        ("dropped", summary.dropped),
    ] {
        assert!(n > 0, "no packet was {what}: {}", summary.detail());
    }
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only here")
    };
    let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(s.octets(), d.octets(), 64);
    let mut out = Vec::new();
    if proto == IPPROTO_TCP {
        let b = ip.tcp(src.port(), dst.port(), 1000, 64240).ack(1);
        b.write(&mut out, PAYLOAD).expect("tcp frame");
    } else {
        let b = ip.udp(src.port(), dst.port());
        b.write(&mut out, PAYLOAD).expect("udp frame");
    }
    out
}

/// A client's segment to service 0 (TCP, VIP_V4:80), and its correct NAT:
/// to the Maglev choice, from SNAT_V4 and the first port candidate.
fn segment_and_nat(world: &World, client: SocketAddr) -> (Vec<u8>, Vec<u8>, SocketAddr) {
    let service = &world.services[0];
    let input = frame(
        CLIENT_MAC,
        LB_CLIENT_SIDE_MAC,
        client,
        service.vip,
        IPPROTO_TCP,
    );
    let hash = flow_hash(
        &addr16(client.ip()),
        &addr16(service.vip.ip()),
        client.port().to_be_bytes(),
        service.vip.port().to_be_bytes(),
        IPPROTO_TCP,
    );
    let server = service.table[hash as usize % service.table.len()];
    let index = (0..3)
        .find(|&i| IpAddr::from(server_v4(i)) == server.ip())
        .expect("a fixture server");
    let nat = sa(SNAT_V4, NatPorts::DEFAULT.hashed(hash));
    let output = rewritten(&input, LB_SERVER_SIDE_MAC, server_mac(index), nat, server);
    (input, output, nat)
}

/// `frame` with its source and destination replaced, every checksum
/// recomputed.
fn nat_to(frame: &[u8], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut macs = [[0u8; 6]; 2];
    macs[0].copy_from_slice(&frame[6..12]);
    macs[1].copy_from_slice(&frame[0..6]);
    rewritten(frame, macs[0], macs[1], src, dst)
}

#[test]
fn checker_accepts_a_right_nat_and_learns_its_binding() {
    let world = World::new();
    let client = sa(CLIENT_V4, 40000);
    let (input, output, nat) = segment_and_nat(&world, client);
    let verdict = check(
        &world,
        &Model::default(),
        &input,
        XdpAction::Redirect,
        &output,
    );
    let Ok(Verdict::ToServer {
        key,
        binding,
        forwarded: true,
    }) = verdict
    else {
        panic!("a right NAT was refused: {verdict:?}")
    };
    assert_eq!(key.nat, nat);
    assert_eq!(
        binding,
        Binding {
            vip: world.services[0].vip,
            client
        }
    );
    // Passed up instead (no next hop in XDP): MACs must then stay.
    let mut passed = output.clone();
    passed[..12].copy_from_slice(&input[..12]);
    assert!(check(&world, &Model::default(), &input, XdpAction::Pass, &passed).is_ok());
}

/// Breaks a NAT'd frame in place.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// Each damage to a right NAT, and the words its refusal must contain.
#[test]
fn checker_refuses_broken_nat() {
    let world = World::new();
    let (input, output, nat) = segment_and_nat(&world, sa(CLIENT_V4, 40001));
    let server = classify(&output).dst().expect("NAT'd to a server");
    let l3 = 14;
    let l4 = l3 + 20;
    let damages: [(&str, Damage, &str); 7] = [
        (
            "IPv4 checksum off by one",
            Box::new(move |f| f[l3 + 11] ^= 1),
            "IPv4 header checksum",
        ),
        (
            "TCP checksum off by one",
            Box::new(move |f| f[l4 + 17] ^= 1),
            "TCP/UDP checksum",
        ),
        (
            "TTL decremented",
            Box::new(move |f| f[l3 + 8] -= 1),
            "byte 22",
        ),
        (
            "payload changed",
            Box::new(|f| *f.last_mut().expect("payload") ^= 0xff),
            "no MAC, address",
        ),
        (
            "frame cut",
            Box::new(|f| {
                f.pop();
            }),
            "length",
        ),
        // Sent elsewhere, with checksums right for where it went.
        (
            "wrong server port",
            Box::new(move |f| *f = nat_to(&f.clone(), nat, sa(server.ip(), server.port() + 1))),
            "Maglev choice",
        ),
        (
            // Any free port of the range is a right one (the cursor's, not
            // only the hashed one); one outside it is not.
            "NAT port outside the range",
            Box::new(move |f| *f = nat_to(&f.clone(), sa(nat.ip(), 1000), server)),
            "outside",
        ),
    ];
    for (what, damage, words) in damages {
        let mut broken = output.clone();
        damage(&mut broken);
        let verdict = check(
            &world,
            &Model::default(),
            &input,
            XdpAction::Redirect,
            &broken,
        );
        match verdict {
            Err(why) => assert!(
                why.contains(words),
                "{what}: refused for {why:?}, not {words:?}"
            ),
            Ok(v) => panic!("{what}: accepted as {v:?}"),
        }
    }
    // Redirected with the MACs left as they came.
    let mut macs = output.clone();
    macs[..12].copy_from_slice(&input[..12]);
    let verdict = check(
        &world,
        &Model::default(),
        &input,
        XdpAction::Redirect,
        &macs,
    );
    assert!(verdict.is_err_and(|why| why.contains("MACs")));
    assert!(
        check(
            &world,
            &Model::default(),
            &input,
            XdpAction::Aborted,
            &input
        )
        .is_err()
    );
    // A VIP's packet left to the kernel as it came.
    let untouched = check(&world, &Model::default(), &input, XdpAction::Pass, &input);
    assert!(untouched.is_err_and(|why| why.contains("untouched")));
}

#[test]
fn checker_refuses_forwarding_or_dropping_what_is_no_vip_packet() {
    let world = World::new();
    let model = Model::default();
    let node = frame(
        CLIENT_MAC,
        LB_CLIENT_SIDE_MAC,
        sa(CLIENT_V4, 40002),
        sa(VIP_V4, 22),
        IPPROTO_TCP,
    );
    assert_eq!(
        check(&world, &model, &node, XdpAction::Pass, &node),
        Ok(Verdict::Passed)
    );
    for action in [XdpAction::Redirect, XdpAction::Tx, XdpAction::Drop] {
        assert!(
            check(&world, &model, &node, action, &node).is_err(),
            "{action:?}"
        );
    }
    // A deny-listed source's packet to a VIP must be dropped.
    let denied = sa(DENIED_V4.0, 40003);
    let to_vip = frame(
        CLIENT_MAC,
        LB_CLIENT_SIDE_MAC,
        denied,
        world.services[0].vip,
        IPPROTO_TCP,
    );
    assert!(check(&world, &model, &to_vip, XdpAction::Pass, &to_vip).is_err());
    assert_eq!(
        check(&world, &model, &to_vip, XdpAction::Drop, &to_vip),
        Ok(Verdict::Dropped)
    );
}

#[test]
fn checker_forwards_replies_only_to_their_binding() {
    let world = World::new();
    let service = &world.services[1];
    assert_eq!(service.proto, IPPROTO_UDP);
    let server = service.servers[0].1;
    let nat = sa(SNAT_V4, 25_000);
    let client = sa(CLIENT_V4, 40004);
    let reply = frame(server_mac(0), LB_SERVER_SIDE_MAC, server, nat, IPPROTO_UDP);
    let translated = rewritten(&reply, LB_CLIENT_SIDE_MAC, CLIENT_MAC, service.vip, client);

    let mut model = Model::default();
    let unknown = check(&world, &model, &reply, XdpAction::Redirect, &translated);
    assert!(
        unknown.is_err(),
        "a reply nobody bound was forwarded: {unknown:?}"
    );

    let key = ReplyKey {
        server,
        nat,
        proto: IPPROTO_UDP,
    };
    model.bind(
        key,
        Binding {
            vip: service.vip,
            client,
        },
    );
    assert_eq!(
        check(&world, &model, &reply, XdpAction::Redirect, &translated),
        Ok(Verdict::ToClient { forwarded: true })
    );
    let elsewhere = rewritten(
        &reply,
        LB_CLIENT_SIDE_MAC,
        CLIENT_MAC,
        service.vip,
        sa(CLIENT_V4, 40005),
    );
    assert!(check(&world, &model, &reply, XdpAction::Redirect, &elsewhere).is_err());

    // A UDP checksum of 0 (none) must stay 0.
    let mut no_sum = reply.clone();
    no_sum[14 + 20 + 6..14 + 20 + 8].fill(0);
    let mut translated_no_sum = translated.clone();
    translated_no_sum[14 + 20 + 6..14 + 20 + 8].fill(0);
    assert!(
        check(
            &world,
            &model,
            &no_sum,
            XdpAction::Redirect,
            &translated_no_sum
        )
        .is_ok()
    );
    let verdict = check(&world, &model, &no_sum, XdpAction::Redirect, &translated);
    assert!(verdict.is_err_and(|why| why.contains("0 (none)")));
}
