//! Resource guards: the fd limit raised at start, `--max-connections` on
//! the client side and `--max-server-connections` towards a server, each
//! answering 503 beyond the limit and logging once per episode.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend, elb_process::ElbProcess, http, l7::start_with as start, netns::unique_name,
    ports::free_port,
};

/// A connection elb has accepted and served once, kept open (keep-alive).
fn held_connection(elb: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(elb).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /__erulb__/upstream HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("read the answer");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// One request on a fresh connection, answered in full (or the error).
fn status_of_new_connection(elb: SocketAddr) -> Result<u16, String> {
    http::get(elb, "/__erulb__/upstream", &[])
        .map(|r| r.status)
        .map_err(|e| format!("{e:#}"))
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn beyond_max_connections_new_clients_get_503_and_one_log_line() {
    let s = start(&["--max-connections", "4"]);
    let addr = s.elb.addr;
    let held: Vec<TcpStream> = (0..4).map(|_| held_connection(addr)).collect();
    for _ in 0..3 {
        assert_eq!(status_of_new_connection(addr), Ok(503));
    }
    let log = s.elb.process.plain_log();
    assert_eq!(count(&log, "reached --max-connections"), 1, "{log}");

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of_new_connection(addr) != Ok(200) {
        assert!(Instant::now() < deadline, "no room after the clients left");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The slot is free a moment before the line is written.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = s.elb.process.plain_log();
        if log.contains("back under --max-connections") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(count(&log, "back under --max-connections"), 1, "{log}");
}

#[test]
fn a_server_at_its_connection_cap_gets_503_and_keeps_its_health() {
    let s = start(&["--max-server-connections", "2"]);
    let backend = Backend::start("b1").expect("backend");
    // max_fails=1: one failure counted against the server would take it
    // out for 10 s, and the last request would get a 502.
    s.elb
        .route("cap.test", "up1", &[(backend.addr(), "max_fails=1")]);
    backend.set_delay(Duration::from_millis(1500));
    let addr = s.elb.addr;
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            // Staggered so the two slow ones hold the slots first.
            std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
            std::thread::spawn(move || {
                let response = http::get(addr, "/", &[("Host", "cap.test")]).expect("GET");
                (response.status, started.elapsed())
            })
        })
        .collect();
    let mut results: Vec<(u16, Duration)> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    results.sort();
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 503, 503], "{results:?}");
    for (status, at) in &results {
        if *status == 503 {
            assert!(
                *at < Duration::from_millis(1400),
                "503 without waiting: {at:?}"
            );
        }
    }
    let log = s.elb.process.plain_log();
    assert_eq!(count(&log, "upstream connection limit reached"), 1, "{log}");

    // At the cap a finished connection is closed, not pooled; its slot
    // comes back once it has closed, a moment after its response. A 502
    // would mean the server was blamed and taken out (max_fails=1).
    backend.set_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let after = s.elb.get("cap.test", "/", None);
        match after.status {
            200 => break,
            503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("the server was blamed: {} {}", after.status, after.text()),
        }
    }
}

/// nginx's `max_conns=N` server parameter: the server's own cap, before
/// `--max-server-connections`.
#[test]
fn a_servers_max_conns_caps_its_connections() {
    let s = start(&["--max-server-connections", "10"]);
    let backend = Backend::start("b1").expect("backend");
    s.elb
        .route("conns.test", "up1", &[(backend.addr(), "max_conns=1")]);
    let listed = s.elb.admin_ok("GET", "upstream", None);
    assert_eq!(listed["up1"][0]["max_conns"], 1, "{listed}");
    backend.set_delay(Duration::from_millis(1000));
    let addr = s.elb.addr;
    let slow = std::thread::spawn(move || {
        http::get(addr, "/", &[("Host", "conns.test")])
            .expect("GET")
            .status
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = s.elb.get("conns.test", "/", None);
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(slow.join().expect("slow client"), 200);
}

/// An upgrade to `host` through elb, switched (101). A connection that
/// just closed may hold its client slot a moment longer than the client
/// sees: a 503 is tried again for a while.
fn open_tunnel(elb: SocketAddr, host: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_tunnel(elb, host) {
            Ok(stream) => return stream,
            Err(head) if head.starts_with("http/1.1 503") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(head) => panic!("no tunnel to {host}: {head}"),
        }
    }
}

fn try_tunnel(elb: SocketAddr, host: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(elb).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let handshake = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    if head.starts_with("http/1.1 101") {
        Ok(stream)
    } else {
        Err(head)
    }
}

/// An upgraded connection (WebSocket and the like) outlives hyper's
/// connection tasks; its tunnel keeps both descriptors, and both slots.
#[test]
fn upgraded_tunnels_keep_their_slots() {
    let s = start(&["--max-connections", "2", "--max-server-connections", "1"]);
    let (b1, b2) = (
        Backend::start("b1").expect("b1"),
        Backend::start("b2").expect("b2"),
    );
    s.elb.route("one.test", "up1", &[(b1.addr(), "")]);
    s.elb.route("two.test", "up2", &[(b2.addr(), "")]);
    let addr = s.elb.addr;
    let mut first = open_tunnel(addr, "one.test");
    // The tunnel holds b1's only connection slot.
    let refused = http::request(
        addr,
        "GET",
        "/chat",
        &[
            ("Host", "one.test"),
            ("Connection", "Upgrade"),
            ("Upgrade", "echo"),
        ],
        None,
    )
    .expect("a second upgrade to b1");
    assert_eq!(refused.status, 503, "{}", refused.text());
    // Two tunnels hold both client slots: a third client gets 503.
    let second = open_tunnel(addr, "two.test");
    assert_eq!(status_of_new_connection(addr), Ok(503));
    first.write_all(b"ping").expect("send");
    let mut echoed = [0u8; 4];
    first.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping", "the tunnel still works");
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of_new_connection(addr) != Ok(200) {
        assert!(Instant::now() < deadline, "the slots did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_one_at_start() {
    let temp = tempfile::tempdir().expect("dir");
    let state = temp.path().join("state.json");
    let name = unique_name("F");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "run",
        "--name",
        &name,
        "--listen",
        &listen,
        "--state-file",
        state.to_str().expect("utf-8"),
        "--run-dir",
        temp.path().to_str().expect("utf-8"),
    ];
    let mut elb = ElbProcess::spawn_wrapped(&["prlimit", "--nofile=1024:4096", "--"], &args, None)
        .expect("spawn elb");
    let addr: SocketAddr = listen.parse().expect("addr");
    elb.wait_until(Duration::from_secs(20), || {
        status_of_new_connection(addr) == Ok(200)
    })
    .expect("elb serves");
    let pid = elb.pid().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    let log = elb.plain_log();
    assert!(log.contains("soft=4096 was=1024 hard=4096"), "{log}");
    // The default budget comes from it: (4096 - 512) / 2.
    assert!(log.contains("max_connections=1792"), "{log}");
    let _ = elb.stop();
}
