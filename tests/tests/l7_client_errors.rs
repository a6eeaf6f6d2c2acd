//! A client must never be able to take upstream servers out: a malformed,
//! truncated or stalled request body is the client's error (400 / 408, or a
//! plain close when the client is gone), never a server failure for passive
//! health, and never retried elsewhere. Server faults on requests with a
//! body still count (positive controls at the end).
//!
//! Every case runs against the default `max_fails=1 fail_timeout=10s`: one
//! miscounted failure takes a server out for 10 s, which the GETs right
//! after would see as a 502 or as only one backend answering.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    http,
    l7::{L7Elb, start_with},
};

const HOST: &str = "probe.test";

struct Setup {
    started: elb_tests::l7::Setup,
    _backends: (Backend, Backend),
}

/// elb with `extra` flags; `probe.test` → upstream `up1` of two backends
/// with default parameters.
fn start(extra: &[&str]) -> Setup {
    let started = start_with(extra);
    let b1 = Backend::start("b1").expect("backend b1");
    let b2 = Backend::start("b2").expect("backend b2");
    started
        .elb
        .route(HOST, "up1", &[(b1.addr(), ""), (b2.addr(), "")]);
    Setup {
        started,
        _backends: (b1, b2),
    }
}

/// Both backends still answer: neither was taken out of rotation.
fn assert_both_backends_serve(elb: &L7Elb) {
    let mut servers = BTreeSet::new();
    for i in 0..4 {
        let response = elb.get(HOST, "/", None);
        assert_eq!(
            response.status,
            200,
            "GET {i} after the client errors: {}\nelb log:\n{}",
            response.text(),
            elb.process.log()
        );
        let echo = response.json().expect("backend JSON");
        servers.insert(echo["server"].as_str().expect("server name").to_owned());
    }
    assert_eq!(
        servers,
        BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
        "both backends must still be in rotation"
    );
}

/// No try was counted against a server.
fn assert_no_failed_try(elb: &L7Elb) {
    let log = elb.process.log();
    assert!(
        !log.contains("upstream try failed"),
        "a client error was counted against a server:\n{log}"
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to elb");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
}

/// The status code of the response elb sends on `stream`.
fn read_status(stream: &TcpStream) -> u16 {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read the status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line, got {line:?}"))
}

const MALFORMED_CHUNKED: &[u8] = b"POST /x HTTP/1.1\r\nHost: probe.test\r\n\
    Transfer-Encoding: chunked\r\n\r\nzz\r\nAAAA\r\n0\r\n\r\n";

/// The head of an upload announcing 1000 bytes, with the first 10.
const PARTIAL_UPLOAD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: probe.test\r\n\
    Content-Length: 1000\r\n\r\n0123456789";

#[test]
fn malformed_chunked_bodies_are_400_and_take_no_server_out() {
    let s = start(&[]);
    for i in 0..2 {
        let mut stream = connect(s.started.elb.addr);
        stream.write_all(MALFORMED_CHUNKED).expect("send");
        assert_eq!(read_status(&stream), 400, "malformed chunked request {i}");
    }
    assert_both_backends_serve(&s.started.elb);
    assert_no_failed_try(&s.started.elb);
}

#[test]
fn truncated_bodies_are_400_or_a_close_and_take_no_server_out() {
    let s = start(&[]);
    // The client stops sending (half-close) but still listens: 400.
    let mut stream = connect(s.started.elb.addr);
    stream.write_all(PARTIAL_UPLOAD).expect("send");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_status(&stream), 400, "truncated body, half-closed");
    // The client closes entirely: nobody is left to answer, elb just closes.
    let mut stream = connect(s.started.elb.addr);
    stream.write_all(PARTIAL_UPLOAD).expect("send");
    drop(stream);
    // Nothing to read back: give elb a moment to see the close and handle
    // the request (a miscount would happen within milliseconds).
    thread::sleep(Duration::from_millis(500));
    assert_both_backends_serve(&s.started.elb);
    assert_no_failed_try(&s.started.elb);
}

#[test]
fn stalled_uploads_are_408_and_take_no_server_out() {
    // The upstream timeout is shorter than the client body timeout: a stall
    // while the client uploads must not count as the server's timeout.
    let s = start(&["--client-body-timeout", "1s", "--upstream-timeout", "500ms"]);
    let addr = s.started.elb.addr;
    let started = Instant::now();
    // Two at once, one per backend under round robin.
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                stream.write_all(PARTIAL_UPLOAD).expect("send");
                // ...and nothing more: the connection stays open.
                let status = read_status(&stream);
                (status, started.elapsed())
            })
        })
        .collect();
    for upload in uploads {
        let (status, elapsed) = upload.join().expect("upload thread");
        assert_eq!(status, 408, "stalled upload, answered after {elapsed:?}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
            "408 after the 1 s client body timeout, not {elapsed:?}"
        );
    }
    assert_both_backends_serve(&s.started.elb);
    assert_no_failed_try(&s.started.elb);
}

#[test]
fn a_slow_but_steady_upload_is_neither_timed_out_nor_cut() {
    // Each pause (300 ms) is within the client body timeout; the whole
    // upload (about 1.8 s) is longer than the upstream's response timeout,
    // which only runs once the body has been sent.
    let s = start(&["--client-body-timeout", "1s", "--upstream-timeout", "500ms"]);
    let mut stream = connect(s.started.elb.addr);
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: probe.test\r\nContent-Length: 60\r\nConnection: close\r\n\r\n")
        .expect("send the head");
    for _ in 0..6 {
        thread::sleep(Duration::from_millis(300));
        stream.write_all(&[b'x'; 10]).expect("send 10 bytes");
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"body_len\":60"), "{response}");
    assert_no_failed_try(&s.started.elb);
}

