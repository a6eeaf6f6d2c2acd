//! A strict HTTP/1.1 request parser (RFC 9112) for the raw test backend.
//!
//! It accepts only what a well-behaved proxy must send: CRLF line ends, no
//! obs-fold, one framing (`Content-Length` or `Transfer-Encoding: chunked`,
//! never both), and chunked bodies with extensions and trailers. Anything
//! else is an error naming what and where, so bytes a proxy smuggled or
//! mangled cannot hide in a lenient reading.

/// How a request's body was delimited on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    Length(u64),
    Chunked,
}

/// One request exactly as it was received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Field lines as received, without their CRLF.
    pub header_lines: Vec<Vec<u8>>,
    pub framing: Framing,
    /// The body after removing the chunked coding, if any.
    pub body: Vec<u8>,
    /// Chunk extensions (the bytes after the size, up to CRLF), per chunk.
    pub chunk_extensions: Vec<Vec<u8>>,
    /// Trailer field lines, without their CRLF.
    pub trailer_lines: Vec<Vec<u8>>,
}

impl ParsedRequest {
    /// Values of the header `name` (case-insensitive), trimmed.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.header_lines
            .iter()
            .filter_map(|line| split_field(line))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// The result of parsing from the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole request and how many bytes it took.
    Complete(ParsedRequest, usize),
    /// More bytes are needed.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the buffer where the problem is.
    pub at: usize,
    pub what: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

fn error(at: usize, what: impl Into<String>) -> ParseError {
    ParseError {
        at,
        what: what.into(),
    }
}

/// Longest head accepted (a proxy forwarding more is itself suspect).
const MAX_HEAD: usize = 256 * 1024;
/// Most hex digits in a chunk size (u64).
const MAX_SIZE_DIGITS: usize = 16;

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parse, ParseError> {
    let mut pos = 0;
    let Some(line) = next_line(buf, &mut pos)? else {
        return partial_head(buf);
    };
    let (method, target, version) = request_line(line)?;
    let mut header_lines = Vec::new();
    loop {
        let start = pos;
        let Some(line) = next_line(buf, &mut pos)? else {
            return partial_head(buf);
        };
        if line.is_empty() {
            break;
        }
        field_line(line, start)?;
        header_lines.push(line.to_vec());
    }
    let framing = framing(&header_lines, pos)?;
    let mut request = ParsedRequest {
        method,
        target,
        version,
        header_lines,
        framing: framing.clone(),
        body: Vec::new(),
        chunk_extensions: Vec::new(),
        trailer_lines: Vec::new(),
    };
    match framing {
        Framing::None => Ok(Parse::Complete(request, pos)),
        Framing::Length(length) => {
            let length = usize::try_from(length).map_err(|_| error(pos, "huge Content-Length"))?;
            match buf.get(pos..pos + length) {
                Some(body) => {
                    request.body = body.to_vec();
                    Ok(Parse::Complete(request, pos + length))
                }
                None => Ok(Parse::Partial),
            }
        }
        Framing::Chunked => match chunked(buf, pos, &mut request)? {
            Some(end) => Ok(Parse::Complete(request, end)),
            None => Ok(Parse::Partial),
        },
    }
}

fn partial_head(buf: &[u8]) -> Result<Parse, ParseError> {
    if buf.len() > MAX_HEAD {
        return Err(error(MAX_HEAD, "request head too large"));
    }
    Ok(Parse::Partial)
}

/// The next CRLF-terminated line from `pos`, without its CRLF; a bare CR
/// or LF is an error. `None` when the line is not complete yet.
fn next_line<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, ParseError> {
    let start = *pos;
    for (offset, &b) in buf[start..].iter().enumerate() {
        let at = start + offset;
        match b {
            b'\n' => return Err(error(at, "bare LF")),
            b'\r' => match buf.get(at + 1) {
                Some(b'\n') => {
                    *pos = at + 2;
                    return Ok(Some(&buf[start..at]));
                }
                Some(_) => return Err(error(at, "bare CR")),
                None => return Ok(None),
            },
            _ => {}
        }
    }
    Ok(None)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn request_line(line: &[u8]) -> Result<(String, String, String), ParseError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(error(
            0,
            "request line is not `method SP target SP version`",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(error(0, "invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(error(method.len() + 1, "invalid request target"));
    }
    if version != b"HTTP/1.1" {
        return Err(error(
            method.len() + target.len() + 2,
            "version is not HTTP/1.1",
        ));
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), text(version)))
}

/// Splits `name: value` (value trimmed of OWS); `None` if not a field line.
fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let value = &line[colon + 1..];
    let value = value.trim_ascii_start();
    let trimmed_end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    Some((&line[..colon], &value[..trimmed_end]))
}

fn field_line(line: &[u8], at: usize) -> Result<(), ParseError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(error(at, "obs-fold (line starts with whitespace)"));
    }
    let Some((name, value)) = split_field(line) else {
        return Err(error(at, "field line without a colon"));
    };
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(error(at, "invalid field name"));
    }
    if let Some(i) = value
        .iter()
        .position(|&b| !(b == b' ' || b == b'\t' || b.is_ascii_graphic() || b >= 0x80))
    {
        return Err(error(
            at + name.len() + 1 + i,
            "control byte in field value",
        ));
    }
    Ok(())
}

