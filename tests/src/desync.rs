//! The desync corpus: case files (`tests/desync/*.txt`), their escape
//! convention, and reading the responses a client gets back.
//!
//! A case file is:
//!
//! ```text
//! # <class>: <what the stream does>. Source: <RFC section or research>
//! <expectation lines>
//! ---
//! <the raw stream>
//! ```
//!
//! In the raw stream, line breaks of the file are ignored (they only make
//! it readable); every byte sent is written with escapes where needed:
//! `\r`, `\n`, `\t`, `\0`, `\\`, `\xHH`, and `\[N]` which repeats the next
//! character (or escape) N times. The same escapes apply inside the quoted
//! strings of expectation lines.
//!
//! Expectation lines (one outcome; `or` on a line of its own starts an
//! alternative outcome, for cases where RFC 9112 allows either):
//! - `status: 200 400` final statuses elb sends, in order (`status: none`);
//! - `forward: METHOD TARGET [none|length|chunked] ["body"] [to=NAME]
//!   [host=VALUE] [has="header line"] [lacks=NAME] [trailers=N]`: one
//!   request the backend must see, in order (`to` defaults to `main`);
//! - `aborted: METHOD TARGET`: the backend may see this request cut off
//!   (the connection to it closed mid-request), never complete;
//! - `after: close` or `after: open`: the client connection's state after
//!   the responses (`open` is checked with a probe request that must be
//!   routed normally).
//!
//! Other lines: `modes: whole` (send in one write only; by default a case
//! is also sent in small pieces), `awaits: defect N` (fails until that
//! issue-12 defect is fixed; informational), `known-failure: <why>` (a
//! defect outside elb, in a dependency: the case must fail, and the test
//! fails once it passes, so the line is removed then).
use anyhow::{Context, Result, bail, ensure};

/// One case file.
#[derive(Clone, Debug)]
pub struct Case {
    pub file: String,
    /// The class named at the start of the description line.
    pub class: String,
    pub description: String,
    pub outcomes: Vec<Outcome>,
    pub split: bool,
    pub awaits: Vec<String>,
    pub known_failure: Option<String>,
    pub stream: Vec<u8>,
}

/// One acceptable result of sending a case.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub statuses: Vec<u16>,
    pub forwards: Vec<Forward>,
    pub aborted: Vec<(String, String)>,
    pub close: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length,
    Chunked,
}

/// A request the backend must see.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub method: String,
    pub target: String,
    pub framing: Framing,
    pub body: Vec<u8>,
    pub backend: String,
    pub host: Option<String>,
    pub has: Vec<String>,
    pub lacks: Vec<String>,
    pub trailers: Option<usize>,
}

/// Decodes the escape convention (file line breaks dropped).
pub fn unescape(text: &str) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = text.bytes().filter(|&b| b != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    while pos < bytes.len() {
        let (unit, next) = unit(&bytes, pos)?;
        out.extend_from_slice(&unit);
        pos = next;
    }
    Ok(out)
}

/// One literal byte or escape at `pos`: its bytes and the next position.
fn unit(bytes: &[u8], pos: usize) -> Result<(Vec<u8>, usize)> {
    let b = bytes[pos];
    if b != b'\\' {
        return Ok((vec![b], pos + 1));
    }
    let escape = *bytes
        .get(pos + 1)
        .with_context(|| format!("lone backslash at byte {pos}"))?;
    let simple = |byte: u8| Ok((vec![byte], pos + 2));
    match escape {
        b'r' => simple(b'\r'),
        b'n' => simple(b'\n'),
        b't' => simple(b'\t'),
        b'0' => simple(0),
        b'\\' => simple(b'\\'),
        b'"' => simple(b'"'),
        b'x' => {
            let hex = bytes
                .get(pos + 2..pos + 4)
                .with_context(|| format!("short \\x escape at byte {pos}"))?;
            let value = u8::from_str_radix(std::str::from_utf8(hex)?, 16)
                .with_context(|| format!("bad \\x escape at byte {pos}"))?;
            Ok((vec![value], pos + 4))
        }
        b'[' => {
            let close = bytes[pos..]
                .iter()
                .position(|&b| b == b']')
                .with_context(|| format!("unclosed \\[N] at byte {pos}"))?;
            let count: usize = std::str::from_utf8(&bytes[pos + 2..pos + close])?
                .parse()
                .with_context(|| format!("bad repeat count at byte {pos}"))?;
            ensure!(
                pos + close + 1 < bytes.len(),
                "\\[N] at the end, byte {pos}"
            );
            let (repeated, next) = unit(bytes, pos + close + 1)?;
            Ok((repeated.repeat(count), next))
        }
        other => bail!("unknown escape \\{} at byte {pos}", other as char),
    }
}

