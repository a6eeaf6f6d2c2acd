//! HTTPS and HTTP/2 listeners on a real elb, driven by real clients: curl
//! (`--resolve` for SNI, `--http2`, `--http2-prior-knowledge`), `openssl
//! s_client` for the certificate each SNI name gets, Python's `ssl`, and
//! h2 (the Rust HTTP/2 client) for the stream limits and a rapid-reset
//! flood.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    http,
    l7::{L7Elb, Setup, start_with},
    pki::Authority,
    ports::free_port,
};
use serde_json::{Value, json};

const HOST: &str = "www.example.com";

/// An elb with certificates `main` (main.test, the default), `wild`
/// (*.example.com) and `api` (api.example.com) from one test CA, and
/// two listeners: `tls` (https, HTTP/2 offered) and `clear` (http, h2c).
struct Site {
    setup: Setup,
    authority: Authority,
    dir: tempfile::TempDir,
    https: SocketAddr,
    clear: SocketAddr,
}

impl Site {
    fn start(extra: &[&str]) -> Self {
        let setup = start_with(extra);
        let authority = Authority::new("https").expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), &authority.ca).expect("write CA");
        let site = Self {
            setup,
            authority,
            dir,
            https: loopback(free_port()),
            clear: loopback(free_port()),
        };
        site.put_cert("main", &["main.test"], "main");
        site.put_cert("wild", &["*.example.com"], "wild");
        site.put_cert("api", &["api.example.com"], "api");
        site.elb().admin_ok(
            "PUT",
            "listener",
            Some(json!({
                "tls": {"address": site.https.to_string(), "protocol": "https",
                        "http2": true, "default_certificate": "main"},
                "clear": {"address": site.clear.to_string(), "protocol": "http", "http2": true},
            })),
        );
        site
    }

    fn elb(&self) -> &L7Elb {
        &self.setup.elb
    }

    /// Uploads certificate `name` for `dns` with common name `cn`.
    fn put_cert(&self, name: &str, dns: &[&str], cn: &str) {
        let (cert, key) = self.authority.server(dns, cn).expect("leaf");
        self.elb().admin_ok(
            "PUT",
            "cert",
            Some(json!({ name: {"cert": cert, "key": key} })),
        );
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What curl got: status, HTTP version and body.
#[derive(Debug)]
struct Curled {
    status: u16,
    version: String,
    body: String,
}

impl Curled {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `curl` to `https://host:port/path` (or `http://` when `ca` is None),
/// resolved to `addr`, with extra `flags`.
fn curl(addr: SocketAddr, ca: Option<&Path>, host: &str, path: &str, flags: &[&str]) -> Curled {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let port = addr.port();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "-o", "-"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{}", addr.ip()))
        .args(flags);
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    let output = command
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {flags:?} {host}{path}: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, trailer) = stdout.rsplit_once('\n').expect("curl's -w line");
    let (status, version) = trailer.split_once(' ').expect("status and version");
    Curled {
        status: status.parse().expect("status"),
        version: version.to_owned(),
        body: body.to_owned(),
    }
}

/// The certificate's subject line `openssl s_client` saw, for SNI `sni`
/// (none when `None`).
fn served_subject(addr: SocketAddr, sni: Option<&str>, extra: &[&str]) -> String {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &addr.to_string()])
        .args(extra);
    match sni {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("subject="))
        .unwrap_or_else(|| {
            panic!(
                "no certificate for SNI {sni:?}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .trim()
        .to_owned()
}

#[test]
fn sni_picks_exact_then_wildcard_and_anything_else_gets_the_default() {
    let site = Site::start(&[]);
    for tls in [&["-tls1_3"][..], &["-tls1_2"][..]] {
        for (sni, cn) in [
            (Some("api.example.com"), "api"),
            (Some("WWW.Example.com"), "wild"),
            (Some("a.b.example.com"), "main"),
            (Some("unknown.test"), "main"),
            (Some("main.test"), "main"),
            (None, "main"),
        ] {
            let subject = served_subject(site.https, sni, tls);
            assert!(
                subject.ends_with(&format!("CN = {cn}")),
                "{tls:?} SNI {sni:?}: {subject}"
            );
        }
    }
}

/// Python's `ssl`: the negotiated version and ALPN protocol, and the
/// status line of a request, over a verified connection.
const PY_SSL: &str = r#"
import socket, ssl, sys
port, cafile, host, alpn, version = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
ctx.set_alpn_protocols(alpn)
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        line = ""
        if tls.selected_alpn_protocol() != "h2":
            tls.sendall(f"GET /py HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            line = data.split(b"\r\n", 1)[0].decode()
        print(tls.version(), tls.selected_alpn_protocol(), line, sep="|")
"#;

fn python_ssl(site: &Site, alpn: &str, version: &str) -> Vec<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(PY_SSL)
        .arg(site.https.port().to_string())
        .arg(site.ca())
        .args([HOST, alpn, version])
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python ssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .split('|')
        .map(str::to_owned)
        .collect()
}

#[test]
fn python_ssl_negotiates_tls12_and_tls13_and_alpn() {
    let site = Site::start(&[]);
    let backend = Backend::start("py").expect("backend");
    site.elb().route(HOST, "py", &[(backend.addr(), "")]);
    assert_eq!(
        python_ssl(&site, "h2,http/1.1", "TLSv1_3"),
        ["TLSv1.3", "h2", ""]
    );
    assert_eq!(
        python_ssl(&site, "http/1.1", "TLSv1_2"),
        ["TLSv1.2", "http/1.1", "HTTP/1.1 200 OK"]
    );
    assert_eq!(
        python_ssl(&site, "http/1.1", "TLSv1_3"),
        ["TLSv1.3", "http/1.1", "HTTP/1.1 200 OK"]
    );
}

/// Two backends by path and user agent: every protocol must route alike.
#[test]
fn http1_http2_and_h2c_go_through_the_same_routing_table() {
    let site = Site::start(&[]);
    let (web, api) = (
        Backend::start("web").expect("backend"),
        Backend::start("api").expect("backend"),
    );
    site.elb().put_upstream("web", &[(web.addr(), "")]);
    site.elb().put_upstream("api", &[(api.addr(), "")]);
    site.elb().admin_ok(
        "PUT",
        "domain",
        Some(json!({ HOST: {
            "init": "by_ua",
            "rules": {
                "by_ua": {"type": "ua", "args": {"pattern": "^bot", "succ": "to_api", "fail": "by_path"}},
                "by_path": {"type": "path", "args": {"pattern": "/api/", "succ": "to_api", "fail": "to_web"}},
                "to_api": {"type": "backend", "args": {"servername": "api"}},
                "to_web": {"type": "backend", "args": {"servername": "web"}},
            },
        }})),
    );
    let ca = site.ca();
    // (what, listener, CA when over TLS, curl flags, HTTP version)
    type Client<'a> = (
        &'a str,
        SocketAddr,
        Option<&'a Path>,
        &'a [&'a str],
        &'a str,
    );
    let clients: [Client; 4] = [
        ("https h1", site.https, Some(&ca), &["--http1.1"], "1.1"),
        ("https h2", site.https, Some(&ca), &["--http2"], "2"),
        ("h2c", site.clear, None, &["--http2-prior-knowledge"], "2"),
        ("http h1", site.clear, None, &["--http1.1"], "1.1"),
    ];
    for (path, ua, expected) in [
        ("/", "curl", "web"),
        ("/api/x?q=1", "curl", "api"),
        ("/apix", "curl", "web"),
        ("/", "bot/1", "api"),
    ] {
        for (what, addr, ca, flags, version) in clients {
            let mut flags = flags.to_vec();
            flags.extend(["-A", ua]);
            let got = curl(addr, ca, HOST, path, &flags);
            assert_eq!(got.status, 200, "{what} {path}: {got:?}");
            assert_eq!(got.version, version, "{what}: {got:?}");
            let echo = got.json();
            assert_eq!(echo["server"], expected, "{what} {path} ua {ua}: {echo}");
            assert_eq!(echo["path"], path);
            let proto = if ca.is_some() { "https" } else { "http" };
            assert_eq!(
                echo["headers"]["x-forwarded-proto"], proto,
                "{what}: {echo}"
            );
            // Upstreams speak HTTP/1.1 with the request's host.
            assert_eq!(echo["headers"]["host"], format!("{HOST}:{}", addr.port()));
        }
    }
    // A 404 for an unknown domain is the same everywhere too.
    for (what, addr, ca, flags, _) in clients {
        let got = curl(addr, ca, "nobody.example.com", "/", flags);
        assert_eq!(got.status, 404, "{what}: {got:?}");
    }
}

