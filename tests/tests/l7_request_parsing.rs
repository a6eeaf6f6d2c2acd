//! How elb parses what a client sends (issue 12's defects, one section
//! each), over raw sockets so that the exact bytes and the write pattern
//! are the test's.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use elb_tests::{
    backend::Backend,
    l7::{L7Elb, start_with},
};
use serde_json::Value;

const HOST: &str = "probe.test";

struct Setup {
    started: elb_tests::l7::Setup,
    up1: (Backend, Backend),
    secret: Backend,
}

impl Setup {
    fn elb(&self) -> &L7Elb {
        &self.started.elb
    }

    fn hits(&self) -> u64 {
        self.up1.0.hits() + self.up1.1.hits() + self.secret.hits()
    }
}

/// elb with `extra` flags; `probe.test` → `up1` (b1, b2) and `secret.test`
/// → `sec` (one backend named "secret"), default server parameters.
fn start(extra: &[&str]) -> Setup {
    let started = start_with(extra);
    let b1 = Backend::start("b1").expect("backend b1");
    let b2 = Backend::start("b2").expect("backend b2");
    let secret = Backend::start("secret").expect("backend secret");
    let elb = &started.elb;
    elb.route(HOST, "up1", &[(b1.addr(), ""), (b2.addr(), "")]);
    elb.route("secret.test", "sec", &[(secret.addr(), "")]);
    Setup {
        started,
        up1: (b1, b2),
        secret,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to elb");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Everything elb sends until it closes (or the read timeout).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// One response parsed from raw bytes (Content-Length framing, which both
/// elb's own answers and the test backends use).
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn echo(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not the backend's JSON ({e}): {self:?}"))
    }
}

fn parse_responses(mut bytes: &[u8]) -> Vec<Raw> {
    let mut responses = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let rest = &bytes[end + 4..];
        let body = rest[..length.min(rest.len())].to_vec();
        bytes = &rest[body.len()..];
        responses.push(Raw { status, head, body });
    }
    responses
}

/// Sends `request` in one write and reads elb's answers until it closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<Raw> {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send");
    parse_responses(&read_all(&mut stream))
}

/// The only answer to `request`.
fn one_answer(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut answers = exchange(addr, request);
    assert_eq!(
        answers.len(),
        1,
        "{}: {answers:?}",
        String::from_utf8_lossy(request)
    );
    answers.remove(0)
}

// 1. Host (RFC 9112 §3.2)

#[test]
fn duplicate_missing_and_invalid_hosts_are_400_and_reach_no_backend() {
    let s = start(&[]);
    let cases: &[(&str, &[u8])] = &[
        (
            "two different Hosts",
            b"GET /x HTTP/1.1\r\nHost: secret.test\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "the same Host twice",
            b"GET /x HTTP/1.1\r\nHost: probe.test\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "HTTP/1.1 absolute-form without Host",
            b"GET http://probe.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "a path in Host",
            b"GET /x HTTP/1.1\r\nHost: probe.test/../x\r\nConnection: close\r\n\r\n",
        ),
        (
            "user info in Host",
            b"GET /x HTTP/1.1\r\nHost: user@probe.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "a space in Host",
            b"GET /x HTTP/1.1\r\nHost: probe.test x\r\nConnection: close\r\n\r\n",
        ),
        (
            "a named port",
            b"GET /x HTTP/1.1\r\nHost: probe.test:http\r\nConnection: close\r\n\r\n",
        ),
        (
            "user info in an absolute-form target",
            b"GET http://user@probe.test/x HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let answer = one_answer(s.elb().addr, request);
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        assert!(
            answer.head.contains("content-type: text/plain"),
            "elb's own answer, not a backend's: {answer:?}"
        );
    }
    assert_eq!(s.hits(), 0, "a refused request reached a backend");
    // The usual request still works.
    let answer = one_answer(
        s.elb().addr,
        b"GET /x HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn an_absolute_form_target_wins_over_host_and_the_backend_gets_it_as_host() {
    let s = start(&[]);
    let answer = one_answer(
        s.elb().addr,
        b"GET http://probe.test/x?q=1 HTTP/1.1\r\nHost: secret.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let echo = answer.echo();
    assert_ne!(echo["server"], "secret", "routed by Host: {echo}");
    assert_eq!(echo["headers"]["host"], HOST, "{echo}");
    assert_eq!(echo["path"], "/x?q=1", "origin-form upstream: {echo}");
    assert_eq!(s.secret.hits(), 0);
    // HTTP/1.0 needs no Host: the target alone routes.
    let answer = one_answer(s.elb().addr, b"GET http://secret.test/y HTTP/1.0\r\n\r\n");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.echo()["server"], "secret");
    assert_eq!(answer.echo()["headers"]["host"], "secret.test");
}
