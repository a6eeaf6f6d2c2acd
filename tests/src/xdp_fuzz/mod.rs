//! Fuzzing elb's XDP program through `BPF_PROG_TEST_RUN`: generated
//! packets (`generate`) go through the real program, loaded with a fixed set of
//! services (`world`) in the L4 fixture network, one run per packet; every
//! run is judged by invariants (`check`) computed in userspace from the
//! input, the action and the output, with NAT bindings learnt from the
//! program's own observed rewrites (`model`).
//!
//! Used by `fuzz_xdp` (the `cargo xtask fuzz` runner) and by the
//! `xdp_fuzz` test.
pub mod check;
pub mod classify;
pub mod generate;
pub mod model;
pub mod world;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{FLOW_CLOSING, FlowKey, TCP_CLOSING_NS, UDP_IDLE_NS},
};
use elb_userspace::l4::plan::{addr16, family};

use crate::{
    l4_fixture::L4Net,
    xdp_fixture::{XdpAction, XdpFixture, monotonic_coarse_ns},
};
use check::{Verdict, check, hex, verify_with_etherparse};
use generate::Generator;
use model::Model;
use world::World;

#[derive(Clone, Debug)]
pub struct Config {
    /// Stops after this long or this many packets, whichever comes first.
    pub seconds: f64,
    pub packets: u64,
    pub seed: u64,
    /// Every this many packets one random server's flows are drained
    /// (their next client segment is answered with a RST); 0: never.
    pub drain_every: u64,
    /// Every this many packets a few bound flows are aged past their idle
    /// timeout (one direction or both, [`age_some`]); 0: never.
    pub age_every: u64,
    /// Violations printed in full (all are counted).
    pub max_reports: u64,
}

