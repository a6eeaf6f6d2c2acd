//! Structure-aware packets: valid Ethernet / VLAN / IPv4 / IPv6 / TCP / UDP
//! headers built with etherparse (checksums from scratch), with random
//! fields, options, tags, fragments and payloads, aimed at VIPs, at known
//! and almost-known NAT replies, at the node and at random addresses;
//! then, for some, a mutation: a bad length, a bad checksum, a cut.
//! Everything comes from one seeded PRNG, so a seed replays a run.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use elb_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{NAT_PORT_MAX, NAT_PORT_MIN},
};
use etherparse::{
    IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header,
    TcpHeader, UdpHeader,
};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

use super::{
    model::Model,
    world::{DENIED_V4, DENIED_V6, L7_PORTS, NODE_V4, NODE_V6, World},
};
use crate::l4_fixture::{
    CLIENT_MAC, CLIENT_V4, CLIENT_V6, LB_CLIENT_SIDE_MAC, LB_SERVER_SIDE_MAC, SNAT_V4, SNAT_V6,
    server_mac,
};

/// Client source ports: a small pool, so flows recur (established,
/// closing, reopened, drained), and now and then any port.
const CLIENT_PORT_BASE: u16 = 40_000;
const CLIENT_PORT_POOL: u16 = 32;
/// The largest payload: frames stay within one page for
/// `BPF_PROG_TEST_RUN`.
const MAX_PAYLOAD: usize = 1400;

/// One packet and what it was aimed at (for reports).
pub struct Generated {
    pub frame: Vec<u8>,
    pub kind: &'static str,
}

/// The packet before it is written out.
struct Spec {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
}

/// Where the headers of a written frame are, for the mutations.
struct Layout {
    l3: usize,
    v6: bool,
    /// Start of the TCP/UDP header (after IPv4 options or IPv6 extension
    /// headers).
    l4: usize,
    proto: u8,
}

