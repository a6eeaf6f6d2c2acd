//! statsd metrics from real requests, received on a real UDP socket.
use std::{collections::HashSet, net::UdpSocket, time::Duration};

use elb_tests::{
    backend::Backend,
    l7::{Cleanup, L7Builder},
};
use serde_json::json;

#[test]
fn requests_that_reach_a_backend_rule_are_counted() {
    let statsd = UdpSocket::bind("127.0.0.1:0").expect("udp");
    statsd
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let target = statsd.local_addr().expect("addr").to_string();
    let elb = L7Builder::new()
        .arg("--statsd")
        .arg(&target)
        .start()
        .expect("start elb");
    let _c = Cleanup(elb.state_dir.clone());
    let b1 = Backend::start("b1").expect("backend");
    elb.admin_ok(
        "PUT",
        "upstream",
        Some(json!({"up": {b1.addr().to_string(): ""}})),
    );
    elb.admin_ok("PUT", "domain", Some(json!({"Stats.Example.com": {"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": "up"}}}}})));
    for _ in 0..3 {
        assert_eq!(elb.get("stats.example.com:8080", "/", None).status, 200);
    }
    assert_eq!(elb.get("unknown.example", "/", None).status, 404);

    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    while lines.len() < 9 {
        let (n, _) = statsd
            .recv_from(&mut buf)
            .expect("statsd datagram within 3 s");
        assert!(n <= 1432, "datagram of {n} bytes");
        lines.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    let prefix = format!("{}.stats_example_com", elb.name);
    let distinct: HashSet<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.contains(".cost:"))
        .collect();
    assert_eq!(
        distinct,
        HashSet::from([
            format!("{prefix}.total:1|c").as_str(),
            format!("{prefix}.status.200:1|c").as_str()
        ])
    );
    let costs: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{prefix}.cost:")))
        .collect();
    assert_eq!(costs.len(), 3, "{lines:?}");
    assert!(costs.iter().all(|l| l.ends_with("|ms")), "{costs:?}");
    assert!(
        !lines.iter().any(|l| l.contains("unknown")),
        "404s reached no backend rule: {lines:?}"
    );
}
