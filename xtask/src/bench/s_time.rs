//! New TLS connections per second with `openssl s_time`: full handshakes
//! (`-new`) or resumed ones (`-reuse`), one request on each connection.
//! s_time prints a mark per connection, `r` when the server resumed the
//! session, which is how the run proves which kind it timed.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub struct STimeRun<'a> {
    /// `127.0.0.1:PORT`.
    pub connect: &'a str,
    /// Resume the session on every connection after the first (untimed) one.
    pub resume: bool,
    pub seconds: u32,
    /// The request, sent whole: s_time writes `GET <www> HTTP/1.0\r\n\r\n`.
    pub www: &'a str,
    /// s_time connects one connection at a time: run this many side by side.
    pub processes: u32,
    /// Where each process's output goes.
    pub dir: &'a Path,
}

#[derive(Debug, Clone, Copy)]
pub struct STimeResult {
    pub connections: u64,
    pub connections_per_sec: f64,
}

impl STimeRun<'_> {
    /// Runs the processes side by side; each must time only the kind of
    /// handshake asked for and read an answer on every connection.
    pub fn run(&self) -> Result<STimeResult> {
        let started = Instant::now();
        let mut children = Vec::with_capacity(self.processes as usize);
        for i in 0..self.processes {
            let out = self.dir.join(format!("s_time-{i}.out"));
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let child = Command::new("openssl")
                .args(["s_time", "-connect", self.connect])
                .arg(if self.resume { "-reuse" } else { "-new" })
                .args(["-time", &self.seconds.to_string(), "-www", self.www])
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("starting openssl s_time")?;
            children.push(Running { child, out });
        }
        // s_time reads each answer until the server closes: a server that
        // keeps the connection open would hang it, so bound the wait.
        let deadline = started + Duration::from_secs(u64::from(self.seconds) + 20);
        let mut connections = 0;
        for running in &mut children {
            let status = running.wait_until(deadline)?;
            let text = std::fs::read_to_string(&running.out).unwrap_or_default();
            if !status.success() {
                bail!("openssl s_time failed ({status}):\n{text}");
            }
            connections += parse(&text, self.resume)?;
        }
        Ok(STimeResult {
            connections,
            connections_per_sec: connections as f64 / started.elapsed().as_secs_f64(),
        })
    }
}

/// Sends the request s_time sends (`GET <www> HTTP/1.0`, without SNI, as
/// s_time) once with `openssl s_client`, and fails unless the answer is a
/// 200: s_time itself only counts the bytes it read.
pub fn check_answer(connect: &str, www: &str, dir: &Path) -> Result<()> {
    use std::io::Write;
    let out = dir.join("s_client.out");
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", connect])
        .stdin(Stdio::piped())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting openssl s_client")?;
    let mut running = Running { child, out };
    running
        .child
        .stdin
        .take()
        .context("s_client's stdin")?
        .write_all(format!("GET {www} HTTP/1.0\r\n\r\n").as_bytes())
        .context("writing the request to s_client")?;
    // -quiet ignores the end of its input: it exits when the server closes.
    running.wait_until(Instant::now() + Duration::from_secs(10))?;
    let answer = std::fs::read_to_string(&running.out).unwrap_or_default();
    if !answer.lines().any(|l| l.starts_with("HTTP/1.1 200 ")) {
        bail!("s_time's request to {connect} was not answered 200:\n{answer}");
    }
    Ok(())
}

struct Running {
    child: Child,
    out: std::path::PathBuf,
}

impl Running {
    fn wait_until(&mut self, deadline: Instant) -> Result<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "openssl did not finish in time (an answer the server never closed?): {}",
                    std::fs::read_to_string(&self.out).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One s_time process's output: its marks (`*` a full handshake of TLS 1.2
/// or 1.3, `r` a resumed one; `t`, `3` older versions) and its
/// `N connections in T real seconds, B bytes read per connection` line.
/// Returns the number of connections, all of the kind asked for.
fn parse(text: &str, resume: bool) -> Result<u64> {
    let summary = text
        .lines()
        .find(|l| l.contains("real seconds"))
        .with_context(|| format!("no `real seconds` line in s_time's output:\n{text}"))?;
    let connections: u64 = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no connection count in {summary:?}"))?;
    let bytes: u64 = summary
        .rsplit_once(',')
        .and_then(|(_, tail)| tail.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no bytes per connection in {summary:?}"))?;
    let marks: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().all(|c| matches!(c, '*' | 'r' | 't' | '3')))
        .collect();
    let resumed = marks.chars().filter(|&c| c == 'r').count() as u64;
    if marks.len() as u64 != connections {
        bail!(
            "s_time marked {} connections but counted {connections}:\n{text}",
            marks.len()
        );
    }
    if connections == 0 {
        bail!("s_time made no connection:\n{text}");
    }
    if bytes == 0 {
        bail!("s_time read no answer on its connections:\n{text}");
    }
    let wanted = if resume { connections } else { 0 };
    if resumed != wanted {
        bail!(
            "s_time {}: {resumed} of {connections} handshakes were resumptions, expected {wanted}",
            if resume { "-reuse" } else { "-new" }
        );
    }
    Ok(connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    // OpenSSL 3.0's s_time, shortened to a few connections.
    const NEW: &str = "Collecting connection statistics for 2 seconds\n*****\n\n\
        5 connections in 0.01s; 500.00 connections/user sec, bytes read 725\n\
        5 connections in 3 real seconds, 145 bytes read per connection\n";
    const REUSE: &str = "starting\nrrrr\n\n\
        4 connections in 0.01s; 400.00 connections/user sec, bytes read 580\n\
        4 connections in 3 real seconds, 145 bytes read per connection\n";

    #[test]
    fn counts_full_and_resumed_handshakes() {
        assert_eq!(parse(NEW, false).expect("parse"), 5);
        assert_eq!(parse(REUSE, true).expect("parse"), 4);
    }

    #[test]
    fn the_wrong_kind_of_handshake_fails_the_run() {
        // A server that resumed nothing, or resumed when asked for new ones.
        assert!(parse(NEW, true).is_err());
        assert!(parse(REUSE, false).is_err());
        assert!(parse(&REUSE.replace("rrrr", "rr*r"), true).is_err());
    }

    #[test]
    fn no_answer_or_a_short_count_fails_the_run() {
        let silent = NEW.replace(
            "145 bytes read per connection",
            "0 bytes read per connection",
        );
        assert!(parse(&silent, false).is_err());
        assert!(parse(&NEW.replace("*****", "****"), false).is_err());
        assert!(parse("connect: Connection refused\n", false).is_err());
    }
}
