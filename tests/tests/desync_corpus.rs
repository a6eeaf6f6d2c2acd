//! The desync corpus (`tests/desync/*.txt`, format in
//! `elb_tests::desync`): every hostile stream goes through a real elb to a
//! raw backend that parses strictly and logs what it got. For each case:
//! the backend saw exactly the requests elb routed, in order, with the same
//! framing and byte-identical bodies; each response the client got pairs
//! with the backend request that produced it; the statuses are the expected
//! ones; and the connection is closed when the framing was ambiguous (with
//! nothing after it reaching the backend) or still in sync otherwise (a
//! probe request is routed normally).
//!
//! Each case is sent in one write and, unless it says `modes: whole`, in
//! small pieces too. Cases run in a few lanes, each with its own elb and
//! backends, one case at a time per lane, so a lane's backend log belongs
//! to the case running in it.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use elb_tests::{
    desync::{Case, ClientResponse, Framing, Outcome, parse_case, parse_response},
    l7::{Setup, start_with},
    raw_backend::{Event, RawBackend, RawLog},
    strict_http::{self, ParsedRequest},
};

/// Lanes run in parallel, each with its own elb.
const LANES: usize = 4;
/// The classes the issue asks the corpus to cover.
const CLASSES: [&str; 13] = [
    "cl-te",
    "te-obfuscation",
    "chunk-extension",
    "bare-cr-lf",
    "obs-fold",
    "body-on-get",
    "expect",
    "upgrade",
    "absolute-form",
    "duplicate-headers",
    "http10",
    "chunk-size",
    "trailers",
];
const PROBE: &[u8] = b"GET /desync-probe HTTP/1.1\r\nHost: probe.test\r\n\r\n";
/// Longest a case may take to answer (elb's own timeouts are 2 s).
const CASE_DEADLINE: Duration = Duration::from_secs(10);

struct Lane {
    setup: Setup,
    log: RawLog,
    _backends: (RawBackend, RawBackend),
}

impl Lane {
    fn start() -> Self {
        let log = RawLog::default();
        let main = RawBackend::start("main", &log).expect("raw backend main");
        let secret = RawBackend::start("secret", &log).expect("raw backend secret");
        let setup = start_with(&[
            "--header-timeout",
            "2s",
            "--client-body-timeout",
            "2s",
            "--upstream-timeout",
            "5s",
        ]);
        setup
            .elb
            .route("probe.test", "up-main", &[(main.addr(), "")]);
        setup
            .elb
            .route("secret.test", "up-secret", &[(secret.addr(), "")]);
        Self {
            setup,
            log,
            _backends: (main, secret),
        }
    }
}

fn load_corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("desync");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/desync exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(path).expect("read case file");
            parse_case(&name, &text).unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect()
}

#[test]
fn corpus_is_large_and_covers_every_class() {
    let cases = load_corpus();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut per_class = BTreeMap::new();
    for case in &cases {
        assert!(
            CLASSES.contains(&case.class.as_str()),
            "{}: unknown class {:?}",
            case.file,
            case.class
        );
        *per_class.entry(case.class.as_str()).or_insert(0) += 1;
    }
    for class in CLASSES {
        assert!(per_class.contains_key(class), "no case of class {class}");
    }
}

