//! Runs the real `wrk` and reads its summary: requests, socket errors and
//! non-2xx/3xx responses (wrk prints those lines only when not zero).
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// wrk's counts for one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WrkSummary {
    pub requests: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    /// "Non-2xx or 3xx responses".
    pub bad_status: u64,
}

impl WrkSummary {
    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }

    /// Reads wrk's text output.
    pub fn parse(output: &str) -> Result<Self> {
        let mut summary = Self::default();
        let mut saw_requests = false;
        for line in output.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 12, write 0, timeout 0"
                for part in rest.split(',') {
                    let mut words = part.split_whitespace();
                    let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                        bail!("unexpected socket error line: {line}");
                    };
                    let count: u64 = count.parse().with_context(|| line.to_owned())?;
                    match kind {
                        "connect" => summary.connect_errors = count,
                        "read" => summary.read_errors = count,
                        "write" => summary.write_errors = count,
                        "timeout" => summary.timeouts = count,
                        _ => bail!("unexpected socket error kind in: {line}"),
                    }
                }
            } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
                summary.bad_status = rest.trim().parse().with_context(|| line.to_owned())?;
            } else if line.contains(" requests in ") {
                // "123456 requests in 20.00s, 30.00MB read"
                let count = line.split_whitespace().next().unwrap_or_default();
                summary.requests = count.parse().with_context(|| line.to_owned())?;
                saw_requests = true;
            }
        }
        if !saw_requests {
            bail!("no request count in wrk's output:\n{output}");
        }
        Ok(summary)
    }
}

/// A wrk run in the background.
pub struct Wrk {
    child: Option<Child>,
}

impl Wrk {
    /// `wrk -t2 -c<connections> -d<duration>` against `http://addr/` with
    /// this Host header.
    pub fn start(
        addr: SocketAddr,
        host: &str,
        connections: u32,
        duration: Duration,
    ) -> Result<Self> {
        let child = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{}s", duration.as_secs()),
                "--timeout",
                "5s",
                "-H",
                &format!("Host: {host}"),
                &format!("http://{addr}/"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk (Debian package wrk)")?;
        Ok(Self { child: Some(child) })
    }

    /// Waits for the end of the run and returns its summary.
    pub fn finish(mut self) -> Result<(WrkSummary, String)> {
        let child = self.child.take().context("wrk already finished")?;
        let output = child.wait_with_output().context("waiting for wrk")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!("wrk failed ({}): {text}", output.status);
        }
        Ok((WrkSummary::parse(&text)?, text))
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counts_wrk_prints() {
        let text = "Running 20s test @ http://127.0.0.1:1/\n  2 threads and 50 connections\n\
            \x20 812345 requests in 20.00s, 120.00MB read\n\
            \x20 Socket errors: connect 3, read 12, write 1, timeout 0\n\
            \x20 Non-2xx or 3xx responses: 7\nRequests/sec:  40617.25\n";
        let summary = WrkSummary::parse(text).expect("parse");
        assert_eq!(summary.requests, 812_345);
        assert_eq!(summary.socket_errors(), 16);
        assert_eq!(summary.bad_status, 7);
        let clean = WrkSummary::parse("  10 requests in 1.00s, 1KB read\n").expect("parse");
        assert_eq!((clean.socket_errors(), clean.bad_status), (0, 0));
        assert!(WrkSummary::parse("wrk: connection refused").is_err());
    }
}
