//! One health check of one server, on a fresh connection that is closed
//! afterwards (never pooled: a check must see what a new client would),
//! with a reset, so checks leave no TIME_WAIT sockets behind.
//!
//! `HTTPS:` checks do the TLS handshake first, with the client `tls`
//! upstream servers get (same CA, SNI the server's host name); a refused
//! certificate fails the check with rustls's reason.
//!
//! HTTP checks use hyper's client connection rather than a hand-written
//! status-line reader: hyper is already the proxy's HTTP stack, it parses
//! the response head with limits, skips interim `1xx` responses, and costs
//! a few microseconds of CPU per check (see `cpu_cost_per_check`). Only the
//! head is awaited; the body is never read, the connection is dropped.
use std::{
    net::{IpAddr, SocketAddr},
    pin::pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper::{
    client::conn::http1,
    rt::{Read, Write},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::timeout_at};

use crate::{
    config::policy::{CheckProtocol, HealthCheck, format_duration},
    tls::{
        UpstreamTls,
        client::{Alpn, handshake_reason},
    },
};

pub const USER_AGENT: &str = "elb-health-check/1.0";

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub passed: bool,
    /// The response status of an HTTP check that got one.
    pub status: Option<u16>,
    /// From the start of the check (name resolution included) to its outcome.
    pub latency: Duration,
    /// One sentence for operators, e.g. "HTTP 503 from /health (expected 200-399)".
    pub reason: String,
}

/// Checks `server` (`host:port`) once. The whole check (resolution,
/// connect, TLS handshake, request, response head) is bounded by
/// `check.timeout`.
pub async fn probe(server: &str, check: &HealthCheck, tls: &UpstreamTls) -> CheckOutcome {
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + check.timeout);
    let finding = check_server(server, check, tls, deadline).await;
    CheckOutcome {
        passed: finding.passed,
        status: finding.status,
        latency: start.elapsed(),
        reason: finding.reason,
    }
}

struct Finding {
    passed: bool,
    status: Option<u16>,
    reason: String,
}

impl Finding {
    fn fail(reason: String) -> Self {
        Self {
            passed: false,
            status: None,
            reason,
        }
    }
}

async fn check_server(
    server: &str,
    check: &HealthCheck,
    tls: &UpstreamTls,
    deadline: tokio::time::Instant,
) -> Finding {
    let Some((host, own_port)) = split_host_port(server) else {
        return Finding::fail(format!("Server name {server:?} is not host:port"));
    };
    let port = check.target.port.unwrap_or(own_port);
    let checked = join_host_port(host, port);
    let stream = match connect(host, port, &checked, check.timeout, deadline).await {
        Ok(stream) => stream,
        Err(reason) => return Finding::fail(reason),
    };
    match check.target.protocol {
        CheckProtocol::Tcp => Finding {
            passed: true,
            status: None,
            reason: format!("Passed: TCP connect to {checked}"),
        },
        CheckProtocol::Http => http_check(TokioIo::new(stream), &checked, check, deadline).await,
        CheckProtocol::Https => {
            match timeout_at(deadline, tls.connect(stream, &checked, Alpn::Http1)).await {
                Err(_) => Finding::fail(format!(
                    "TLS handshake with {checked} timed out after {}",
                    format_duration(check.timeout)
                )),
                Ok(Err(error)) => Finding::fail(format!(
                    "TLS handshake with {checked} failed: {}",
                    handshake_reason(&error)
                )),
                Ok(Ok(stream)) => http_check(TokioIo::new(stream), &checked, check, deadline).await,
            }
        }
    }
}

/// Resolves `host` (IP literals need no resolver) and connects to the
/// first address that accepts, in the resolver's order.
async fn connect(
    host: &str,
    port: u16,
    checked: &str,
    timeout: Duration,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Err(_) => {
                return Err(format!(
                    "Cannot resolve {host} within {}",
                    format_duration(timeout)
                ));
            }
            Ok(Err(_)) => return Err(format!("Cannot resolve {host}")),
            Ok(Ok(addrs)) => addrs.collect(),
        },
    };
    let mut last_error = None;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(format!(
                    "Connection to {checked} timed out after {}",
                    format_duration(timeout)
                ));
            }
            Ok(Ok(stream)) => {
                // Close with a reset, as HAProxy does for its checks: a
                // check connection needs no orderly close, and a normal
                // one leaves a TIME_WAIT socket for 60 s per check (about
                // 120,000 of them at 2,000 checks/s, which makes every
                // later connect slower).
                let _ = stream.set_zero_linger();
                return Ok(stream);
            }
            Ok(Err(error)) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => connect_error(checked, &error),
        None => format!("Cannot resolve {host}"),
    })
}

fn connect_error(checked: &str, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => format!("Connection refused by {checked}"),
        ErrorKind::HostUnreachable => format!("Host {checked} is unreachable"),
        ErrorKind::NetworkUnreachable => format!("Network of {checked} is unreachable"),
        // Usually the local ephemeral ports are used up.
        ErrorKind::AddrNotAvailable => format!("No local address or port free to reach {checked}"),
        _ => format!("Cannot connect to {checked}: {error}"),
    }
}

async fn http_check<I>(
    io: I,
    checked: &str,
    check: &HealthCheck,
    deadline: tokio::time::Instant,
) -> Finding
where
    I: Read + Write + Unpin + Send + 'static,
{
    let path = check.target.path.as_str();
    let request = Request::get(path)
        .header(header::HOST, check.host.as_deref().unwrap_or(checked))
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(request) => request,
        Err(error) => return Finding::fail(format!("Cannot build the check request: {error}")),
    };
    let exchange = async {
        let (mut sender, connection) = http1::handshake(io).await?;
        // The connection is driven here rather than spawned, so that
        // dropping the check (timeout, stop) closes the socket at once.
        let mut connection = pin!(connection);
        let mut response = pin!(sender.send_request(request));
        tokio::select! {
            biased;
            response = &mut response => response,
            // Ended before the head: the pending request now fails at once
            // with the reason.
            _ = &mut connection => response.await,
        }
    };
    match timeout_at(deadline, exchange).await {
        Err(_) => Finding::fail(format!(
            "No response from {checked} within {}",
            format_duration(check.timeout)
        )),
        Ok(Err(error)) => Finding::fail(http_error(checked, &error)),
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let passed = check.matcher.matches(status);
            let reason = if passed {
                format!("Passed: HTTP {status} from {path}")
            } else {
                format!("HTTP {status} from {path} (expected {})", check.matcher)
            };
            Finding {
                passed,
                status: Some(status),
                reason,
            }
        }
    }
}

fn http_error(checked: &str, error: &hyper::Error) -> String {
    if let Some(io) = io_error_in_chain(error) {
        if io.kind() == std::io::ErrorKind::ConnectionReset {
            return format!("Connection reset by {checked}");
        }
        return format!("HTTP check of {checked} failed: {io}");
    }
    if error.is_parse_too_large() {
        format!("Response head from {checked} is too large")
    } else if error.is_parse() || error.is_parse_status() {
        format!("Invalid HTTP response from {checked}")
    } else if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        format!("Connection closed by {checked} before a response")
    } else {
        format!("HTTP check of {checked} failed: {error}")
    }
}

fn io_error_in_chain<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e std::io::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// `host:port` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(server: &str) -> Option<(&str, u16)> {
    let (host, port) = match server.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']')?;
            (ip, after.strip_prefix(':')?)
        }
        None => server.rsplit_once(':')?,
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))?;
    (!host.is_empty()).then_some((host, port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
