//! Running h2load (HTTP/1.1 keep-alive or multiplexed HTTP/2 over TLS, or
//! h2c by prior knowledge) and reading its report and its per-request log.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::percentile;

/// What h2load speaks on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request at a time (`--h1`).
    Http1,
    /// HTTP/2, ALPN `h2`.
    Http2,
    /// HTTP/2 in plaintext by prior knowledge (an `http://` URL).
    H2c,
}

impl Protocol {
    /// The ALPN name h2load reports as "Application protocol".
    fn alpn(self) -> &'static str {
        match self {
            Self::Http1 => "http/1.1",
            Self::Http2 => "h2",
            Self::H2c => "h2c",
        }
    }

    /// The TLS version h2load must report: none for h2c.
    fn tls(self) -> Option<&'static str> {
        match self {
            Self::Http1 | Self::Http2 => Some("TLSv1.3"),
            Self::H2c => None,
        }
    }
}

pub struct H2loadRun<'a> {
    /// `https://name/path` (or `http://` for h2c): SNI, `:authority`
    /// (Host) and path.
    pub url: &'a str,
    /// `127.0.0.1:PORT`, where the connections go instead of the URL's host.
    pub connect_to: &'a str,
    pub protocol: Protocol,
    pub threads: u32,
    pub clients: u32,
    /// Concurrent streams per HTTP/2 connection (`-m`); 1 for HTTP/1.1.
    pub streams: u32,
    /// Requests in all (`-n`). A fixed count, not `--duration`: h2load
    /// 1.52's timed mode fails a few streams now and then on a loaded
    /// machine (status -1 in its log, clients that stop early), where the
    /// same load by count runs clean.
    pub requests: u64,
    /// Extra request headers, `name: value` (`-H`).
    pub headers: &'a [&'a str],
    /// Where h2load writes one line per request (for the percentiles).
    pub log: &'a Path,
}

#[derive(Debug, Clone, Copy)]
pub struct H2loadResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p99_ms: f64,
}

impl H2loadRun<'_> {
    /// Runs h2load; a failed, errored or timed-out request, a non-2xx
    /// answer or the wrong protocol fails the run.
    pub fn run(&self) -> Result<H2loadResult> {
        let mut command = Command::new("h2load");
        if self.protocol == Protocol::Http1 {
            command.arg("--h1");
        }
        command
            .arg(format!("--threads={}", self.threads))
            .arg(format!("--clients={}", self.clients))
            .arg(format!("--max-concurrent-streams={}", self.streams))
            .arg(format!("--requests={}", self.requests))
            .arg(format!("--connect-to={}", self.connect_to))
            .args(self.headers.iter().flat_map(|header| ["-H", header]))
            .arg("--log-file")
            .arg(self.log)
            .arg(self.url);
        // h2load appends to its log.
        match std::fs::remove_file(self.log) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing {}", self.log.display()));
            }
            _ => {}
        }
        let output = command.output().context("running h2load")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "h2load failed ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let report = parse_report(&text, self.protocol)?;
        if report.tls.as_deref() != self.protocol.tls() {
            bail!(
                "h2load negotiated {:?}, expected {:?}:\n{text}",
                report.tls,
                self.protocol.tls()
            );
        }
        let log = std::fs::read_to_string(self.log)
            .with_context(|| format!("reading h2load's log {}", self.log.display()))?;
        let mut latencies = parse_log(&log)?;
        if latencies.len() as u64 != report.done {
            bail!(
                "h2load logged {} requests but reported {} done:\n{text}",
                latencies.len(),
                report.done
            );
        }
        latencies.sort_by(f64::total_cmp);
        Ok(H2loadResult {
            requests: report.done,
            requests_per_sec: report.requests_per_sec,
            p99_ms: percentile(&latencies, 0.99),
        })
    }
}

#[derive(Debug, PartialEq)]
struct Report {
    requests_per_sec: f64,
    done: u64,
    /// `TLS Protocol:`, e.g. `TLSv1.3`; none in plaintext.
    tls: Option<String>,
}