impl Config {
    pub fn new(seconds: f64, packets: u64, seed: u64) -> Self {
        Self {
            seconds,
            packets,
            seed,
            drain_every: 50_000,
            age_every: 1_000,
            max_reports: 20,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub packets: u64,
    /// Returned modified (NAT'd, or turned into a RST).
    pub rewritten: u64,
    /// XDP_PASS with the frame untouched.
    pub passed: u64,
    pub dropped: u64,
    pub aborted: u64,
    pub violations: u64,
    /// NAT'd to a server / back to a client, and forwarded by XDP.
    pub to_server: u64,
    pub to_client: u64,
    /// NAT'd and passed to the kernel (no next hop in XDP).
    pub nat_passed_up: u64,
    /// NAT'd although its lengths or checksums were wrong (allowed: they
    /// stay wrong, and the receiver drops it; counted to show the case).
    pub nat_malformed: u64,
    pub resets: u64,
    pub bindings: usize,
    pub drains: u64,
    /// Flow entries aged past their timeout.
    pub aged: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// The runner's last line; its format is what `cargo xtask fuzz` reads.
    pub fn line(&self) -> String {
        format!(
            "fuzz_xdp: packets={} rewritten={} passed={} dropped={} violations={}",
            self.packets, self.rewritten, self.passed, self.dropped, self.violations
        )
    }

    pub fn packets_per_second(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn detail(&self) -> String {
        format!(
            "fuzz_xdp: {:.1} s, {:.0} packets/s; to servers {}, to clients {}, NAT'd but passed up {}, NAT'd malformed {}, RSTs {}, aborted {}; {} NAT bindings seen, {} drains, {} entries aged",
            self.elapsed.as_secs_f64(),
            self.packets_per_second(),
            self.to_server,
            self.to_client,
            self.nat_passed_up,
            self.nat_malformed,
            self.resets,
            self.aborted,
            self.bindings,
            self.drains,
            self.aged
        )
    }
}

/// Builds the fixture network, then fuzzes in it (the FIB lookups resolve
/// in the namespace of the thread that runs the program).
pub fn run(config: &Config) -> Result<Summary> {
    let net = L4Net::new().context("fixture network")?;
    let (client_if, server_if) = (net.client_ifindex, net.server_ifindex);
    let config = config.clone();
    let summary = net
        .lb
        .enter(move || fuzz(&config, client_if, server_if))
        .context("fuzzing thread")??;
    drop(net);
    Ok(summary)
}

fn fuzz(config: &Config, client_if: u32, server_if: u32) -> Result<Summary> {
    let mut fixture = XdpFixture::load()?;
    let mut maps = fixture.l4_maps()?;
    let world = World::new();
    world.install(&mut maps, client_if, server_if)?;
    let server_ids = world.server_ids();
    let mut model = Model::default();
    let mut generator = Generator::new(config.seed);
    let mut s = Summary::default();
    let deadline = Duration::from_secs_f64(config.seconds);
    let start = Instant::now();
    while s.packets < config.packets {
        if s.packets % 1024 == 0 && start.elapsed() >= deadline {
            break;
        }
        if config.drain_every > 0 && s.packets > 0 && s.packets % config.drain_every == 0 {
            let id = server_ids[generator.draw(server_ids.len() as u64) as usize];
            maps.drain_flows_of_server(id)
                .with_context(|| format!("draining server {id}"))?;
            s.drains += 1;
        }
        if config.age_every > 0 && s.packets > 0 && s.packets % config.age_every == 0 {
            s.aged += age_some(&mut fixture, &model, &mut generator)?;
        }
        let packet = generator.next(&world, &model);
        let run = fixture
            .run(&packet.frame)
            .with_context(|| format!("running frame {}", hex(&packet.frame)))?;
        let index = s.packets;
        s.packets += 1;
        match run.action {
            XdpAction::Aborted => s.aborted += 1,
            XdpAction::Drop => s.dropped += 1,
            XdpAction::Pass if run.output == packet.frame => s.passed += 1,
            _ => s.rewritten += 1,
        }
        let verdict = check(&world, &model, &packet.frame, run.action, &run.output);
        if matches!(
            verdict,
            Ok(Verdict::ToServer { .. } | Verdict::ToClient { .. })
        ) && verify_with_etherparse(&packet.frame).is_err()
        {
            s.nat_malformed += 1;
        }
        match verdict {
            Ok(Verdict::ToServer {
                key,
                binding,
                forwarded,
            }) => {
                model.bind(key, binding);
                if forwarded {
                    s.to_server += 1;
                } else {
                    s.nat_passed_up += 1;
                }
            }
            Ok(Verdict::ToClient { forwarded: true }) => s.to_client += 1,
            Ok(Verdict::ToClient { forwarded: false }) => s.nat_passed_up += 1,
            Ok(Verdict::Reset) => s.resets += 1,
            Ok(Verdict::Passed | Verdict::Dropped) => {}
            Err(why) => {
                s.violations += 1;
                if s.violations <= config.max_reports {
                    eprintln!(
                        "fuzz_xdp: VIOLATION at packet {index} (seed {:#x}; replay with --seed {:#x} --packets {}), a {} packet: {why}\n\
                         fuzz_xdp:   action {:?}\n\
                         fuzz_xdp:   in  {}\n\
                         fuzz_xdp:   out {}",
                        config.seed,
                        config.seed,
                        index + 1,
                        packet.kind,
                        run.action,
                        hex(&packet.frame),
                        hex(&run.output)
                    );
                }
            }
        }
    }
    s.elapsed = start.elapsed();
    s.bindings = model.len();
    Ok(s)
}

/// Bound flows aged at each [`Config::age_every`].
const AGED_PER_ROUND: u64 = 16;

/// Ages the entries of a few bound flows past their idle timeout, as time
/// would: only the reply entry (a silent server), only the client's, or
/// both; TCP entries as closed (a FIN) more than `TCP_CLOSING_NS` ago, UDP
/// ones idle for more than `UDP_IDLE_NS` (TCP's idle timeout is an hour,
/// beyond a fresh machine's uptime). So expiry, NAT port takeover and
/// reopening happen within a short run. Returns how many entries it aged;
/// none when the uptime is too short to express the age.
fn age_some(fixture: &mut XdpFixture, model: &Model, generator: &mut Generator) -> Result<u64> {
    let mut aged = 0;
    if model.is_empty() {
        return Ok(0);
    }
    let now = monotonic_coarse_ns();
    for _ in 0..AGED_PER_ROUND {
        let index = generator.draw(model.len() as u64) as usize;
        let (reply, binding) = model.nth(index).expect("the model is not empty");
        let key = |src: std::net::SocketAddr, dst: std::net::SocketAddr| FlowKey {
            src: addr16(src.ip()),
            dst: addr16(dst.ip()),
            src_port: src.port().to_be_bytes(),
            dst_port: dst.port().to_be_bytes(),
            proto: reply.proto,
            family: family(src.ip()),
            _pad: [0; 2],
        };
        let keys = match generator.draw(4) {
            0 | 1 => vec![key(reply.server, reply.nat)],
            2 => vec![key(binding.client, binding.vip)],
            _ => vec![
                key(reply.server, reply.nat),
                key(binding.client, binding.vip),
            ],
        };
        let tcp = reply.proto == IPPROTO_TCP;
        let age = if tcp { TCP_CLOSING_NS } else { UDP_IDLE_NS } + 1_000_000_000;
        let Some(last_seen) = now.checked_sub(age) else {
            return Ok(aged);
        };
        let mut flows = fixture.flows()?;
        for key in keys {
            let Ok(mut entry) = flows.get(&key, 0) else {
                continue;
            };
            entry.last_seen = last_seen;
            if tcp {
                entry.flags |= FLOW_CLOSING;
            }
            flows
                .insert(&key, &entry, 0)
                .context("ageing a flow entry")?;
            aged += 1;
        }
    }
    Ok(aged)
}
