//! `cargo xtask bench aws-api`: requests/s of the AWS ELB API's
//! `DescribeInstanceHealth` on a balancer of 1,000 instances. moto plays
//! EC2 (from the venv of `cargo xtask setup`); `tests/py/bench_aws_api.py`
//! creates the instances and the balancer through the API and presigns one
//! request, which wrk replays: elb verifies each signature in full, reads
//! the 1,000 servers' health and writes the XML every time.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{median, procs::Background, procs::free_port, temp_dir::TempDir, wrk::WrkRun};

const INSTANCES: usize = 1_000;
const KEY_ID: &str = "AKIDBENCH";
const SECRET: &str = "bench-secret";
const REGION: &str = "us-east-1";

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    let elb_bin = crate::build_release_elb(root)?;
    let venv = crate::setup::venv_dir();
    let dir = TempDir::new("elb-bench-aws-api")?;
    let moto_port = free_port()?;
    let mut moto = Background::spawn(
        "moto",
        Command::new(venv.join("bin/moto_server")).args([
            "-H",
            "127.0.0.1",
            "-p",
            &moto_port.to_string(),
        ]),
        dir.path(),
    )
    .context("starting moto_server (cargo xtask setup makes the venv)")?;
    moto.wait_port(moto_port)?;
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[bench]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )?;
    let (port, api_port, lb_port) = (free_port()?, free_port()?, free_port()?);
    let api = format!("127.0.0.1:{api_port}");
    let mut command = Command::new(&elb_bin);
    command
        .args([
            "run",
            "--name",
            "AWSAPI",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--state-file")
        .arg(dir.path().join("state.json"))
        .arg("--run-dir")
        .arg(dir.path())
        .args(["--aws-api", &api, "--aws-api-credentials"])
        .arg(&credentials)
        .env("RUST_LOG", "warn")
        .env("AWS_ENDPOINT_URL", &moto_url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut elb = Background::spawn("elb-AWSAPI", &mut command, dir.path())?;
    elb.wait_port(api_port)?;
    eprintln!("bench aws-api: {INSTANCES} instances in moto, registered with bench-lb");
    let output = Command::new(venv.join("bin/python"))
        .arg(root.join("tests/py/bench_aws_api.py"))
        .args([
            &moto_url,
            &format!("http://{api}"),
            KEY_ID,
            SECRET,
            &INSTANCES.to_string(),
            &lb_port.to_string(),
        ])
        .env("AWS_REGION", REGION)
        .output()
        .context("running tests/py/bench_aws_api.py")?;
    anyhow::ensure!(
        output.status.success(),
        "bench_aws_api.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let setup: Value = serde_json::from_slice(&output.stdout)?;
    let target = setup["target"].as_str().context("no presigned target")?;
    let url = format!("http://{api}{target}");
    let response = super::procs::curl("GET", &url, None, &[])?;
    anyhow::ensure!(
        response.matches("<member>").count() == INSTANCES,
        "the presigned request does not list {INSTANCES} instances: {}",
        &response[..response.len().min(400)]
    );
    let wrk = |seconds: u32| {
        WrkRun {
            url: &url,
            headers: &[],
            threads: 2,
            connections: 16,
            seconds,
        }
        .run()
    };
    wrk(2)?;
    let mut rates = Vec::with_capacity(rounds);
    println!("| round | DescribeInstanceHealth req/s (1,000 instances) | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for round in 1..=rounds.max(1) {
        let result = wrk(10)?;
        println!(
            "| {round} | {:.0} | {:.2} | {:.2} |",
            result.requests_per_sec, result.p50_ms, result.p99_ms
        );
        rates.push(result.requests_per_sec);
    }
    println!(
        "median: {:.0} requests/s ({} bytes per answer)",
        median(&mut rates),
        response.len()
    );
    Ok(())
}
