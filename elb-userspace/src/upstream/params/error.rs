//! Why a server parameter string or server address was rejected.
use thiserror::Error;

/// Every variant names the offending token (or server address) so an admin API
/// error message points straight at the mistake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamsError {
    #[error(
        "unknown server parameter {token:?} (supported: weight=N, max_fails=N, fail_timeout=TIME, backup, down, zone=NAME, max_conns=N, tls, h2)"
    )]
    UnknownParameter { token: String },
    #[error("server parameter {token:?} has no value after '='")]
    MissingValue { token: String },
    #[error("server parameter {token:?}: {value:?} is not a whole number")]
    BadNumber { token: String, value: String },
    #[error("server parameter {token:?}: weight must be at least 1")]
    ZeroWeight { token: String },
    #[error(
        "server parameter {token:?}: {value:?} is not a duration (examples: 10, 10s, 500ms, 1m, 1h30m)"
    )]
    BadDuration { token: String, value: String },
    #[error("server parameter {token:?}: {value:?} is too large (the limit is {limit})")]
    Overflow {
        token: String,
        value: String,
        limit: &'static str,
    },
    #[error("server parameter {token:?}: {flag:?} is a flag and takes no value")]
    ValueOnFlag { token: String, flag: &'static str },
    #[error("server parameter {token:?}: {name:?} is given more than once")]
    Duplicate { token: String, name: &'static str },
    #[error("server parameter {token:?}: {reason}")]
    BadZone { token: String, reason: String },
    #[error("invalid server address {server:?}: {reason}")]
    BadAddress {
        server: String,
        reason: &'static str,
    },
}
