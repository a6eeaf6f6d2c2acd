//! The status page in a real browser: a real elb (embedded store) with a
//! known configuration, real backends (one healthy, one failing its checks,
//! one that is not there at all), headless Chromium loading
//! `/__erulb__/status` and running its script against the live JSON.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    chromium, http,
    l7::{L7Elb, backend_doc, start_with},
    ports::free_port,
};
use serde_json::{Value, json};

fn policy() -> Value {
    json!({"health_check": {"target": "HTTP/health", "interval": "200ms", "timeout": "100ms",
        "healthy_threshold": 2, "unhealthy_threshold": 2}, "deregistration_delay": "30s"})
}

/// `web`: `up` healthy, `sick` answering its checks with 503, weights and
/// zones; `api`: only a server nothing listens on (fails open); `static`:
/// no policy; two domains; one L4 service (userspace, loopback VIP).
struct Scene {
    up: Backend,
    sick: Backend,
    dead: SocketAddr,
}

fn configure(elb: &L7Elb) -> Scene {
    let up = Backend::start("up").expect("backend up");
    let sick = Backend::start("sick").expect("backend sick");
    sick.set_health_status(Some(503));
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({
            "web": {up.addr().to_string(): "weight=3 zone=eu-1a", sick.addr().to_string(): "zone=eu-1b"},
            "api": {dead.to_string(): "zone=eu-1a"},
            "static": {up.addr().to_string(): ""},
        })),
    );
    elb.admin_ok(
        "PUT",
        "policy",
        Some(json!({"web": policy(), "api": policy()})),
    );
    elb.admin_ok(
        "PUT",
        "domain",
        Some(
            json!({"shop.test": backend_doc("web"), "api.shop.test": backend_doc("api"),
            "cdn.shop.test": backend_doc("static")}),
        ),
    );
    let vip = format!("127.0.0.1:{}", free_port());
    elb.admin_ok(
        "PUT",
        "service",
        Some(json!({"db": {"vip": vip, "proto": "tcp", "upstream": "static"}})),
    );
    Scene { up, sick, dead }
}

fn status_json(elb: &L7Elb, token: Option<&str>) -> http::HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http::get(elb.addr, "/__erulb__/status.json", &headers).expect("GET status.json")
}

