//! A network namespace where `BPF_PROG_TEST_RUN` can exercise the L4 path
//! deterministically: forwarding on, one interface towards clients and one
//! towards servers, fixed MACs and permanent neighbour entries, so the FIB
//! lookup gives a known next hop. Plus the expected-packet builder, which
//! recomputes every checksum from scratch with etherparse (independent of
//! the incremental updates under test).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{
        FlowKey, IFACE_HAS_V4, IFACE_HAS_V6, IfaceAddrs, SERVICE_HAS_SNAT, ServerEntry,
        ServiceEntry, VipKey,
    },
};
use elb_userspace::l4::{maps::L4Maps, plan};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

use crate::{
    netns::{NetNs, run, unique_name},
    xdp_fixture::XdpFixture,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_CLIENT_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const LB_SERVER_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
/// The LB's address on the server side: the SNAT source.
pub const SNAT_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const SNAT_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);

pub fn server_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 10 + i)
}

pub fn server_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 0x10 + u16::from(i))
}

pub fn server_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fixture network; deleted (with its links) on drop.
pub struct L4Net {
    pub lb: NetNs,
    _peers: NetNs,
    pub client_ifindex: u32,
    pub server_ifindex: u32,
}

impl L4Net {
    pub fn new() -> Result<Self> {
        let lb = NetNs::new("elbfx")?;
        let peers = NetNs::new("elbfp")?;
        let client_if = unique_name("fxc");
        let server_if = unique_name("fxs");
        for (dev, mac, addrs) in [
            (
                &client_if,
                LB_CLIENT_SIDE_MAC,
                ["10.77.0.1/24", "fd77::1/64"],
            ),
            (
                &server_if,
                LB_SERVER_SIDE_MAC,
                ["10.88.0.1/24", "fd88::1/64"],
            ),
        ] {
            let peer = unique_name("fxp");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    dev,
                    "netns",
                    lb.name(),
                    "address",
                    &mac_text(mac),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                    "netns",
                    peers.name(),
                ],
            )?;
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                lb.ip(&args)?;
            }
            lb.ip(&["link", "set", dev, "up"])?;
            peers.ip(&["link", "set", &peer, "up"])?;
        }
        let mut neighbours = vec![
            (IpAddr::V4(CLIENT_V4), CLIENT_MAC, &client_if),
            (IpAddr::V6(CLIENT_V6), CLIENT_MAC, &client_if),
        ];
        for i in 0..3 {
            neighbours.push((IpAddr::V4(server_v4(i)), server_mac(i), &server_if));
            neighbours.push((IpAddr::V6(server_v6(i)), server_mac(i), &server_if));
        }
        for (ip, mac, dev) in neighbours {
            lb.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac_text(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        lb.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        let ifindex = |dev: &str| -> Result<u32> {
            // `N: name: ...`; /sys would show the test's own namespace.
            let out = lb.ip(&["-o", "link", "show", "dev", dev])?;
            String::from_utf8_lossy(&out.stdout)
                .split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("ifindex of {dev}"))
        };
        Ok(Self {
            client_ifindex: ifindex(&client_if)?,
            server_ifindex: ifindex(&server_if)?,
            lb,
            _peers: peers,
        })
    }
}

/// Runs `test` in a fresh fixture network, on a loaded program whose maps
/// are as loaded (connection tables of `tables` entries), serving one
/// service (id 0) at `vip` over `servers` (id, server index for
/// [`server_v4`] / [`server_v6`], port), weight 1 each.
pub fn with_service_tables(
    proto: u8,
    vip: SocketAddr,
    servers: &'static [(u32, u8, u16)],
    tables: elb_userspace::dataplane::TableSizes,
    test: impl FnOnce(&mut XdpFixture, &mut L4Maps) + Send + 'static,
) {
    let net = L4Net::new().expect("fixture network");
    let result = net.lb.enter({
        let server_ifindex = net.server_ifindex;
        let client_ifindex = net.client_ifindex;
        move || {
            let mut fixture = XdpFixture::load_with(tables).expect("load XDP fixture");
            let mut maps = fixture.l4_maps().expect("L4 maps");
            write_iface_addrs(&mut maps, client_ifindex, server_ifindex).expect("iface addrs");
            let servers: Vec<_> = servers
                .iter()
                .map(|&(id, i, port)| {
                    let ip: IpAddr = if vip.is_ipv4() {
                        server_v4(i).into()
                    } else {
                        server_v6(i).into()
                    };
                    (id, SocketAddr::new(ip, port), 1)
                })
                .collect();
            install_service(&mut maps, 0, vip, proto, &servers, None).expect("service");
            test(&mut fixture, &mut maps);
        }
    });
    drop(net);
    result.expect("fixture thread");
}

/// The per-interface SNAT addresses the daemon would write.
pub fn write_iface_addrs(
    maps: &mut L4Maps,
    client_ifindex: u32,
    server_ifindex: u32,
) -> Result<()> {
    maps.set_iface_addrs(
        server_ifindex,
        &IfaceAddrs {
            v6: SNAT_V6.octets(),
            v4: SNAT_V4.octets(),
            flags: IFACE_HAS_V4 | IFACE_HAS_V6,
        },
    )?;
    maps.set_iface_addrs(
        client_ifindex,
        &IfaceAddrs {
            v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1).octets(),
            v4: [10, 77, 0, 1],
            flags: IFACE_HAS_V4 | IFACE_HAS_V6,
        },
    )?;
    Ok(())
}

