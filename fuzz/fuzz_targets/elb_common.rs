//! elb-common's pure packet logic, shared by the XDP program and userspace.
//! elb-common has no text parsers; what it computes from packet bytes is
//! checked here against independent definitions.
//!
//! Properties:
//! - an incrementally updated checksum (NAT rewriting addresses and ports,
//!   RFC 1624) verifies over the rewritten data as a receiver checks it;
//!   UDP's "no checksum" 0 stays 0 and a computed 0 is never sent;
//! - a checksum from scratch (`Sum`) verifies;
//! - the RST for a segment follows RFC 9293 §3.10.7.1;
//! - NAT port candidates stay in the NAT range; the flow hash is a function
//!   of the tuple; protocol counters have valid indices.
#![no_main]

use arbitrary::Arbitrary;
use elb_common::{
    counters::ProtoCounter,
    csum::{Delta, Sum},
    l4::{NAT_PORT_MAX, NAT_PORT_MIN, flow_hash},
    nat::NatPorts,
    tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, reset_for},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Checksummed data, as 16-bit words (so fields sit at even offsets).
    words: Vec<u16>,
    /// Where the 4-byte address and 2-byte port fields sit, in words.
    addr_at: u8,
    port_at: u8,
    new_addr: [u8; 4],
    new_port: [u8; 2],
    udp: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    data_len: u32,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
    proto: u8,
    attempt: u32,
    ipv6: bool,
}

/// RFC 1071: the one's-complement sum of the words, folded.
fn ones_sum(words: &[u16]) -> u16 {
    let mut sum: u64 = words.iter().map(|&w| u64::from(w)).sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn bytes_of(words: &[u16], at: usize, n: usize) -> Vec<u8> {
    words[at..at + n / 2]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

fn store(words: &mut [u16], at: usize, bytes: &[u8]) {
    for (i, pair) in bytes.chunks(2).enumerate() {
        words[at + i] = u16::from_be_bytes([pair[0], pair[1]]);
    }
}

fuzz_target!(|input: Input| {
    check_checksums(&input);
    check_reset(&input);
    let hash = flow_hash(
        &input.src,
        &input.dst,
        [input.ports[0], input.ports[1]],
        [input.ports[2], input.ports[3]],
        input.proto,
    );
    assert_eq!(
        hash,
        flow_hash(
            &input.src,
            &input.dst,
            [input.ports[0], input.ports[1]],
            [input.ports[2], input.ports[3]],
            input.proto
        )
    );
    let ports = NatPorts::DEFAULT;
    let port = ports.hashed(hash);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "{port}");
    assert!(ports.contains(ports.at(input.attempt)));
    assert!((ProtoCounter::for_l4(input.ipv6, input.proto).index() as usize) < ProtoCounter::COUNT);
});

fn check_checksums(input: &Input) {
    // Word 0 is the checksum field; the address (2 words) and the port (1
    // word) are elsewhere and do not overlap.
    let mut words = input.words.clone();
    words.truncate(64);
    if words.len() < 4 {
        return;
    }
    let slots = words.len() - 1;
    let addr_at = 1 + usize::from(input.addr_at) % (slots - 1);
    let port_at = 1 + usize::from(input.port_at) % slots;
    if port_at == addr_at || port_at == addr_at + 1 {
        return;
    }
    // A valid checksum over the data as sent; UDP sends a computed 0 as
    // 0xFFFF (0 means "no checksum"), which verifies the same.
    words[0] = 0;
    words[0] = !ones_sum(&words);
    if input.udp && words[0] == 0 {
        words[0] = 0xFFFF;
    }
    assert_eq!(ones_sum(&words), 0xFFFF, "from scratch");

    let old_addr: [u8; 4] = bytes_of(&words, addr_at, 4).try_into().expect("4 bytes");
    let old_port: [u8; 2] = bytes_of(&words, port_at, 2).try_into().expect("2 bytes");
    let delta = Delta::default()
        .replace(&old_addr, &input.new_addr)
        .replace(&old_port, &input.new_port);
    let check = words[0].to_be_bytes();
    store(&mut words, addr_at, &input.new_addr);
    store(&mut words, port_at, &input.new_port);
    let patched = if input.udp {
        delta.apply_udp(check)
    } else {
        delta.apply(check)
    };
    if input.udp {
        assert_ne!(patched, [0, 0], "UDP sends a computed 0 as 0xFFFF");
    }
    // All-zero data sums to +0 or -0 (RFC 1624 §3): no IP header (version
    // nibble) or pseudo-header (protocol) is all zeros, so skip it.
    if words[1..].iter().all(|&w| w == 0) {
        return;
    }
    words[0] = u16::from_be_bytes(patched);
    assert_eq!(ones_sum(&words), 0xFFFF, "the patched checksum verifies");

    // UDP's "no checksum" stays so.
    assert_eq!(delta.apply_udp([0, 0]), [0, 0]);

    // `Sum` over the same words as fields.
    let mut data = words.clone();
    data[0] = 0;
    let sum = data
        .iter()
        .fold(Sum::default(), |sum, w| sum.add_field(&w.to_be_bytes()));
    data[0] = u16::from_be_bytes(sum.checksum());
    assert_eq!(ones_sum(&data), 0xFFFF, "Sum's checksum verifies");
}

fn check_reset(input: &Input) {
    let reset = reset_for(input.flags, input.seq, input.ack, input.data_len);
    if input.flags & TCP_RST != 0 {
        assert_eq!(reset, None, "a RST is never answered");
        return;
    }
    let reset = reset.expect("every other segment is answered");
    assert_ne!(reset.flags & TCP_RST, 0);
    if input.flags & TCP_ACK != 0 {
        assert_eq!((reset.seq, reset.ack, reset.flags), (input.ack, 0, TCP_RST));
    } else {
        let len = u64::from(input.data_len)
            + u64::from(input.flags & TCP_SYN != 0)
            + u64::from(input.flags & TCP_FIN != 0);
        let expected = (u64::from(input.seq) + len) as u32;
        assert_eq!(
            (reset.seq, reset.ack, reset.flags),
            (0, expected, TCP_RST | TCP_ACK)
        );
    }
}