/// Splits on spaces outside double quotes; quotes stay on the word.
fn words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                current.push(c);
                current.extend(chars.next());
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    ensure!(!quoted, "unclosed quote in {line:?}");
    if !current.is_empty() {
        words.push(current);
    }
    Ok(words)
}

/// A word's text: a quoted word unescaped, else as it is.
fn word_bytes(word: &str) -> Result<Vec<u8>> {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => unescape(inner),
        None => Ok(word.as_bytes().to_vec()),
    }
}

fn word_text(word: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(&word_bytes(word)?).into_owned())
}

fn forward(rest: &str) -> Result<Forward> {
    let words = words(rest)?;
    let [method, target, options @ ..] = words.as_slice() else {
        bail!("forward needs METHOD TARGET: {rest:?}");
    };
    let mut forward = Forward {
        method: method.clone(),
        target: word_text(target)?,
        framing: Framing::None,
        body: Vec::new(),
        backend: "main".to_owned(),
        host: None,
        has: Vec::new(),
        lacks: Vec::new(),
        trailers: None,
    };
    for option in options {
        match option.split_once('=') {
            _ if option.starts_with('"') => forward.body = word_bytes(option)?,
            Some(("to", name)) => forward.backend = name.to_owned(),
            Some(("host", value)) => forward.host = Some(word_text(value)?),
            Some(("has", line)) => forward.has.push(word_text(line)?),
            Some(("lacks", name)) => forward.lacks.push(name.to_owned()),
            Some(("trailers", n)) => forward.trailers = Some(n.parse()?),
            None if option == "none" => forward.framing = Framing::None,
            None if option == "length" => forward.framing = Framing::Length,
            None if option == "chunked" => forward.framing = Framing::Chunked,
            _ => bail!("unknown forward option {option:?}"),
        }
    }
    Ok(forward)
}

/// Parses a case file's text.
pub fn parse_case(file: &str, text: &str) -> Result<Case> {
    let (head, raw) = text
        .split_once("\n---\n")
        .with_context(|| format!("{file}: no `---` line before the stream"))?;
    let mut lines = head.lines();
    let description = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .with_context(|| format!("{file}: the first line must be `# class: description`"))?;
    let class = description
        .split_once(':')
        .map(|(class, _)| class.trim().to_owned())
        .with_context(|| format!("{file}: no class before ':' in the description"))?;
    ensure!(
        description.contains("Source:"),
        "{file}: the description names no `Source:`"
    );
    let mut case = Case {
        file: file.to_owned(),
        class,
        description: description.to_owned(),
        outcomes: vec![Outcome::default()],
        split: true,
        awaits: Vec::new(),
        known_failure: None,
        stream: unescape(raw.strip_suffix('\n').unwrap_or(raw))
            .with_context(|| format!("{file}: stream"))?,
    };
    let mut seen_after = false;
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "or" {
            ensure!(seen_after, "{file}: an outcome without `after:`");
            case.outcomes.push(Outcome::default());
            seen_after = false;
            continue;
        }
        let (key, rest) = line
            .split_once(':')
            .with_context(|| format!("{file}: not `key: value`: {line:?}"))?;
        let rest = rest.trim();
        let outcome = case.outcomes.last_mut().expect("one outcome at least");
        match key {
            "status" if rest == "none" => {}
            "status" => {
                for status in rest.split_whitespace() {
                    outcome.statuses.push(status.parse()?);
                }
            }
            "forward" => outcome
                .forwards
                .push(forward(rest).with_context(|| format!("{file}: {line:?}"))?),
            "aborted" => {
                let (method, target) = rest
                    .split_once(' ')
                    .with_context(|| format!("{file}: aborted needs METHOD TARGET"))?;
                outcome.aborted.push((method.to_owned(), target.to_owned()));
            }
            "after" => {
                outcome.close = match rest {
                    "close" => true,
                    "open" => false,
                    _ => bail!("{file}: after is `close` or `open`, not {rest:?}"),
                };
                seen_after = true;
            }
            "modes" if rest == "whole" => case.split = false,
            "awaits" => case.awaits.push(rest.to_owned()),
            "known-failure" => case.known_failure = Some(rest.to_owned()),
            _ => bail!("{file}: unknown line {line:?}"),
        }
    }
    ensure!(seen_after, "{file}: an outcome without `after:`");
    Ok(case)
}