// Positive controls: what the server does wrong still counts, also for
// requests with a body.

#[test]
fn a_stopped_server_is_still_taken_out_for_uploads() {
    let s = start(&[]);
    let mut gone = Backend::start("gone").expect("backend");
    let alive = Backend::start("alive").expect("backend");
    s.started
        .elb
        .route("f.test", "up2", &[(gone.addr(), ""), (alive.addr(), "")]);
    gone.stop();
    // The listener closes in the background: wait until connects are refused,
    // else a POST could land in its backlog and be cut after being sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(gone.addr()).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the stopped backend still accepts"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let body = vec![b'x'; 1000];
    for i in 0..6 {
        let response = http::request(
            s.started.elb.addr,
            "POST",
            "/",
            &[("Host", "f.test")],
            Some(&body),
        )
        .expect("POST");
        assert_eq!(response.status, 200, "POST {i}: {}", response.text());
        let echo = response.json().expect("JSON");
        assert_eq!(echo["server"], "alive", "POST {i}");
        assert_eq!(echo["body_len"], 1000, "POST {i}");
    }
    // The connect failure was counted once (max_fails=1), then the stopped
    // server was out and never tried again.
    let log = s.started.elb.process.log();
    assert_eq!(log.matches("upstream try failed").count(), 1, "{log}");
}

#[test]
fn a_server_that_does_not_answer_a_complete_upload_times_out_and_is_taken_out() {
    let s = start(&["--upstream-timeout", "300ms"]);
    let slow = Backend::start("slow").expect("backend");
    slow.set_delay(Duration::from_secs(3));
    s.started
        .elb
        .route("slow.test", "up2", &[(slow.addr(), "")]);
    let started = Instant::now();
    let response = http::request(
        s.started.elb.addr,
        "POST",
        "/",
        &[("Host", "slow.test")],
        Some(b"a small body, sent at once"),
    )
    .expect("POST");
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Taken out (max_fails=1): no live server left.
    let response = s.started.elb.get("slow.test", "/", None);
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response.text().contains("no live upstream"),
        "{}",
        response.text()
    );
}

/// What a [`RawServer`] does with each connection.
#[derive(Clone, Copy)]
enum Conduct {
    /// Reads a little of the request and hangs up.
    HangUp,
    /// Keeps the connection open and never reads from it.
    Ignore,
}

/// A misbehaving upstream on a plain socket, with a small receive buffer so
/// that a request it does not read backs up into elb quickly.
struct RawServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RawServer {
    fn start(conduct: Conduct) -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind");
        socket.listen(16).expect("listen");
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                match conduct {
                    Conduct::HangUp => {
                        let mut buf = [0u8; 64];
                        let _ = stream.read(&mut buf);
                    }
                    Conduct::Ignore => held.push(stream),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_server_that_breaks_the_connection_of_an_upload_is_taken_out() {
    let s = start(&[]);
    let hang_up = RawServer::start(Conduct::HangUp);
    let alive = Backend::start("alive").expect("backend");
    s.started
        .elb
        .route("h.test", "up2", &[(hang_up.addr, ""), (alive.addr(), "")]);
    let body = vec![b'x'; 1000];
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = http::request(
            s.started.elb.addr,
            "POST",
            "/",
            &[("Host", "h.test")],
            Some(&body),
        )
        .expect("POST");
        statuses.push(response.status);
    }
    statuses.sort_unstable();
    // One POST went to the server that hung up: 502, not retried (its body
    // was sent). That server is out now, so the other POST and every GET
    // go to the live one.
    assert_eq!(statuses, [200, 502], "{}", s.started.elb.process.log());
    for i in 0..4 {
        let response = s.started.elb.get("h.test", "/", None);
        assert_eq!(response.status, 200, "GET {i}: {}", response.text());
        assert_eq!(response.json().expect("JSON")["server"], "alive");
    }
}

#[test]
fn a_server_that_stops_reading_an_upload_times_out_and_is_taken_out() {
    // The client keeps sending; the server takes nothing: the upstream's
    // turn, so its (short) timeout applies, not the client body timeout.
    let s = start(&[
        "--upstream-timeout",
        "500ms",
        "--client-body-timeout",
        "30s",
    ]);
    let deaf = RawServer::start(Conduct::Ignore);
    s.started.elb.route("deaf.test", "up2", &[(deaf.addr, "")]);
    let stream = connect(s.started.elb.addr);
    let mut writer = stream.try_clone().expect("clone");
    const LEN: usize = 16 << 20;
    let upload = thread::spawn(move || {
        let head = format!("POST / HTTP/1.1\r\nHost: deaf.test\r\nContent-Length: {LEN}\r\n\r\n");
        // Fails once elb has answered and closed: that is expected.
        let _ = writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&vec![b'x'; LEN]));
    });
    let started = Instant::now();
    assert_eq!(read_status(&stream), 504, "{}", s.started.elb.process.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let _ = stream.shutdown(Shutdown::Both);
    upload.join().expect("upload thread");
    // Taken out (max_fails=1): no live server left.
    let response = s.started.elb.get("deaf.test", "/", None);
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response.text().contains("no live upstream"),
        "{}",
        response.text()
    );
}
