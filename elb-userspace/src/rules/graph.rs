//! The compiled form of a rule document: nodes addressed by index, with every
//! regex and header built ahead of time so evaluation only reads.
use super::pattern::Pattern;
use http::{HeaderName, HeaderValue};

/// Position of a node in [`CompiledRules::nodes`].
pub(super) type NodeIndex = usize;

/// One domain's rules, compiled by [`compile`](super::compile). Immutable and
/// cheap to share between request handlers (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub(super) domain: String,
    /// The document as written, for the admin API's GET.
    pub(super) document: serde_json::Value,
    pub(super) nodes: Box<[Node]>,
    pub(super) init: NodeIndex,
    /// Lets evaluation skip lower-casing the User-Agent when nothing reads it.
    pub(super) has_user_agent_rules: bool,
}

impl CompiledRules {
    /// The domain this document was compiled for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The document exactly as it was given to `compile`.
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// Every `servername` a backend rule names (upstream names or literal
    /// `host:port`), in rule order; repeats are possible.
    pub fn servernames(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter_map(|node| match &node.kind {
            NodeKind::Backend(backend) => Some(&*backend.servername),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) name: Box<str>,
    pub(super) kind: NodeKind,
}

#[derive(Debug, Clone)]
pub(super) enum NodeKind {
    /// Searches the lower-cased User-Agent with `pattern`.
    UserAgent {
        pattern: Pattern,
        branches: Branches,
    },
    /// Tests the decoded request path.
    Path { test: PathTest, branches: Branches },
    /// The end of a walk.
    Backend(Backend),
}

#[derive(Debug, Clone)]
pub(super) enum PathTest {
    Prefix(Box<[u8]>),
    Regex(Pattern),
    /// A regex whose first capture group becomes the upstream path.
    RegexRewrite(Pattern),
}

/// Where to go next; `None` means the step answers 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Branches {
    pub(super) succ: Option<NodeIndex>,
    pub(super) fail: Option<NodeIndex>,
}

#[derive(Debug, Clone)]
pub(super) struct Backend {
    pub(super) servername: Box<str>,
    pub(super) headers: Box<[(HeaderName, HeaderValue)]>,
}

impl NodeKind {
    pub(super) fn branches(&self) -> Option<Branches> {
        match self {
            NodeKind::UserAgent { branches, .. } | NodeKind::Path { branches, .. } => {
                Some(*branches)
            }
            NodeKind::Backend(_) => None,
        }
    }
}