/// A response as the client read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One response from the start of `buf`, with its length; `None` if more
/// bytes are needed. `bodiless`: the request was a HEAD. `eof`: no more
/// bytes will come (ends a body delimited by the close).
pub fn parse_response(
    buf: &[u8],
    bodiless: impl Fn(&[(String, String)]) -> bool,
    eof: bool,
) -> Result<Option<(ClientResponse, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        ensure!(
            !eof || buf.is_empty(),
            "truncated response head: {:?}",
            String::from_utf8_lossy(buf)
        );
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let start = head_end + 4;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let response = |body: Vec<u8>| ClientResponse {
        status,
        headers: headers.clone(),
        body,
    };
    if (100..200).contains(&status) || status == 204 || status == 304 || bodiless(&headers) {
        return Ok(Some((response(Vec::new()), start)));
    }
    if find("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut pos = start;
        let mut body = Vec::new();
        loop {
            let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[pos..pos + line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            pos += line_end + 2;
            if size == 0 {
                let Some(end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                ensure!(end == 0, "response trailers are not expected");
                return Ok(Some((response(body), pos + 2)));
            }
            if buf.len() < pos + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(length) = find("content-length") {
        let length: usize = length.parse().context("bad response Content-Length")?;
        if buf.len() < start + length {
            ensure!(!eof, "truncated response body");
            return Ok(None);
        }
        return Ok(Some((
            response(buf[start..start + length].to_vec()),
            start + length,
        )));
    }
    // Delimited by the close.
    if eof {
        return Ok(Some((response(buf[start..].to_vec()), buf.len())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            unescape("GET / HTTP/1.1\\r\\n\n\\x00\\[3]a\\[2]\\r\\\\").expect("valid"),
            b"GET / HTTP/1.1\r\n\0aaa\r\r\\"
        );
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x4").is_err());
    }

    #[test]
    fn a_case_with_alternatives() {
        let text = "# cl-te: both. Source: RFC 9112 §6.3\nstatus: 400\nafter: close\nor\n\
            status: 200\nforward: POST / chunked \"a b\" host=x has=\"X-A: 1\"\nafter: close\n\
            modes: whole\n---\nPOST / HTTP/1.1\\r\\n\n\\r\\n\n";
        let case = parse_case("001.txt", text).expect("valid case");
        assert_eq!(case.class, "cl-te");
        assert_eq!(case.outcomes.len(), 2);
        assert_eq!(case.outcomes[1].forwards[0].body, b"a b");
        assert_eq!(case.outcomes[1].forwards[0].has, ["X-A: 1"]);
        assert_eq!(case.stream, b"POST / HTTP/1.1\r\n\r\n");
        assert!(!case.split);
    }

    #[test]
    fn responses() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad";
        let (interim, used) = parse_response(buf, |_| false, false)
            .expect("ok")
            .expect("whole");
        assert_eq!(interim.status, 100);
        let (ok, more) = parse_response(&buf[used..], |_| false, false)
            .expect("ok")
            .expect("whole");
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(
            parse_response(&buf[used + more..], |_| false, false).expect("ok"),
            None
        );
    }
}
