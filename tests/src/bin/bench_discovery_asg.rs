//! `cargo xtask bench discovery-asg`'s runner: the time from an Auto
//! Scaling group change (a new `InService` member) to the first request
//! that reaches it, for several provider intervals. AWS is a real moto
//! server (EC2 and Auto Scaling on loopback, tests/src/moto.rs); a real elb
//! (`ELB_BIN`, embedded store, `AWS_ENDPOINT_URL` at moto) follows the
//! group.
//!
//! Each change attaches an instance made beforehand with a chosen loopback
//! address (where a backend listens) and detaches the previous one; the
//! clock starts when `AttachInstances` has returned and stops at the first
//! answer from the new backend. A varying wait before each change spreads
//! the changes over the provider's poll cycle, as real changes are.
//!
//! Prints a markdown table. Usage:
//! `bench_discovery_asg [--changes N] [--intervals 1,2,5]`.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use elb_tests::{
    backend::Backend,
    discovery::answering_backend,
    l7::{Cleanup, L7Builder, backend_doc},
    moto::Moto,
    ports::free_port,
};
use serde_json::json;

const HOST: &str = "web.bench";
const GROUP: &str = "bench-asg";

fn served_by(elb: SocketAddr) -> Option<String> {
    answering_backend(elb, HOST)
}

/// One instance of the bench, its backend listening on its address.
struct Member {
    id: String,
    backend: Backend,
}

fn main() -> Result<()> {
    let mut changes = 6usize;
    let mut intervals = vec![
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ];
    let usage = "usage: bench_discovery_asg [--changes N] [--intervals 1,2,5]";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--changes" => {
                changes = args
                    .next()
                    .context("--changes needs a number")?
                    .parse::<usize>()
                    .context("--changes")?
                    .max(1);
            }
            "--intervals" => {
                intervals = args
                    .next()
                    .context("--intervals needs a list")?
                    .split(',')
                    .map(|text| {
                        text.trim_end_matches('s')
                            .parse::<f64>()
                            .ok()
                            .filter(|s| (0.5..=60.0).contains(s))
                            .map(Duration::from_secs_f64)
                            .with_context(|| format!("--intervals: {text:?} is not 0.5s to 60s"))
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown argument {other:?} ({usage})"),
        }
    }
    let moto = Moto::start()?;
    let vpc = moto.loopback_vpc()?;
    let subnet = vpc.subnet("us-east-1a").to_owned();
    moto.create_asg(GROUP, &[&subnet], 0)?;
    // One instance per change plus the first member, made before the clock
    // runs; each with a backend on its (loopback) address.
    let port = free_port();
    let mut members = Vec::new();
    for k in 0..=changes * intervals.len() {
        let ip = Ipv4Addr::new(
            127,
            0,
            0,
            100 + u8::try_from(k).context("too many changes")?,
        );
        let id = moto.run_instance(&subnet, ip)?;
        let backend = Backend::start_on(&ip.to_string(), SocketAddr::from((ip, port)))?;
        members.push(Member { id, backend });
    }
    let attach = |member: &Member| {
        moto.call_ok(
            "autoscaling",
            "attach_instances",
            json!({"AutoScalingGroupName": GROUP, "InstanceIds": [member.id]}),
        )
    };
    let detach = |member: &Member| {
        moto.call_ok(
            "autoscaling",
            "detach_instances",
            json!({"AutoScalingGroupName": GROUP, "InstanceIds": [member.id],
                   "ShouldDecrementDesiredCapacity": true}),
        )
    };
    let mut builder = L7Builder::new();
    for (key, value) in moto.env() {
        builder = builder.env(&key, &value);
    }
    let elb = builder.start()?;
    let _cleanup = Cleanup(elb.state_dir.clone());
    elb.admin_ok("PUT", "domain", Some(json!({ HOST: backend_doc("web") })));
    attach(&members[0])?;
    let mut current = 0usize;
    let mut rows = Vec::new();
    for interval in intervals {
        elb.admin_ok(
            "PUT",
            "discovery",
            Some(
                json!({"web": {"provider": "aws_asg", "group": GROUP, "port": port,
                "interval": format!("{}ms", interval.as_millis())}}),
            ),
        );
        let first = members[current].backend.name().to_owned();
        let started = Instant::now();
        while served_by(elb.addr).as_deref() != Some(first.as_str()) {
            if started.elapsed() > interval + Duration::from_secs(10) {
                bail!("elb never served from the group's first member");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut times = Vec::with_capacity(changes);
        for round in 0..changes {
            // Spread over the poll cycle: a golden-ratio sequence of waits.
            let phase = (round as f64 * 0.618_034).fract();
            std::thread::sleep(interval.mul_f64(phase));
            let next = current + 1;
            attach(&members[next])?;
            let changed = Instant::now();
            let name = members[next].backend.name();
            while served_by(elb.addr).as_deref() != Some(name) {
                if changed.elapsed() > interval + Duration::from_secs(10) {
                    bail!("interval {interval:?}, change {round}: {name} never answered");
                }
            }
            times.push(changed.elapsed().as_secs_f64() * 1000.0);
            detach(&members[current])?;
            current = next;
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        rows.push((interval, sorted));
    }
    println!("| interval | changes | median | min | max | bound (interval) |");
    println!("|---|---|---|---|---|---|");
    for (interval, sorted) in rows {
        let median = {
            let mut values = sorted.clone();
            let mid = values.len() / 2;
            values.sort_by(f64::total_cmp);
            if values.len() % 2 == 1 {
                values[mid]
            } else {
                (values[mid - 1] + values[mid]) / 2.0
            }
        };
        println!(
            "| {} s | {} | **{:.0} ms** | {:.0} ms | {:.0} ms | {} ms |",
            interval.as_secs_f64(),
            sorted.len(),
            median,
            sorted[0],
            sorted[sorted.len() - 1],
            interval.as_millis()
        );
    }
    Ok(())
}