fn framing(header_lines: &[Vec<u8>], at: usize) -> Result<Framing, ParseError> {
    let values = |name: &str| -> Vec<&[u8]> {
        header_lines
            .iter()
            .filter_map(|line| split_field(line))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
            .collect()
    };
    let lengths = values("content-length");
    let encodings = values("transfer-encoding");
    match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Ok(Framing::None),
        ([length], []) => {
            if length.is_empty() || length.len() > 19 || !length.iter().all(u8::is_ascii_digit) {
                return Err(error(at, "invalid Content-Length"));
            }
            let text = String::from_utf8_lossy(length);
            text.parse()
                .map(Framing::Length)
                .map_err(|_| error(at, "invalid Content-Length"))
        }
        ([], [encoding]) if encoding.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        ([], _) => Err(error(at, "Transfer-Encoding other than one `chunked`")),
        (_, []) => Err(error(at, "more than one Content-Length")),
        _ => Err(error(at, "both Content-Length and Transfer-Encoding")),
    }
}

/// Decodes a chunked body starting at `pos`; the end offset once complete.
fn chunked(
    buf: &[u8],
    mut pos: usize,
    request: &mut ParsedRequest,
) -> Result<Option<usize>, ParseError> {
    loop {
        let start = pos;
        let Some(line) = next_line(buf, &mut pos)? else {
            return Ok(None);
        };
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > MAX_SIZE_DIGITS {
            return Err(error(start, "invalid chunk size"));
        }
        let size = u64::from_str_radix(&String::from_utf8_lossy(&line[..digits]), 16)
            .map_err(|_| error(start, "invalid chunk size"))?;
        let extension = &line[digits..];
        chunk_extension(extension, start + digits)?;
        request.chunk_extensions.push(extension.to_vec());
        if size == 0 {
            return trailers(buf, pos, request);
        }
        let size = usize::try_from(size).map_err(|_| error(start, "huge chunk"))?;
        let Some(data) = buf.get(pos..pos + size) else {
            return Ok(None);
        };
        request.body.extend_from_slice(data);
        pos += size;
        match buf.get(pos..pos + 2) {
            Some(b"\r\n") => pos += 2,
            Some(_) => return Err(error(pos, "chunk data not followed by CRLF")),
            None => return Ok(None),
        }
    }
}

/// `*( BWS ";" BWS name [ BWS "=" BWS value ] )`; values are tokens or
/// quoted strings.
fn chunk_extension(ext: &[u8], at: usize) -> Result<(), ParseError> {
    let bad = || error(at, "invalid chunk extension");
    let mut rest = ext;
    let skip_ws = |s: &mut &[u8]| {
        while let Some((b' ' | b'\t', tail)) = s.split_first() {
            *s = tail;
        }
    };
    let token = |s: &mut &[u8]| -> bool {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        *s = &s[n..];
        n > 0
    };
    loop {
        skip_ws(&mut rest);
        let Some((b';', tail)) = rest.split_first() else {
            return if rest.is_empty() { Ok(()) } else { Err(bad()) };
        };
        rest = tail;
        skip_ws(&mut rest);
        if !token(&mut rest) {
            return Err(bad());
        }
        skip_ws(&mut rest);
        if let Some((b'=', tail)) = rest.split_first() {
            rest = tail;
            skip_ws(&mut rest);
            if let Some((b'"', tail)) = rest.split_first() {
                rest = tail;
                loop {
                    match rest.split_first() {
                        Some((b'"', tail)) => {
                            rest = tail;
                            break;
                        }
                        Some((b'\\', tail)) if !tail.is_empty() => rest = &tail[1..],
                        Some((&b, tail)) if b == b'\t' || b == b' ' || b >= 0x21 => rest = tail,
                        _ => return Err(bad()),
                    }
                }
            } else if !token(&mut rest) {
                return Err(bad());
            }
        }
    }
}

fn trailers(
    buf: &[u8],
    mut pos: usize,
    request: &mut ParsedRequest,
) -> Result<Option<usize>, ParseError> {
    loop {
        let start = pos;
        let Some(line) = next_line(buf, &mut pos)? else {
            return Ok(None);
        };
        if line.is_empty() {
            return Ok(Some(pos));
        }
        field_line(line, start)?;
        request.trailer_lines.push(line.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (ParsedRequest, usize) {
        match parse_request(bytes).expect("valid request") {
            Parse::Complete(request, used) => (request, used),
            Parse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn content_length_and_pipelining() {
        let bytes = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b";
        let (request, used) = complete(bytes);
        assert_eq!(request.framing, Framing::Length(3));
        assert_eq!(request.body, b"abc");
        assert_eq!(&bytes[used..], b"GET /b");
        assert_eq!(request.header_values("HOST"), ["x"]);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let bytes = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;a=b;c=\"d e\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let (request, used) = complete(bytes);
        assert_eq!(used, bytes.len());
        assert_eq!(request.body, b"abc");
        assert_eq!(request.chunk_extensions[0], b";a=b;c=\"d e\"");
        assert_eq!(request.trailer_lines, [b"X-T: 1".to_vec()]);
    }

    #[test]
    fn partial_until_complete() {
        let bytes = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(parse_request(bytes), Ok(Parse::Partial));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo"), Ok(Parse::Partial));
    }

    #[test]
    fn lenient_forms_are_errors() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;\r\nx\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxyz\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
