//! BPF_PROG_TEST_RUN fixtures for the XDP parser: packet in, exact packet
//! and return code out, and exactly the right counter moved.
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use elb_common::counters::{PacketCounter, ProtoCounter};
use elb_tests::{
    packet::{self, headers_len},
    require_root_and_bpf,
    xdp_fixture::{XdpAction, XdpFixture},
};

/// One loaded program for the whole file: the verifier takes seconds per
/// load, and these tests touch only the protocol counters, which each
/// test reads as what moved while it held the lock.
fn shared_fixture() -> MutexGuard<'static, XdpFixture> {
    static FIXTURE: OnceLock<Mutex<XdpFixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| Mutex::new(XdpFixture::load().expect("load XDP fixture")))
        .lock()
        // A test that failed holding the lock leaves nothing the others
        // rely on: each reads only what moved while it held it.
        .unwrap_or_else(PoisonError::into_inner)
}

/// What each protocol counter moved by since `before`.
fn moved(
    fixture: &XdpFixture,
    before: &[(ProtoCounter, PacketCounter)],
) -> Vec<(ProtoCounter, PacketCounter)> {
    let after = fixture.proto_stats().expect("read counters");
    assert_eq!(after.len(), before.len(), "counter slots");
    after
        .into_iter()
        .zip(before)
        .map(|((slot, now), (was_slot, was))| {
            assert_eq!(slot, *was_slot, "counter slots in the same order");
            let delta = PacketCounter {
                packets: now.packets - was.packets,
                bytes: now.bytes - was.bytes,
            };
            (slot, delta)
        })
        .collect()
}

/// Runs `frame` through the program and checks that it passes untouched
/// and lands in `expected` only.
fn assert_classified(frame: &[u8], expected: ProtoCounter) {
    let mut fixture = shared_fixture();
    let before = fixture.proto_stats().expect("read counters");
    let run = fixture.run(frame).expect("test run");
    assert_eq!(run.action, XdpAction::Pass, "{expected:?}");
    assert_eq!(
        run.output, frame,
        "{expected:?}: the frame must pass unmodified"
    );
    for (slot, counter) in moved(&fixture, &before) {
        let want = if slot == expected {
            PacketCounter {
                packets: 1,
                bytes: frame.len() as u64,
            }
        } else {
            PacketCounter::default()
        };
        assert_eq!(
            counter,
            want,
            "slot {} for a {expected:?} frame",
            slot.name()
        );
    }
}

#[test]
fn ipv4_tcp_is_counted_and_passed() {
    require_root_and_bpf!();
    assert_classified(&packet::tcp_v4(40000, 80), ProtoCounter::Ipv4Tcp);
}

#[test]
fn ipv4_udp_is_counted_and_passed() {
    require_root_and_bpf!();
    assert_classified(&packet::udp_v4(40000, 53), ProtoCounter::Ipv4Udp);
}

#[test]
fn ipv6_tcp_is_counted_and_passed() {
    require_root_and_bpf!();
    assert_classified(&packet::tcp_v6(40000, 80), ProtoCounter::Ipv6Tcp);
}

#[test]
fn ipv6_udp_is_counted_and_passed() {
    require_root_and_bpf!();
    assert_classified(&packet::udp_v6(40000, 53), ProtoCounter::Ipv6Udp);
}

#[test]
fn icmp_is_other_for_both_families() {
    require_root_and_bpf!();
    assert_classified(&packet::icmp_v4_echo(), ProtoCounter::Ipv4Other);
    assert_classified(&packet::icmp_v6_echo(), ProtoCounter::Ipv6Other);
}

#[test]
fn arp_is_non_ip() {
    require_root_and_bpf!();
    assert_classified(&packet::arp(), ProtoCounter::NonIp);
}

#[test]
fn vlan_tags_are_skipped() {
    require_root_and_bpf!();
    assert_classified(&packet::tcp_v4_vlan(false), ProtoCounter::Ipv4Tcp);
    assert_classified(&packet::tcp_v4_vlan(true), ProtoCounter::Ipv4Tcp);
}

#[test]
fn ipv4_options_move_the_l4_header() {
    require_root_and_bpf!();
    for words in [1, 5, 10] {
        assert_classified(
            &packet::tcp_v4_with_ip_options(words),
            ProtoCounter::Ipv4Tcp,
        );
    }
}

