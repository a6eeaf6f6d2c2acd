//! `elb status` with the real binary against a real elb: healthy (exit 0),
//! an upstream failing open (1), not running (2), the token (3 without).
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    elb_process::elb_binary,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc},
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
