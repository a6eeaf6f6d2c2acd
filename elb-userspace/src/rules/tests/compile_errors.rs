use serde_json::{Value, json};

use super::{DOMAIN, seed_document};
use crate::rules::{RuleError, compile};

fn error_of(doc: &Value) -> RuleError {
    match compile(DOMAIN, doc) {
        Ok(_) => panic!("document should be rejected: {doc}"),
        Err(error) => error,
    }
}

/// Checks the full `Display` text: domain, optional rule, problem.
fn assert_rejected(doc: &Value, expected: &str) {
    assert_eq!(error_of(doc).to_string(), expected, "for {doc}");
}

/// Checks the rule and the start of the problem (for messages that embed
/// text from another crate).
fn assert_rejected_starting(doc: &Value, rule: &str, problem_start: &str) {
    let error = error_of(doc);
    assert_eq!(error.domain, DOMAIN);
    assert_eq!(error.rule.as_deref(), Some(rule), "{error}");
    assert!(
        error.problem.starts_with(problem_start),
        "{:?} should start with {problem_start:?}",
        error.problem
    );
}

/// The seed document with `rule` replaced.
fn seed_with(rule: &str, replacement: Value) -> Value {
    let mut doc = seed_document();
    doc["rules"][rule] = replacement;
    doc
}

/// A document whose init is the single rule `r1`.
fn single_rule(rule: Value) -> Value {
    json!({"init": "r1", "rules": {"r1": rule, "up": {"type": "backend", "args": {"servername": "up"}}}})
}

#[test]
fn the_seed_document_compiles() {
    assert!(compile(DOMAIN, &seed_document()).is_ok());
}

#[test]
fn error_fields_are_public_and_match_display() {
    let error = error_of(&seed_with("r2", json!({"type": "foo", "args": {}})));
    assert_eq!(
        error,
        RuleError {
            domain: DOMAIN.to_owned(),
            rule: Some("r2".to_owned()),
            problem: r#"unknown type "foo""#.to_owned(),
        }
    );
    assert_eq!(
        error.to_string(),
        r#"domain "example.com", rule "r2": unknown type "foo""#
    );
}

#[test]
fn document_must_be_an_object() {
    assert_rejected(
        &json!(["r1"]),
        r#"domain "example.com": the rule document must be a JSON object, got an array"#,
    );
    assert_rejected(
        &json!(null),
        r#"domain "example.com": the rule document must be a JSON object, got null"#,
    );
}

#[test]
fn init_must_be_present_and_a_string() {
    let mut doc = seed_document();
    doc.as_object_mut().map(|doc| doc.remove("init"));
    assert_rejected(&doc, r#"domain "example.com": "init" is missing"#);
    doc["init"] = json!(1);
    assert_rejected(
        &doc,
        r#"domain "example.com": "init" must be a string naming a rule, got a number"#,
    );
}

#[test]
fn init_must_name_an_existing_rule() {
    let mut doc = seed_document();
    doc["init"] = json!("r9");
    assert_rejected(
        &doc,
        r#"domain "example.com": "init" names rule "r9", which does not exist"#,
    );
}

#[test]
fn rules_must_be_present_and_an_object() {
    assert_rejected(
        &json!({"init": "r1"}),
        r#"domain "example.com": "rules" is missing"#,
    );
    assert_rejected(
        &json!({"init": "r1", "rules": [{"type": "ua"}]}),
        r#"domain "example.com": "rules" must be a JSON object of named rules, got an array"#,
    );
}

#[test]
fn a_rule_must_be_an_object() {
    assert_rejected(
        &seed_with("r3", json!("upstream2")),
        r#"domain "example.com", rule "r3": a rule must be a JSON object, got a string"#,
    );
}

#[test]
fn a_rule_needs_a_string_type() {
    assert_rejected(
        &seed_with("r3", json!({"args": {"servername": "x"}})),
        r#"domain "example.com", rule "r3": "type" is missing"#,
    );
    assert_rejected(
        &seed_with(
            "r3",
            json!({"type": ["backend"], "args": {"servername": "x"}}),
        ),
        r#"domain "example.com", rule "r3": "type" must be a string, got an array"#,
    );
}

#[test]
fn a_rule_needs_an_args_object() {
    assert_rejected(
        &seed_with("r3", json!({"type": "backend"})),
        r#"domain "example.com", rule "r3": "args" is missing"#,
    );
    assert_rejected(
        &seed_with("r3", json!({"type": "backend", "args": "upstream2"})),
        r#"domain "example.com", rule "r3": "args" must be a JSON object, got a string"#,
    );
}

#[test]
fn unknown_type_is_rejected() {
    assert_rejected(
        &seed_with("r1", json!({"type": "foo", "args": {}})),
        r#"domain "example.com", rule "r1": unknown type "foo""#,
    );
    // Type names are exact.
    assert_rejected(
        &seed_with(
            "r2",
            json!({"type": "Backend", "args": {"servername": "x"}}),
        ),
        r#"domain "example.com", rule "r2": unknown type "Backend""#,
    );
}

#[test]
fn dangling_succ_is_rejected() {
    let mut doc = seed_document();
    doc["rules"]["r4"]["args"]["succ"] = json!("r7");
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r4": "succ" names rule "r7", which does not exist"#,
    );
}

