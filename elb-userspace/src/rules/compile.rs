//! Validating a rule document and building its graph.
use std::collections::HashMap;

use http::{HeaderName, HeaderValue};

use super::pattern::Pattern;
use super::regex_cache::RegexCache;
use crate::http_util::json_kind;
use serde_json::{Map, Value};

use super::error::RuleError;
use super::graph::{Backend, Branches, CompiledRules, Node, NodeIndex, NodeKind, PathTest};

/// Headers a backend rule may not set: they govern message framing or the
/// connection, which the proxy owns; a wrong value would desynchronise the
/// upstream connection (request smuggling). `name` is lower-case.
fn is_proxy_owned(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "content-length"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Compiles `domain`'s rule document, or says what is wrong with it.
pub fn compile(domain: &str, doc: &Value) -> Result<CompiledRules, RuleError> {
    compile_cached(domain, doc, &RegexCache::default())
}

/// [`compile`], reusing regexes already compiled for other documents.
pub fn compile_cached(
    domain: &str,
    doc: &Value,
    regexes: &RegexCache,
) -> Result<CompiledRules, RuleError> {
    let document_error = |problem: String| RuleError::document(domain, problem);
    let Value::Object(top) = doc else {
        return Err(document_error(format!(
            "the rule document must be a JSON object, got {}",
            json_kind(doc)
        )));
    };
    let init = match top.get("init") {
        Some(Value::String(init)) => init,
        None => return Err(document_error(r#""init" is missing"#.to_owned())),
        Some(other) => {
            return Err(document_error(format!(
                r#""init" must be a string naming a rule, got {}"#,
                json_kind(other)
            )));
        }
    };
    let rules = match top.get("rules") {
        Some(Value::Object(rules)) => rules,
        None => return Err(document_error(r#""rules" is missing"#.to_owned())),
        Some(other) => {
            return Err(document_error(format!(
                r#""rules" must be a JSON object of named rules, got {}"#,
                json_kind(other)
            )));
        }
    };

    // Number the rules first so references compile to indices.
    let index_of: HashMap<&str, NodeIndex> = rules
        .keys()
        .enumerate()
        .map(|(index, name)| (name.as_str(), index))
        .collect();
    let Some(&init_index) = index_of.get(init.as_str()) else {
        return Err(document_error(format!(
            r#""init" names rule {init:?}, which does not exist"#
        )));
    };
    let nodes = rules
        .iter()
        .map(|(name, rule)| compile_rule(domain, &index_of, regexes, name, rule))
        .collect::<Result<Box<[Node]>, _>>()?;
    if let Some(cycle) = find_cycle(&nodes) {
        let names: Vec<String> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&index| format!("{:?}", nodes[index].name))
            .collect();
        return Err(RuleError::rule(
            domain,
            &nodes[cycle[0]].name,
            format!("the rules form a cycle: {}", names.join(" -> ")),
        ));
    }

    let has_user_agent_rules = nodes
        .iter()
        .any(|node| matches!(node.kind, NodeKind::UserAgent { .. }));
    Ok(CompiledRules {
        domain: domain.to_owned(),
        document: doc.clone(),
        nodes,
        init: init_index,
        has_user_agent_rules,
    })
}

enum RuleType {
    UserAgent,
    Path,
    Backend,
}

fn compile_rule(
    domain: &str,
    index_of: &HashMap<&str, NodeIndex>,
    regexes: &RegexCache,
    name: &str,
    rule: &Value,
) -> Result<Node, RuleError> {
    let rule_error = |problem: String| RuleError::rule(domain, name, problem);
    let Value::Object(rule) = rule else {
        return Err(rule_error(format!(
            "a rule must be a JSON object, got {}",
            json_kind(rule)
        )));
    };
    let rule_type = match rule.get("type") {
        Some(Value::String(rule_type)) => match rule_type.as_str() {
            "ua" => RuleType::UserAgent,
            "path" => RuleType::Path,
            "backend" => RuleType::Backend,
            unknown => return Err(rule_error(format!("unknown type {unknown:?}"))),
        },
        None => return Err(rule_error(r#""type" is missing"#.to_owned())),
        Some(other) => {
            return Err(rule_error(format!(
                r#""type" must be a string, got {}"#,
                json_kind(other)
            )));
        }
    };
    let args = match rule.get("args") {
        Some(Value::Object(args)) => args,
        None => return Err(rule_error(r#""args" is missing"#.to_owned())),
        Some(other) => {
            return Err(rule_error(format!(
                r#""args" must be a JSON object, got {}"#,
                json_kind(other)
            )));
        }
    };
    let args = Args {
        domain,
        rule: name,
        index_of,
        regexes,
        args,
    };
    let kind = match rule_type {
        RuleType::UserAgent => NodeKind::UserAgent {
            pattern: args.regex(args.pattern()?)?,
            branches: args.branches()?,
        },
        RuleType::Path => NodeKind::Path {
            test: args.path_test()?,
            branches: args.branches()?,
        },
        RuleType::Backend => NodeKind::Backend(args.backend()?),
    };
    Ok(Node {
        name: name.into(),
        kind,
    })
}

/// One rule's `args`, with what is needed to report errors and resolve names.
struct Args<'a> {
    domain: &'a str,
    rule: &'a str,
    index_of: &'a HashMap<&'a str, NodeIndex>,
    regexes: &'a RegexCache,
    args: &'a Map<String, Value>,
}

impl Args<'_> {
    fn error(&self, problem: String) -> RuleError {
        RuleError::rule(self.domain, self.rule, problem)
    }

    fn pattern(&self) -> Result<&str, RuleError> {
        match self.args.get("pattern") {
            Some(Value::String(pattern)) => Ok(pattern),
            None => Err(self.error(r#""pattern" is missing"#.to_owned())),
            Some(other) => Err(self.error(format!(
                r#""pattern" must be a string, got {}"#,
                json_kind(other)
            ))),
        }
    }

    /// A flag that defaults to false.
    fn flag(&self, key: &str) -> Result<bool, RuleError> {
        match self.args.get(key) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(self.error(format!(
                "{key:?} must be true or false, got {}",
                json_kind(other)
            ))),
        }
    }

    fn regex(&self, pattern: &str) -> Result<Pattern, RuleError> {
        self.regexes.get_or_build(pattern, || {
            Pattern::new(pattern).map_err(|error| self.error(format!(r#""pattern" {error}"#)))
        })
    }

    fn path_test(&self) -> Result<PathTest, RuleError> {
        let pattern = self.pattern()?;
        let is_regex = self.flag("regex")?;
        let rewrite = self.flag("rewrite")?;
        match (is_regex, rewrite) {
            (false, false) => Ok(PathTest::Prefix(pattern.as_bytes().into())),
            (false, true) => Err(self.error(
                r#""rewrite": true needs "regex": true (the rewrite uses the regex's first capture group)"#
                    .to_owned(),
            )),
            (true, false) => Ok(PathTest::Regex(self.regex(pattern)?)),
            (true, true) => Ok(PathTest::RegexRewrite(self.regex(pattern)?)),
        }
    }

    fn branches(&self) -> Result<Branches, RuleError> {
        Ok(Branches {
            succ: self.branch("succ")?,
            fail: self.branch("fail")?,
        })
    }

    /// Absent or `null`: no branch (403 when taken).
    fn branch(&self, key: &str) -> Result<Option<NodeIndex>, RuleError> {
        match self.args.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(target)) => match self.index_of.get(target.as_str()) {
                Some(&index) => Ok(Some(index)),
                None => Err(self.error(format!(
                    "{key:?} names rule {target:?}, which does not exist"
                ))),
            },
            Some(other) => Err(self.error(format!(
                "{key:?} must be a string naming a rule, got {}",
                json_kind(other)
            ))),
        }
    }

    fn backend(&self) -> Result<Backend, RuleError> {
        let servername = match self.args.get("servername") {
            Some(Value::String(servername)) if !servername.is_empty() => servername,
            Some(Value::String(_)) => {
                return Err(self.error(r#""servername" must not be empty"#.to_owned()));
            }
            None => return Err(self.error(r#""servername" is missing"#.to_owned())),
            Some(other) => {
                return Err(self.error(format!(
                    r#""servername" must be a non-empty string, got {}"#,
                    json_kind(other)
                )));
            }
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (key, value) in self.args {
            if key == "servername" {
                continue;
            }
            let (name, value) = self.header(key, value)?;
            if headers.iter().any(|(existing, _)| *existing == name) {
                return Err(self.error(format!(
                    "header {:?} is given twice (header names ignore case)",
                    name.as_str()
                )));
            }
            headers.push((name, value));
        }
        Ok(Backend {
            servername: servername.as_str().into(),
            headers: headers.into(),
        })
    }

    /// An extra backend arg as a request header for the upstream.
    fn header(&self, key: &str, value: &Value) -> Result<(HeaderName, HeaderValue), RuleError> {
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            self.error(format!(
                "{key:?} is not a valid HTTP header name (every arg but \"servername\" becomes a request header)"
            ))
        })?;
        if is_proxy_owned(&name) {
            return Err(self.error(format!(
                "header {:?} cannot be set by a rule: the proxy manages it",
                name.as_str()
            )));
        }
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            other => {
                return Err(self.error(format!(
                    "header {key:?} must be a string, number or boolean, got {}",
                    json_kind(other)
                )));
            }
        };
        let value = HeaderValue::from_bytes(text.as_bytes()).map_err(|_| {
            self.error(format!(
                "header {key:?} has value {text:?}, which is not a valid HTTP header value"
            ))
        })?;
        Ok((name, value))
    }
}

/// A cycle among `nodes` (indices, in walk order), if there is one. Looks at
/// every node, not only those reachable from `init`. Iterative, so a long
/// chain of rules cannot overflow the stack.
fn find_cycle(nodes: &[Node]) -> Option<Vec<NodeIndex>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let successors = |index: NodeIndex| -> [Option<NodeIndex>; 2] {
        match nodes[index].kind.branches() {
            Some(branches) => [branches.succ, branches.fail],
            None => [None, None],
        }
    };
    let mut marks = vec![Mark::Unvisited; nodes.len()];
    // Depth-first path: (node, how many of its successors were explored).
    let mut path: Vec<(NodeIndex, usize)> = Vec::new();
    for start in 0..nodes.len() {
        if marks[start] != Mark::Unvisited {
            continue;
        }
        marks[start] = Mark::OnPath;
        path.push((start, 0));
        while let Some((node, explored)) = path.last_mut() {
            let node = *node;
            let Some(&next) = successors(node).get(*explored) else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            *explored += 1;
            let Some(next) = next else {
                continue;
            };
            match marks[next] {
                Mark::Unvisited => {
                    marks[next] = Mark::OnPath;
                    path.push((next, 0));
                }
                Mark::OnPath => {
                    let cycle_start = path.iter().position(|&(on_path, _)| on_path == next)?;
                    return Some(
                        path[cycle_start..]
                            .iter()
                            .map(|&(index, _)| index)
                            .collect(),
                    );
                }
                Mark::Done => {}
            }
        }
    }
    None
}
