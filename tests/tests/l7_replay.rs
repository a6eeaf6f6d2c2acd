//! Retrying a request whose server failed after receiving it: idempotent
//! requests go to another server, with their body when it is small enough
//! to have been held (RFC 9110 §9.2.2); POST does not. The failing server
//! is a real socket that reads the whole request and closes without an
//! answer, as a backend killed mid-request does.
use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use elb_tests::{
    backend::Backend,
    http,
    l7::{backend_doc, served_by, start_with as start},
};
use serde_json::json;

/// Reads each request (head and Content-Length body), counts it, and closes
/// the connection without answering.
fn start_dropping_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_ok() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
            }
            // Dropped here: closed with the request read and no answer.
        }
    });
    (addr, received)
}

fn send(addr: SocketAddr, method: &str, host: &str, body: &[u8]) -> http::HttpResponse {
    http::request(addr, method, "/r", &[("Host", host)], Some(body))
        .unwrap_or_else(|e| panic!("{method} {host}: {e:#}"))
}

#[test]
fn idempotent_requests_with_small_bodies_are_retried_after_a_server_fails_mid_request() {
    let s = start(&[]);
    let good = Backend::start("good").expect("backend");
    let (dropping, received) = start_dropping_server();
    // A fresh upstream per case, the dropping server first (weight 10):
    // smooth weighted round robin picks it for the first request.
    let route = |name: &str| {
        s.elb
            .put_upstream(name, &[(dropping, "weight=10"), (good.addr(), "")]);
        s.elb.admin_ok(
            "PUT",
            "domain",
            Some(json!({ format!("{name}.example"): backend_doc(name) })),
        );
    };

    route("put");
    let response = send(s.elb.addr, "PUT", "put.example", &[b'x'; 1500]);
    assert_eq!(
        served_by(&response),
        "good",
        "PUT retried on the good server"
    );
    assert_eq!(response.json().expect("json")["body_len"], 1500);
    assert_eq!(
        received.load(Ordering::SeqCst),
        1,
        "the first try reached the dropping server"
    );

    route("delete");
    let response = send(s.elb.addr, "DELETE", "delete.example", b"{\"id\": 7}");
    assert_eq!(served_by(&response), "good");
    assert_eq!(response.json().expect("json")["body_len"], 9);
    assert_eq!(received.load(Ordering::SeqCst), 2);

    // POST is not idempotent: once the server had it, it is not sent again.
    route("post");
    let hits = good.hits();
    let response = send(s.elb.addr, "POST", "post.example", &[b'x'; 1500]);
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(received.load(Ordering::SeqCst), 3);
    assert_eq!(good.hits(), hits, "a POST is never replayed");
}