#[test]
fn every_hostile_stream_stays_in_sync() {
    let cases = load_corpus();
    let started = Instant::now();
    let lanes: Vec<Vec<&Case>> = (0..LANES)
        .map(|lane| cases.iter().skip(lane).step_by(LANES).collect())
        .collect();
    let failures: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|cases| {
                scope.spawn(move || {
                    let lane = Lane::start();
                    let mut failures = Vec::new();
                    for case in cases {
                        let modes: &[bool] = if case.split { &[false, true] } else { &[false] };
                        for &split in modes {
                            match (run_case(&lane, case, split), &case.known_failure) {
                                (Ok(()), None) => {}
                                (Err(why), None) => failures.push(report(case, split, &why)),
                                (Err(why), Some(known)) => eprintln!(
                                    "known failure ({known}): {}",
                                    report(case, split, &why)
                                ),
                                (Ok(()), Some(_)) => failures.push(report(
                                    case,
                                    split,
                                    "passes now: remove its known-failure line",
                                )),
                            }
                        }
                    }
                    // Nothing may reach a backend after the last case ended.
                    let settled = lane.log.len();
                    thread::sleep(Duration::from_millis(300));
                    let late = lane.log.since(settled);
                    if !late.is_empty() {
                        failures.push(format!("late backend events: {late:?}"));
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("lane thread"))
            .collect()
    });
    eprintln!(
        "desync corpus: {} cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} case runs failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

fn report(case: &Case, split: bool, why: &str) -> String {
    let mode = if split { "split writes" } else { "one write" };
    let awaits = if case.awaits.is_empty() {
        String::new()
    } else {
        format!(" [awaits {}]", case.awaits.join(", "))
    };
    format!(
        "{} ({mode}){awaits}: {}\n  {why}",
        case.file, case.description
    )
}

/// What one run of a case produced.
#[derive(Debug)]
struct Seen {
    responses: Vec<ClientResponse>,
    closed: bool,
    /// The probe was answered (connection still in sync).
    probe_answered: bool,
    events: Vec<Event>,
}

fn run_case(lane: &Lane, case: &Case, split: bool) -> Result<(), String> {
    let mark = lane.log.len();
    let seen = exchange(lane.setup.elb.addr, &lane.log, case, split)?;
    if seen.closed {
        settle(&lane.log);
    }
    let seen = Seen {
        events: lane.log.since(mark),
        ..seen
    };
    let mismatches: Vec<String> = case
        .outcomes
        .iter()
        .map(|outcome| check(outcome, &seen))
        .filter_map(Result::err)
        .collect();
    if mismatches.len() < case.outcomes.len() {
        return Ok(());
    }
    Err(format!(
        "{}\n  seen: {}",
        mismatches.join("\n  or: "),
        summary(&seen)
    ))
}

/// Waits until the backend log has been still for a while: a request elb
/// cut off reaches the log only once the backend sees its connection close,
/// a moment after elb closed the client's. (With the connection open, the
/// probe's answer already orders everything before it.)
fn settle(log: &RawLog) {
    let quiet = Duration::from_millis(100);
    let give_up = Instant::now() + Duration::from_secs(2);
    let mut len = log.len();
    loop {
        thread::sleep(quiet);
        let now = log.len();
        if now == len || Instant::now() >= give_up {
            return;
        }
        len = now;
    }
}

/// Sends the case, reads the responses, and finds out whether elb keeps
/// the connection (and in sync) with a probe request.
fn exchange(addr: SocketAddr, log: &RawLog, case: &Case, split: bool) -> Result<Seen, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    send(&mut stream, &case.stream, split);
    let want = case
        .outcomes
        .iter()
        .map(|o| o.statuses.len())
        .max()
        .unwrap_or(0);
    let mut reader = Reader::new(log);
    let deadline = Instant::now() + CASE_DEADLINE;
    reader.read_until(&mut stream, deadline, |r| r.responses.len() >= want)?;
    // A moment for a close that follows the last response.
    if !reader.eof {
        reader.read_until(
            &mut stream,
            Instant::now() + Duration::from_millis(100),
            |_| false,
        )?;
    }
    let mut probe_answered = false;
    if !reader.eof {
        if stream.write_all(PROBE).is_err() {
            reader.eof = true;
        } else {
            let before = reader.responses.len();
            reader.read_until(&mut stream, deadline, |r| r.responses.len() > before)?;
            if reader.responses.len() > before && is_probe_answer(log, reader.responses.last()) {
                reader.responses.pop();
                probe_answered = true;
            }
        }
    }
    Ok(Seen {
        responses: reader.responses,
        closed: reader.eof,
        probe_answered,
        events: Vec::new(),
    })
}

fn send(stream: &mut TcpStream, bytes: &[u8], split: bool) {
    // elb may close before it has read everything: that is checked by what
    // comes back, not by the write.
    if !split {
        let _ = stream.write_all(bytes);
        return;
    }
    let piece = (bytes.len() / 40).max(3);
    for part in bytes.chunks(piece) {
        if stream.write_all(part).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

struct Reader<'a> {
    log: &'a RawLog,
    buf: Vec<u8>,
    responses: Vec<ClientResponse>,
    eof: bool,
}

impl<'a> Reader<'a> {
    fn new(log: &'a RawLog) -> Self {
        Self {
            log,
            buf: Vec::new(),
            responses: Vec::new(),
            eof: false,
        }
    }

    /// Reads until `done`, the close, or `deadline` (past `deadline` it is
    /// an error only when something is still expected: `done` is false).
    fn read_until(
        &mut self,
        stream: &mut TcpStream,
        deadline: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            self.take_responses()?;
            if self.eof || done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            match stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.eof = true,
            }
        }
    }

    /// Moves complete final responses out of the buffer (1xx are dropped).
    fn take_responses(&mut self) -> Result<(), String> {
        let log = self.log;
        // A HEAD answer has no body: the backend logged the method under
        // the sequence number it answered with.
        let bodiless = |headers: &[(String, String)]| {
            seq_of(headers).is_some_and(|seq| {
                matches!(log.get(seq), Some(Event::Request { request, .. }) if request.method == "HEAD")
            })
        };
        loop {
            match parse_response(&self.buf, bodiless, self.eof) {
                Ok(Some((response, used))) => {
                    self.buf.drain(..used);
                    if response.status >= 200 {
                        self.responses.push(response);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(format!(
                        "unreadable response ({e:#}); got so far {:?}, then {:?}",
                        statuses(&self.responses),
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
            }
        }
    }
}

fn seq_of(headers: &[(String, String)]) -> Option<u64> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-backend-seq"))
        .and_then(|(_, v)| v.parse().ok())
}

fn is_probe_answer(log: &RawLog, response: Option<&ClientResponse>) -> bool {
    let Some(seq) = response.and_then(|r| seq_of(&r.headers)) else {
        return false;
    };
    matches!(log.get(seq), Some(Event::Request { request, .. }) if request.target == "/desync-probe")
}

fn statuses(responses: &[ClientResponse]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

/// Whether `seen` is `outcome`; the first difference otherwise.
fn check(outcome: &Outcome, seen: &Seen) -> Result<(), String> {
    let got = statuses(&seen.responses);
    if got != outcome.statuses {
        return Err(format!("statuses {got:?}, want {:?}", outcome.statuses));
    }
    if outcome.close && !seen.closed {
        return Err("the connection stayed open, want it closed".into());
    }
    if !outcome.close && !seen.probe_answered {
        return Err("the connection is closed or out of sync, want it open".into());
    }
    let mut requests = Vec::new();
    for event in &seen.events {
        match event {
            Event::Request {
                backend,
                seq,
                request,
                ..
            } => requests.push((backend.as_str(), *seq, request)),
            Event::Malformed { error, bytes, .. } => {
                return Err(format!(
                    "the backend refused what elb sent: {error}: {:?}",
                    String::from_utf8_lossy(bytes)
                ));
            }
            Event::Aborted { request_line, .. } => {
                let allowed = outcome.aborted.iter().any(|(method, target)| {
                    request_line.starts_with(&format!("{method} {target} "))
                });
                if !allowed {
                    return Err(format!(
                        "a request was cut off at the backend: {request_line:?}"
                    ));
                }
            }
        }
    }
    if seen.probe_answered {
        // The probe is the last request, and nothing came after it.
        match requests.pop() {
            Some((_, _, request)) if request.target == "/desync-probe" => {}
            other => return Err(format!("the probe was not the last request: {other:?}")),
        }
    }
    if requests.len() != outcome.forwards.len() {
        return Err(format!(
            "the backend got {} requests, want {}",
            requests.len(),
            outcome.forwards.len()
        ));
    }
    for (i, ((backend, _, request), want)) in requests.iter().zip(&outcome.forwards).enumerate() {
        check_forward(request, backend, want).map_err(|e| format!("request {i}: {e}"))?;
    }
    // Each backend answer reached the client, in the order of the requests.
    let answered: Vec<u64> = seen
        .responses
        .iter()
        .filter_map(|r| seq_of(&r.headers))
        .collect();
    let sent: Vec<u64> = requests.iter().map(|(_, seq, _)| *seq).collect();
    if answered != sent {
        return Err(format!(
            "the client got the answers to backend requests {answered:?}, the backend answered {sent:?}"
        ));
    }
    Ok(())
}

fn check_forward(
    request: &ParsedRequest,
    backend: &str,
    want: &elb_tests::desync::Forward,
) -> Result<(), String> {
    let line = format!("{} {}", request.method, request.target);
    if backend != want.backend {
        return Err(format!("{line} went to {backend}, want {}", want.backend));
    }
    if request.method != want.method || request.target != want.target {
        return Err(format!("got {line}, want {} {}", want.method, want.target));
    }
    let framing = match request.framing {
        strict_http::Framing::None => Framing::None,
        strict_http::Framing::Length(_) => Framing::Length,
        strict_http::Framing::Chunked => Framing::Chunked,
    };
    if framing != want.framing {
        return Err(format!(
            "{line}: framing {:?}, want {:?}",
            request.framing, want.framing
        ));
    }
    if request.body != want.body {
        return Err(format!(
            "{line}: body {:?}, want {:?}",
            String::from_utf8_lossy(&request.body),
            String::from_utf8_lossy(&want.body)
        ));
    }
    // Whatever the case, a forwarded request has exactly one Host.
    let hosts = request.header_values("host");
    if hosts.len() != 1 {
        return Err(format!("{line}: Host lines {hosts:?}, want exactly one"));
    }
    if let Some(host) = &want.host
        && hosts[0] != *host
    {
        return Err(format!("{line}: Host {:?}, want {host:?}", hosts[0]));
    }
    let lines: Vec<String> = request
        .header_lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    for has in &want.has {
        if !lines.iter().any(|l| l.eq_ignore_ascii_case(has)) {
            return Err(format!("{line}: no header line {has:?} in {lines:?}"));
        }
    }
    for lacks in &want.lacks {
        if !request.header_values(lacks).is_empty() {
            return Err(format!("{line}: has {lacks} but must not: {lines:?}"));
        }
    }
    if let Some(trailers) = want.trailers
        && request.trailer_lines.len() != trailers
    {
        return Err(format!(
            "{line}: {} trailer lines, want {trailers}: {:?}",
            request.trailer_lines.len(),
            request.trailer_lines
        ));
    }
    Ok(())
}

fn summary(seen: &Seen) -> String {
    let events: Vec<String> = seen
        .events
        .iter()
        .map(|event| match event {
            Event::Request {
                backend,
                conn,
                request,
                ..
            } => format!(
                "{backend}#{conn} {} {} {:?} body={:?} hosts={:?} trailers={:?}",
                request.method,
                request.target,
                request.framing,
                String::from_utf8_lossy(&request.body),
                request.header_values("host"),
                request
                    .trailer_lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l))
                    .collect::<Vec<_>>(),
            ),
            Event::Malformed { backend, error, .. } => format!("{backend} malformed: {error}"),
            Event::Aborted {
                backend,
                request_line,
                ..
            } => format!("{backend} cut off: {request_line}"),
        })
        .collect();
    format!(
        "statuses {:?}, {}, backend {events:?}",
        statuses(&seen.responses),
        if seen.closed {
            "closed"
        } else if seen.probe_answered {
            "open"
        } else {
            "open but the probe got no answer"
        }
    )
}
