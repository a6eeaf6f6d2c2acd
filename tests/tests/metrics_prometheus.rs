//! Prometheus metrics from a real elb, real backends and, for the scrape,
//! a real Prometheus server: `promtool check metrics` on the exposition,
//! request counts read back through Prometheus's query API, the admin
//! access rules on both endpoints, the L4 fallback's counters, and the
//! series of a deleted upstream going away.
use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use elb_tests::{
    backend::Backend,
    elb_process::{ElbProcess, spawn_in_netns},
    http::{self, HttpResponse},
    l4_e2e::{Dataplane, E2e, OK, VIP, connect, upstream_doc},
    l7::{Cleanup, L7Builder, L7Elb},
    netns::{NetNs, veth_pair},
    ports::free_port,
    prometheus::Prometheus,
    require_root_and_bpf,
};
use serde_json::json;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// elb with `--metrics` on a free loopback port, and `extra` flags.
fn start(extra: &[&str]) -> (L7Elb, Cleanup, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut builder = L7Builder::new().arg("--metrics").arg(&metrics.to_string());
    for arg in extra {
        builder = builder.arg(arg);
    }
    let elb = builder.start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    (elb, cleanup, metrics)
}

fn scrape(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http::get(addr, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// The exposition of the `--metrics` listener (must be a 200).
fn metrics_text(addr: SocketAddr) -> String {
    let response = scrape(addr, "/metrics", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

/// The value of one series (`name{labels}` exactly as elb writes it).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn send(elb: &L7Elb, host: &str, count: usize, status: u16) {
    for _ in 0..count {
        assert_eq!(elb.get(host, "/", None).status, status, "GET {host}");
    }
}

#[test]
fn promtool_accepts_the_exposition_and_it_counts_the_requests() {
    let (elb, _c, metrics) = start(&[]);
    let b1 = Backend::start("b1").expect("backend");
    elb.route("prom.example", "up", &[(b1.addr(), "")]);
    send(&elb, "prom.example", 4, 200);
    send(&elb, "nothing.example", 1, 404);

    let response = scrape(metrics, "/metrics", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.text();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; cargo xtask setup)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let checked = promtool.wait_with_output().expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    assert_eq!(
        sample(
            &text,
            r#"elb_http_requests_total{domain="prom.example",code="2xx"}"#
        ),
        Some(4.0),
        "{text}"
    );
    let server = format!(
        r#"elb_upstream_requests_total{{upstream="up",server="{}",code="2xx"}}"#,
        b1.addr()
    );
    assert_eq!(sample(&text, &server), Some(4.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"elb_http_request_duration_seconds_count{domain="prom.example"}"#
        ),
        Some(4.0),
        "{text}"
    );
    // The pooled keep-alive connections to the backend (one per worker
    // at most).
    let open = sample(
        &text,
        &format!(
            r#"elb_upstream_open_connections{{upstream="up",server="{}"}}"#,
            b1.addr()
        ),
    );
    assert!(open.is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        !text.contains("nothing.example"),
        "a Host with no domain must not become a label: {text}"
    );
    assert_eq!(sample(&text, "elb_store_connected"), Some(1.0), "{text}");

    // The admin API serves the same, in OpenMetrics when asked.
    let admin = scrape(
        elb.addr,
        "/__erulb__/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(admin.status, 200, "{}", admin.text());
    assert_eq!(admin.header("content-type"), Some(OPENMETRICS));
    assert!(admin.text().ends_with("# EOF\n"), "{}", admin.text());
    assert!(admin.text().contains(&server), "{}", admin.text());
}

#[test]
fn prometheus_scrapes_elb_and_reads_back_the_requests_the_test_sent() {
    let (elb, _c, metrics) = start(&[]);
    let good = Backend::start("good").expect("backend");
    let bad = Backend::start("bad").expect("backend");
    bad.set_status(Some(500));
    elb.route("ok.example", "ok", &[(good.addr(), "")]);
    elb.route("bad.example", "bad", &[(bad.addr(), "")]);
    let prometheus = Prometheus::start(metrics, None).expect("start prometheus");

    send(&elb, "ok.example", 17, 200);
    send(&elb, "bad.example", 5, 500);

    let limit = Duration::from_secs(30);
    let expect = |promql: &str, want: f64| {
        let got = prometheus
            .wait_for_value(promql, want, limit)
            .unwrap_or_else(|e| panic!("{promql}: {e:#}"));
        assert_eq!(
            got,
            Some(want),
            "{promql} through Prometheus; its log:\n{}",
            prometheus.log()
        );
    };
    expect(r#"up{job="elb"}"#, 1.0);
    expect(
        r#"elb_http_requests_total{domain="ok.example",code="2xx"}"#,
        17.0,
    );
    expect(
        r#"elb_http_requests_total{domain="bad.example",code="5xx"}"#,
        5.0,
    );
    expect(r#"sum(elb_upstream_requests_total{upstream="ok"})"#, 17.0);
    expect(
        r#"sum(elb_upstream_requests_total{upstream="bad",code="5xx"})"#,
        5.0,
    );
    expect(
        r#"elb_upstream_request_duration_seconds_count{upstream="ok"}"#,
        17.0,
    );
}

#[test]
fn the_admin_token_guards_both_metrics_endpoints() {
    let (elb, _c, metrics) = start(&["--admin-token", "s3cret"]);
    for (addr, path) in [(metrics, "/metrics"), (elb.addr, "/__erulb__/metrics")] {
        let refused = scrape(addr, path, &[]);
        assert_eq!(refused.status, 401, "{path}: {}", refused.text());
        assert!(!refused.text().contains("elb_"), "{}", refused.text());
        let wrong = scrape(addr, path, &[("Authorization", "Bearer guess")]);
        assert_eq!(wrong.status, 401, "{path}: {}", wrong.text());
        let allowed = scrape(addr, path, &[("Authorization", "Bearer s3cret")]);
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.text());
        assert!(allowed.text().contains("elb_store_connected"));
    }
}

#[test]
fn the_series_of_a_deleted_upstream_and_its_servers_go_away() {
    let (elb, _c, metrics) = start(&[]);
    let kept = Backend::start("kept").expect("backend");
    let gone = Backend::start("gone").expect("backend");
    let dropped = Backend::start("dropped").expect("backend");
    elb.route(
        "kept.example",
        "kept",
        &[(kept.addr(), ""), (dropped.addr(), "")],
    );
    elb.route("gone.example", "gone", &[(gone.addr(), "")]);
    send(&elb, "kept.example", 4, 200);
    send(&elb, "gone.example", 2, 200);
    let before = metrics_text(metrics);
    assert!(before.contains(r#"upstream="gone""#), "{before}");
    assert!(before.contains(&dropped.addr().to_string()), "{before}");

    elb.admin_ok("DELETE", "domain", Some(json!(["gone.example"])));
    elb.admin_ok("DELETE", "upstream", Some(json!(["gone"])));
    elb.put_upstream("kept", &[(kept.addr(), "")]);
    send(&elb, "kept.example", 1, 200);

    let after = metrics_text(metrics);
    assert!(!after.contains(r#"upstream="gone""#), "{after}");
    assert!(!after.contains("gone.example"), "{after}");
    assert!(
        !after.contains(&dropped.addr().to_string()),
        "a server removed from its upstream keeps no series: {after}"
    );
    // What stays keeps counting from where it was.
    let kept_series = format!(
        r#"elb_upstream_requests_total{{upstream="kept",server="{}",code="2xx"}}"#,
        kept.addr()
    );
    let kept_before = sample(&before, &kept_series).expect("the kept server had requests");
    assert_eq!(
        sample(&after, &kept_series),
        Some(kept_before + 1.0),
        "{after}"
    );
}

#[test]
fn l4_fallback_counters_are_exported() {
    let (elb, _c, metrics) = start(&[]);
    let backend = Backend::start("l4").expect("backend");
    let vip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    elb.put_upstream("l4up", &[(backend.addr(), "")]);
    elb.admin_ok(
        "PUT",
        "service",
        Some(json!({"web": {"vip": vip.to_string(), "proto": "tcp", "upstream": "l4up"}})),
    );
    for _ in 0..3 {
        let response = http::get(vip, "/", &[]).expect("GET through the L4 VIP");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let text = metrics_text(metrics);
    assert_eq!(
        sample(&text, r#"elb_l4_dataplane{dataplane="userspace"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "elb_l4_stats_up"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"elb_l4_service_new_flows_total{service="web"}"#),
        Some(3.0),
        "{text}"
    );
    let server_bytes = format!(
        r#"elb_l4_server_bytes_total{{service="web",server="{}"}}"#,
        backend.addr()
    );
    assert!(
        sample(&text, &server_bytes).is_some_and(|bytes| bytes > 0.0),
        "{text}"
    );
}

/// elb in `lb` with `--metrics 0.0.0.0:9100`; the directory is removed on
/// drop.
fn start_in(lb: &NetNs, extra: &[&str]) -> (ElbProcess, tempfile::TempDir) {
    let mut args = vec!["--metrics", "0.0.0.0:9100"];
    args.extend_from_slice(extra);
    spawn_in_netns(lb, "M", &args, 9100)
}

/// GET `path` on `port` of elb's address, from the client namespace.
fn get_from(client: &NetNs, port: u16, path: &'static str) -> HttpResponse {
    client
        .enter(move || {
            let addr = SocketAddr::new([10, 79, 0, 1].into(), port);
            http::get(addr, path, &[])
        })
        .expect("enter client namespace")
        .expect("request")
}

#[test]
fn clients_outside_the_admin_allow_list_get_no_metrics() {
    require_root_and_bpf!();
    let lb = NetNs::new("elbml").expect("lb ns");
    let client = NetNs::new("elbmc").expect("client ns");
    veth_pair(&lb, &["10.79.0.1/24"], &client, &["10.79.0.2/24"]).expect("veth");

    let (mut elb, dir) = start_in(&lb, &[]);
    for (port, path) in [(9100, "/metrics"), (8080, "/__erulb__/metrics")] {
        let refused = get_from(&client, port, path);
        assert_eq!(refused.status, 403, "{path}: {}", refused.text());
        assert!(refused.text().contains("10.79.0.2"), "{}", refused.text());
    }
    elb.stop().expect("stop");
    drop(dir);

    let (_elb, dir) = start_in(&lb, &["--admin-allow", "10.79.0.0/24"]);
    for (port, path) in [(9100, "/metrics"), (8080, "/__erulb__/metrics")] {
        let allowed = get_from(&client, port, path);
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.text());
        assert!(allowed.text().contains("elb_store_connected"));
    }
    drop(dir);
}

#[test]
fn health_states_fail_open_and_transitions_are_exported() {
    let (elb, _c, metrics) = start(&[]);
    let well = Backend::start("well").expect("backend");
    let ill = Backend::start("ill").expect("backend");
    ill.set_health_status(Some(503));
    elb.route("h.example", "h", &[(well.addr(), ""), (ill.addr(), "")]);
    let policy = json!({"health_check": {"target": "HTTP/health", "interval": "200ms",
        "timeout": "100ms", "healthy_threshold": 2, "unhealthy_threshold": 2}});
    elb.admin_ok("PUT", "policy", Some(json!({ "h": policy })));

    let series = |backend: &Backend, what: &str| {
        format!(r#"{what}{{upstream="h",server="{}"}}"#, backend.addr())
    };
    let state = |backend: &Backend, state: &str| {
        format!(
            r#"elb_server_state{{upstream="h",server="{}",state="{state}"}}"#,
            backend.addr()
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_text(metrics);
        let settled = sample(&text, &state(&well, "healthy")) == Some(1.0)
            && sample(&text, &state(&ill, "unhealthy")) == Some(1.0);
        if settled || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sample(&text, &state(&well, "healthy")), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &state(&ill, "unhealthy")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series(&ill, "elb_server_routable")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series(&well, "elb_server_routable")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series(&ill, "elb_server_health_transitions_total")),
        Some(1.0),
        "initial -> unhealthy: {text}"
    );
    assert_eq!(
        sample(&text, r#"elb_upstream_fail_open{upstream="h"}"#),
        Some(0.0),
        "{text}"
    );

    // With no healthy server left, the upstream fails open.
    well.set_health_status(Some(503));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_text(metrics);
        if sample(&text, r#"elb_upstream_fail_open{upstream="h"}"#) == Some(1.0)
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        sample(&text, r#"elb_upstream_fail_open{upstream="h"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series(&well, "elb_server_health_transitions_total")),
        Some(2.0),
        "initial -> healthy -> unhealthy: {text}"
    );
}

/// Polls the `--metrics` listener until `series` has `want` (or 10 s).
fn wait_for_sample(metrics: SocketAddr, series: &str, want: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(metrics);
        if sample(&text, series) == Some(want) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_control_plane_state_follows_etcd() {
    let mut etcd = elb_tests::etcd::Etcd::start().expect("etcd");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let elb = L7Builder::new()
        .etcd(&etcd.endpoint())
        .arg("--metrics")
        .arg(&metrics.to_string())
        .start()
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    let text = metrics_text(metrics);
    assert_eq!(sample(&text, "elb_store_connected"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "elb_config_rejected_documents_total"),
        Some(0.0),
        "{text}"
    );
    let first_revision = sample(&text, "elb_config_applied_revision").expect("revision");

    // A rule document that is not JSON is skipped, and counted.
    etcd.put(&format!("/{}/rules/broken.example", elb.name), "{not json")
        .expect("put");
    let text = wait_for_sample(metrics, "elb_config_rejected_documents_total", 1.0);
    assert_eq!(
        sample(&text, "elb_config_rejected_documents_total"),
        Some(1.0),
        "{text}"
    );
    let revision = sample(&text, "elb_config_applied_revision").expect("revision");
    assert!(revision > first_revision, "{first_revision} -> {revision}");
    let applied_at = sample(&text, "elb_config_last_apply_timestamp_seconds").expect("time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - applied_at).abs() < 60.0, "{applied_at} vs now {now}");

    etcd.kill();
    let text = wait_for_sample(metrics, "elb_store_connected", 0.0);
    assert_eq!(sample(&text, "elb_store_connected"), Some(0.0), "{text}");
    etcd.restart().expect("restart etcd");
    let text = wait_for_sample(metrics, "elb_store_connected", 1.0);
    assert_eq!(sample(&text, "elb_store_connected"), Some(1.0), "{text}");
}

#[test]
fn xdp_counters_are_read_from_the_bpf_maps_at_scrape_time() {
    require_root_and_bpf!();
    let mut e2e = E2e::start(Dataplane::Xdp);
    e2e.elb
        .wait_for_log(Duration::from_secs(5), Dataplane::Xdp.log_line())
        .expect("elb names its L4 data plane");
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    let service = format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
    assert_eq!(e2e.admin("PUT", "service", &service), OK);
    const FLOWS: usize = 6;
    for i in 0..FLOWS {
        connect(&e2e.net.client)
            .and_then(|mut conn| conn.ask())
            .unwrap_or_else(|e| panic!("connection {i} through XDP: {e}\n{}", e2e.diagnostics()));
    }
    let url = format!("http://127.0.0.1:{}/__erulb__/metrics", e2e.port);
    let out = e2e.net.lb.exec("curl", &["-sS", &url]).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        sample(&text, r#"elb_l4_dataplane{dataplane="xdp"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"elb_l4_service_new_flows_total{service="web"}"#),
        Some(FLOWS as f64),
        "{text}"
    );
    assert!(
        sample(&text, r#"elb_l4_service_packets_total{service="web"}"#)
            .is_some_and(|packets| packets >= (3 * FLOWS) as f64),
        "a flow is at least a SYN, the request and a FIN: {text}"
    );
    let server_packets: f64 = text
        .lines()
        .filter(|l| l.starts_with(r#"elb_l4_server_packets_total{service="web","#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(server_packets > 0.0, "{text}");
    assert!(
        sample(&text, "elb_l4_flow_misses_total").is_some_and(|misses| misses >= FLOWS as f64),
        "{text}"
    );
    assert!(text.contains("elb_l4_xdp_interface{"), "{text}");
}
