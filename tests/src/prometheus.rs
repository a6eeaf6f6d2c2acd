//! A real Prometheus server (Debian `prometheus`) on loopback for a test:
//! temporary configuration and storage, killed and removed on drop.
use std::{
    fs::File,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{http, ports::free_port};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    /// Configuration, storage and log; removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) every second, and
    /// waits until its API answers.
    pub fn start(target: SocketAddr, bearer_token: Option<&str>) -> Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for prometheus")?;
        let auth = bearer_token.map_or_else(String::new, |token| {
            format!("    authorization:\n      credentials: {token}\n")
        });
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: elb\n{auth}    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (Debian package `prometheus`; cargo xtask setup)")?;
        let prometheus = Self { child, addr, dir };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http::get(self.addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("prometheus not ready within 30 s; log:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query (`/api/v1/query`).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let path = format!("/api/v1/query?query={}", encode_query(promql));
        let response = http::get(self.addr, &path, &[])?;
        let body = response.json().context("prometheus answer is JSON")?;
        if body["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of `promql`, if it has exactly one series.
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let result = self.query(promql)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(one["value"][1].as_str().and_then(|v| v.parse().ok())),
            many => bail!("query {promql:?} has {} series: {many:?}", many.len()),
        }
    }

    /// Polls `promql` until its value is `want` (Prometheus scrapes every
    /// second), returning the last value seen on timeout.
    pub fn wait_for_value(&self, promql: &str, want: f64, limit: Duration) -> Result<Option<f64>> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.value(promql)?;
            if value == Some(want) || Instant::now() >= deadline {
                return Ok(value);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed after this, with the process gone.
    }
}

/// Percent-encodes a PromQL expression for a query string.
fn encode_query(promql: &str) -> String {
    promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
