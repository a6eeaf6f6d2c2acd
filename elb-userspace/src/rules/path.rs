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

/// The path rules match, as nginx's `$uri`: percent-decoded, then with `.`
/// and `..` segments resolved and repeated slashes merged, so that
/// `/public/../admin` cannot slip past a `/public` prefix rule. Borrows when
/// there is nothing to change. Malformed escapes (`%zz`, a trailing `%`)
/// stay as they are; `+` stays `+`. `..` never climbs above the root.
pub fn decode_path(raw: &str) -> Cow<'_, [u8]> {
    let decoded: Cow<'_, [u8]> = percent_decode_str(raw).into();
    if needs_normalising(&decoded) {
        Cow::Owned(normalise(&decoded))
    } else {
        decoded
    }
}

fn needs_normalising(path: &[u8]) -> bool {
    path.windows(2).any(|w| w == b"//")
        || path.windows(3).any(|w| w == b"/./")
        || path.windows(4).any(|w| w == b"/../")
        || path.ends_with(b"/.")
        || path.ends_with(b"/..")
}

fn normalise(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let ends_in_directory = path.ends_with(b"/") || path.ends_with(b"/.") || path.ends_with(b"/..");
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || ends_in_directory {
        out.push(b'/');
    }
    out
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
