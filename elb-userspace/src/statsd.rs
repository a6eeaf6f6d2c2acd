//! statsd metrics sink (`STATSD=HOST:PORT`): per proxied request, a counter
//! for the host, a counter for its status code and a timer for its cost,
//! batched into UDP datagrams. A request that came on a configured listener
//! also counts under `listeners.<name>` (total and status code); the
//! `--listen` listeners add nothing, so ERU ELB's lines stay as they were.
//!
//! The request path only does a non-blocking `try_reserve` on a bounded
//! queue; one background task formats, batches and sends, so a slow or dead
//! statsd server can never slow down or fail a request.
use std::{
    fmt::Write as _,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::{
    net::UdpSocket,
    sync::mpsc,
    time::{Instant, sleep_until},
};

/// Largest datagram we send: fits a 1500-byte MTU after IP/UDP headers with
/// room for tunnels, the usual statsd client limit (and ERU ELB's).
pub const MAX_DATAGRAM_BYTES: usize = 1432;
/// A buffered line waits at most this long before it is sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Requests that can wait for the flusher before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Longest host name component (DNS names are at most 253 bytes); keeps a
/// hostile Host header from producing lines that cannot fit a datagram.
const MAX_HOST_BYTES: usize = 253;
/// Send errors repeat on every flush while statsd is unreachable; log them
/// at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How many queued requests the flusher takes per wake-up.
const RECV_BATCH: usize = 256;

#[derive(Debug, Error)]
pub enum StatsdError {
    #[error("invalid statsd target {target:?}: {reason}")]
    InvalidTarget {
        target: String,
        reason: &'static str,
    },
    #[error("cannot resolve statsd target {target:?}")]
    Resolve {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("statsd target {target:?} resolved to no addresses")]
    NoAddress { target: String },
    #[error("cannot bind a UDP socket to send to statsd target {target:?}")]
    Bind {
        target: String,
        #[source]
        source: io::Error,
    },
}

/// Handle for recording metrics; cheap to clone. The flusher task flushes
/// what it has and exits when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct StatsdClient {
    queue: mpsc::Sender<RequestMetric>,
    dropped: Arc<AtomicU64>,
}

/// One request's worth of metrics, host already sanitised.
#[derive(Debug)]
struct RequestMetric {
    host: String,
    status: u16,
    cost_ms: u128,
    /// The configured listener that served it, sanitised.
    listener: Option<String>,
}

/// Knobs the tests need to shrink; production uses the constants.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    pub(crate) queue_capacity: usize,
    pub(crate) flush_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            queue_capacity: QUEUE_CAPACITY,
            flush_interval: FLUSH_INTERVAL,
        }
    }
}

impl StatsdClient {
    /// Resolves `target` ("HOST:PORT", IPv6 as "[addr]:PORT") once, binds a
    /// UDP socket and spawns the flusher task on the current tokio runtime.
    pub async fn start(target: &str, prefix: &str) -> Result<Self, StatsdError> {
        Self::start_tuned(target, prefix, Tuning::default()).await
    }

