//! Running wrk and reading its report.
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

pub struct WrkRun<'a> {
    pub url: &'a str,
    pub headers: &'a [&'a str],
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

impl WrkRun<'_> {
    /// Runs wrk; any socket error or non-2xx answer fails the run, so a
    /// broken setup cannot pass as fast.
    pub fn run(&self) -> Result<WrkResult> {
        let mut command = Command::new("wrk");
        command
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            .arg("--latency");
        for header in self.headers {
            command.args(["-H", header]);
        }
        let output = command.arg(self.url).output().context("running wrk")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "wrk failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse(&text)
    }
}

fn parse(text: &str) -> Result<WrkResult> {
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk saw failed responses ({}):\n{text}", line.trim());
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors"))
    {
        // Timeouts and read errors under load are failures; "connect 0" etc. are fine.
        let failed = line
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .any(|n| n > 0);
        if failed {
            bail!("wrk saw socket errors ({}):\n{text}", line.trim());
        }
    }
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let percentile = |p: &str| -> Result<f64> {
        let value = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(str::trim)
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))?;
        to_ms(value)
    };
    Ok(WrkResult {
        requests_per_sec,
        p50_ms: percentile("50%")?,
        p90_ms: percentile("90%")?,
        p99_ms: percentile("99%")?,
    })
}

/// `812.00us`, `1.20ms`, `2.01s` → milliseconds.
fn to_ms(value: &str) -> Result<f64> {
    let (number, factor) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("latency {value:?} has no unit")
    };
    Ok(number
        .parse::<f64>()
        .with_context(|| format!("latency {value:?}"))?
        * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:1/\n  2 threads and 10 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.00ms\n     90%    1.20ms\n     99%    2.01s\n  100 requests in 2.00s, 10.00KB read\nRequests/sec:  12345.67\nTransfer/sec:      5.00KB\n";

    #[test]
    fn parses_rates_and_percentiles() {
        let result = parse(SAMPLE).expect("parse");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(result.requests_per_sec, 12345.67));
        assert!(close(result.p50_ms, 0.812), "{}", result.p50_ms);
        assert!(close(result.p90_ms, 1.2), "{}", result.p90_ms);
        assert!(close(result.p99_ms, 2010.0), "{}", result.p99_ms);
    }

    #[test]
    fn failures_fail_the_run() {
        let bad = format!("{SAMPLE}  Non-2xx or 3xx responses: 3\n");
        assert!(parse(&bad).is_err());
        let errors = format!("{SAMPLE}  Socket errors: connect 0, read 0, write 0, timeout 7\n");
        assert!(parse(&errors).is_err());
        let fine = format!("{SAMPLE}  Socket errors: connect 0, read 0, write 0, timeout 0\n");
        assert!(parse(&fine).is_ok());
    }
}
