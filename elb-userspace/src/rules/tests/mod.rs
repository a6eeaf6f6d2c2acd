//! Tests of the rule engine, against the spec's seed document where possible.
use serde_json::{Value, json};

use super::{CompiledRules, Decision, RuleRequest, compile};

mod compile_errors;
mod evaluation;
mod properties;

const DOMAIN: &str = "example.com";

/// The rule document from `shared/spec/eru-compat.md`.
fn seed_document() -> Value {
    json!({"init": "r1",
     "rules": {
       "r1": {"type": "ua",      "args": {"pattern": "httpie(\\S+)$", "succ": "r4", "fail": "r3"}},
       "r2": {"type": "backend", "args": {"servername": "upstream1"}},
       "r3": {"type": "backend", "args": {"servername": "upstream2"}},
       "r4": {"type": "path",    "args": {"regex": true, "pattern": "^\\/blog\\/(\\S+)$",
                                          "succ": "r2", "fail": "r3", "rewrite": false}}}})
}

fn compiled(doc: &Value) -> CompiledRules {
    match compile(DOMAIN, doc) {
        Ok(rules) => rules,
        Err(error) => panic!("document should compile: {error}"),
    }
}

fn request<'a>(user_agent: Option<&'a str>, path: &'a str) -> RuleRequest<'a> {
    RuleRequest {
        user_agent: user_agent.map(str::as_bytes),
        path: path.as_bytes(),
    }
}

/// `(servername, rewritten_path)` of a backend decision.
fn backend(decision: Decision<'_>) -> (String, Option<String>) {
    match decision {
        Decision::Backend(choice) => (choice.servername.to_owned(), choice.rewritten_path),
        Decision::Forbidden { rule } => panic!("expected a backend, got 403 at rule {rule:?}"),
    }
}
