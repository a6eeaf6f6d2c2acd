//! Why a rule document was rejected.
use std::fmt;

/// A rule document that cannot be compiled. `Display` reads
/// `domain "example.com", rule "r1": unknown type "foo"`; the fields let the
/// admin API build its own JSON message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("domain {domain:?}{}: {problem}", RuleClause(.rule.as_deref()))]
pub struct RuleError {
    pub domain: String,
    /// The rule at fault, when the problem is inside one rule.
    pub rule: Option<String>,
    pub problem: String,
}

impl RuleError {
    pub(super) fn document(domain: &str, problem: impl Into<String>) -> Self {
        Self {
            domain: domain.to_owned(),
            rule: None,
            problem: problem.into(),
        }
    }

    pub(super) fn rule(domain: &str, rule: &str, problem: impl Into<String>) -> Self {
        Self {
            domain: domain.to_owned(),
            rule: Some(rule.to_owned()),
            problem: problem.into(),
        }
    }
}

/// Renders `, rule "name"` or nothing.
struct RuleClause<'a>(Option<&'a str>);

impl fmt::Display for RuleClause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rule) => write!(f, ", rule {rule:?}"),
            None => Ok(()),
        }
    }
}