/// Installs a service whose servers are `server ids` (written at those ids)
/// with a table built by the same planner the daemon uses.
pub fn install_service(
    maps: &mut L4Maps,
    service_id: u32,
    vip: SocketAddr,
    proto: u8,
    servers: &[(u32, SocketAddr, u32)],
    snat: Option<IpAddr>,
) -> Result<plan::ServicePlan> {
    let upstream: Vec<elb_userspace::upstream::Server> = servers
        .iter()
        .map(|(_, addr, weight)| {
            elb_userspace::upstream::Server::new(
                addr.to_string(),
                elb_userspace::upstream::parse_params(&format!("weight={weight}")).expect("params"),
            )
        })
        .collect();
    let (planned, skipped) = plan::plan_service(vip, &upstream, 251);
    anyhow::ensure!(skipped.is_empty(), "skipped servers: {skipped:?}");
    let planned = planned?.context("no servers")?;
    for (id, addr, _) in servers {
        maps.set_server(
            *id,
            &ServerEntry {
                addr: plan::addr16(addr.ip()),
                port: addr.port().to_be_bytes(),
                family: plan::family(addr.ip()),
                _pad: 0,
            },
        )?;
    }
    // Plan indexes → server ids.
    let table: Vec<u32> = planned
        .table
        .iter()
        .map(|&index| {
            let addr = planned.servers[index as usize].addr;
            servers
                .iter()
                .find(|(_, a, _)| *a == addr)
                .map(|(id, _, _)| *id)
                .expect("planned server is one of ours")
        })
        .collect();
    maps.set_table(service_id, &table)?;
    maps.set_service(
        &vip_key(vip, proto),
        &ServiceEntry {
            id: service_id,
            table_size: table.len() as u32,
            flags: if snat.is_some() { SERVICE_HAS_SNAT } else { 0 },
            _pad: 0,
            snat: snat.map(plan::addr16).unwrap_or_default(),
        },
    )?;
    Ok(planned)
}

pub fn vip_key(vip: SocketAddr, proto: u8) -> VipKey {
    VipKey {
        addr: plan::addr16(vip.ip()),
        port: vip.port().to_be_bytes(),
        proto,
        family: plan::family(vip.ip()),
    }
}

/// The connection-table key of a TCP packet from `src` to `dst`.
pub fn tcp_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    FlowKey {
        src: plan::addr16(src.ip()),
        dst: plan::addr16(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto: IPPROTO_TCP,
        family: plan::family(src.ip()),
        _pad: [0; 2],
    }
}

/// `frame` with new MACs, addresses and ports, and every checksum
/// recomputed from scratch (etherparse).
pub fn rewritten(
    frame: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
) -> Vec<u8> {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parsable fixture frame");
    let payload = headers.payload.slice().to_vec();
    let mut link = headers.link.and_then(|l| l.ethernet2()).expect("ethernet");
    link.source = src_mac;
    link.destination = dst_mac;
    let mut out = Vec::new();
    link.write(&mut out).expect("write eth");
    let mut transport = headers.transport.expect("transport header");
    match headers.net.expect("ip") {
        NetHeaders::Ipv4(mut ip, exts) => {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
                panic!("IPv4 packet needs IPv4 addresses")
            };
            ip.source = s.octets();
            ip.destination = d.octets();
            ip.header_checksum = ip.calc_header_checksum();
            match &mut transport {
                TransportHeader::Tcp(tcp) => {
                    tcp.source_port = src.port();
                    tcp.destination_port = dst.port();
                    tcp.checksum = tcp.calc_checksum_ipv4(&ip, &payload).expect("tcp csum");
                }
                TransportHeader::Udp(udp) => {
                    udp.source_port = src.port();
                    udp.destination_port = dst.port();
                    udp.checksum = udp.calc_checksum_ipv4(&ip, &payload).expect("udp csum");
                }
                _ => panic!("TCP or UDP only"),
            }
            ip.write(&mut out).expect("write ipv4");
            exts.write(&mut out, ip.protocol).expect("write exts");
        }
        NetHeaders::Ipv6(mut ip, exts) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
                panic!("IPv6 packet needs IPv6 addresses")
            };
            ip.source = s.octets();
            ip.destination = d.octets();
            match &mut transport {
                TransportHeader::Tcp(tcp) => {
                    tcp.source_port = src.port();
                    tcp.destination_port = dst.port();
                    tcp.checksum = tcp.calc_checksum_ipv6(&ip, &payload).expect("tcp csum");
                }
                TransportHeader::Udp(udp) => {
                    udp.source_port = src.port();
                    udp.destination_port = dst.port();
                    udp.checksum = udp.calc_checksum_ipv6(&ip, &payload).expect("udp csum");
                }
                _ => panic!("TCP or UDP only"),
            }
            ip.write(&mut out).expect("write ipv6");
            exts.write(&mut out, ip.next_header).expect("write exts");
        }
        _ => panic!("IP only"),
    }
    match transport {
        TransportHeader::Tcp(tcp) => tcp.write(&mut out).expect("write tcp"),
        TransportHeader::Udp(udp) => udp.write(&mut out).expect("write udp"),
        _ => unreachable!(),
    }
    out.extend_from_slice(&payload);
    out
}
