//! `elb status` with the real binary against a real elb: healthy (exit 0),
//! an upstream failing open (1), not running (2), the token (3 without),
//! and the XDP attachment, read from the admin API while elb runs and from
//! the pins once it stopped.
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    elb_process::{ElbProcess, elb_binary},
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
    netns::{NetNs, unique_name, veth_pair},
    require_root_and_bpf,
};
use serde_json::json;

fn status(elb_name: &str, run_dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(elb_binary().expect("elb binary"));
    command
        .args(["status", "--name", elb_name, "--run-dir"])
        .arg(run_dir)
        .env_remove("ELB_ADMIN_TOKEN")
        .env_remove("ELBNAME")
        .env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run elb status")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `elb status` until it exits with `code`; returns that run.
fn status_until(elb: &L7Elb, code: i32) -> Output {
    let started = Instant::now();
    loop {
        let output = status(&elb.name, &elb.state_dir, &[]);
        if output.status.code() == Some(code) {
            return output;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "elb status never exited {code}: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exit_status_follows_health_and_liveness() {
    let mut elb = L7Builder::new()
        .arg("--workers")
        .arg("1")
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let backend = Backend::start("b1").expect("backend");
    let server = backend.addr().to_string();
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"web": {server.clone(): "weight=2 zone=eu-1a"}})),
    );
    elb.admin_ok(
        "PUT",
        "policy",
        Some(
            json!({"web": {"health_check": {"target": "HTTP/health", "interval": "200ms",
            "timeout": "100ms", "healthy_threshold": 2, "unhealthy_threshold": 2}}}),
        ),
    );
    elb.admin_ok(
        "PUT",
        "domain",
        Some(json!({"shop.test": backend_doc("web")})),
    );

    let healthy = status_until(&elb, 0);
    let out = String::from_utf8_lossy(&healthy.stdout).into_owned();
    for needle in [
        format!("elb {}", elb.name),
        format!("--listen         {}", elb.addr),
        "web  domains: shop.test".to_owned(),
        format!("UP         {server:<24} weight 2   zone eu-1a"),
        "L4 services (userspace data plane)".to_owned(),
        "not attached to any interface".to_owned(),
    ] {
        assert!(
            out.contains(&needle),
            "{needle:?} missing: {}",
            text(&healthy)
        );
    }
    assert!(!out.contains("Problems"), "{}", text(&healthy));

    backend.set_health_status(Some(503));
    let failing = status_until(&elb, 1);
    let out = String::from_utf8_lossy(&failing.stdout).into_owned();
    assert!(
        out.contains("web  FAIL-OPEN (no healthy server)"),
        "{}",
        text(&failing)
    );
    assert!(
        out.contains(&format!("DOWN       {server}")),
        "{}",
        text(&failing)
    );
    assert!(
        String::from_utf8_lossy(&failing.stderr)
            .contains("upstream web has no healthy server and is failing open"),
        "{}",
        text(&failing)
    );

    elb.stop();
    let stopped = status(&elb.name, &elb.state_dir, &[]);
    assert_eq!(stopped.status.code(), Some(2), "{}", text(&stopped));
    assert!(
        String::from_utf8_lossy(&stopped.stdout)
            .contains(&format!("elb {} is not running", elb.name)),
        "{}",
        text(&stopped)
    );
    let never = status("NEVERRAN", &elb.state_dir, &[]);
    assert_eq!(never.status.code(), Some(2), "{}", text(&never));
}

#[test]
fn a_killed_elb_is_not_running() {
    let mut elb = L7Builder::new()
        .arg("--workers")
        .arg("1")
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    assert_eq!(
        status(&elb.name, &elb.state_dir, &[]).status.code(),
        Some(0)
    );
    let pid = elb.process.pid().expect("pid");
    // SAFETY: the elb this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    elb.process
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    let output = status(&elb.name, &elb.state_dir, &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("its process {pid}")),
        "the stale record is recognised: {}",
        text(&output)
    );
    elb.stop();
}

#[test]
fn the_token_is_needed_when_set() {
    let elb = L7Builder::new()
        .arg("--workers")
        .arg("1")
        .arg("--admin-token")
        .arg("s3cret")
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    let without = status(&elb.name, &elb.state_dir, &[]);
    assert_eq!(without.status.code(), Some(3), "{}", text(&without));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("set ELB_ADMIN_TOKEN or --admin-token"),
        "{}",
        text(&without)
    );
    let with = status(&elb.name, &elb.state_dir, &[("ELB_ADMIN_TOKEN", "s3cret")]);
    assert_eq!(with.status.code(), Some(0), "{}", text(&with));
}

