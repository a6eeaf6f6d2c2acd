//! Walking a compiled rule graph for one request.
use http::{HeaderName, HeaderValue};

use super::graph::{CompiledRules, NodeKind, PathTest};
use super::lowercase::with_ascii_lowercase;
use super::path::rewrite_target;

/// What the rules look at in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRequest<'a> {
    /// The raw `User-Agent` header value, if the request has one.
    pub user_agent: Option<&'a [u8]>,
    /// The percent-DECODED path without the query string (see
    /// [`decode_path`](super::decode_path)).
    pub path: &'a [u8],
}

/// The outcome of evaluating a domain's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Proxy to this backend.
    Backend(BackendChoice<'r>),
    /// Rule `rule` needed a `succ`/`fail` branch that is absent: answer 403.
    Forbidden { rule: &'r str },
}

/// Where and how to forward the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice<'r> {
    /// An upstream name or a literal `host:port`.
    pub servername: &'r str,
    /// The percent-encoded upstream path set by the last matching rewrite
    /// rule; the proxy appends the original query string. `None`: keep the
    /// request's path.
    pub rewritten_path: Option<String>,
    /// Extra request headers for the upstream (the backend rule's other args).
    pub headers: &'r [(HeaderName, HeaderValue)],
}

impl CompiledRules {
    /// Picks the backend for `request`. Never panics; allocates only for a
    /// rewritten path.
    pub fn evaluate(&self, request: &RuleRequest<'_>) -> Decision<'_> {
        match request.user_agent {
            Some(user_agent) if self.has_user_agent_rules => {
                with_ascii_lowercase(user_agent, |lowered| self.walk(Some(lowered), request.path))
            }
            user_agent => self.walk(user_agent, request.path),
        }
    }

    /// `user_agent` is already lower-cased.
    fn walk(&self, user_agent: Option<&[u8]>, path: &[u8]) -> Decision<'_> {
        let mut current = self.init;
        let mut rewritten_path = None;
        // `compile` rejects cycles, so a walk visits each node at most once;
        // bounding the loop anyway makes termination local knowledge.
        for _ in 0..self.nodes.len() {
            let Some(node) = self.nodes.get(current) else {
                break;
            };
            let (matched, branches) = match &node.kind {
                NodeKind::Backend(backend) => {
                    return Decision::Backend(BackendChoice {
                        servername: &backend.servername,
                        rewritten_path,
                        headers: &backend.headers,
                    });
                }
                NodeKind::UserAgent { pattern, branches } => (
                    user_agent.is_some_and(|user_agent| pattern.is_match(user_agent)),
                    branches,
                ),
                NodeKind::Path { test, branches } => {
                    (test_path(test, path, &mut rewritten_path), branches)
                }
            };
            let next = if matched {
                branches.succ
            } else {
                branches.fail
            };
            match next {
                Some(next) => current = next,
                None => return Decision::Forbidden { rule: &node.name },
            }
        }
        // Unreachable for a graph built by `compile`; refuse rather than guess.
        let init_name = self.nodes.get(self.init).map_or("", |node| &node.name);
        Decision::Forbidden { rule: init_name }
    }
}

/// Whether `path` passes `test`; a matching rewrite rule replaces
/// `rewritten_path` (the last rewrite along a walk wins).
fn test_path(test: &PathTest, path: &[u8], rewritten_path: &mut Option<String>) -> bool {
    match test {
        PathTest::Prefix(prefix) => path.starts_with(prefix),
        PathTest::Regex(regex) => regex.is_match(path),
        PathTest::RegexRewrite(regex) => match regex.first_group(path) {
            Some(group) => {
                *rewritten_path = Some(rewrite_target(group));
                true
            }
            None => false,
        },
    }
}
