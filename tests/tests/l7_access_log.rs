//! Access logs on a real elb (`--access-log`, `--access-log-format`): a
//! line per request with the domain, upstream, server, status, bytes and
//! times, in the combined-like format or as JSON, and a reopen on SIGUSR1
//! (logrotate's rename, then signal).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use elb_tests::{backend::Backend, http, l7::start_with, ports::free_port};
use serde_json::Value;

const HOST: &str = "logs.example.com";

/// The file's first line containing `needle`, once it is written (lines
/// are written asynchronously, admin calls' lines among them).
fn line_with(path: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no line with {needle:?} in {}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn combined_lines_name_the_domain_upstream_server_status_bytes_and_times() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let s = start_with(&["--access-log", log.to_str().expect("path")]);
    let backend = Backend::start("logged").expect("backend");
    s.elb.route(HOST, "web", &[(backend.addr(), "")]);
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    s.elb.route("dead.example.com", "dead", &[(dead, "")]);
    let ok = http::get(
        s.elb.addr,
        "/a?b=1",
        &[("Host", HOST), ("User-Agent", "ua \"x\""), ("Referer", "r")],
    )
    .expect("GET");
    assert_eq!(ok.status, 200);
    let missing = http::get(s.elb.addr, "/", &[("Host", "nobody.test")]).expect("GET");
    assert_eq!(missing.status, 404);
    let failed = http::get(s.elb.addr, "/", &[("Host", "dead.example.com")]).expect("GET");
    assert_eq!(failed.status, 502);
    let found = |needle: &str| line_with(&log, needle);
    let line = found("\"GET /a?b=1 HTTP/1.1\"");
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let tail = format!(
        "\"GET /a?b=1 HTTP/1.1\" 200 {} \"r\" \"ua \\x22x\\x22\" \"{HOST}\" - web {} ",
        ok.body.len(),
        backend.addr()
    );
    assert!(line.contains(&tail), "{line}\nwanted {tail}");
    let times: Vec<f64> = line
        .rsplit(' ')
        .take(2)
        .map(|t| t.parse().expect("seconds"))
        .collect();
    assert!(
        times[0] <= times[1],
        "upstream time within request time: {line}"
    );
    let line = found("\"nobody.test\"");
    assert!(line.contains("\" 404 "), "{line}");
    assert!(
        line.contains("\"nobody.test\" - - - ") && line.ends_with(" -"),
        "no listener, upstream, server or upstream time: {line}"
    );
    let line = found("\"dead.example.com\"");
    assert!(
        line.contains("\" 502 ") && line.contains(&format!(" dead {dead} ")),
        "{line}"
    );
}

#[test]
fn json_lines_and_a_reopen_on_sigusr1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.json");
    let s = start_with(&[
        "--access-log",
        log.to_str().expect("path"),
        "--access-log-format",
        "json",
    ]);
    let backend = Backend::start("json").expect("backend");
    s.elb.route(HOST, "web", &[(backend.addr(), "")]);
    let ok = http::get(s.elb.addr, "/j", &[("Host", HOST)]).expect("GET");
    assert_eq!(ok.status, 200);
    let line = line_with(&log, "\"/j\"");
    let entry: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["host"], HOST);
    assert_eq!(entry["upstream"], "web");
    assert_eq!(entry["server"], backend.addr().to_string());
    assert_eq!(entry["bytes"], ok.body.len());
    assert_eq!(entry["version"], "HTTP/1.1");
    assert!(entry["request_time"].as_f64().expect("time") >= 0.0);
    // logrotate: rename, then SIGUSR1; the next line goes to a new file.
    let rotated = dir.path().join("access.json.1");
    std::fs::rename(&log, &rotated).expect("rename");
    let pid = s.elb.process.pid().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The writer looks at the signal within its 100 ms tick.
    std::thread::sleep(Duration::from_millis(300));
    let ok = http::get(s.elb.addr, "/after", &[("Host", HOST)]).expect("GET");
    assert_eq!(ok.status, 200);
    line_with(&log, "\"/after\"");
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert!(!old.contains("\"/after\""), "{old}");
    assert!(
        s.elb.process.plain_log().contains("access log reopened"),
        "the reopen is logged"
    );
}
