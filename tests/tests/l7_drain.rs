//! SIGTERM drains a real elb: it stops accepting at once, closes idle
//! keep-alive connections, lets requests in flight finish (their answer
//! says `Connection: close`) and exits when nothing is left, or at
//! `--drain-timeout`; a second SIGTERM exits at once.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use elb_tests::{backend::Backend, http, l7::start_with};

const HOST: &str = "drain.example.com";

fn sigterm(pid: u32) {
    // SAFETY: a plain signal to the elb this test started.
    let sent = unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill");
}

/// Sends a request whose answer the backend delays by `delay_ms`.
fn slow_request(stream: &mut TcpStream, delay_ms: u64) {
    write!(
        stream,
        "GET /slow?delay_ms={delay_ms} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    )
    .expect("send");
}

/// Everything the peer sends until it closes.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_when_done() {
    let mut s = start_with(&[]);
    let backend = Backend::start("drained").expect("backend");
    s.elb.route(HOST, "web", &[(backend.addr(), "")]);
    let addr = s.elb.addr;
    let mut idle = TcpStream::connect(addr).expect("connect");
    http::keep_alive_get(HOST, &mut idle, "/");
    let mut busy = TcpStream::connect(addr).expect("connect");
    slow_request(&mut busy, 1_500);
    std::thread::sleep(Duration::from_millis(300));

    let pid = s.elb.process.pid().expect("pid");
    let signalled = Instant::now();
    sigterm(pid);
    // The idle connection closes at once.
    assert!(http::time_to_close(&mut idle, Duration::from_secs(3)) < Duration::from_secs(1));
    // No new connection is accepted.
    let refused = Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(
            refused.elapsed() < Duration::from_secs(1),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The request in flight is answered, and its connection then closed.
    let answer = read_to_close(&mut busy, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    // Nothing left: elb exits well before the 30 s drain timeout.
    let status = s
        .elb
        .process
        .wait_exit(Duration::from_secs(5))
        .expect("exit");
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(4));
    let log = s.elb.process.plain_log();
    assert!(log.contains("shutting down: no new connections"), "{log}");
}

#[test]
fn the_drain_timeout_bounds_the_wait_and_a_second_sigterm_exits_at_once() {
    for second_signal in [false, true] {
        let mut s = start_with(&["--drain-timeout", "2s"]);
        let backend = Backend::start("stuck").expect("backend");
        s.elb.route(HOST, "web", &[(backend.addr(), "")]);
        let mut busy = TcpStream::connect(s.elb.addr).expect("connect");
        slow_request(&mut busy, 20_000);
        std::thread::sleep(Duration::from_millis(300));
        let pid = s.elb.process.pid().expect("pid");
        let signalled = Instant::now();
        sigterm(pid);
        if second_signal {
            // Let the first signal's drain begin before the second.
            std::thread::sleep(Duration::from_millis(300));
            sigterm(pid);
        }
        let status = s
            .elb
            .process
            .wait_exit(Duration::from_secs(6))
            .expect("exit");
        let took = signalled.elapsed();
        assert!(status.success(), "{status}");
        if second_signal {
            assert!(took < Duration::from_millis(1_500), "{took:?}");
            assert!(
                s.elb
                    .process
                    .plain_log()
                    .contains("second signal: exiting now"),
                "the early exit is logged"
            );
        } else {
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(4),
                "{took:?}"
            );
        }
        // Either way the stuck request's connection ends unanswered.
        let answer = read_to_close(&mut busy, Duration::from_secs(2));
        assert!(answer.is_empty(), "{answer}");
    }
}
