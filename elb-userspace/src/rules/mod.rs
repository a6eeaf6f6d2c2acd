//! The rule engine: compiles a domain's ERU ELB rule document into an
//! immutable graph once, then picks a backend for each request without I/O.
//!
//! ```json
//! {"init": "r1",
//!  "rules": {
//!    "r1": {"type": "ua",      "args": {"pattern": "httpie(\\S+)$", "succ": "r4", "fail": "r3"}},
//!    "r2": {"type": "backend", "args": {"servername": "upstream1"}},
//!    "r3": {"type": "backend", "args": {"servername": "upstream2"}},
//!    "r4": {"type": "path",    "args": {"regex": true, "pattern": "^\\/blog\\/(\\S+)$",
//!                                       "succ": "r2", "fail": "r3", "rewrite": false}}}}
//! ```
//!
//! Evaluation starts at `init` and follows `succ` (test matched) or `fail`
//! (test did not match) until a `backend` rule. The contract is
//! `shared/spec/eru-compat.md`, section "Rule document". Choices it leaves
//! open, made here:
//!
//! - Regexes are byte-oriented, like the old ELB's PCRE (`ngx.re.match`
//!   without the `u` option): `.` and `\S` match any byte, so non-UTF-8 user
//!   agents and decoded paths can match; `\w`, `\d`, `\s` and `(?i)` are
//!   ASCII. A pattern opts into Unicode classes with `(?u)`.
//! - When several `path` rules rewrite along one walk, the last matching one
//!   wins; every `path` rule tests the original request path, never an earlier
//!   rewrite (the old ELB's `ngx.req.set_uri` did not re-run the walk either).
//! - A `succ`/`fail` that is `null` counts as absent (403 when needed).
//! - Keys of `ua`/`path` args other than the ones they use are ignored, so
//!   documents written for the old ELB keep loading.
//! - `backend` header names are case-insensitive and stored lower-cased; the
//!   same name twice, and headers that would break message framing or
//!   connection handling (`content-length`, `transfer-encoding`, `connection`,
//!   ...), are rejected.

mod compile;
mod error;
mod eval;
mod graph;
mod lowercase;
mod path;
mod pattern;
mod regex_cache;

#[cfg(test)]
mod tests;

pub use compile::{compile, compile_cached};
pub use error::RuleError;
pub use eval::{BackendChoice, Decision, RuleRequest};
pub use graph::CompiledRules;
pub use path::decode_path;
pub use pattern::REGEX_SIZE_LIMIT;
pub use regex_cache::RegexCache;
