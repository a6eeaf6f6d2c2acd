//! Takeovers with the XDP data plane, in network namespaces: long-lived
//! TCP connections through an XDP L4 service keep their server across five
//! takeovers in a row, and a client in the client namespace opening new
//! L4 connections and HTTP requests to elb's listener the whole time sees
//! no failure. (The L4 flows alone would also survive a plain restart:
//! the pinned maps and program did that before; the HTTP requests would
//! not, which is what makes this test fail without the handover.)
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use elb_tests::{
    l4_e2e::{Conn, Dataplane, E2e, OK, VIP, connect, upstream_doc},
    require_root_and_bpf,
};

/// Counts of what the client saw.
#[derive(Default)]
struct Seen {
    l4_ok: AtomicU64,
    http_ok: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// One new L4 connection (asks its server's name) and one HTTP request to
/// elb's listener (any answer from elb counts: the admin API refuses
/// non-local clients), again and again until `stop`.
fn client_loop(ns: std::path::PathBuf, http: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let ns = File::open(ns).expect("client namespace");
    // SAFETY: setns only moves this thread, which the test made for it.
    assert_eq!(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let timeout = Duration::from_secs(2);
    let fail = |what: String| seen.failures.lock().expect("lock").push(what);
    while !stop.load(Ordering::Relaxed) {
        let l4 = TcpStream::connect_timeout(&vip, timeout).and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(b"who\n")?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line)
        });
        match l4 {
            Ok(line) if line.starts_with('s') => {
                seen.l4_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(line) => fail(format!("L4: answer {line:?}")),
            Err(error) => fail(format!("L4: {error}")),
        }
        let answer = TcpStream::connect_timeout(&http, timeout).and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(
                b"GET /__erulb__/service HTTP/1.1\r\nHost: elb\r\nConnection: close\r\n\r\n",
            )?;
            let mut status = String::new();
            BufReader::new(stream).read_line(&mut status)?;
            Ok(status)
        });
        match answer {
            Ok(status) if status.starts_with("HTTP/1.1 ") => {
                seen.http_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => fail(format!("HTTP: {status:?}")),
            Err(error) => fail(format!("HTTP: {error}")),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn long_lived_xdp_connections_and_new_clients_survive_five_takeovers() {
    require_root_and_bpf!();
    let mut e2e = E2e::start(Dataplane::Xdp);
    e2e.elb
        .wait_for_log(Duration::from_secs(5), "L4 data plane: xdp")
        .expect("XDP data plane");
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    let service = format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
    assert_eq!(e2e.admin("PUT", "service", &service), OK);
    e2e.wait_serving();

    let mut long_lived: Vec<(Conn, String)> = (0..30)
        .map(|_| {
            let mut conn = connect(&e2e.net.client).expect("connect");
            let server = conn.ask().expect("first answer");
            (conn, server)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let http: SocketAddr = format!("10.50.0.1:{}", e2e.port).parse().expect("addr");
    let client = std::thread::spawn({
        let (ns, stop, seen) = (e2e.net.client.path(), Arc::clone(&stop), Arc::clone(&seen));
        move || client_loop(ns, http, stop, seen)
    });
    std::thread::sleep(Duration::from_millis(500));

    for round in 1..=5 {
        let new = e2e.start_elb_with(&["--takeover"]);
        let mut old = std::mem::replace(&mut e2e.elb, new);
        e2e.elb
            .wait_for_log(Duration::from_secs(15), "takeover complete")
            .unwrap_or_else(|e| panic!("takeover {round}: {e:#}"));
        let status = old
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("takeover {round}: the old elb did not exit: {e:#}"));
        assert!(status.success(), "{}", old.log());
        let old_log = old.plain_log();
        assert!(
            old_log.contains("xdp_map_writes_paused=true"),
            "the old elb paused its map writes:\n{old_log}"
        );
        e2e.elb
            .wait_for_log(Duration::from_secs(5), "L4 data plane: xdp")
            .expect("the new elb writes the maps");
        let log = e2e.elb.log();
        assert!(log.contains("adopted the pinned maps"), "{log}");
        assert!(log.contains("pinned link (hitless)"), "{log}");
        for (i, (conn, server)) in long_lived.iter_mut().enumerate() {
            let answer = conn
                .ask()
                .unwrap_or_else(|e| panic!("takeover {round}: long-lived connection {i}: {e}"));
            assert_eq!(&answer, server, "takeover {round}: connection {i} moved");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A change after the takeovers reaches the maps: the new elb writes
    // them (s3 removed: no new connection goes there).
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1)])),
        OK
    );
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..30 {
        let answer = connect(&e2e.net.client)
            .and_then(|mut c| c.ask())
            .expect("a new connection after the change");
        assert_ne!(answer, "s3", "the change was not written to the maps");
    }

    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");
    let failures = seen.failures.lock().expect("lock").clone();
    let (l4_ok, http_ok) = (
        seen.l4_ok.load(Ordering::Relaxed),
        seen.http_ok.load(Ordering::Relaxed),
    );
    eprintln!(
        "across 5 takeovers: {l4_ok} new L4 connections and {http_ok} HTTP requests answered, \
         {} failed; 30 long-lived connections kept their server",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(l4_ok > 50 && http_ok > 50, "{l4_ok} L4, {http_ok} HTTP");
    e2e.elb.stop().expect("stop elb");
}

/// The userspace data plane: the VIP sockets are handed over too, so new
/// L4 connections and HTTP requests never fail across takeovers. What is
/// not handed over, as the log says: connections the old elb relays end
/// with it (after its short L4 drain).
#[test]
fn userspace_vips_are_handed_over_and_established_relays_end_with_the_old_elb() {
    require_root_and_bpf!();
    let mut e2e = E2e::start(Dataplane::Userspace);
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    let service = format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
    assert_eq!(e2e.admin("PUT", "service", &service), OK);
    e2e.wait_serving();
    let mut relayed = connect(&e2e.net.client).expect("connect");
    relayed.ask().expect("first answer");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let http: SocketAddr = format!("10.50.0.1:{}", e2e.port).parse().expect("addr");
    let client = std::thread::spawn({
        let (ns, stop, seen) = (e2e.net.client.path(), Arc::clone(&stop), Arc::clone(&seen));
        move || client_loop(ns, http, stop, seen)
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut vip_received = Vec::new();
    for round in 1..=2 {
        let new = e2e.start_elb_with(&["--takeover"]);
        let mut old = std::mem::replace(&mut e2e.elb, new);
        e2e.elb
            .wait_for_log(Duration::from_secs(15), "takeover complete")
            .unwrap_or_else(|e| panic!("takeover {round}: {e:#}"));
        let status = old
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("takeover {round}: the old elb did not exit: {e:#}"));
        assert!(status.success(), "{}", old.log());
        let old_log = old.plain_log();
        assert!(
            old_log.contains("not handed over: established L4 userspace"),
            "{old_log}"
        );
        let log = e2e.elb.plain_log();
        vip_received.push(log.contains("kind=L4Tcp addr=10.99.0.1:80"));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");
    let failures = seen.failures.lock().expect("lock").clone();
    eprintln!(
        "userspace, 2 takeovers: {} new L4 connections, {} HTTP requests, {} failed",
        seen.l4_ok.load(Ordering::Relaxed),
        seen.http_ok.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        vip_received,
        [true, true],
        "the VIP socket came with each takeover"
    );
    assert!(
        relayed.ask().is_err(),
        "a connection the old elb relayed ended with it"
    );
    e2e.elb.stop().expect("stop elb");
}
