//! Listeners as configuration (`/__erulb__/listener`): added and removed
//! live on a real elb, with real backends and sockets on loopback.
use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    etcd::Etcd,
    http,
    l7::{Cleanup, L7Builder, L7Elb, served_by, start_with as start},
    ports::free_port,
};
use serde_json::{Value, json};

const HOST: &str = "listeners.example";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn put_listener(elb: &L7Elb, name: &str, address: SocketAddr) {
    elb.admin_ok(
        "PUT",
        "listener",
        Some(json!({ name: {"address": address.to_string(), "protocol": "http"} })),
    );
}

fn admin(elb: &L7Elb, method: &str, body: Value) -> (u16, String) {
    let response = http::admin(elb.addr, method, "listener", Some(&body)).expect("admin call");
    let error = response.json().map_or_else(
        |_| response.text(),
        |reply| reply["error"].as_str().unwrap_or_default().to_owned(),
    );
    (response.status, error)
}

fn get_on(addr: SocketAddr, path: &str) -> anyhow::Result<http::HttpResponse> {
    http::get(addr, path, &[("Host", HOST)])
}

/// Waits until `addr` serves `HOST` through elb.
fn wait_served(addr: SocketAddr, limit: Duration) {
    let started = Instant::now();
    loop {
        match get_on(addr, "/") {
            Ok(response) if response.status == 200 => return,
            other => assert!(
                started.elapsed() < limit,
                "{addr} not served within {limit:?}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until connecting to `addr` is refused.
fn wait_refused(addr: SocketAddr, limit: Duration) {
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        assert!(
            started.elapsed() < limit,
            "{addr} still accepts after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn listener_view(elb: &L7Elb, name: &str) -> Value {
    elb.admin_ok("GET", "listener", None)[name].clone()
}

/// elb routing `HOST` to a fresh backend.
fn setup() -> (elb_tests::l7::Setup, Backend) {
    let s = start(&[]);
    let backend = Backend::start("b1").expect("backend");
    s.elb.route(HOST, "up1", &[(backend.addr(), "")]);
    (s, backend)
}

#[test]
fn a_listener_added_live_serves_and_get_reports_it() {
    let (s, _backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "extra", addr);
    // The 200 comes once the listener listens: no waiting needed.
    assert_eq!(
        served_by(&get_on(addr, "/").expect("GET on the new listener")),
        "b1"
    );
    let view = listener_view(&s.elb, "extra");
    assert_eq!(
        view,
        json!({"address": addr.to_string(), "protocol": "http", "http2": false,
            "status": "serving"})
    );
    // The static listener is untouched.
    assert_eq!(served_by(&s.elb.get(HOST, "/", None)), "b1");
}

#[test]
fn bad_listeners_get_400_naming_what_and_nothing_changes() {
    let (s, _backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "one", addr);
    let static_addr = s.elb.addr.to_string();
    for (body, wanted) in [
        (
            json!({"two": {"address": static_addr, "protocol": "http"}}),
            format!(
                "listener \"two\": address {static_addr} is already used by the static listener (--listen)"
            ),
        ),
        (
            json!({"two": {"address": format!("0.0.0.0:{}", s.elb.addr.port()), "protocol": "http"}}),
            format!(
                "listener \"two\": address 0.0.0.0:{} overlaps {static_addr} of the static listener (--listen)",
                s.elb.addr.port()
            ),
        ),
        (
            json!({"two": {"address": addr.to_string(), "protocol": "http"}}),
            format!("listener \"two\": address {addr} is already used by listener \"one\""),
        ),
        (
            json!({"tls": {"address": "127.0.0.1:1443", "protocol": "https",
                "http2": true, "default_certificate": "main"}}),
            "listener \"tls\": default_certificate \"main\" does not exist (upload it to \
             /__erulb__/cert first)"
                .to_owned(),
        ),
        (
            json!({"tls": {"address": "127.0.0.1:1443", "protocol": "https"}}),
            "listener \"tls\": field \"default_certificate\" is missing".to_owned(),
        ),
        (
            json!({"x": {"address": "127.0.0.1", "protocol": "http"}}),
            "listener \"x\", field \"address\"".to_owned(),
        ),
        (
            json!({"x": {"address": "127.0.0.1:1080", "protocol": "tcp"}}),
            "L4 TCP/UDP are services".to_owned(),
        ),
        (
            json!({"a*b": {"address": "127.0.0.1:1080", "protocol": "http"}}),
            "listener name \"a*b\" contains '*'".to_owned(),
        ),
    ] {
        let (status, text) = admin(&s.elb, "PUT", body.clone());
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(&wanted), "{body}: {text}");
    }
    let all = s.elb.admin_ok("GET", "listener", None);
    assert_eq!(all.as_object().map(|o| o.len()), Some(1), "{all}");
}

#[test]
fn a_listener_is_never_a_server_and_a_server_never_a_listener() {
    let (s, _backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "extra", addr);
    let response = http::admin(
        s.elb.addr,
        "PUT",
        "upstream",
        Some(&json!({"loop": {addr.to_string(): ""}})),
    )
    .expect("admin PUT");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response
            .text()
            .contains(&format!("{addr} is elb's own listening address {addr}")),
        "{}",
        response.text()
    );
    // The other way round: a server already configured.
    let server = loopback(free_port());
    s.elb.put_upstream("up2", &[(server, "")]);
    let (status, text) = admin(
        &s.elb,
        "PUT",
        json!({"looping": {"address": server.to_string(), "protocol": "http"}}),
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains(&format!("server {server} is configured")),
        "{text}"
    );
}

#[test]
fn removal_refuses_new_connections_and_finishes_the_request_in_flight() {
    let (s, backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "extra", addr);
    wait_served(addr, Duration::from_secs(5));
    let hits = backend.hits();
    let slow = std::thread::spawn(move || get_on(addr, "/?delay_ms=1500"));
    let started = Instant::now();
    while backend.hits() == hits {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s.elb.admin_ok("DELETE", "listener", Some(json!(["extra"])));
    wait_refused(addr, Duration::from_millis(500));
    let response = slow.join().expect("client thread").expect("slow request");
    assert_eq!(served_by(&response), "b1");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(listener_view(&s.elb, "extra"), Value::Null);
    assert_eq!(served_by(&s.elb.get(HOST, "/", None)), "b1");
}

#[test]
fn removal_closes_idle_connections_at_once_and_busy_ones_at_the_drain_bound() {
    let (s, backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "extra", addr);
    wait_served(addr, Duration::from_secs(5));
    let mut idle = TcpStream::connect(addr).expect("connect");
    http::keep_alive_get(HOST, &mut idle, "/");
    let mut busy = TcpStream::connect(addr).expect("connect");
    http::keep_alive_get(HOST, &mut busy, "/");
    let hits = backend.hits();
    {
        use std::io::Write;
        write!(
            busy,
            "GET /?delay_ms=20000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
        )
        .expect("send");
    }
    let started = Instant::now();
    while backend.hits() == hits {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s.elb.admin_ok("DELETE", "listener", Some(json!(["extra"])));
    let removed = Instant::now();
    assert!(http::time_to_close(&mut idle, Duration::from_secs(2)) < Duration::from_secs(1));
    // elb's bound is 5 s (DRAIN_BOUND): not much earlier, not much later.
    http::time_to_close(&mut busy, Duration::from_secs(9));
    let closed_after = removed.elapsed();
    assert!(
        closed_after >= Duration::from_millis(4500) && closed_after < Duration::from_secs(8),
        "busy connection closed after {closed_after:?}"
    );
}

#[test]
fn an_upgraded_tunnel_on_a_removed_listener_ends_at_the_drain_bound() {
    use std::io::{Read, Write};
    let (s, _backend) = setup();
    let addr = loopback(free_port());
    put_listener(&s.elb, "extra", addr);
    let mut tunnel = TcpStream::connect(addr).expect("connect");
    tunnel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        tunnel,
        "GET /chat HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tunnel.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.elb.admin_ok("DELETE", "listener", Some(json!(["extra"])));
    let removed = Instant::now();
    // Still spliced during the drain, closed at its bound.
    tunnel.write_all(b"ping").expect("send");
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping");
    http::time_to_close(&mut tunnel, Duration::from_secs(9));
    let closed_after = removed.elapsed();
    assert!(
        closed_after >= Duration::from_millis(4500) && closed_after < Duration::from_secs(8),
        "tunnel closed after {closed_after:?}"
    );
}

#[test]
fn a_listener_whose_port_is_taken_fails_with_the_reason_then_serves_once_freed() {
    let (s, _backend) = setup();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = blocker.local_addr().expect("addr");
    put_listener(&s.elb, "blocked", addr);
    // The 200 comes once elb has tried: the failure is already known.
    let view = listener_view(&s.elb, "blocked");
    assert_eq!(view["status"], "failed", "{view}");
    let error = view["error"].as_str().expect("a reason");
    assert!(
        error.contains(&format!("cannot listen on {addr}")) && error.contains("in use"),
        "{error}"
    );
    assert_eq!(served_by(&s.elb.get(HOST, "/", None)), "b1");
    drop(blocker);
    wait_served(addr, Duration::from_secs(5));
    assert_eq!(listener_view(&s.elb, "blocked")["status"], "serving");
}

#[test]
fn listeners_come_and_go_under_traffic_with_no_failed_request_on_the_static_one() {
    let (s, _backend) = setup();
    let static_addr = s.elb.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get_on(static_addr, "/") {
                        Ok(response) if response.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for round in 0..8 {
        let addr = loopback(free_port());
        let name = format!("l{round}");
        put_listener(&s.elb, &name, addr);
        wait_served(addr, Duration::from_secs(5));
        s.elb.admin_ok("DELETE", "listener", Some(json!([name])));
        wait_refused(addr, Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in traffic {
        thread.join().expect("traffic thread");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little traffic to tell"
    );
}

#[test]
fn listeners_persist_across_a_restart() {
    let (s, _backend) = setup();
    let mut elb = s.elb;
    let addr = loopback(free_port());
    put_listener(&elb, "kept", addr);
    wait_served(addr, Duration::from_secs(5));
    elb.stop();
    wait_refused(addr, Duration::from_secs(2));
    let elb = L7Builder::same_as(&elb).start().expect("restart elb");
    wait_served(addr, Duration::from_secs(5));
    assert_eq!(listener_view(&elb, "kept")["status"], "serving");
}

#[test]
fn listeners_written_to_etcd_are_served_and_bad_ones_skipped() {
    let etcd = Etcd::start().expect("etcd");
    let backend = Backend::start("b1").expect("backend");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .start()
        .expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    elb.route(HOST, "up1", &[(backend.addr(), "")]);
    let addr = loopback(free_port());
    let key = format!("/{}/listeners/viaetcd", elb.name);
    etcd.put(
        &key,
        &json!({"address": addr.to_string(), "protocol": "http"}).to_string(),
    )
    .expect("etcdctl put");
    wait_served(addr, Duration::from_secs(5));
    // A bad document is logged and skipped: the previous version serves on.
    etcd.put(&key, r#"{"address": "nowhere", "protocol": "http"}"#)
        .expect("etcdctl put");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listener_view(&elb, "viaetcd")["address"], addr.to_string());
    wait_served(addr, Duration::from_secs(1));
    // dump puts the serving version back into etcd.
    elb.admin_ok("PUT", "dump", None);
    let stored = etcd.get_prefix(&key).expect("etcdctl get");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let document: serde_json::Value = serde_json::from_str(&stored[0].1).expect("JSON");
    assert_eq!(document["address"], addr.to_string(), "{document}");
    etcd.ctl(&["del", &key]).expect("etcdctl del");
    wait_refused(addr, Duration::from_secs(5));
}