#[test]
fn http2_offers_are_per_listener() {
    let site = Site::start(&[]);
    let backend = Backend::start("h1only").expect("backend");
    site.elb().route(HOST, "h1only", &[(backend.addr(), "")]);
    let plain_tls = loopback(free_port());
    site.elb().admin_ok(
        "PUT",
        "listener",
        Some(
            json!({"h1tls": {"address": plain_tls.to_string(), "protocol": "https",
                               "default_certificate": "main"}}),
        ),
    );
    // No h2 in ALPN: curl falls back to HTTP/1.1.
    let got = curl(plain_tls, Some(&site.ca()), HOST, "/", &["--http2"]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"), "{got:?}");
    // The static --listen listener speaks no h2c: the preface is no request.
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"])
        .arg(format!("http://{}/", site.elb().addr))
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&output.stdout), "200");
}

#[test]
fn a_listeners_default_certificate_is_not_deleted_from_under_it() {
    let site = Site::start(&[]);
    let addr = site.elb().addr;
    let response =
        http::admin(addr, "DELETE", "cert", Some(&json!(["api", "main"]))).expect("DELETE cert");
    assert_eq!(response.status, 400, "{}", response.text());
    let error = response.json().expect("JSON error")["error"].to_string();
    assert!(
        error.contains(r#"certificate \"main\" is the default_certificate of listener \"tls\""#),
        "{error}"
    );
    let certs = site.elb().admin_ok("GET", "cert", None);
    assert!(
        certs.get("main").is_some() && certs.get("api").is_some(),
        "{certs}"
    );
    site.elb()
        .admin_ok("DELETE", "listener", Some(json!(["tls"])));
    site.elb()
        .admin_ok("DELETE", "cert", Some(json!(["api", "main"])));
}

#[test]
fn statsd_and_log_lines_name_the_listener() {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").expect("statsd socket");
    statsd
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let target = statsd.local_addr().expect("addr").to_string();
    let site = Site::start(&["--statsd", &target]);
    // A server that refuses connections: its failure is logged.
    let dead = loopback(free_port());
    site.elb().route(HOST, "dead", &[(dead, "")]);
    let got = curl(site.https, Some(&site.ca()), HOST, "/", &["--http2"]);
    assert_eq!(got.status, 502, "{got:?}");
    let mut buf = [0u8; 2048];
    let mut lines = String::new();
    while !lines.contains("listeners.tls.status.502") {
        let n = statsd.recv(&mut buf).expect("statsd datagram");
        lines.push_str(&String::from_utf8_lossy(&buf[..n]));
        lines.push('\n');
    }
    let prefix = &site.elb().name;
    assert!(
        lines.contains(&format!("{prefix}.listeners.tls.total:1|c")),
        "{lines}"
    );
    assert!(
        lines.contains(&format!("{prefix}.www_example_com.status.502:1|c")),
        "{lines}"
    );
    let log = site.elb().process.plain_log();
    let failure = log
        .lines()
        .find(|line| line.contains("upstream try failed"))
        .unwrap_or_else(|| panic!("no failure logged: {log}"));
    assert!(failure.contains(r#"listener="tls""#), "{failure}");
}

/// `h2load`'s summary line: `requests: N total, N started, N done, N
/// succeeded, N failed, N errored, N timeout`.
fn h2load(args: &[&str]) -> String {
    let output = Command::new("h2load")
        .args(args)
        .output()
        .expect("run h2load (Debian: nghttp2-client)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "h2load {args:?}: {stdout}");
    stdout
        .lines()
        .find(|line| line.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary from h2load: {stdout}"))
        .to_owned()
}

#[test]
fn h2load_multiplexes_streams_over_tls_and_h2c() {
    let site = Site::start(&[]);
    let backend = Backend::start("load").expect("backend");
    site.elb().route(HOST, "load", &[(backend.addr(), "")]);
    // 4 connections × 32 concurrent streams, bounded by the request count.
    // (`:authority` sets the Host too; `-H host:` would add a second one.)
    for url in [
        format!("https://{}/", site.https),
        format!("http://{}/", site.clear),
    ] {
        let summary = h2load(&[
            "-n",
            "4000",
            "-c",
            "4",
            "-m",
            "32",
            "--header",
            &format!(":authority: {HOST}"),
            &url,
        ]);
        assert_eq!(
            summary,
            "requests: 4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored, 0 timeout",
            "{url}"
        );
    }
    // HTTP/1.1 keep-alive through the same listener (h2load --h1).
    let summary = h2load(&[
        "--h1",
        "-n",
        "1000",
        "-c",
        "4",
        "--header",
        &format!(":authority: {HOST}"),
        &format!("https://{}/", site.https),
    ]);
    assert!(summary.contains("1000 succeeded, 0 failed"), "{summary}");
}

/// Requests in a loop on background threads (one per client; a client
/// returns whether its request succeeded), counted, until [`Traffic::finish`].
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

type Client = Box<dyn Fn(u32) -> bool + Send>;

impl Traffic {
    fn start(clients: Vec<Client>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = clients
            .into_iter()
            .map(|client| {
                let (stop, done, failed) =
                    (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
                std::thread::spawn(move || {
                    // Bounded: a test that forgets to stop still ends.
                    for i in 0..5_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let counter = if client(i) { &done } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            failed,
            threads,
        }
    }

    /// Stops once at least `enough` requests succeeded (however slowly
    /// clients start on a busy machine; 20 s at most); none may have failed.
    fn finish(self, enough: u64) {
        let waiting = Instant::now();
        while self.done.load(Ordering::Relaxed) < enough
            && waiting.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("traffic thread");
        }
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "failed requests");
        assert!(
            self.done.load(Ordering::Relaxed) >= enough,
            "too little traffic"
        );
    }
}

/// New TLS connections through curl to the https listener, HTTP/2 or 1.1.
fn https_client(site: &Arc<Site>, flag: &'static str) -> Client {
    let site = Arc::clone(site);
    Box::new(move |_| {
        let got = curl(site.https, Some(&site.ca()), HOST, "/", &[flag]);
        let version = if flag == "--http2" { "2" } else { "1.1" };
        got.status == 200 && got.version == version
    })
}

#[test]
fn a_rotated_certificate_serves_new_handshakes_at_once_under_traffic() {
    let site = Arc::new(Site::start(&[]));
    let backend = Backend::start("rot").expect("backend");
    site.elb().route(HOST, "rot", &[(backend.addr(), "")]);
    let traffic = Traffic::start(vec![
        https_client(&site, "--http2"),
        https_client(&site, "--http1.1"),
    ]);
    for round in 0..4 {
        let cn = format!("wild-{round}");
        site.put_cert("wild", &["*.example.com"], &cn);
        let started = Instant::now();
        loop {
            let subject = served_subject(site.https, Some(HOST), &[]);
            if subject.ends_with(&format!("CN = {cn}")) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "round {round}: still {subject} after 1 s"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    traffic.finish(10);
}

#[test]
fn https_listeners_come_and_go_under_traffic_with_no_failed_request_elsewhere() {
    let site = Arc::new(Site::start(&[]));
    let backend = Backend::start("live").expect("backend");
    site.elb().route(HOST, "live", &[(backend.addr(), "")]);
    // HTTP/2 over TLS on the permanent https listener, HTTP/1.1 on --listen.
    let static_addr = site.elb().addr;
    let traffic = Traffic::start(vec![
        https_client(&site, "--http2"),
        Box::new(move |_| {
            let response = http::get(static_addr, "/", &[("Host", HOST)]);
            matches!(response, Ok(r) if r.status == 200)
        }),
    ]);
    for round in 0..6 {
        let addr = loopback(free_port());
        let name = format!("extra{round}");
        site.elb().admin_ok(
            "PUT",
            "listener",
            Some(
                json!({ &name: {"address": addr.to_string(), "protocol": "https",
                                 "http2": round % 2 == 0, "default_certificate": "main"} }),
            ),
        );
        let got = curl(addr, Some(&site.ca()), HOST, "/", &["--http2"]);
        let version = if round % 2 == 0 { "2" } else { "1.1" };
        assert_eq!(
            (got.status, got.version.as_str()),
            (200, version),
            "{got:?}"
        );
        site.elb()
            .admin_ok("DELETE", "listener", Some(json!([name])));
        // Its workers close their sockets a moment after the reply.
        let removed = Instant::now();
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                removed.elapsed() < Duration::from_secs(1),
                "{name} still accepts"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    traffic.finish(10);
}

/// The h2 client, raw: frames as a flooding client would send them.
mod raw_h2 {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use h2::client::{self, SendRequest};
    use tokio::net::TcpStream;

    /// The sender, and the connection's task: it ends with the connection.
    pub async fn connect(addr: SocketAddr) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, driver)
    }

    pub fn get(host: &str, path: &str) -> http::Request<()> {
        http::Request::get(format!("http://{host}{path}"))
            .body(())
            .expect("request")
    }
}

/// A runtime for the raw h2 client (the backends run their own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let site = Site::start(&[]);
    let slow = Backend::start("slow").expect("backend");
    slow.set_delay(Duration::from_millis(300));
    site.elb().route(HOST, "slow", &[(slow.addr(), "")]);
    // In bursts, streams are reset before hyper takes them: h2's own cap
    // on such resets ends the connection. Paced, each stream's request is
    // under way when its reset comes: elb's count of abandoned streams
    // ends it.
    for (pace, logged) in [(None, false), (Some(Duration::from_millis(2)), true)] {
        let before = slow.hits();
        let sent = runtime().block_on(flood(site.clear, pace));
        assert!(sent < FLOOD, "{pace:?}: all {sent} streams were taken");
        // The work elb did for it is bounded: far fewer requests than streams.
        let reached = slow.hits() - before;
        assert!(
            reached <= 2 * elb_userspace::server::ABANDONED_MIN + 100,
            "{pace:?}: {reached} of {sent} reset streams reached the server"
        );
        let log = site.elb().process.plain_log();
        assert_eq!(
            log.contains("rapid reset"),
            logged,
            "{pace:?}: elb's own check (its log line) {log}"
        );
    }
    // Others are served, over h2c and TLS.
    let got = curl(site.clear, None, HOST, "/", &["--http2-prior-knowledge"]);
    assert_eq!(got.status, 200, "{got:?}");
    let got = curl(site.https, Some(&site.ca()), HOST, "/", &["--http2"]);
    assert_eq!(got.status, 200, "{got:?}");
}

const FLOOD: u32 = 5_000;

/// Opens streams and resets each, at once or after `pace`, until the
/// server ends the connection (it must, within 10 s of the last stream);
/// returns how many were sent.
async fn flood(addr: SocketAddr, pace: Option<Duration>) -> u32 {
    let (mut sender, driver) = raw_h2::connect(addr).await;
    let mut sent = 0;
    for _ in 0..FLOOD {
        let Ok(ready) = sender.clone().ready().await else {
            break;
        };
        sender = ready;
        match sender.send_request(raw_h2::get(HOST, "/flood"), true) {
            Ok((response, mut stream)) => {
                if let Some(pace) = pace {
                    tokio::time::sleep(pace).await;
                }
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                sent += 1;
            }
            Err(_) => break,
        }
        // Let the connection task write the frames.
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the flooding connection was not ended")
        .expect("driver");
    sent
}

#[test]
fn http2_limits_streams_per_connection_and_the_header_list() {
    let site = Site::start(&["--max-header-bytes", "16384"]);
    let backend = Backend::start("lim").expect("backend");
    site.elb().route(HOST, "lim", &[(backend.addr(), "")]);
    runtime().block_on(limits(site.clear));
}

async fn limits(addr: SocketAddr) {
    let (sender, _driver) = raw_h2::connect(addr).await;
    let mut sender = sender.ready().await.expect("ready");
    // The server's SETTINGS are in once a first answer is.
    let (response, _) = sender
        .send_request(raw_h2::get(HOST, "/first"), true)
        .expect("send");
    assert_eq!(response.await.expect("response").status(), 200);
    assert_eq!(
        sender.current_max_send_streams(),
        elb_userspace::server::MAX_CONCURRENT_STREAMS as usize
    );
    let mut sender = sender.ready().await.expect("ready");
    // A header list past --max-header-bytes: 431, the connection lives on.
    let mut big = raw_h2::get(HOST, "/big");
    big.headers_mut().insert(
        "x-big",
        ::http::HeaderValue::from_str(&"b".repeat(20_000)).expect("value"),
    );
    let (response, _) = sender.send_request(big, true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 431);
    let mut sender = sender.ready().await.expect("still open");
    let (response, _) = sender
        .send_request(raw_h2::get(HOST, "/small"), true)
        .expect("send");
    assert_eq!(response.await.expect("response").status(), 200);
}
