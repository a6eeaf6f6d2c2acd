//! A rule's compiled regex. Byte-oriented like the old ELB's PCRE (see the
//! module docs of `rules`).
//!
//! Built with `regex-automata`'s meta engine directly rather than through
//! `regex::bytes::Regex` so the eager full DFA can be left out: it makes up
//! about 90% of the build time of a typical rule pattern, and the lazy DFA
//! that remains matches these short inputs just as fast. That is what keeps
//! compiling 10,000 domains with distinct patterns well under a second.
use regex_automata::{Input, meta, util::syntax};

/// Most memory one compiled pattern may take; a bigger pattern is a
/// compile error, not an OOM.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Pattern(meta::Regex);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("is not a valid regex: {0}")]
    Syntax(String),
    #[error("is too large: compiled, it would exceed {0} bytes")]
    TooBig(usize),
    #[error("cannot be compiled: {0}")]
    Other(String),
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        meta::Builder::new()
            .configure(
                meta::Config::new()
                    .dfa(false)
                    .utf8_empty(false)
                    .nfa_size_limit(Some(REGEX_SIZE_LIMIT)),
            )
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .build(pattern)
            .map(Self)
            .map_err(|error| {
                if let Some(syntax) = error.syntax_error() {
                    PatternError::Syntax(syntax.to_string())
                } else if let Some(limit) = error.size_limit() {
                    PatternError::TooBig(limit)
                } else {
                    PatternError::Other(error.to_string())
                }
            })
    }

    pub fn is_match(&self, haystack: &[u8]) -> bool {
        self.0.is_match(haystack)
    }

    /// On a match, what the first capture group matched (empty when the
    /// pattern has no group or the group did not take part).
    pub fn first_group<'h>(&self, haystack: &'h [u8]) -> Option<&'h [u8]> {
        // Slots for group 0 and group 1, on the stack: no allocation per request.
        let mut slots = [None; 4];
        self.0.search_slots(&Input::new(haystack), &mut slots)?;
        Some(match (slots[2], slots[3]) {
            (Some(start), Some(end)) => &haystack[start.get()..end.get()],
            _ => &[],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_bytes_so_non_utf8_input_matches() {
        let pattern = Pattern::new(r"^/blog/(\S+)$").expect("valid");
        assert_eq!(
            pattern.first_group(b"/blog/\xff\xfe"),
            Some(&b"\xff\xfe"[..])
        );
        assert!(Pattern::new(".").expect("valid").is_match(b"\xff"));
    }

    #[test]
    fn first_group_is_empty_without_a_group_and_none_without_a_match() {
        let pattern = Pattern::new("^/api").expect("valid");
        assert_eq!(pattern.first_group(b"/api/x"), Some(&b""[..]));
        assert_eq!(pattern.first_group(b"/web"), None);
        let optional = Pattern::new("^/a(x)?").expect("valid");
        assert_eq!(optional.first_group(b"/a"), Some(&b""[..]));
    }

    #[test]
    fn word_classes_and_case_folding_are_ascii() {
        assert!(
            !Pattern::new(r"^\w$")
                .expect("valid")
                .is_match("é".as_bytes())
        );
        assert!(
            Pattern::new("(?i)^httpie$")
                .expect("valid")
                .is_match(b"HTTPie")
        );
        assert!(
            Pattern::new(r"(?u)^\w$")
                .expect("valid")
                .is_match("é".as_bytes())
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(Pattern::new("("), Err(PatternError::Syntax(_))));
        assert_eq!(
            Pattern::new(r"\w{1000}{1000}").map(|_| ()),
            Err(PatternError::TooBig(REGEX_SIZE_LIMIT))
        );
    }
}
