//! The new-flow path of a 3-server service held near port exhaustion
//! (issue 16): each server first holds established flows ([`HELD_LEVELS`],
//! one level after the other), opened through elb's own path (the client's SYN, the server's
//! SYN-ACK, the client's ACK: the flow is promoted into the main table and
//! keeps the NAT port elb's allocator gave it). Then fresh SYNs to the
//! service are timed as the main new-flow row is; their embryonic entries
//! churn the embryonic table and take their share of each server's ports
//! on top. A SYN that finds no port is dropped and counted; here that is
//! allowed, counted, and reported, not an error.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap, MapData};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{FLOW_REPLY, FlowEntry, FlowKey},
    maps::XDP_PROGRAM,
    nat::NAT_FULL_RETRY_NS,
};
use elb_tests::l4_fixture::{CLIENT_MAC, CLIENT_V4, LB_CLIENT_SIDE_MAC, SNAT_V4, VIP_V4};
use elb_userspace::l4::plan;

use super::{Bench, Case, Mode, SERVERS, XDP_DROP, XDP_REDIRECT, XDP_TX, syn_ack_frame, tcp_frame};

/// The NAT port range of the whole bench (`--nat-ports 1024-65535`): the
/// fixtures' 55,000-flow test uses it too.
pub const NAT_PORT_MIN: u16 = 1024;
pub const NAT_PORT_MAX: u16 = 65535;
const NAT_PORTS: u32 = (NAT_PORT_MAX - NAT_PORT_MIN) as u32 + 1;
/// Established flows each server holds, one level after the other. The
/// timed SYNs' embryonic entries come on top (about 15,000 ports per
/// server; before orphaned reply entries gave their ports up, the LRU kept
/// reply entries over client-side ones, as the allocator's probes look
/// them up, and two servers ran out at 38,000). At 30,000 about 72% of the
/// ports are in use and at 38,000 about 83%: the held flows' runs of ports
/// test the cursor's leaps (`elb_common::nat`'s test
/// `a_run_of_long_lived_flows_ahead_of_the_cursor_is_crossed_in_a_few_refusals`).
pub const HELD_LEVELS: [u32; 2] = [30_000, 38_000];
const SERVICE_ID: u32 = 1;
const SERVICE_SERVERS: u32 = 3;
/// Held flows come from 10.150.0.0/16 (routed to the client side), so
/// they never meet the wrapper's varied sources (10.<cpu>.x.y).
pub const HELD_CLIENTS: &str = "10.150.0.0/16";

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 81)
}

fn held_client(i: u32) -> SocketAddr {
    let ip = Ipv4Addr::new(10, 150, (i / 60_000) as u8, 2);
    SocketAddr::new(ip.into(), 1024 + (i % 60_000) as u16)
}

/// Server ids of the service: after the main service's.
fn server_id(index: u32) -> u32 {
    SERVERS + index
}

/// One round: the trivial program, then the wrapper around an empty path
/// and around elb's path on a fresh SYN to the service every run.
#[derive(Clone, Copy)]
pub struct Round {
    pub trivial: f64,
    pub empty: f64,
    pub path: f64,
    /// SYNs of the elb run that found no port (dropped, counted).
    pub refused: u64,
}

/// What one level measured, for the report.
pub struct Level {
    pub held_per_server: u32,
    pub rounds: Vec<Round>,
    /// Per server, at the end: (reply entries in the main table, in the
    /// embryonic table), i.e. NAT ports held.
    pub ports_in_use: Vec<(u32, u32)>,
    /// SYNs of held flows refused a port while filling up to this level.
    pub refused_in_fill: u64,
}

/// What the phase measured.
pub struct Phase {
    pub levels: Vec<Level>,
    pub ports: u32,
    /// Runs per timing.
    pub repeat: u32,
}

/// Installs the service; for each of `levels`, fills it up to that many
/// held flows per server, warms the embryonic table up with one untimed
/// run, then times `rounds` rounds.
pub fn run(bench: &mut Bench, tables: &mut Tables, rounds: usize, levels: &[u32]) -> Result<Phase> {
    // Three servers, ids after the main service's.
    let planned = super::install_service(
        &mut bench.maps,
        SERVICE_ID,
        vip(),
        server_id(0)..server_id(SERVICE_SERVERS),
    )?;
    let mut filler = Filler {
        held: vec![0; planned.servers.len()],
        next_client: 0,
    };
    let mut measured = Vec::new();
    for &held_per_server in levels {
        eprintln!(
            "bench xdp: holding {held_per_server} established flows on each of the {SERVICE_SERVERS} servers of {}",
            vip()
        );
        // The last level's timed SYNs are over: their embryonic entries
        // go, as they would expire, so the new held flows find ports.
        tables.clear_embryos()?;
        // A space the last level ran out of stays marked full (short
        // scans) for NAT_FULL_RETRY_NS after its last full scan.
        std::thread::sleep(Duration::from_nanos(2 * NAT_FULL_RETRY_NS));
        let refused_in_fill = filler.fill(bench, &planned, held_per_server)?;
        let mut level = time_level(bench, tables, &planned, rounds, held_per_server)?;
        level.refused_in_fill = refused_in_fill;
        measured.push(level);
    }
    Ok(Phase {
        levels: measured,
        ports: NAT_PORTS,
        repeat: bench.repeat,
    })
}

