//! Request paths: decoding for matching, encoding for rewrites.
use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, percent_encode};

/// Bytes that may not appear raw in a URI path (RFC 3986 `pchar` plus `/`).
/// `%` is here because the input is already decoded: a literal `%` must
/// reach the upstream as `%25`. Non-ASCII bytes are always encoded.
const NOT_PATH_SAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Percent-decodes a request path (without its query string) for matching.
/// Borrows when there is nothing to decode. Malformed escapes (`%zz`, a
/// trailing `%`) stay as they are; `+` stays `+`. No dot-segment or slash
/// normalisation is done.
pub fn decode_path(raw: &str) -> Cow<'_, [u8]> {
    percent_decode_str(raw).into()
}

/// The upstream path for a rewrite: the captured (decoded) bytes with a
/// leading `/` when they lack one, percent-encoded into a valid URI path.
pub(super) fn rewrite_target(capture: &[u8]) -> String {
    let mut target = String::with_capacity(capture.len() + 1);
    if capture.first() != Some(&b'/') {
        target.push('/');
    }
    target.extend(percent_encode(capture, NOT_PATH_SAFE));
    target
}