/// h2load's summary: `finished in 8.00s, 31631.00 req/s, ...`,
/// `requests: ... N done, N succeeded, F failed, E errored, T timeout`,
/// `status codes: N 2xx, ...`, `TLS Protocol: TLSv1.3` and
/// `Application protocol: h2`.
fn parse_report(text: &str, protocol: Protocol) -> Result<Report> {
    let line = |prefix: &str| -> Result<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line in h2load's output:\n{text}"))
    };
    let alpn = line("Application protocol:")?.trim();
    if alpn != protocol.alpn() {
        bail!(
            "h2load spoke {alpn:?}, expected {:?}:\n{text}",
            protocol.alpn()
        );
    }
    let requests = counts(line("requests:")?)?;
    let count = |name: &str| -> Result<u64> {
        requests
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(value, _)| *value)
            .with_context(|| format!("no {name:?} count in h2load's requests line:\n{text}"))
    };
    for bad in ["failed", "errored", "timeout"] {
        if count(bad)? > 0 {
            bail!("h2load saw {} {bad} requests:\n{text}", count(bad)?);
        }
    }
    let done = count("done")?;
    let statuses = counts(line("status codes:")?)?;
    let non_2xx: u64 = statuses
        .iter()
        .filter(|(_, class)| *class != "2xx")
        .map(|(n, _)| n)
        .sum();
    if non_2xx > 0 {
        bail!("h2load saw {non_2xx} answers that are not 2xx:\n{text}");
    }
    let requests_per_sec = line("finished in")?
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{text}"))?;
    Ok(Report {
        requests_per_sec,
        done,
        tls: line("TLS Protocol:").ok().map(|tls| tls.trim().to_owned()),
    })
}

/// `63262 total, 63270 started, 63262 done` → (63262, "total"), ...
fn counts(line: &str) -> Result<Vec<(u64, &str)>> {
    line.split(',')
        .map(|part| {
            let mut words = part.split_whitespace();
            let value = words.next().and_then(|v| v.parse().ok());
            match (value, words.next()) {
                (Some(value), Some(name)) => Ok((value, name)),
                _ => bail!("h2load count {part:?} is not `N name`"),
            }
        })
        .collect()
}

/// h2load's `--log-file`: per request, tab-separated start time (µs since
/// the epoch), status code and µs until the end of the answer. Returns the
/// latencies in ms; a non-2xx status is an error.
fn parse_log(text: &str) -> Result<Vec<f64>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            let (Some(status), Some(micros)) = (fields.get(1), fields.get(2)) else {
                bail!(
                    "h2load log line {}: {line:?} has fewer than 3 columns",
                    i + 1
                );
            };
            let status: u16 = status
                .trim()
                .parse()
                .with_context(|| format!("h2load log line {}: status {status:?}", i + 1))?;
            if !(200..300).contains(&status) {
                bail!("h2load log line {}: status {status}", i + 1);
            }
            let micros: f64 = micros
                .trim()
                .parse()
                .with_context(|| format!("h2load log line {}: time {micros:?}", i + 1))?;
            Ok(micros / 1000.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52's output, trimmed of its progress lines.
    const SAMPLE: &str = "starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 2.00s, 31631.00 req/s, 4.52MB/s
requests: 63262 total, 63270 started, 63262 done, 63262 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 63262 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 9.04MB (9480600) total, 6.52MB (6832330) headers (space savings 0.00%), 185.35KB (189795) data
                     min         max         mean         sd        +/- sd
time for request:       31us     15.04ms       246us       627us    95.38%
";

    #[test]
    fn reads_the_rate_and_the_requests_done() {
        let report = parse_report(SAMPLE, Protocol::Http2).expect("parse");
        assert_eq!(
            report,
            Report {
                requests_per_sec: 31631.0,
                done: 63262,
                tls: Some("TLSv1.3".to_owned()),
            }
        );
    }

    #[test]
    fn failures_and_the_wrong_protocol_fail_the_run() {
        assert!(parse_report(SAMPLE, Protocol::Http1).is_err());
        let failed = SAMPLE.replace(
            "63262 succeeded, 0 failed, 0 errored",
            "63246 succeeded, 16 failed, 16 errored",
        );
        assert!(parse_report(&failed, Protocol::Http2).is_err());
        let not_found = SAMPLE.replace("0 3xx, 0 4xx", "0 3xx, 5 4xx");
        assert!(parse_report(&not_found, Protocol::Http2).is_err());
        let truncated = SAMPLE.replace("finished in", "stopped in");
        assert!(parse_report(&truncated, Protocol::Http2).is_err());
    }

    #[test]
    fn reads_latencies_from_the_log() {
        let log = "1796073189593457\t200\t14259\n1796073189592757\t200\t850\n";
        assert_eq!(parse_log(log).expect("parse"), vec![14.259, 0.85]);
        assert!(parse_log("1796073189593457\t502\t14259\n").is_err());
        assert!(parse_log("1796073189593457\t200\n").is_err());
    }
}
