//! Probes against real sockets on loopback.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;
use crate::config::policy::{CheckTarget, StatusMatcher};

/// A plaintext probe (the TLS client is there but unused).
async fn probe(server: &str, check: &HealthCheck) -> CheckOutcome {
    let tls = UpstreamTls::with_roots(rustls::RootCertStore::empty()).expect("tls client");
    super::probe(server, check, &tls).await
}

/// How the test server answers each connection.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    Raw(&'static str),
    /// Reads the request and never answers.
    Silent,
}

/// A loopback HTTP server that records each request head it reads.
struct TestServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move { answer(stream, reply, recorded).await });
            }
        });
        Self { addr, heads, task }
    }

    fn server(&self) -> String {
        self.addr.to_string()
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

async fn answer(mut stream: TcpStream, reply: Reply, recorded: Arc<Mutex<Vec<String>>>) {
    let head = read_head(&mut stream).await;
    recorded.lock().expect("heads").push(head);
    let response = match reply {
        Reply::Status(status) => format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
        Reply::Raw(text) => text.to_owned(),
        Reply::Silent => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

fn http_check(path: &str) -> HealthCheck {
    HealthCheck {
        target: CheckTarget {
            protocol: CheckProtocol::Http,
            port: None,
            path: path.to_owned(),
        },
        timeout: Duration::from_millis(2000),
        ..HealthCheck::default()
    }
}

fn tcp_check() -> HealthCheck {
    HealthCheck {
        timeout: Duration::from_millis(2000),
        ..HealthCheck::default()
    }
}

/// A loopback port with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn tcp_passes_on_a_listening_socket() {
    let server = TestServer::start(Reply::Silent).await;
    let outcome = probe(&server.server(), &tcp_check()).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.status, None);
    assert_eq!(
        outcome.reason,
        format!("Passed: TCP connect to {}", server.server())
    );
}

#[tokio::test]
async fn tcp_fails_on_a_closed_port_with_refused() {
    let port = closed_port().await;
    let outcome = probe(&format!("127.0.0.1:{port}"), &tcp_check()).await;
    assert!(!outcome.passed, "{outcome:?}");
    assert_eq!(
        outcome.reason,
        format!("Connection refused by 127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn http_200_passes() {
    let server = TestServer::start(Reply::Status(200)).await;
    let outcome = probe(&server.server(), &http_check("/health")).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.reason, "Passed: HTTP 200 from /health");
    let heads = server.heads();
    assert_eq!(heads.len(), 1, "one fresh connection, one request");
    assert!(
        heads[0].starts_with("GET /health HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert_eq!(header(&heads[0], "user-agent"), Some(USER_AGENT));
    assert_eq!(header(&heads[0], "connection"), Some("close"));
}

#[tokio::test]
async fn http_503_fails_with_the_status_in_the_reason() {
    let server = TestServer::start(Reply::Status(503)).await;
    let outcome = probe(&server.server(), &http_check("/health")).await;
    assert!(!outcome.passed, "{outcome:?}");
    assert_eq!(outcome.status, Some(503));
    assert_eq!(outcome.reason, "HTTP 503 from /health (expected 200-399)");
}

#[tokio::test]
async fn a_status_outside_a_custom_matcher_fails() {
    let server = TestServer::start(Reply::Status(302)).await;
    let mut check = http_check("/ready?deep=1");
    assert!(
        probe(&server.server(), &check).await.passed,
        "302 is in 200-399"
    );
    check.matcher = StatusMatcher::parse("200,204").expect("matcher");
    let outcome = probe(&server.server(), &check).await;
    assert!(!outcome.passed, "{outcome:?}");
    assert_eq!(outcome.status, Some(302));
    assert_eq!(
        outcome.reason,
        "HTTP 302 from /ready?deep=1 (expected 200,204)"
    );
    assert!(server.heads()[1].starts_with("GET /ready?deep=1 HTTP/1.1\r\n"));
}

#[tokio::test]
async fn the_host_header_is_the_checks_host_or_the_checked_address() {
    let server = TestServer::start(Reply::Status(200)).await;
    let mut check = http_check("/");
    assert!(probe(&server.server(), &check).await.passed);
    check.host = Some("www.example.com".to_owned());
    assert!(probe(&server.server(), &check).await.passed);
    let heads = server.heads();
    assert_eq!(
        header(&heads[0], "host"),
        Some(format!("127.0.0.1:{}", server.port()).as_str())
    );
    assert_eq!(header(&heads[1], "host"), Some("www.example.com"));
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_timeout() {
    let server = TestServer::start(Reply::Silent).await;
    let mut check = http_check("/health");
    check.timeout = Duration::from_millis(200);
    let start = Instant::now();
    let outcome = probe(&server.server(), &check).await;
    let elapsed = start.elapsed();
    assert!(!outcome.passed, "{outcome:?}");
    assert_eq!(
        outcome.reason,
        format!("No response from {} within 200ms", server.server())
    );
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(700),
        "took {elapsed:?}"
    );
    assert!(outcome.latency >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_connect_that_hangs_fails_within_the_timeout() {
    // A listener that never accepts, with its queue full: the kernel drops
    // further SYNs, so the connect hangs.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut check = tcp_check();
    check.timeout = Duration::from_millis(200);
    // Each passing check leaves its connection in the accept queue; once
    // the queue is full (its exact capacity is the kernel's business), a
    // connect hangs.
    let mut outcome = probe(&addr.to_string(), &check).await;
    for _ in 0..16 {
        if !outcome.passed {
            break;
        }
        outcome = probe(&addr.to_string(), &check).await;
    }
    assert_eq!(
        outcome.reason,
        format!("Connection to {addr} timed out after 200ms")
    );
    assert!(outcome.latency <= Duration::from_millis(700), "{outcome:?}");
}

#[tokio::test]
async fn the_checks_port_overrides_the_servers() {
    let server = TestServer::start(Reply::Status(200)).await;
    let own_port = closed_port().await;
    let mut check = http_check("/");
    check.target.port = Some(server.port());
    let outcome = probe(&format!("127.0.0.1:{own_port}"), &check).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(
        header(&server.heads()[0], "host"),
        Some(format!("127.0.0.1:{}", server.port()).as_str()),
        "the Host header names the address checked"
    );
    let mut tcp = tcp_check();
    tcp.target.port = Some(server.port());
    assert!(probe(&format!("127.0.0.1:{own_port}"), &tcp).await.passed);
    assert!(
        !probe(&format!("127.0.0.1:{own_port}"), &tcp_check())
            .await
            .passed
    );
}

#[tokio::test]
async fn a_host_name_is_resolved() {
    let server = TestServer::start(Reply::Status(200)).await;
    let name = format!("localhost:{}", server.port());
    let outcome = probe(&name, &http_check("/")).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(header(&server.heads()[0], "host"), Some(name.as_str()));
}

#[tokio::test]
async fn ipv6_literals_are_checked_in_brackets() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    let outcome = probe(&format!("[::1]:{port}"), &tcp_check()).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(
        outcome.reason,
        format!("Passed: TCP connect to [::1]:{port}")
    );
}

#[tokio::test]
async fn bad_responses_and_bad_names_fail_with_a_reason() {
    let garbage = TestServer::start(Reply::Raw("hello there\r\n\r\n")).await;
    let outcome = probe(&garbage.server(), &http_check("/")).await;
    assert_eq!(
        outcome.reason,
        format!("Invalid HTTP response from {}", garbage.server())
    );
    let closing = TestServer::start(Reply::Raw("")).await;
    let outcome = probe(&closing.server(), &http_check("/")).await;
    assert_eq!(
        outcome.reason,
        format!(
            "Connection closed by {} before a response",
            closing.server()
        )
    );
    let outcome = probe("no-port", &tcp_check()).await;
    assert_eq!(outcome.reason, "Server name \"no-port\" is not host:port");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let server = TestServer::start(Reply::Raw(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ))
    .await;
    let outcome = probe(&server.server(), &http_check("/")).await;
    assert_eq!(outcome.status, Some(204), "{outcome:?}");
    assert!(outcome.passed);
}

#[test]
fn server_names_split_into_host_and_port() {
    assert_eq!(split_host_port("10.0.0.1:80"), Some(("10.0.0.1", 80)));
    assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
    assert_eq!(
        split_host_port("backend.local:81"),
        Some(("backend.local", 81))
    );
    for bad in [
        "x", "x:", ":80", "x:0", "x:+80", "x:70000", "[::1]", "[::1:80",
    ] {
        assert_eq!(split_host_port(bad), None, "{bad}");
    }
    assert_eq!(join_host_port("::1", 80), "[::1]:80");
    assert_eq!(join_host_port("a.b", 80), "a.b:80");
}

/// CPU time of the calling thread (user, system).
fn thread_cpu() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()),
            0,
            "getrusage"
        );
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// A blocking loopback server on its own thread (so its CPU is not
/// counted): accepts, reads the head and answers if `answer` is set,
/// closes.
fn blocking_server(answer: bool) -> SocketAddr {
    use std::io::{Read, Write};
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    // A long accept queue: TCP checks finish faster than this one thread
    // accepts, and an overflow would stall checks on SYN retries.
    socket.listen(4096).expect("listen");
    let listener = std::net::TcpListener::from(socket);
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if answer {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            } else {
                // Close after the client, as a real server would: closing
                // first leaves the 4-tuple in TIME_WAIT here, and the next
                // check reusing the port would stall on a SYN retry.
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
    });
    addr
}

/// Runs `count` checks, at most `parallel` at once, on a single-threaded
/// runtime in this thread; returns (user, system, wall) per check.
fn cost_per_check(
    addr: SocketAddr,
    check: &HealthCheck,
    count: u32,
    parallel: u32,
) -> (Duration, Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = addr.to_string();
    let run = |count: u32| {
        runtime.block_on(async {
            let mut running = tokio::task::JoinSet::<CheckOutcome>::new();
            for i in 0..count {
                if i >= parallel {
                    let outcome = running.join_next().await.expect("a check").expect("join");
                    assert!(outcome.passed, "{outcome:?}");
                }
                let (server, check) = (server.clone(), check.clone());
                running.spawn(async move { probe(&server, &check).await });
            }
            while let Some(outcome) = running.join_next().await {
                let outcome = outcome.expect("join");
                assert!(outcome.passed, "{outcome:?}");
            }
        })
    };
    run(200); // warm up
    let (user, system) = thread_cpu();
    let wall = Instant::now();
    run(count);
    let wall = wall.elapsed();
    let (user_after, system_after) = thread_cpu();
    (
        (user_after - user) / count,
        (system_after - system) / count,
        wall / count,
    )
}

/// Not a pass/fail test: prints the CPU one check costs elb (this thread;
/// the server's thread is not counted, but loopback's kernel work for the
/// server is partly done in our syscalls, so system time is an upper
/// bound). Run in release:
/// `cargo test -p elb-userspace --release --lib cpu_cost_per_check -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run by hand in release"]
fn cpu_cost_per_check() {
    const COUNT: u32 = 10_000;
    const PARALLEL: u32 = 32;
    // The floor: a bare blocking connect and close, no runtime, no timer.
    let addr = blocking_server(false);
    let (user, system) = thread_cpu();
    for _ in 0..COUNT {
        drop(std::net::TcpStream::connect(addr).expect("connect"));
    }
    let (user_after, system_after) = thread_cpu();
    println!(
        "bare connect+close: {:.1} us CPU (user {:.1} + system {:.1})",
        ((user_after - user) + (system_after - system)).as_secs_f64() * 1e6 / f64::from(COUNT),
        (user_after - user).as_secs_f64() * 1e6 / f64::from(COUNT),
        (system_after - system).as_secs_f64() * 1e6 / f64::from(COUNT),
    );
    for (name, check, answer) in [
        ("TCP", tcp_check(), false),
        ("HTTP", http_check("/health"), true),
    ] {
        let addr = blocking_server(answer);
        let (user, system, wall) = cost_per_check(addr, &check, COUNT, PARALLEL);
        println!(
            "{name} check: {:.1} us CPU (user {:.1} + system {:.1}), {:.1} us wall, \
             over {COUNT} checks, {PARALLEL} at once",
            (user + system).as_secs_f64() * 1e6,
            user.as_secs_f64() * 1e6,
            system.as_secs_f64() * 1e6,
            wall.as_secs_f64() * 1e6,
        );
    }
}
