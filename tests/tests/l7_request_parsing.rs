//! How elb parses what a client sends (issue 12's defects, one section
//! each), over raw sockets so that the exact bytes and the write pattern
//! are the test's.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
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

// 3. Upgrade requests with a body

#[test]
fn an_upgrade_request_with_a_body_is_served_as_a_plain_request() {
    // A short upstream timeout: the old fault was a backend waiting for a
    // body that never came, and the client's 504 after it.
    let s = start(&["--upstream-timeout", "3s"]);
    let started = Instant::now();
    let mut request = b"POST /up HTTP/1.1\r\nHost: probe.test\r\nConnection: Upgrade\r\n\
        Upgrade: h2c\r\nContent-Length: 52\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&[b'x'; 52]);
    // The same connection goes on with a chunked upgrade request and then a
    // plain one: the bodies were framed as bodies, nothing was tunnelled.
    request.extend_from_slice(
        b"POST /ws HTTP/1.1\r\nHost: probe.test\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
        GET /last HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
    );
    let answers = exchange(s.elb().addr, &request);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    let summary: Vec<_> = answers
        .iter()
        .map(|a| {
            (
                a.status,
                a.echo()["path"].clone(),
                a.echo()["body_len"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (200, "/up".into(), 52.into()),
            (200, "/ws".into(), 5.into()),
            (200, "/last".into(), 0.into())
        ],
        "{answers:?}"
    );
    for answer in &answers[..2] {
        let headers = &answer.echo()["headers"];
        assert!(headers.get("upgrade").is_none(), "{headers}");
        assert!(headers.get("connection").is_none(), "{headers}");
    }
}

#[test]
fn an_upgrade_request_without_a_body_is_still_tunnelled() {
    let s = start(&[]);
    let mut stream = connect(s.elb().addr);
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: probe.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the 101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream.write_all(b"ping").expect("send through the tunnel");
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping");
}

// 4. --max-header-bytes

/// A request head of exactly `len` bytes (request line, headers and the
/// empty line), padded by one header.
fn head_of(len: usize) -> Vec<u8> {
    let start = b"GET /pad HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\nX-Pad: ";
    let end = b"\r\n\r\n";
    let pad = len - start.len() - end.len();
    let mut head = start.to_vec();
    head.resize(start.len() + pad, b'a');
    head.extend_from_slice(end);
    assert_eq!(head.len(), len);
    head
}

#[derive(Clone, Copy, Debug)]
enum Writes {
    One,
    /// 2 KB pieces with a pause between them, each its own segment.
    Pieces,
}

/// The status elb answers to `request` written as `writes` says.
fn status_for(addr: SocketAddr, request: &[u8], writes: Writes) -> u16 {
    let mut stream = connect(addr);
    match writes {
        Writes::One => stream.write_all(request).expect("send"),
        Writes::Pieces => {
            for piece in request.chunks(2048) {
                // elb may answer 431 and close before the last pieces.
                if stream.write_all(piece).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let answers = parse_responses(&read_all(&mut stream));
    answers
        .first()
        .unwrap_or_else(|| panic!("no answer to a {}-byte head", request.len()))
        .status
}

fn assert_exact_limit(s: &Setup, limit: usize) {
    for writes in [Writes::One, Writes::Pieces] {
        let addr = s.elb().addr;
        assert_eq!(
            status_for(addr, &head_of(limit), writes),
            200,
            "a head of exactly {limit} bytes, {writes:?}"
        );
        assert_eq!(
            status_for(addr, &head_of(limit + 1), writes),
            431,
            "a head of {} bytes, {writes:?}",
            limit + 1
        );
    }
}

#[test]
fn the_head_limit_is_exact_whatever_the_write_pattern() {
    let s = start(&[]);
    // The report's case: one 110,000-byte header line, the default limit.
    let mut huge = b"GET /x HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\nX-Big: ".to_vec();
    huge.resize(huge.len() + 110_000, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    for writes in [Writes::One, Writes::Pieces] {
        assert_eq!(
            status_for(s.elb().addr, &huge, writes),
            431,
            "110,000-byte header, {writes:?}"
        );
    }
    assert_exact_limit(&s, 65536);
    assert_eq!(s.secret.hits(), 0);
}

#[test]
fn a_small_head_limit_is_exact_too() {
    // Below hyper's smallest read buffer (8 KiB), which it cannot be set to.
    let s = start(&["--max-header-bytes", "1000"]);
    assert_exact_limit(&s, 1000);
}

// 5. Malformed chunked bodies from the client

#[test]
fn malformed_chunked_bodies_are_400_never_502_and_take_no_server_out() {
    let s = start(&[]);
    let big_chunk = {
        let mut chunk = format!("{:x}\r\n", 100_000).into_bytes();
        chunk.resize(chunk.len() + 100_000, b'y');
        chunk.extend_from_slice(b"\r\n");
        chunk
    };
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("bad chunk size", b"zz\r\nAAAA\r\n0\r\n\r\n".to_vec()),
        ("negative chunk size", b"-1\r\nA\r\n0\r\n\r\n".to_vec()),
        (
            "overflowing chunk size",
            b"ffffffffffffffffffff\r\nAAAA\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "overflowing size after data",
            b"4\r\nAAAA\r\n10000000000000000\r\nA\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "more data than the size",
            b"5\r\nAAAAAAAAAA\r\n0\r\n\r\n".to_vec(),
        ),
        ("less data than the size", b"5\r\nAA\r\n0\r\n\r\n".to_vec()),
        ("no CRLF after the data", b"3\r\nAAAX0\r\n\r\n".to_vec()),
        (
            "a bare LF in the size line",
            b"3\nAAA\r\n0\r\n\r\n".to_vec(),
        ),
        ("bad size after 100 KB streamed", {
            let mut body = big_chunk.clone();
            body.extend_from_slice(b"zz\r\n0\r\n\r\n");
            body
        }),
        ("short data after 100 KB streamed", {
            let mut body = big_chunk;
            body.extend_from_slice(b"5\r\nAA\r\n0\r\n\r\n");
            body
        }),
    ];
    // Twice: on fresh upstream connections, then on pooled ones.
    for round in 0..2 {
        for (what, body) in &bodies {
            let mut request =
                b"POST /x HTTP/1.1\r\nHost: probe.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            request.extend_from_slice(body);
            let answers = exchange(s.elb().addr, &request);
            let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
            assert_eq!(statuses, [400], "{what} (round {round}): {answers:?}");
        }
        for _ in 0..4 {
            // Warms the pool, and proves both servers still serve.
            let answer = one_answer(
                s.elb().addr,
                b"GET / HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(answer.status, 200, "{answer:?}");
        }
    }
    let servers: BTreeSet<String> = (0..4)
        .map(|_| {
            one_answer(
                s.elb().addr,
                b"GET / HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n",
            )
            .echo()["server"]
                .as_str()
                .expect("server")
                .to_owned()
        })
        .collect();
    assert_eq!(servers, BTreeSet::from(["b1".into(), "b2".into()]));
    let log = s.elb().process.log();
    assert!(
        !log.contains("upstream try failed"),
        "a client's body was counted against a server:\n{log}"
    );
}

// 6. Header timeout

#[test]
fn a_request_head_that_stalls_gets_408_then_a_close() {
    let s = start(&["--header-timeout", "1s"]);
    let mut stream = connect(s.elb().addr);
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: pro")
        .expect("send part of a head");
    let started = Instant::now();
    let received = read_all(&mut stream);
    let elapsed = started.elapsed();
    let answers = parse_responses(&received);
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [408],
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(answers[0].head.contains("connection: close"), "{answers:?}");
    assert_closed_by_the_timeout(elapsed);
    assert_eq!(s.hits(), 0);
}

#[test]
fn an_idle_connection_is_closed_without_an_answer() {
    let s = start(&["--header-timeout", "1s"]);
    // Nothing sent at all: nothing to answer.
    let mut fresh = connect(s.elb().addr);
    let started = Instant::now();
    assert_eq!(read_all(&mut fresh), b"", "a fresh idle connection");
    assert_closed_by_the_timeout(started.elapsed());
    // Idle between two requests: one answer, then a plain close.
    let mut kept = connect(s.elb().addr);
    kept.write_all(b"GET /x HTTP/1.1\r\nHost: probe.test\r\n\r\n")
        .expect("send");
    let started = Instant::now();
    let answers = parse_responses(&read_all(&mut kept));
    assert_closed_by_the_timeout(started.elapsed());
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200],
        "{answers:?}"
    );
}

/// elb closed the connection (a 1 s header timeout), rather than the
/// test's 20 s read timeout ending the wait.
fn assert_closed_by_the_timeout(elapsed: Duration) {
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}