#[test]
fn dangling_fail_is_rejected() {
    let mut doc = seed_document();
    doc["rules"]["r1"]["args"]["fail"] = json!("nope");
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r1": "fail" names rule "nope", which does not exist"#,
    );
}

#[test]
fn dangling_reference_from_an_unreachable_rule_is_rejected() {
    let doc = seed_with(
        "r5",
        json!({"type": "ua", "args": {"pattern": "x", "succ": "ghost"}}),
    );
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r5": "succ" names rule "ghost", which does not exist"#,
    );
}

#[test]
fn branch_must_be_a_string() {
    let mut doc = seed_document();
    doc["rules"]["r1"]["args"]["succ"] = json!(4);
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r1": "succ" must be a string naming a rule, got a number"#,
    );
}

#[test]
fn self_loop_is_a_cycle() {
    let doc =
        single_rule(json!({"type": "path", "args": {"pattern": "/", "succ": "up", "fail": "r1"}}));
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r1": the rules form a cycle: "r1" -> "r1""#,
    );
}

#[test]
fn longer_cycle_is_rejected() {
    let mut doc = seed_document();
    doc["rules"]["r4"]["args"]["fail"] = json!("r1");
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r1": the rules form a cycle: "r1" -> "r4" -> "r1""#,
    );
}

#[test]
fn cycle_unreachable_from_init_is_rejected() {
    let doc = json!({"init": "entry", "rules": {
        "entry": {"type": "backend", "args": {"servername": "up"}},
        "a": {"type": "ua", "args": {"pattern": "x", "succ": "b"}},
        "b": {"type": "path", "args": {"pattern": "/", "fail": "c"}},
        "c": {"type": "ua", "args": {"pattern": "y", "succ": "entry", "fail": "a"}},
    }});
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "a": the rules form a cycle: "a" -> "b" -> "c" -> "a""#,
    );
}