pub struct Generator {
    rng: XorShiftRng,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: XorShiftRng::seed_from_u64(seed),
        }
    }

    pub fn draw(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub fn next(&mut self, world: &World, model: &Model) -> Generated {
        let roll = self.draw(100);
        let (spec, kind) = match roll {
            0..38 => (self.at_vip(world), "vip"),
            38..44 => (self.near_vip(world), "vip-wrong-port-or-proto"),
            44..66 if !model.is_empty() => (self.known_reply(model), "known-reply"),
            66..74 if !model.is_empty() => (self.near_reply(world, model), "near-reply"),
            74..82 => (self.at_node(), "node"),
            82..90 => (self.denied(world), "denied-source"),
            44..74 => (self.at_vip(world), "vip"),
            _ => (self.random(), "random"),
        };
        let (mut frame, layout) = self.write(&spec);
        let kind = if self.chance(0.25) {
            self.mutate(&mut frame, &layout)
        } else {
            kind
        };
        Generated { frame, kind }
    }

    fn at_vip(&mut self, world: &World) -> Spec {
        let service = &world.services[self.draw(world.services.len() as u64) as usize];
        let client = self.client(service.vip.is_ipv6());
        let flags = self.client_flags();
        self.client_packet(client, service.vip, service.proto, flags)
    }

    fn near_vip(&mut self, world: &World) -> Spec {
        let service = &world.services[self.draw(world.services.len() as u64) as usize];
        let client = self.client(service.vip.is_ipv6());
        let mut vip = service.vip;
        let mut proto = service.proto;
        if self.chance(0.5) {
            vip.set_port(vip.port().wrapping_add(1 + self.draw(3) as u16));
        } else {
            proto = if proto == IPPROTO_TCP {
                IPPROTO_UDP
            } else {
                IPPROTO_TCP
            };
        }
        let flags = self.client_flags();
        self.client_packet(client, vip, proto, flags)
    }

    fn client_packet(&mut self, src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Spec {
        Spec {
            src_mac: CLIENT_MAC,
            dst_mac: LB_CLIENT_SIDE_MAC,
            src: src.ip(),
            dst: dst.ip(),
            proto,
            src_port: src.port(),
            dst_port: dst.port(),
            tcp_flags: flags,
        }
    }

    fn server_packet(&mut self, server: SocketAddr, nat: SocketAddr, proto: u8) -> Spec {
        let flags = self.server_flags();
        Spec {
            src_mac: server_mac(self.draw(3) as u8),
            dst_mac: LB_SERVER_SIDE_MAC,
            src: server.ip(),
            dst: nat.ip(),
            proto,
            src_port: server.port(),
            dst_port: nat.port(),
            tcp_flags: flags,
        }
    }

    fn known_reply(&mut self, model: &Model) -> Spec {
        let index = self.draw(model.len() as u64) as usize;
        let (key, _) = model.nth(index).expect("the model is not empty");
        self.server_packet(key.server, key.nat, key.proto)
    }

    /// A reply that differs from a known one in one field.
    fn near_reply(&mut self, world: &World, model: &Model) -> Spec {
        let index = self.draw(model.len() as u64) as usize;
        let (mut key, _) = model.nth(index).expect("the model is not empty");
        match self.draw(5) {
            0 => key
                .nat
                .set_port(self.rng.random_range(NAT_PORT_MIN..=NAT_PORT_MAX)),
            1 => key.server.set_port(key.server.port().wrapping_add(1)),
            2 => {
                let other = &world.services[self.draw(world.services.len() as u64) as usize];
                let server = other.servers[self.draw(other.servers.len() as u64) as usize].1;
                if server.is_ipv6() == key.server.is_ipv6() {
                    key.server = server;
                } else {
                    key.server.set_ip(self.client(key.server.is_ipv6()).ip());
                }
            }
            3 => {
                key.proto = if key.proto == IPPROTO_TCP {
                    IPPROTO_UDP
                } else {
                    IPPROTO_TCP
                }
            }
            _ => key.nat.set_ip(match key.nat.ip() {
                IpAddr::V4(_) => SNAT_V4.into(),
                IpAddr::V6(_) => SNAT_V6.into(),
            }),
        }
        self.server_packet(key.server, key.nat, key.proto)
    }

    /// The node's own addresses: its services, the SNAT address outside
    /// the NAT range and inside it on ports nobody was given.
    fn at_node(&mut self) -> Spec {
        let v6 = self.chance(0.4);
        let dst: IpAddr = match (v6, self.chance(0.5)) {
            (false, true) => NODE_V4.into(),
            (false, false) => SNAT_V4.into(),
            (true, true) => NODE_V6.into(),
            (true, false) => SNAT_V6.into(),
        };
        let port = match self.draw(4) {
            0 => 22,
            1 => L7_PORTS[self.draw(L7_PORTS.len() as u64) as usize],
            2 => self.rng.random_range(NAT_PORT_MIN..=NAT_PORT_MAX),
            _ => self.rng.random(),
        };
        let client = self.client(v6);
        let proto = if self.chance(0.7) {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        let flags = self.client_flags();
        self.client_packet(client, SocketAddr::new(dst, port), proto, flags)
    }

    /// From deny-listed sources: to VIPs, L7 ports and other ports.
    fn denied(&mut self, world: &World) -> Spec {
        let v6 = self.chance(0.4);
        let src: IpAddr = if v6 {
            let base = u128::from(DENIED_V6.0);
            Ipv6Addr::from(
                base | u128::from(self.draw(4) as u16 + 1) | (self.draw(2) as u128) << 80,
            )
            .into()
        } else {
            let base = u32::from(DENIED_V4.0);
            Ipv4Addr::from(base | (self.draw(2) as u32) << 8 | (self.draw(4) as u32 + 1)).into()
        };
        let src = SocketAddr::new(src, self.client_port());
        let node: IpAddr = if v6 { NODE_V6.into() } else { NODE_V4.into() };
        let (dst, proto) = match self.draw(3) {
            0 => {
                let candidates: Vec<_> = world
                    .services
                    .iter()
                    .filter(|s| s.vip.is_ipv6() == v6)
                    .collect();
                let service = candidates[self.draw(candidates.len() as u64) as usize];
                (service.vip, service.proto)
            }
            1 => (
                SocketAddr::new(node, L7_PORTS[self.draw(L7_PORTS.len() as u64) as usize]),
                if self.chance(0.8) {
                    IPPROTO_TCP
                } else {
                    IPPROTO_UDP
                },
            ),
            _ => (SocketAddr::new(node, self.rng.random()), IPPROTO_TCP),
        };
        let flags = self.client_flags();
        self.client_packet(src, dst, proto, flags)
    }

    fn random(&mut self) -> Spec {
        let v6 = self.chance(0.4);
        let addr = |g: &mut Self| -> IpAddr {
            if g.chance(0.5) {
                g.client(v6).ip()
            } else if v6 {
                Ipv6Addr::from(g.rng.random::<u128>()).into()
            } else {
                Ipv4Addr::from(g.rng.random::<u32>()).into()
            }
        };
        let protos = [IPPROTO_TCP, IPPROTO_UDP, 1, 58, 47, 132];
        let proto = if self.chance(0.9) {
            protos[self.draw(protos.len() as u64) as usize]
        } else {
            self.rng.random()
        };
        Spec {
            src_mac: self.rng.random(),
            dst_mac: self.rng.random(),
            src: addr(self),
            dst: addr(self),
            proto,
            src_port: self.rng.random(),
            dst_port: self.rng.random(),
            tcp_flags: self.rng.random(),
        }
    }

    /// Mostly the fixture's client (whose neighbour is known), some on-link
    /// clients without a neighbour entry, some unroutable ones.
    fn client(&mut self, v6: bool) -> SocketAddr {
        let n = self.draw(4) as u16 + 3;
        let ip: IpAddr = match (v6, self.draw(10)) {
            (false, 0..5) => CLIENT_V4.into(),
            (false, 5..7) => Ipv4Addr::new(10, 77, 0, n as u8).into(),
            (false, 7..9) => Ipv4Addr::new(192, 0, 2, n as u8).into(),
            (false, _) => Ipv4Addr::from(self.rng.random::<u32>()).into(),
            (true, 0..5) => CLIENT_V6.into(),
            (true, 5..7) => Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, n).into(),
            (true, 7..9) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n).into(),
            (true, _) => Ipv6Addr::from(self.rng.random::<u128>()).into(),
        };
        SocketAddr::new(ip, self.client_port())
    }

    fn client_port(&mut self) -> u16 {
        if self.chance(0.95) {
            CLIENT_PORT_BASE + self.draw(u64::from(CLIENT_PORT_POOL)) as u16
        } else {
            self.rng.random()
        }
    }

    /// SYN, ACK, PSH+ACK, FIN+ACK, RST, RST+ACK, SYN+ACK, or any byte.
    fn client_flags(&mut self) -> u8 {
        match self.draw(100) {
            0..25 => 0x02,
            25..55 => 0x10,
            55..70 => 0x18,
            70..80 => 0x11,
            80..85 => 0x04,
            85..88 => 0x14,
            88..90 => 0x12,
            _ => self.rng.random(),
        }
    }

    fn server_flags(&mut self) -> u8 {
        match self.draw(10) {
            0..3 => 0x12,
            3..6 => 0x10,
            6..7 => 0x11,
            7..8 => 0x04,
            _ => self.rng.random(),
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = match self.draw(100) {
            0..40 => 0,
            40..80 => self.rng.random_range(1..=64),
            80..95 => self.rng.random_range(65..=600),
            _ => self.rng.random_range(601..=MAX_PAYLOAD),
        };
        let mut payload = vec![0u8; len];
        self.rng.fill(&mut payload[..]);
        payload
    }

    /// Up to 40 bytes of IPv4 options: NOP runs, record route, timestamps,
    /// or garbage.
    fn ip_options(&mut self) -> Vec<u8> {
        let words = self.rng.random_range(1..=10usize);
        let mut options = match self.draw(4) {
            0 => vec![1; words * 4],
            1 => {
                // Record route with room for the words that remain.
                let len = words * 4 - 1;
                let mut o = vec![7, len as u8, 4];
                o.resize(len, 0);
                o
            }
            2 => {
                // Timestamp, then end of options.
                let len = (words * 4 - 1).min(36);
                let mut o = vec![68, len as u8, 5, 0];
                o.resize(len, 0);
                o
            }
            _ => {
                let mut o = vec![0u8; words * 4];
                self.rng.fill(&mut o[..]);
                o
            }
        };
        options.resize(words * 4, 0);
        options
    }

    /// Up to 40 bytes of TCP options: MSS, window scale, SACK permitted,
    /// timestamps, NOPs, garbage.
    fn tcp_options(&mut self) -> Vec<u8> {
        let mut options = Vec::new();
        for _ in 0..self.rng.random_range(1..=6) {
            match self.draw(6) {
                0 => options.extend_from_slice(&[2, 4, 0x05, 0xb4]),
                1 => options.extend_from_slice(&[1, 3, 3, self.rng.random_range(0..15)]),
                2 => options.extend_from_slice(&[1, 1, 4, 2]),
                3 => {
                    options.extend_from_slice(&[1, 1, 8, 10]);
                    options.extend_from_slice(&self.rng.random::<[u8; 8]>());
                }
                4 => options.extend_from_slice(&[1, 1, 1, 1]),
                _ => options.extend_from_slice(&self.rng.random::<[u8; 4]>()),
            }
        }
        options.truncate(40);
        options
    }

    /// Writes the frame: tags, IP (options, fragments, extension headers),
    /// TCP/UDP (options) or raw payload for other protocols.
    fn write(&mut self, spec: &Spec) -> (Vec<u8>, Layout) {
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&spec.dst_mac);
        frame.extend_from_slice(&spec.src_mac);
        let tags = match self.draw(100) {
            0..80 => 0,
            80..89 => 1,
            89..97 => 2,
            _ => 3,
        };
        for i in 0..tags {
            let tpid: u16 = if i == 0 && tags > 1 && self.chance(0.7) {
                0x88A8
            } else {
                0x8100
            };
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&self.rng.random::<u16>().to_be_bytes());
        }
        let v6 = spec.dst.is_ipv6();
        frame.extend_from_slice(&(if v6 { 0x86DDu16 } else { 0x0800 }).to_be_bytes());
        let l3 = frame.len();

        let payload = self.payload();
        let transport = self.transport(spec, &payload);
        let ttl = if self.chance(0.7) {
            64
        } else {
            self.rng.random()
        };
        let l4 = match (spec.src, spec.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip =
                    Ipv4Header::new(0, ttl, IpNumber(spec.proto), src.octets(), dst.octets())
                        .expect("an empty payload fits");
                if self.chance(0.1) {
                    ip.options =
                        Ipv4Options::try_from(&self.ip_options()[..]).expect("≤ 40 bytes, words");
                }
                ip.set_payload_len(transport.len())
                    .expect("a small payload");
                ip.identification = self.rng.random();
                ip.dont_fragment = self.chance(0.5);
                if self.chance(0.2) {
                    ip.dscp = IpDscp::try_new(self.rng.random_range(0..64)).expect("6 bits");
                    ip.ecn = IpEcn::try_new(self.rng.random_range(0..4)).expect("2 bits");
                }
                if self.chance(0.05) {
                    ip.more_fragments = self.chance(0.6);
                    ip.fragment_offset =
                        IpFragOffset::try_new(self.rng.random_range(0..200)).expect("13 bits");
                }
                ip.header_checksum = ip.calc_header_checksum();
                ip.write(&mut frame).expect("write to a Vec");
                frame.len()
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let extension = match self.draw(100) {
                    0..3 => Some(44),
                    3..6 => Some([0, 60, 43][self.draw(3) as usize]),
                    _ => None,
                };
                let mut ext = Vec::new();
                if let Some(kind) = extension {
                    ext.push(spec.proto);
                    ext.push(0);
                    if kind == 44 {
                        let offset: u16 = self.rng.random_range(0..200);
                        let more = u16::from(self.chance(0.6));
                        ext.extend_from_slice(&((offset << 3) | more).to_be_bytes());
                        ext.extend_from_slice(&self.rng.random::<[u8; 4]>());
                    } else {
                        // One PadN option filling the 8 bytes (or an empty
                        // routing header, type 0, no segments left).
                        ext.extend_from_slice(&[1, 4, 0, 0, 0, 0]);
                    }
                }
                let ip = Ipv6Header {
                    traffic_class: if self.chance(0.2) {
                        self.rng.random()
                    } else {
                        0
                    },
                    flow_label: Ipv6FlowLabel::try_new(self.rng.random_range(0..1 << 20))
                        .expect("20 bits"),
                    payload_length: (ext.len() + transport.len()) as u16,
                    next_header: IpNumber(extension.unwrap_or(spec.proto)),
                    hop_limit: ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                ip.write(&mut frame).expect("write to a Vec");
                frame.extend_from_slice(&ext);
                frame.len()
            }
            _ => unreachable!("a spec has one family"),
        };
        frame.extend_from_slice(&transport);
        let layout = Layout {
            l3,
            v6,
            l4,
            proto: spec.proto,
        };
        (frame, layout)
    }

    /// The TCP or UDP segment with its checksum, or the payload alone for
    /// other protocols.
    fn transport(&mut self, spec: &Spec, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match spec.proto {
            IPPROTO_TCP => {
                let mut tcp = TcpHeader::new(
                    spec.src_port,
                    spec.dst_port,
                    self.rng.random(),
                    self.rng.random(),
                );
                let f = spec.tcp_flags;
                tcp.fin = f & 0x01 != 0;
                tcp.syn = f & 0x02 != 0;
                tcp.rst = f & 0x04 != 0;
                tcp.psh = f & 0x08 != 0;
                tcp.ack = f & 0x10 != 0;
                tcp.urg = f & 0x20 != 0;
                tcp.ece = f & 0x40 != 0;
                tcp.cwr = f & 0x80 != 0;
                tcp.acknowledgment_number = if tcp.ack { self.rng.random() } else { 0 };
                if self.chance(0.3) {
                    let mut options = self.tcp_options();
                    options.resize(options.len().div_ceil(4) * 4, 0);
                    tcp.set_options_raw(&options).expect("≤ 40 bytes, words");
                }
                tcp.checksum = match (spec.src, spec.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        tcp.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        tcp.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                    }
                    _ => unreachable!("a spec has one family"),
                }
                .expect("a small payload");
                tcp.write(&mut out).expect("write to a Vec");
            }
            IPPROTO_UDP => {
                let mut udp = UdpHeader {
                    source_port: spec.src_port,
                    destination_port: spec.dst_port,
                    length: (8 + payload.len()) as u16,
                    checksum: 0,
                };
                if self.chance(0.9) {
                    udp.checksum = match (spec.src, spec.dst) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => {
                            udp.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                        }
                        (IpAddr::V6(s), IpAddr::V6(d)) => {
                            udp.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                        }
                        _ => unreachable!("a spec has one family"),
                    }
                    .expect("a small payload");
                }
                udp.write(&mut out).expect("write to a Vec");
            }
            _ => {
                // Other protocols: at least 8 bytes where ports would be.
                out.extend_from_slice(&self.rng.random::<[u8; 8]>());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// One damage to a written frame; returns its name.
    fn mutate(&mut self, frame: &mut Vec<u8>, at: &Layout) -> &'static str {
        let len = frame.len();
        let refix_ipv4_checksum = self.chance(0.7);
        let kind = match self.draw(12) {
            0 if !at.v6 => {
                let total = match self.draw(3) {
                    0 => self.rng.random_range(0..40),
                    1 => (len - at.l3) as u16 + self.rng.random_range(1..64),
                    _ => self.rng.random(),
                };
                frame[at.l3 + 2..at.l3 + 4].copy_from_slice(&total.to_be_bytes());
                "bad-ipv4-total-length"
            }
            0 => {
                let payload: u16 = self.rng.random();
                frame[at.l3 + 4..at.l3 + 6].copy_from_slice(&payload.to_be_bytes());
                "bad-ipv6-payload-length"
            }
            1 if at.proto == IPPROTO_UDP && at.l4 + 8 <= len => {
                let udp_len: u16 = self.rng.random_range(0..2000);
                frame[at.l4 + 4..at.l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
                "bad-udp-length"
            }
            2 if !at.v6 => {
                let ihl: u8 = self.rng.random_range(0..16);
                frame[at.l3] = 0x40 | ihl;
                "bad-ipv4-ihl"
            }
            3 if at.proto == IPPROTO_TCP && at.l4 + 20 <= len => {
                let offset: u8 = self.rng.random_range(0..16);
                frame[at.l4 + 12] = (offset << 4) | (frame[at.l4 + 12] & 0x0F);
                "bad-tcp-data-offset"
            }
            4 if !at.v6 => {
                frame[at.l3 + 10] ^= self.rng.random_range(1..=255);
                return "bad-ipv4-checksum";
            }
            5 if at.proto == IPPROTO_TCP && at.l4 + 20 <= len => {
                frame[at.l4 + 16] ^= self.rng.random_range(1..=255);
                "bad-tcp-checksum"
            }
            5 if at.proto == IPPROTO_UDP && at.l4 + 8 <= len => {
                frame[at.l4 + 6] ^= self.rng.random_range(1..=255);
                "bad-udp-checksum"
            }
            6 => {
                frame[at.l3] = (self.rng.random_range(0..16u8) << 4) | (frame[at.l3] & 0x0F);
                "bad-ip-version"
            }
            7 | 8 => {
                // Cut anywhere, but mostly within the headers.
                let end = if self.chance(0.7) {
                    (at.l4 + 24).min(len)
                } else {
                    len
                };
                frame.truncate(self.rng.random_range(14..end.max(15)));
                return "truncated";
            }
            9 => {
                let pad = self.rng.random_range(1..=46);
                let zeros = self.chance(0.7);
                for _ in 0..pad {
                    let byte = if zeros { 0 } else { self.rng.random() };
                    frame.push(byte);
                }
                return "trailing-padding";
            }
            10 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    let i = self.rng.random_range(12..len);
                    frame[i] ^= 1 << self.draw(8);
                }
                return "bit-flips";
            }
            _ => {
                frame[12..14].copy_from_slice(&self.rng.random::<[u8; 2]>());
                return "random-ethertype";
            }
        };
        if !at.v6 && refix_ipv4_checksum {
            fix_ipv4_checksum(frame, at.l3);
        }
        kind
    }
}

/// Recomputes the IPv4 header checksum over the header as its IHL says
/// (as far as the frame goes), so a bad length is the only fault.
fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0F) * 4;
    let end = (l3 + ihl.max(20)).min(frame.len());
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let sum = super::check::ones_complement_sum(&[&frame[l3..end]]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&(!sum).to_be_bytes());
}