fn server_status(doc: &Value, upstream: &str, server: &str) -> String {
    doc["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["servers"].as_array().cloned().unwrap_or_default())
        .find(|s| s["address"] == server)
        .and_then(|s| s["status"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "absent".to_owned())
}

/// Waits until the health checks have settled: `up` up, `sick` and the
/// dead server down.
fn wait_settled(elb: &L7Elb, scene: &Scene, token: Option<&str>) -> Value {
    let started = Instant::now();
    loop {
        let doc = status_json(elb, token).json().expect("status JSON");
        let states = (
            server_status(&doc, "web", &scene.up.addr().to_string()),
            server_status(&doc, "web", &scene.sick.addr().to_string()),
            server_status(&doc, "api", &scene.dead.to_string()),
        );
        if states == ("up".into(), "down".into(), "down".into()) {
            return doc;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "checks did not settle: {states:?} {doc:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rendered `<main>`: what the script drew, without the script's own
/// text.
fn main_of(dom: &str) -> &str {
    let start = dom.find("<main").expect("a <main>");
    let end = dom.find("</main>").expect("a </main>");
    &dom[start..end]
}

/// The `<tr>` of a server in the rendered DOM, or None.
fn server_row<'d>(dom: &'d str, upstream: &str, server: &str) -> Option<&'d str> {
    let needle = format!("data-upstream=\"{upstream}\" data-server=\"{server}\"");
    let at = dom.find(&needle)?;
    let start = dom[..at].rfind("<tr")?;
    let end = dom[at..].find("</tr>")? + at;
    Some(&dom[start..end])
}

/// Requests to `shop.test` and `api.shop.test` (about 9 in 10 and 1 in
/// 10) until stopped, for rates on the page.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            // Bounded, whatever happens to the test.
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let host = if sent % 10 == 9 {
                    "api.shop.test"
                } else {
                    "shop.test"
                };
                let _ = http::get(addr, "/", &[("Host", host)]);
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_page_shows_the_down_servers_without_script_errors() {
    let setup = start_with(&["--workers", "1"]);
    let elb = &setup.elb;
    let scene = configure(elb);
    let doc = wait_settled(elb, &scene, None);
    assert_eq!(doc["summary"]["upstreams_fail_open"], json!(["api"]));
    // Traffic, so the counters move: 200s from `web`, 502s from `api`
    // (failing open to a server that is not there).
    for _ in 0..20 {
        assert_eq!(elb.get("shop.test", "/", None).status, 200);
    }
    for _ in 0..5 {
        assert_eq!(elb.get("api.shop.test", "/", None).status, 502);
    }
    let doc = status_json(elb, None).json().expect("status JSON");
    let traffic = |name: &str| {
        doc["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["name"] == name)
            .map(|u| u["traffic"].clone())
            .unwrap_or_default()
    };
    assert_eq!(traffic("web"), json!({"requests": 20, "errors_5xx": 0}));
    assert_eq!(traffic("api"), json!({"requests": 5, "errors_5xx": 5}));
    assert_eq!(doc["summary"]["traffic_counted"], true);
    let load = Load::start(elb.addr);

    let page = http::get(elb.addr, "/__erulb__/status", &[]).expect("GET status");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    let url = format!("http://{}/__erulb__/status", elb.addr);
    let loaded = chromium::dump_dom(&url, Duration::from_secs(5)).expect("chromium");
    let whole = &loaded.dom;
    let dom = main_of(whole);
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script did not draw the status: {dom}\n{}",
        loaded.log
    );
    assert!(!whole.contains("data-js-error=\""), "script error: {whole}");
    assert!(
        loaded.console.is_empty(),
        "console messages: {:#?}",
        loaded.console
    );
    let sick = server_row(dom, "web", &scene.sick.addr().to_string()).expect("sick row");
    assert!(sick.contains("data-status=\"down\""), "{sick}");
    assert!(sick.contains("503"), "the reason is shown: {sick}");
    let dead = server_row(dom, "api", &scene.dead.to_string()).expect("dead row");
    assert!(dead.contains("data-status=\"down\""), "{dead}");
    let up = server_row(dom, "web", &scene.up.addr().to_string()).expect("up row");
    assert!(up.contains("data-status=\"up\""), "{up}");
    assert!(up.contains("eu-1a"), "zone shown: {up}");
    assert!(
        dom.contains("data-upstream=\"api\" data-fail-open=\"1\""),
        "api fails open"
    );
    assert!(dom.contains("FAIL-OPEN"), "fail-open is said");
    assert!(
        dom.contains("<section id=\"problems\" class=\"problems\">"),
        "the problems are listed, not hidden: {dom}"
    );
    assert!(dom.contains("data-service=\"db\""), "the L4 service");
    // Two readings were taken: each upstream has a rate, computed by the
    // page from the counters' difference.
    for upstream in ["web", "api", "static"] {
        let at = dom
            .find(&format!("data-upstream=\"{upstream}\" data-fail-open"))
            .expect("upstream block");
        let block = &dom[at..];
        let rps = block
            .split("data-rps=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a data-rps attribute");
        let rps: f64 = rps
            .parse()
            .unwrap_or_else(|_| panic!("{upstream}: no rate computed ({rps:?}): {block}"));
        assert!(rps >= 0.0);
    }
    assert!(dom.contains("id=\"sum-rps\""), "the total request rate");
    assert!(dom.contains("id=\"sum-errors\""), "the total 5xx rate");

    let shot = chromium::artifact_dir("status_page").join("status-page.png");
    chromium::screenshot(&url, Duration::from_secs(10), &shot, (1400, 1300)).expect("screenshot");
    let sent = load.stop();
    assert!(sent > 0, "the load ran");
    let size = std::fs::metadata(&shot).expect("screenshot").len();
    assert!(size > 20_000, "a near-empty screenshot ({size} bytes)");
    println!("status page screenshot: {}", shot.display());
}

#[test]
fn with_a_token_the_data_needs_it() {
    let setup = start_with(&["--workers", "1", "--admin-token", "s3cret"]);
    let elb = &setup.elb;
    let up = Backend::start("up").expect("backend");
    let put = http::request(
        elb.addr,
        "PUT",
        "/__erulb__/upstream",
        &[("Authorization", "Bearer s3cret")],
        Some(
            json!({"web": {up.addr().to_string(): "zone=eu-1a"}})
                .to_string()
                .as_bytes(),
        ),
    )
    .expect("PUT");
    assert_eq!(put.status, 200, "{}", put.text());
    let server = up.addr().to_string();

    assert_eq!(status_json(elb, None).status, 401);
    assert_eq!(status_json(elb, Some("wrong")).status, 401);
    let ok = status_json(elb, Some("s3cret"));
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains(&server));
    // The page holds no data: it is served, and asks for the token.
    let page = http::get(elb.addr, "/__erulb__/status", &[]).expect("GET status");
    assert_eq!(page.status, 200);
    assert!(!page.text().contains(&server));

    let url = format!("http://{}/__erulb__/status", elb.addr);
    let budget = Duration::from_secs(2);
    let without = chromium::dump_dom(&url, budget).expect("chromium");
    let dom = main_of(&without.dom);
    assert!(dom.contains("data-auth=\"required\""), "{dom}");
    assert!(dom.contains("data-loaded=\"0\""), "{dom}");
    assert!(
        dom.contains("<div class=\"two-col\" hidden"),
        "empty panels are hidden behind the prompt: {dom}"
    );
    assert!(
        !without.dom.contains(&server),
        "data shown without the token"
    );
    let wrong = chromium::dump_dom(&format!("{url}#token=wrong"), budget).expect("chromium");
    assert!(
        main_of(&wrong.dom).contains("That token was refused."),
        "{}",
        wrong.dom
    );
    assert!(!wrong.dom.contains(&server));
    let with = chromium::dump_dom(&format!("{url}#token=s3cret"), budget).expect("chromium");
    let dom = main_of(&with.dom);
    assert!(dom.contains("data-loaded=\"1\""), "{dom}");
    assert!(dom.contains(&server));
    assert!(!dom.contains("data-auth"), "{dom}");
    assert!(
        !with.dom.contains("s3cret"),
        "the token is not left in the page"
    );
    assert!(with.console.is_empty(), "{:#?}", with.console);
}