#[test]
fn fragments_are_not_classified_by_l4() {
    require_root_and_bpf!();
    assert_classified(&packet::udp_v4_fragment(0, true), ProtoCounter::IpFragment);
    assert_classified(
        &packet::udp_v4_fragment(100, false),
        ProtoCounter::IpFragment,
    );
    assert_classified(&packet::udp_v6_fragment(), ProtoCounter::IpFragment);
}

/// The kernel refuses test frames shorter than an Ethernet header, so
/// truncation starts at 14 bytes: every cut inside a header must count as
/// malformed and pass untouched, and no cut may read out of bounds (the
/// verifier would have rejected the program, and a wrong classification
/// would show here).
#[test]
fn truncated_headers_at_every_layer_are_malformed() {
    require_root_and_bpf!();
    let frames = [
        ("ipv4 tcp", packet::tcp_v4(40000, 80), ProtoCounter::Ipv4Tcp),
        ("ipv4 udp", packet::udp_v4(40000, 53), ProtoCounter::Ipv4Udp),
        ("ipv6 tcp", packet::tcp_v6(40000, 80), ProtoCounter::Ipv6Tcp),
        ("ipv6 udp", packet::udp_v6(40000, 53), ProtoCounter::Ipv6Udp),
        ("qinq tcp", packet::tcp_v4_vlan(true), ProtoCounter::Ipv4Tcp),
        (
            "ipv4 options tcp",
            packet::tcp_v4_with_ip_options(4),
            ProtoCounter::Ipv4Tcp,
        ),
    ];
    let mut fixture = shared_fixture();
    let before = fixture.proto_stats().expect("read counters");
    let mut expected_malformed = 0;
    let mut expected_complete = std::collections::HashMap::new();
    for (name, frame, complete) in &frames {
        for len in 14..=frame.len() {
            let cut = &frame[..len];
            let run = fixture.run(cut).expect("test run");
            assert_eq!(run.action, XdpAction::Pass, "{name} cut at {len}");
            assert_eq!(run.output, cut, "{name} cut at {len} must pass unmodified");
            if len < headers_len(frame) {
                expected_malformed += 1;
            } else {
                *expected_complete.entry(*complete).or_insert(0u64) += 1;
            }
        }
    }
    for (slot, counter) in moved(&fixture, &before) {
        let want = match slot {
            ProtoCounter::Malformed => expected_malformed,
            other => expected_complete.get(&other).copied().unwrap_or(0),
        };
        assert_eq!(counter.packets, want, "slot {}", slot.name());
    }
}

#[test]
fn invalid_header_fields_are_malformed() {
    require_root_and_bpf!();
    let mut bad_ihl = packet::tcp_v4(40000, 80);
    bad_ihl[14] = 0x44; // IHL 4 words: shorter than the fixed header
    assert_classified(&bad_ihl, ProtoCounter::Malformed);

    let mut bad_v4_version = packet::tcp_v4(40000, 80);
    bad_v4_version[14] = 0x65; // version 6 behind EtherType IPv4
    assert_classified(&bad_v4_version, ProtoCounter::Malformed);

    let mut bad_v6_version = packet::tcp_v6(40000, 80);
    bad_v6_version[14] = 0x45; // version 4 behind EtherType IPv6
    assert_classified(&bad_v6_version, ProtoCounter::Malformed);

    let mut bad_data_offset = packet::tcp_v4(40000, 80);
    bad_data_offset[14 + 20 + 12] = 0x40; // TCP data offset 4 words
    assert_classified(&bad_data_offset, ProtoCounter::Malformed);
}

/// Random frames, including random EtherTypes and IP headers: never a crash,
/// never anything but an unmodified pass.
#[test]
fn garbage_frames_pass_unmodified() {
    require_root_and_bpf!();
    let mut fixture = shared_fixture();
    let before = fixture.proto_stats().expect("read counters");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: deterministic, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..2000 {
        let len = 14 + (next() % 200) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer half of them into the IP parsers.
        match i % 4 {
            0 => frame[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => frame[12..14].copy_from_slice(&[0x86, 0xDD]),
            _ => {}
        }
        let run = fixture.run(&frame).expect("test run");
        assert_eq!(run.action, XdpAction::Pass, "frame {i}: {frame:02x?}");
        assert_eq!(run.output, frame, "frame {i} must pass unmodified");
    }
    let total: u64 = moved(&fixture, &before)
        .iter()
        .map(|(_, c)| c.packets)
        .sum();
    assert_eq!(total, 2000, "every frame is counted exactly once");
}