/// One level's warm-up and rounds, and the ports in use after them.
fn time_level(
    bench: &mut Bench,
    tables: &Tables,
    planned: &plan::ServicePlan,
    rounds: usize,
    held_per_server: u32,
) -> Result<Level> {
    let syn = tcp_frame(
        CLIENT_MAC,
        LB_CLIENT_SIDE_MAC,
        SocketAddr::new(CLIENT_V4.into(), 40_000),
        vip(),
        true,
    );
    eprintln!("bench xdp: near exhaustion, warming up");
    bench.time_wrapped_refusing(Case::NearExhaustion, &syn, true, Mode::Elb)?;
    let mut timed = Vec::new();
    for round in 0..rounds {
        eprintln!("bench xdp: near exhaustion, round {}/{rounds}", round + 1);
        let trivial = bench.time_trivial(&syn)?;
        let (empty, _) =
            bench.time_wrapped_refusing(Case::NearExhaustion, &syn, true, Mode::Empty)?;
        let (path, refused) =
            bench.time_wrapped_refusing(Case::NearExhaustion, &syn, true, Mode::Elb)?;
        timed.push(Round {
            trivial,
            empty,
            path,
            refused,
        });
    }
    let addrs: Vec<SocketAddr> = planned.servers.iter().map(|s| s.addr).collect();
    Ok(Level {
        held_per_server,
        rounds: timed,
        ports_in_use: tables.ports_held(&addrs)?,
        refused_in_fill: 0,
    })
}

/// The held flows so far: per server, and the next client to use.
struct Filler {
    held: Vec<u32>,
    next_client: u32,
}

impl Filler {
    /// Opens flows from [`held_client`]s until each server holds `per_server`
    /// (a client whose server is already full is skipped): the SYN, checked
    /// and NAT'd; the server's SYN-ACK; the client's ACK, which promotes the
    /// flow. The promotion counter must count every flow. A SYN refused a
    /// port is skipped (its client gives up) and counted; returns how many.
    fn fill(
        &mut self,
        bench: &mut Bench,
        planned: &plan::ServicePlan,
        per_server: u32,
    ) -> Result<u64> {
        let before = bench.maps.global_stats()?;
        let held = &mut self.held;
        let mut flows = 0u64;
        let mut refused = 0u64;
        while held.iter().any(|n| *n < per_server) {
            let i = self.next_client;
            let client = held_client(i);
            self.next_client += 1;
            ensure!(
                i < 240 * 60_000,
                "ran out of held clients at {held:?} flows per server"
            );
            let server = planned
                .pick(client, vip(), IPPROTO_TCP)
                .context("no server for a held flow")?
                .addr;
            let index = planned
                .servers
                .iter()
                .position(|s| s.addr == server)
                .context("picked server not in the plan")?;
            if held[index] >= per_server {
                continue;
            }
            let syn = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), true);
            let (action, out) = bench.run_once(XDP_PROGRAM, &syn)?;
            if action == XDP_DROP {
                // Refused a port (checked below against the counter):
                // this client gives up; the next one tries.
                refused += 1;
                continue;
            }
            ensure!(
                action == XDP_REDIRECT || action == XDP_TX,
                "held flow {i}: its SYN returned action {action}"
            );
            let (to, nat_port) = super::forwarded_syn(&out)?;
            ensure!(to == server, "held flow {i} went to {to}, not {server}");
            let syn_ack = syn_ack_frame(server, SocketAddr::new(SNAT_V4.into(), nat_port));
            let ack = tcp_frame(CLIENT_MAC, LB_CLIENT_SIDE_MAC, client, vip(), false);
            for (what, frame) in [("SYN-ACK", &syn_ack), ("ACK", &ack)] {
                let (action, _) = bench.run_once(XDP_PROGRAM, frame)?;
                ensure!(
                    action == XDP_REDIRECT || action == XDP_TX,
                    "held flow {i}: its {what} returned action {action}"
                );
            }
            held[index] += 1;
            flows += 1;
        }
        let after = bench.maps.global_stats()?;
        ensure!(
            after.promotions - before.promotions == flows,
            "{flows} held flows, {} promoted",
            after.promotions - before.promotions
        );
        ensure!(
            after.port_alloc_failures - before.port_alloc_failures == refused,
            "{refused} held flows' SYNs were dropped, {} of them for want of a port",
            after.port_alloc_failures - before.port_alloc_failures
        );
        Ok(refused)
    }
}

/// The bench's own handles on the two connection tables (taken before
/// `L4Maps` takes the maps), to count the NAT ports servers hold.
pub struct Tables {
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub embryos: HashMap<MapData, FlowKey, FlowEntry>,
}

impl Tables {
    fn clear_embryos(&mut self) -> Result<()> {
        let keys = self.embryos.keys().collect::<Result<Vec<_>, _>>()?;
        for key in keys {
            self.embryos.remove(&key)?;
        }
        Ok(())
    }

    /// Per server of `servers`: (main table, embryonic table) reply entries,
    /// one per NAT port it holds through the bench's SNAT address.
    fn ports_held(&self, servers: &[SocketAddr]) -> Result<Vec<(u32, u32)>> {
        let keys: Vec<([u8; 16], [u8; 2])> = servers
            .iter()
            .map(|s| (plan::addr16(s.ip()), s.port().to_be_bytes()))
            .collect();
        let snat = plan::addr16(IpAddr::V4(SNAT_V4));
        let count = |table: &HashMap<MapData, FlowKey, FlowEntry>| -> Result<Vec<u32>> {
            let mut n = vec![0; keys.len()];
            for item in table.iter() {
                let (key, entry) = item?;
                if entry.flags & FLOW_REPLY == 0 || key.dst != snat {
                    continue;
                }
                if let Some(i) = keys.iter().position(|k| *k == (key.src, key.src_port)) {
                    n[i] += 1;
                }
            }
            Ok(n)
        };
        let (main, embryonic) = (count(&self.flows)?, count(&self.embryos)?);
        Ok(main.into_iter().zip(embryonic).collect())
    }
}
