//! `systemctl reload elb` as dist/elb.service runs it, with this test in
//! systemd's place: a notify socket ($NOTIFY_SOCKET) it reads, the unit's
//! ExecStart (`elb run`) and ExecReload (`elb run --takeover --detach`)
//! command lines. The main elb says READY=1; the reload command returns
//! success once the new elb serves; the new elb says MAINPID=<its pid>
//! and waits until "systemd" has read it (BARRIER=1) before the old one
//! may exit, so systemd never sees its main process exit during a reload.
use std::{
    fs::File,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use elb_tests::{backend::Backend, elb_process::elb_binary, http, ports::free_port};

const HOST: &str = "reload.example.com";

/// Reads the next notification; descriptors sent with it (BARRIER=1's
/// pipe) are closed by the kernel since we take none, as systemd closes
/// them once it processed the message.
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
}

/// Stops a process that is not our child (the detached elb).
struct Detached(u32);

impl Drop for Detached {
    fn drop(&mut self) {
        // SAFETY: signals to the elb this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn elb_command(dir: &Path, args: &[&str], log: &str) -> Command {
    let mut command = Command::new(elb_binary().expect("elb binary"));
    let log = File::create(dir.join(log)).expect("log file");
    command
        .args(args)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    command
}

#[test]
fn a_reload_as_the_unit_runs_it_hands_the_main_pid_to_the_new_elb_before_the_old_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = UnixDatagram::bind(dir.path().join("notify.sock")).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state.json");
    let state = state.to_str().expect("utf-8");
    let run_dir = dir.path().to_str().expect("utf-8");
    let elb_args = [
        "--name",
        "RELOAD",
        "--listen",
        &listen,
        "--state-file",
        state,
        "--run-dir",
        run_dir,
    ];
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    // ExecStart.
    let mut start: Vec<&str> = vec!["run"];
    start.extend(elb_args);
    let mut main = Reaped(
        elb_command(dir.path(), &start, "main.log")
            .spawn()
            .expect("start elb"),
    );
    let main_pid = main.0.id();
    assert_eq!(next_message(&notify), "READY=1", "{}", log("main.log"));
    assert_eq!(next_message(&notify), "BARRIER=1");
    let backend = Backend::start("b").expect("backend");
    let addr = listen.parse().expect("addr");
    for (endpoint, body) in [
        (
            "upstream",
            serde_json::json!({"web": {backend.addr().to_string(): ""}}),
        ),
        (
            "domain",
            serde_json::json!({HOST: elb_tests::l7::backend_doc("web")}),
        ),
    ] {
        let response = http::admin(addr, "PUT", endpoint, Some(&body)).expect("admin");
        assert_eq!(response.status, 200, "{}", response.text());
    }

    // ExecReload: returns once the new elb serves.
    let mut reload: Vec<&str> = vec!["run", "--takeover", "--detach"];
    reload.extend(elb_args);
    let mut reloading = elb_command(dir.path(), &reload, "reload.log")
        .spawn()
        .expect("reload");
    let reload_pid = reloading.id();
    let main_pid_message = next_message(&notify);
    let new_pid: u32 = main_pid_message
        .strip_prefix("MAINPID=")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("expected MAINPID=, got {main_pid_message:?}"));
    let _new = Detached(new_pid);
    assert_ne!(new_pid, main_pid);
    assert_ne!(new_pid, reload_pid, "the new elb is the detached child");
    // Until systemd has read MAINPID= (the barrier), the old one stays.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        main.0.try_wait().expect("wait").is_none(),
        "the old elb exited before systemd knew the new main pid:\n{}",
        log("main.log")
    );
    assert_eq!(next_message(&notify), "BARRIER=1");
    assert_eq!(next_message(&notify), "READY=1");
    assert_eq!(next_message(&notify), "BARRIER=1");
    let status = reloading.wait().expect("reload command");
    assert!(status.success(), "reload failed:\n{}", log("reload.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let old = loop {
        if let Some(status) = main.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the old elb did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(old.success(), "{}", log("main.log"));
    assert!(alive(new_pid));
    let response = http::get(addr, "/", &[("Host", HOST)]).expect("request to the new elb");
    assert_eq!(response.status, 200, "{}", response.text());
    let lock = std::fs::read_to_string(dir.path().join("RELOAD.lock")).expect("lock file");
    assert_eq!(
        lock.trim(),
        new_pid.to_string(),
        "the lock names the new elb"
    );

    // A reload whose new elb cannot start fails, and the running one
    // (now the detached one) serves on.
    let mut bad: Vec<&str> = vec!["run", "--takeover", "--detach", "--xdp-iface", "nosuch0"];
    bad.extend(elb_args);
    let status = elb_command(dir.path(), &bad, "bad.log")
        .status()
        .expect("bad reload");
    assert!(!status.success(), "{}", log("bad.log"));
    assert!(
        log("bad.log").contains("stopped before it served"),
        "{}",
        log("bad.log")
    );
    assert!(alive(new_pid));
    let response = http::get(addr, "/", &[("Host", HOST)]).expect("request after a failed reload");
    assert_eq!(response.status, 200);
}