/// `elb status` run inside `ns`, where that elb's admin address is.
fn status_in(ns: &NetNs, elb_name: &str, run_dir: &Path) -> Output {
    let (name, dir) = (elb_name.to_owned(), run_dir.to_owned());
    ns.enter(move || status(&name, &dir, &[]))
        .expect("enter namespace")
}

#[test]
fn xdp_attachment_running_and_pinned_after_exit() {
    require_root_and_bpf!();
    let lb = NetNs::new("elbsl").expect("lb namespace");
    let peer = NetNs::new("elbsp").expect("peer namespace");
    let veth = veth_pair(&lb, &["10.79.0.1/24"], &peer, &["10.79.0.2/24"]).expect("veth");
    let dir = tempfile::tempdir().expect("temp dir");
    let run_dir = dir.path().to_str().expect("utf-8").to_owned();
    let state = format!("{run_dir}/state.json");
    let name = unique_name("S");
    let mut elb = ElbProcess::spawn(
        &[
            "run",
            "--name",
            &name,
            "--xdp-iface",
            &veth.a,
            "--xdp-mode",
            "driver",
            "--run-dir",
            &run_dir,
            "--state-file",
            &state,
            "--listen",
            "127.0.0.1:0",
        ],
        Some(&lb),
    )
    .expect("spawn elb");
    elb.wait_for_log(Duration::from_secs(10), "elb running")
        .expect("elb attaches its program");

    let running = status_in(&lb, &name, dir.path());
    assert_eq!(running.status.code(), Some(0), "{}", text(&running));
    let out = String::from_utf8_lossy(&running.stdout).into_owned();
    assert!(
        out.contains("L4 services (xdp data plane)"),
        "{}",
        text(&running)
    );
    assert!(
        out.contains(&format!("XDP\n  {:<16} attached in driver mode", veth.a)),
        "{}",
        text(&running)
    );

    // The program stays attached after elb exits: its pins say so.
    elb.stop().expect("stop elb");
    let stopped = status_in(&lb, &name, dir.path());
    assert_eq!(stopped.status.code(), Some(2), "{}", text(&stopped));
    let out = String::from_utf8_lossy(&stopped.stdout).into_owned();
    assert!(
        out.contains(&format!("elb {name} is not running")),
        "{}",
        text(&stopped)
    );
    assert!(
        out.contains(&format!("{:<16} attached (ifindex ", veth.a))
            && out.contains("still forwarding L4 services"),
        "{}",
        text(&stopped)
    );
    assert!(out.contains("counters: flow_hits "), "{}", text(&stopped));
    // Dropping `elb` runs `elb teardown` for it.
}

/// The run record follows a takeover: after `elb run --takeover`, `elb
/// status` reaches the new elb (the old one exiting does not remove the
/// new one's record); a failed takeover leaves the old one's.
#[test]
fn the_record_follows_a_takeover() {
    let mut old = L7Builder::new()
        .arg("--workers")
        .arg("1")
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(old.state_dir.clone());
    let record = || {
        let path = old.state_dir.join(format!("{}.admin.json", old.name));
        let text = std::fs::read_to_string(&path).expect("run record");
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["pid"].as_u64()
    };
    assert_eq!(record(), old.process.pid().map(u64::from));

    // A takeover that fails (bad flag value) before it serves.
    let state = old.state_dir.join("state.json");
    let failing = Command::new(elb_binary().expect("elb"))
        .args([
            "run",
            "--name",
            &old.name,
            "--listen",
            &old.addr.to_string(),
        ])
        .arg("--state-file")
        .arg(&state)
        .arg("--run-dir")
        .arg(&old.state_dir)
        .args(["--takeover", "--header-timeout", "soon"])
        .output()
        .expect("run the failing takeover");
    assert!(!failing.status.success());
    assert_eq!(record(), old.process.pid().map(u64::from));
    assert_eq!(
        status(&old.name, &old.state_dir, &[]).status.code(),
        Some(0)
    );

    let mut new = elb_tests::l7::L7Builder::same_as(&old)
        .arg("--workers")
        .arg("1")
        .arg("--takeover")
        .start()
        .expect("start the new elb");
    new.process
        .wait_for_log(Duration::from_secs(15), "takeover complete")
        .expect("the new elb took over");
    old.process
        .wait_exit(Duration::from_secs(10))
        .expect("the old elb exits");
    assert_eq!(record(), new.process.pid().map(u64::from));
    let output = status(&new.name, &new.state_dir, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    new.stop();
    assert_eq!(
        status(&new.name, &new.state_dir, &[]).status.code(),
        Some(2)
    );
}