    pub(crate) async fn start_tuned(
        target: &str,
        prefix: &str,
        tuning: Tuning,
    ) -> Result<Self, StatsdError> {
        let destination = resolve_target(target).await?;
        let local: SocketAddr = if destination.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|source| StatsdError::Bind {
                target: target.to_owned(),
                source,
            })?;
        // A zero-capacity mpsc channel panics; one slot is the smallest queue.
        let (queue, receiver) = mpsc::channel(tuning.queue_capacity.max(1));
        let flusher = Flusher {
            socket,
            destination,
            prefix: prefix.to_owned(),
            flush_interval: tuning.flush_interval,
            datagram: Vec::with_capacity(MAX_DATAGRAM_BYTES),
            send_warning: RateLimit::new(WARN_INTERVAL),
            oversize_warning: RateLimit::new(WARN_INTERVAL),
        };
        tokio::spawn(flusher.run(receiver));
        Ok(Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues the metrics of one request. Never blocks and never fails: if
    /// the queue is full the request's metrics are dropped and counted.
    pub fn record_request(&self, host: &str, listener: Option<&str>, status: u16, cost: Duration) {
        // Reserve before sanitising so a full queue costs no allocation.
        match self.queue.try_reserve() {
            Ok(permit) => permit.send(RequestMetric {
                host: sanitize_host(host),
                status,
                cost_ms: cost.as_millis(),
                listener: listener.map(sanitize_name),
            }),
            // Closed only if the flusher died (runtime shutting down): the
            // metric is lost all the same, so count it.
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Requests whose metrics were dropped because the queue was full (or,
    /// during runtime shutdown, because the flusher was gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Checks the "HOST:PORT" shape ourselves so a typo gets a precise message
/// instead of the resolver's generic one, then resolves once.
async fn resolve_target(target: &str) -> Result<SocketAddr, StatsdError> {
    let invalid = |reason| StatsdError::InvalidTarget {
        target: target.to_owned(),
        reason,
    };
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("the port is not a number from 1 to 65535"));
    }
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed
            .strip_suffix(']')
            .ok_or_else(|| invalid("unterminated '[' in an IPv6 address"))?,
        None if host.contains(':') => {
            return Err(invalid("write an IPv6 address in brackets: [ADDR]:PORT"));
        }
        None => host,
    };
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    let mut addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| StatsdError::Resolve {
            target: target.to_owned(),
            source,
        })?;
    addresses.next().ok_or_else(|| StatsdError::NoAddress {
        target: target.to_owned(),
    })
}

/// Turns a Host header value into one statsd name component: lower case, no
/// port, `.` → `_` (dots separate name components in statsd), and `_` for
/// anything that would break the `name:value|type` line format.
pub fn sanitize_host(host: &str) -> String {
    let name = strip_port(host);
    let mut sanitized = String::with_capacity(name.len().min(MAX_HOST_BYTES));
    'chars: for original in name.chars() {
        for lowered in original.to_lowercase() {
            let safe = if breaks_statsd_name(lowered) {
                '_'
            } else {
                lowered
            };
            if sanitized.len() + safe.len_utf8() > MAX_HOST_BYTES {
                break 'chars;
            }
            sanitized.push(safe);
        }
    }
    if sanitized.is_empty() {
        sanitized.push_str("unknown");
    }
    sanitized
}

/// A listener's name as one statsd name segment.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if breaks_statsd_name(c) { '_' } else { c })
        .collect()
}