#[test]
fn invalid_ua_regex_is_rejected() {
    let doc = seed_with(
        "r1",
        json!({"type": "ua", "args": {"pattern": "httpie(", "succ": "r4", "fail": "r3"}}),
    );
    assert_rejected_starting(&doc, "r1", r#""pattern" is not a valid regex: "#);
    assert!(error_of(&doc).problem.contains("unclosed group"));
}

#[test]
fn invalid_path_regex_is_rejected_but_a_prefix_is_not_a_regex() {
    let rule = |regex: bool| {
        single_rule(
            json!({"type": "path", "args": {"pattern": "/a[", "regex": regex, "succ": "up"}}),
        )
    };
    assert_rejected_starting(&rule(true), "r1", r#""pattern" is not a valid regex: "#);
    assert!(compile(DOMAIN, &rule(false)).is_ok());
}

#[test]
fn huge_regex_is_rejected() {
    let doc =
        single_rule(json!({"type": "ua", "args": {"pattern": "(?u)\\w{100}{100}", "succ": "up"}}));
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r1": "pattern" is too large: compiled, it would exceed 1048576 bytes"#,
    );
}

#[test]
fn pattern_must_be_present_and_a_string() {
    for rule_type in ["ua", "path"] {
        assert_rejected(
            &single_rule(json!({"type": rule_type, "args": {"succ": "up"}})),
            r#"domain "example.com", rule "r1": "pattern" is missing"#,
        );
        assert_rejected(
            &single_rule(json!({"type": rule_type, "args": {"pattern": null, "succ": "up"}})),
            r#"domain "example.com", rule "r1": "pattern" must be a string, got null"#,
        );
    }
}

#[test]
fn regex_and_rewrite_must_be_booleans() {
    assert_rejected(
        &single_rule(json!({"type": "path", "args": {"pattern": "/", "regex": "true"}})),
        r#"domain "example.com", rule "r1": "regex" must be true or false, got a string"#,
    );
    assert_rejected(
        &single_rule(
            json!({"type": "path", "args": {"pattern": "/", "regex": true, "rewrite": 1}}),
        ),
        r#"domain "example.com", rule "r1": "rewrite" must be true or false, got a number"#,
    );
}

#[test]
fn rewrite_needs_regex() {
    let expected = r#"domain "example.com", rule "r1": "rewrite": true needs "regex": true (the rewrite uses the regex's first capture group)"#;
    assert_rejected(
        &single_rule(json!({"type": "path", "args": {"pattern": "/blog/", "rewrite": true}})),
        expected,
    );
    assert_rejected(
        &single_rule(
            json!({"type": "path", "args": {"pattern": "/blog/", "regex": false, "rewrite": true}}),
        ),
        expected,
    );
}

#[test]
fn backend_needs_a_non_empty_string_servername() {
    assert_rejected(
        &seed_with("r2", json!({"type": "backend", "args": {}})),
        r#"domain "example.com", rule "r2": "servername" is missing"#,
    );
    assert_rejected(
        &seed_with("r2", json!({"type": "backend", "args": {"servername": ""}})),
        r#"domain "example.com", rule "r2": "servername" must not be empty"#,
    );
    assert_rejected(
        &seed_with(
            "r2",
            json!({"type": "backend", "args": {"servername": 8080}}),
        ),
        r#"domain "example.com", rule "r2": "servername" must be a non-empty string, got a number"#,
    );
}

#[test]
fn backend_header_values_must_be_scalars() {
    for (value, described) in [
        (json!(null), "null"),
        (json!({"a": 1}), "an object"),
        (json!(["a"]), "an array"),
    ] {
        let doc = seed_with(
            "r2",
            json!({"type": "backend", "args": {"servername": "up", "expires": value}}),
        );
        assert_rejected(
            &doc,
            &format!(
                r#"domain "example.com", rule "r2": header "expires" must be a string, number or boolean, got {described}"#
            ),
        );
    }
}

#[test]
fn backend_header_name_must_be_valid() {
    let doc = seed_with(
        "r2",
        json!({"type": "backend", "args": {"servername": "up", "bad header": "x"}}),
    );
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r2": "bad header" is not a valid HTTP header name (every arg but "servername" becomes a request header)"#,
    );
}

#[test]
fn backend_header_value_must_be_valid() {
    let doc = seed_with(
        "r2",
        json!({"type": "backend", "args": {"servername": "up", "x-a": "a\r\nInjected: 1"}}),
    );
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r2": header "x-a" has value "a\r\nInjected: 1", which is not a valid HTTP header value"#,
    );
}

#[test]
fn backend_header_given_twice_is_rejected() {
    let doc = seed_with(
        "r2",
        json!({"type": "backend", "args": {"servername": "up", "X-A": "1", "x-a": "2"}}),
    );
    assert_rejected(
        &doc,
        r#"domain "example.com", rule "r2": header "x-a" is given twice (header names ignore case)"#,
    );
}

#[test]
fn backend_may_not_set_framing_headers() {
    for name in ["Content-Length", "transfer-encoding", "Connection"] {
        let doc = seed_with(
            "r2",
            json!({"type": "backend", "args": {"servername": "up", name: "0"}}),
        );
        assert_rejected(
            &doc,
            &format!(
                r#"domain "example.com", rule "r2": header "{}" cannot be set by a rule: the proxy manages it"#,
                name.to_ascii_lowercase()
            ),
        );
    }
}

#[test]
fn unused_args_are_ignored_for_old_documents() {
    let doc = single_rule(json!({"type": "ua", "args": {
        "pattern": "x", "succ": "up", "regex": "ignored", "note": {"any": "thing"}}}));
    assert!(compile(DOMAIN, &doc).is_ok());
}

#[test]
fn domain_and_rule_names_are_quoted_safely() {
    let error = match compile(
        "evil\"\n.com",
        &json!({"init": "x\"y", "rules": {
        "x\"y": {"type": "nope", "args": {}}}}),
    ) {
        Ok(_) => panic!("should be rejected"),
        Err(error) => error,
    };
    assert_eq!(
        error.to_string(),
        r#"domain "evil\"\n.com", rule "x\"y": unknown type "nope""#
    );
}
