//! `cargo xtask bench discovery-consul`'s runner: the time from a change in
//! Consul (here the Consul stand-in, tests/src/consul_standin.rs) to the
//! first request that reaches the new server. A real elb (`ELB_BIN`,
//! embedded store) follows service "web"; each round swaps the service's
//! one instance between two loopback backends in one change, while a client
//! sends requests back to back; the round's time ends at the first answer
//! from the new backend. Before each change elb is parked in a blocking
//! query, as it is in steady state.
//!
//! Prints a markdown table. Usage: `bench_discovery_consul [--rounds N]`.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use elb_tests::{
    backend::Backend,
    consul_standin::{ConsulStandin, Instance},
    discovery::answering_backend,
    l7::{Cleanup, L7Builder, backend_doc},
};
use serde_json::json;

const HOST: &str = "web.bench";

fn served_by(elb: SocketAddr) -> Option<String> {
    answering_backend(elb, HOST)
}

fn main() -> Result<()> {
    let mut rounds = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .context("--rounds needs a number")?
                    .parse()
                    .context("--rounds")?;
            }
            other => {
                bail!("unknown argument {other:?} (usage: bench_discovery_consul [--rounds N])")
            }
        }
    }
    let standin = ConsulStandin::start()?;
    let backends = [
        Backend::start_on("a", "127.0.0.201:0".parse()?)?,
        Backend::start_on("b", "127.0.0.202:0".parse()?)?,
    ];
    standin.replace_all(vec![Instance::new("a", "web", backends[0].addr())]);
    let elb = L7Builder::new().start()?;
    let _cleanup = Cleanup(elb.state_dir.clone());
    elb.admin_ok("PUT", "domain", Some(json!({ HOST: backend_doc("web") })));
    elb.admin_ok(
        "PUT",
        "discovery",
        Some(
            json!({"web": {"provider": "consul", "address": standin.addr().to_string(),
            "service": "web"}}),
        ),
    );
    let started = Instant::now();
    while served_by(elb.addr).as_deref() != Some("a") {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("elb never served from the stand-in's first instance");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let next = &backends[(round + 1) % 2];
        // Parked in a blocking query, as in steady state.
        let parked = Instant::now();
        while standin.blocked() == 0 {
            if parked.elapsed() > Duration::from_secs(5) {
                bail!("elb is not in a blocking query");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(100));
        let changed = Instant::now();
        standin.replace_all(vec![Instance::new(next.name(), "web", next.addr())]);
        loop {
            if served_by(elb.addr).as_deref() == Some(next.name()) {
                break;
            }
            if changed.elapsed() > Duration::from_secs(10) {
                bail!("round {round}: {} never answered", next.name());
            }
        }
        times.push(changed.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    println!("| changes | median | p90 | min | max | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {rounds} | **{:.1} ms** | {:.1} ms | {:.1} ms | {:.1} ms | well under 1 s |",
        at(0.5),
        at(0.9),
        sorted[0],
        sorted[sorted.len() - 1]
    );
    println!(
        "stand-in requests: {} for {rounds} changes (blocking queries, no polling)",
        standin.requests()
    );
    Ok(())
}