/// "name:80" → "name", "[v6]:80" and "[v6]" → "v6"; a bare IPv6 address has
/// several colons and no port, so it is left alone.
fn strip_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return match bracketed.find(']') {
            Some(end) => &bracketed[..end],
            None => bracketed,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn breaks_statsd_name(c: char) -> bool {
    matches!(c, '.' | ':' | '|' | '@' | '#' | '/') || c.is_whitespace() || c.is_control()
}

/// The background task: owns the socket and the datagram being filled.
struct Flusher {
    socket: UdpSocket,
    destination: SocketAddr,
    prefix: String,
    flush_interval: Duration,
    datagram: Vec<u8>,
    send_warning: RateLimit,
    oversize_warning: RateLimit,
}

impl Flusher {
    async fn run(mut self, mut receiver: mpsc::Receiver<RequestMetric>) {
        let mut received = Vec::with_capacity(RECV_BATCH);
        let mut line = String::new();
        // Armed while the datagram holds anything: fires `flush_interval`
        // after its first line went in, so no line waits longer than that.
        let flush_timer = sleep_until(Instant::now());
        tokio::pin!(flush_timer);
        let mut timer_armed = false;
        loop {
            tokio::select! {
                // Timer first, so a steady stream of requests cannot delay
                // the periodic flush.
                biased;
                () = &mut flush_timer, if timer_armed => {
                    self.flush().await;
                    timer_armed = false;
                }
                count = receiver.recv_many(&mut received, RECV_BATCH) => {
                    if count == 0 {
                        // Every StatsdClient is gone: send what is left, stop.
                        self.flush().await;
                        return;
                    }
                    for metric in received.drain(..) {
                        for kind in LineKind::ALL {
                            line.clear();
                            self.format_line(&mut line, kind, &metric);
                            if !line.is_empty() && self.push_line(&line).await {
                                flush_timer.as_mut().reset(Instant::now() + self.flush_interval);
                                timer_armed = true;
                            }
                        }
                    }
                    if self.datagram.is_empty() {
                        timer_armed = false;
                    }
                }
            }
        }
    }

    /// Writes nothing for a listener line of a `--listen` request.
    fn format_line(&self, line: &mut String, kind: LineKind, metric: &RequestMetric) {
        let (prefix, host) = (&self.prefix, &metric.host);
        // Writing to a String cannot fail.
        let _ = match (kind, &metric.listener) {
            (LineKind::Total, _) => write!(line, "{prefix}.{host}.total:1|c"),
            (LineKind::Status, _) => {
                write!(line, "{prefix}.{host}.status.{}:1|c", metric.status)
            }
            (LineKind::Cost, _) => write!(line, "{prefix}.{host}.cost:{}|ms", metric.cost_ms),
            (LineKind::ListenerTotal, Some(name)) => {
                write!(line, "{prefix}.listeners.{name}.total:1|c")
            }
            (LineKind::ListenerStatus, Some(name)) => write!(
                line,
                "{prefix}.listeners.{name}.status.{}:1|c",
                metric.status
            ),
            (LineKind::ListenerTotal | LineKind::ListenerStatus, None) => Ok(()),
        };
    }

    /// Appends `line`, first sending the datagram if the line would not fit.
    /// Returns whether the line went into a datagram that was empty before,
    /// i.e. whether the flush timer must be started.
    async fn push_line(&mut self, line: &str) -> bool {
        if line.len() > MAX_DATAGRAM_BYTES {
            // Cannot happen with a validated prefix and a capped host, but a
            // line must never be split, so drop it rather than send garbage.
            if let Some(suppressed) = self.oversize_warning.check(Instant::now()) {
                tracing::warn!(
                    line_bytes = line.len(),
                    suppressed,
                    "dropping a statsd line longer than a datagram"
                );
            }
            return false;
        }
        if !self.datagram.is_empty() && self.datagram.len() + 1 + line.len() > MAX_DATAGRAM_BYTES {
            self.flush().await;
        }
        let starts_datagram = self.datagram.is_empty();
        if !starts_datagram {
            self.datagram.push(b'\n');
        }
        self.datagram.extend_from_slice(line.as_bytes());
        starts_datagram
    }

    async fn flush(&mut self) {
        if self.datagram.is_empty() {
            return;
        }
        if let Err(error) = self.socket.send_to(&self.datagram, self.destination).await
            && let Some(suppressed) = self.send_warning.check(Instant::now())
        {
            tracing::warn!(
                destination = %self.destination,
                %error,
                suppressed,
                "cannot send statsd metrics"
            );
        }
        // Sent or not, these metrics are done: statsd is best effort.
        self.datagram.clear();
    }
}

#[derive(Clone, Copy, Debug)]
enum LineKind {
    Total,
    Status,
    Cost,
    ListenerTotal,
    ListenerStatus,
}

impl LineKind {
    const ALL: [Self; 5] = [
        Self::Total,
        Self::Status,
        Self::Cost,
        Self::ListenerTotal,
        Self::ListenerStatus,
    ];
}

/// Allows one event per interval and counts the ones it suppressed.
#[derive(Debug)]
struct RateLimit {
    interval: Duration,
    last_allowed: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_allowed: None,
            suppressed: 0,
        }
    }

    /// `Some(events suppressed since the last allowed one)` if this event
    /// may be logged, `None` if it must stay quiet.
    fn check(&mut self, now: Instant) -> Option<u64> {
        let allowed = self
            .last_allowed
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if allowed {
            self.last_allowed = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::time::timeout;

    use super::*;

    const PREFIX: &str = "elb-test.eru";
    /// Generous bound for a datagram that should already be on its way.
    const PATIENCE: Duration = Duration::from_secs(5);

    async fn receiver() -> (UdpSocket, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = socket.local_addr().unwrap().to_string();
        (socket, target)
    }

    async fn recv_datagram(socket: &UdpSocket, wait: Duration) -> Vec<u8> {
        // Larger than the limit, so an oversized datagram would show up
        // as such instead of being truncated to fit.
        let mut buf = vec![0u8; 65_536];
        let len = timeout(wait, socket.recv(&mut buf))
            .await
            .expect("no statsd datagram arrived in time")
            .unwrap();
        buf.truncate(len);
        buf
    }

    #[derive(Debug, PartialEq, Eq, Hash, Clone)]
    struct Line {
        name: String,
        value: String,
        kind: String,
    }

    /// Strict parse of one statsd line: `name:value|type`, where the name
    /// has none of the separators and the value is a plain integer.
    fn parse_line(text: &str) -> Line {
        let (name, rest) = text.split_once(':').unwrap_or_else(|| panic!("{text:?}"));
        let (value, kind) = rest.split_once('|').unwrap_or_else(|| panic!("{text:?}"));
        assert!(!name.is_empty(), "{text:?}");
        assert!(
            !name.contains(['|', '@', '#', '/', ' ', '\n', '\t']),
            "{text:?}"
        );
        assert!(
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
        assert!(kind == "c" || kind == "ms", "{text:?}");
        Line {
            name: name.to_owned(),
            value: value.to_owned(),
            kind: kind.to_owned(),
        }
    }

    fn parse_datagram(datagram: &[u8]) -> Vec<Line> {
        assert!(
            datagram.len() <= MAX_DATAGRAM_BYTES,
            "datagram of {} bytes",
            datagram.len()
        );
        let text = std::str::from_utf8(datagram).unwrap();
        text.split('\n').map(parse_line).collect()
    }

    fn expected_lines(host: &str, status: u16, cost_ms: u128) -> Vec<Line> {
        let line = |name: String, value: String, kind: &str| Line {
            name,
            value,
            kind: kind.to_owned(),
        };
        vec![
            line(format!("{PREFIX}.{host}.total"), "1".into(), "c"),
            line(format!("{PREFIX}.{host}.status.{status}"), "1".into(), "c"),
            line(format!("{PREFIX}.{host}.cost"), cost_ms.to_string(), "ms"),
        ]
    }

    async fn recv_lines(socket: &UdpSocket, count: usize) -> Vec<Line> {
        let mut lines = Vec::new();
        while lines.len() < count {
            lines.extend(parse_datagram(&recv_datagram(socket, PATIENCE).await));
        }
        assert_eq!(lines.len(), count, "more lines than recorded: {lines:?}");
        lines
    }

    fn counts(lines: impl IntoIterator<Item = Line>) -> HashMap<Line, usize> {
        let mut counts = HashMap::new();
        for line in lines {
            *counts.entry(line).or_default() += 1;
        }
        counts
    }

    #[tokio::test]
    async fn lines_are_exactly_as_specified() {
        let (socket, target) = receiver().await;
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        client.record_request(
            "Example.com:8080",
            None,
            503,
            Duration::from_micros(1_234_999),
        );

        let datagram = recv_datagram(&socket, PATIENCE).await;
        assert_eq!(
            std::str::from_utf8(&datagram).unwrap(),
            "elb-test.eru.example_com.total:1|c\n\
             elb-test.eru.example_com.status.503:1|c\n\
             elb-test.eru.example_com.cost:1234|ms"
        );
        assert_eq!(
            parse_datagram(&datagram),
            expected_lines("example_com", 503, 1234)
        );
        assert_eq!(client.dropped(), 0);
    }

    #[tokio::test]
    async fn a_configured_listener_adds_its_own_lines() {
        let (socket, target) = receiver().await;
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        client.record_request("a.com", Some("web.tls"), 200, Duration::from_millis(3));
        let datagram = recv_datagram(&socket, PATIENCE).await;
        assert_eq!(
            std::str::from_utf8(&datagram).unwrap(),
            "elb-test.eru.a_com.total:1|c\n\
             elb-test.eru.a_com.status.200:1|c\n\
             elb-test.eru.a_com.cost:3|ms\n\
             elb-test.eru.listeners.web_tls.total:1|c\n\
             elb-test.eru.listeners.web_tls.status.200:1|c"
        );
    }

    #[tokio::test]
    async fn cost_is_rounded_down_to_whole_milliseconds() {
        let (socket, target) = receiver().await;
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        let costs = [
            (Duration::ZERO, 0),
            (Duration::from_micros(999), 0),
            (Duration::from_nanos(1_999_999), 1),
            (Duration::from_secs(90), 90_000),
        ];
        for (cost, _) in costs {
            client.record_request("a", None, 200, cost);
        }
        let received = counts(recv_lines(&socket, 3 * costs.len()).await);
        let expected = counts(
            costs
                .iter()
                .flat_map(|&(_, ms)| expected_lines("a", 200, ms)),
        );
        assert_eq!(received, expected);
    }

    #[test]
    fn host_sanitising_rules() {
        let cases = [
            ("example.com", "example_com"),
            ("Example.COM", "example_com"),
            ("example.com:8080", "example_com"),
            ("example.com:", "example_com"),
            ("10.0.0.1:80", "10_0_0_1"),
            ("[2001:DB8::1]:8443", "2001_db8__1"),
            ("[::1]", "__1"),
            ("::1", "__1"),
            ("a:b", "a_b"),
            ("a|b@c#d/e f\tg\nh\u{7f}i", "a_b_c_d_e_f_g_h_i"),
            ("bücher.Example", "bücher_example"),
            ("", "unknown"),
            (":8080", "unknown"),
            ("[]:80", "unknown"),
        ];
        for (host, expected) in cases {
            assert_eq!(sanitize_host(host), expected, "host {host:?}");
        }
    }

    #[test]
    fn long_hosts_are_capped_on_a_char_boundary() {
        let sanitized = sanitize_host(&"é".repeat(1000));
        assert!(sanitized.len() <= MAX_HOST_BYTES);
        assert!(sanitized.len() >= MAX_HOST_BYTES - 1);
        assert!(sanitized.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn hosts_are_sanitised_on_the_wire() {
        let (socket, target) = receiver().await;
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        let cases = [
            ("API.Example.com:443", "api_example_com"),
            ("[fe80::1]:8080", "fe80__1"),
            ("we|rd@ho#st/ name", "we_rd_ho_st__name"),
            ("", "unknown"),
        ];
        for (host, _) in cases {
            client.record_request(host, None, 200, Duration::from_millis(5));
        }
        let received = counts(recv_lines(&socket, 3 * cases.len()).await);
        let expected = counts(
            cases
                .iter()
                .flat_map(|&(_, sanitized)| expected_lines(sanitized, 200, 5)),
        );
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn datagrams_stay_within_the_limit_and_never_split_lines() {
        let (socket, target) = receiver().await;
        let tuning = Tuning {
            flush_interval: Duration::from_millis(10),
            ..Tuning::default()
        };
        let client = StatsdClient::start_tuned(&target, PREFIX, tuning)
            .await
            .unwrap();
        let mut expected = Vec::new();
        let mut received = Vec::new();
        let mut datagrams = 0;
        // In rounds, so the receiver drains its socket buffer in time.
        for round in 0..20u16 {
            for i in 0..50u16 {
                // Varying lengths so lines end at every offset of a datagram.
                let host = format!("{}.example.com:80", "x".repeat(100 + usize::from(i) * 3));
                let status = 200 + round;
                client.record_request(&host, None, status, Duration::from_millis(u64::from(i)));
                expected.extend(expected_lines(&sanitize_host(&host), status, u128::from(i)));
            }
            while received.len() < expected.len() {
                let datagram = recv_datagram(&socket, PATIENCE).await;
                datagrams += 1;
                received.extend(parse_datagram(&datagram));
            }
        }
        assert_eq!(counts(received), counts(expected));
        // Lines are ~130-290 bytes, so batching puts several in a datagram.
        assert!(datagrams < 3000 / 3, "{datagrams} datagrams: not batched");
        assert_eq!(client.dropped(), 0);
    }

    #[tokio::test]
    async fn a_single_metric_is_sent_within_the_flush_interval() {
        let (socket, target) = receiver().await;
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        let recorded = Instant::now();
        client.record_request("one.example", None, 200, Duration::from_millis(1));
        let datagram = recv_datagram(&socket, Duration::from_millis(200)).await;
        assert!(recorded.elapsed() <= Duration::from_millis(200));
        assert_eq!(
            parse_datagram(&datagram),
            expected_lines("one_example", 200, 1)
        );
    }

    #[tokio::test]
    async fn dropping_the_last_client_flushes_at_once() {
        let (socket, target) = receiver().await;
        // A flush interval that never fires: only the drop can send.
        let tuning = Tuning {
            flush_interval: Duration::from_secs(3600),
            ..Tuning::default()
        };
        let client = StatsdClient::start_tuned(&target, PREFIX, tuning)
            .await
            .unwrap();
        let clone = client.clone();
        client.record_request("a", None, 200, Duration::ZERO);
        clone.record_request("b", None, 404, Duration::ZERO);
        drop(client);
        // The clone keeps the flusher waiting.
        let mut buf = [0u8; 2048];
        assert!(
            timeout(Duration::from_millis(100), socket.recv(&mut buf))
                .await
                .is_err()
        );
        drop(clone);
        let received = counts(recv_lines(&socket, 6).await);
        let mut expected = expected_lines("a", 200, 0);
        expected.extend(expected_lines("b", 404, 0));
        assert_eq!(received, counts(expected));
    }

    // Single-threaded runtime: the flusher cannot run until the test awaits,
    // so the queue fills deterministically.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_instead_of_blocking() {
        let (socket, target) = receiver().await;
        let tuning = Tuning {
            queue_capacity: 2,
            flush_interval: Duration::from_millis(10),
        };
        let client = StatsdClient::start_tuned(&target, PREFIX, tuning)
            .await
            .unwrap();
        let clone = client.clone();
        for _ in 0..10 {
            client.record_request("full", None, 200, Duration::ZERO);
        }
        assert_eq!(client.dropped(), 8);
        assert_eq!(clone.dropped(), 8, "clones share the counter");
        // The two queued requests still arrive.
        let received = counts(recv_lines(&socket, 6).await);
        let expected = expected_lines("full", 200, 0);
        assert_eq!(received, counts(expected.iter().chain(&expected).cloned()));
    }

    #[tokio::test]
    async fn invalid_targets_are_clear_errors() {
        for target in [
            "statsd",
            "statsd:",
            "statsd:port",
            "statsd:0",
            "statsd:70000",
            ":8125",
            "::1:8125",
            "[::1:8125",
        ] {
            let error = StatsdClient::start(target, PREFIX).await.unwrap_err();
            assert!(
                matches!(error, StatsdError::InvalidTarget { .. }),
                "{target:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{target:?}")), "{message}");
        }
        // RFC 2606: .invalid never resolves.
        let target = "statsd.invalid:8125";
        let error = StatsdClient::start(target, PREFIX).await.unwrap_err();
        assert!(matches!(error, StatsdError::Resolve { .. }), "{error:?}");
        assert!(error.to_string().contains(target), "{error}");
    }

    #[tokio::test]
    async fn ipv6_targets_work() {
        // Some sandboxes have no IPv6 loopback; nothing to test there.
        let Ok(socket) = UdpSocket::bind("[::1]:0").await else {
            return;
        };
        let target = format!("[::1]:{}", socket.local_addr().unwrap().port());
        let client = StatsdClient::start(&target, PREFIX).await.unwrap();
        client.record_request("v6", None, 200, Duration::ZERO);
        assert_eq!(recv_lines(&socket, 3).await, expected_lines("v6", 200, 0));
    }

    #[test]
    fn rate_limit_allows_one_event_per_interval_and_counts_the_rest() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.check(start), Some(0));
        assert_eq!(limit.check(start + Duration::from_secs(1)), None);
        assert_eq!(limit.check(start + Duration::from_secs(9)), None);
        assert_eq!(limit.check(start + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.check(start + Duration::from_secs(11)), None);
        assert_eq!(limit.check(start + Duration::from_secs(30)), Some(1));
    }
}
