use std::borrow::Cow;

use http::HeaderValue;
use http::uri::PathAndQuery;
use serde_json::{Value, json};

use super::{DOMAIN, backend, compiled, request, seed_document};
use crate::rules::lowercase::with_ascii_lowercase;
use crate::rules::{CompiledRules, Decision, RuleRequest, decode_path};

/// A one-test document: `r1` as given, succ → backend "yes", fail → backend "no".
fn single_test(rule_type: &str, mut args: Value) -> CompiledRules {
    args["succ"] = json!("yes");
    args["fail"] = json!("no");
    compiled(&json!({"init": "r1", "rules": {
        "r1": {"type": rule_type, "args": args},
        "yes": {"type": "backend", "args": {"servername": "yes"}},
        "no": {"type": "backend", "args": {"servername": "no"}},
    }}))
}

fn path_outcome(rules: &CompiledRules, path: &str) -> (String, Option<String>) {
    backend(rules.evaluate(&request(None, path)))
}

fn ua_outcome(rules: &CompiledRules, user_agent: Option<&[u8]>) -> String {
    let request = RuleRequest {
        user_agent,
        path: b"/",
    };
    backend(rules.evaluate(&request)).0
}

fn rewritten(pattern: &str, path: &[u8]) -> Option<String> {
    let rules = single_test(
        "path",
        json!({"pattern": pattern, "regex": true, "rewrite": true}),
    );
    let request = RuleRequest {
        user_agent: None,
        path,
    };
    let (servername, rewritten_path) = backend(rules.evaluate(&request));
    assert_eq!(servername, "yes", "{pattern:?} should match {path:?}");
    rewritten_path
}

#[test]
fn seed_longest_walk_reaches_upstream1_without_rewrite() {
    let rules = compiled(&seed_document());
    let decision = rules.evaluate(&request(Some("HTTPie/0.9.9"), "/blog/post"));
    assert_eq!(
        backend(decision),
        ("upstream1".to_owned(), None),
        "r1 (ua) → r4 (path) → r2"
    );
}

#[test]
fn ua_is_lower_cased_before_matching() {
    let rules = compiled(&seed_document());
    // `httpie(\S+)$` only matches because "HTTPie" is lower-cased.
    let (servername, _) = backend(rules.evaluate(&request(Some("HTTPie/0.9.9"), "/blog/x")));
    assert_eq!(servername, "upstream1");
}

#[test]
fn ua_pattern_itself_is_not_lower_cased() {
    let rules = single_test("ua", json!({"pattern": "HTTPie"}));
    assert_eq!(ua_outcome(&rules, Some(b"HTTPie/0.9.9")), "no");
    assert_eq!(ua_outcome(&rules, Some(b"httpie/0.9.9")), "no");
}

#[test]
fn ua_search_is_unanchored() {
    let rules = single_test("ua", json!({"pattern": "bot"}));
    assert_eq!(
        ua_outcome(&rules, Some(b"Mozilla/5.0 (Googlebot/2.1)")),
        "yes"
    );
}

#[test]
fn ua_non_match_goes_to_fail() {
    let rules = compiled(&seed_document());
    let (servername, _) = backend(rules.evaluate(&request(Some("curl/8.5.0"), "/blog/x")));
    assert_eq!(servername, "upstream2");
}

#[test]
fn ua_missing_goes_to_fail() {
    let rules = compiled(&seed_document());
    let (servername, _) = backend(rules.evaluate(&request(None, "/blog/x")));
    assert_eq!(servername, "upstream2");
    // Even a pattern that matches the empty string needs a header.
    let rules = single_test("ua", json!({"pattern": ""}));
    assert_eq!(ua_outcome(&rules, None), "no");
    assert_eq!(ua_outcome(&rules, Some(b"")), "yes");
}

#[test]
fn ua_matching_is_byte_oriented() {
    let rules = single_test("ua", json!({"pattern": "^agent/(\\S+)$"}));
    assert_eq!(ua_outcome(&rules, Some(b"Agent/\xff\xfe")), "yes");
    let rules = single_test("ua", json!({"pattern": "^caf\u{e9}$"}));
    assert_eq!(ua_outcome(&rules, Some("CAF\u{e9}".as_bytes())), "yes");
}

#[test]
fn ua_longer_than_the_scratch_buffer_is_lower_cased() {
    let rules = single_test("ua", json!({"pattern": "^x+end$"}));
    let user_agent = format!("{}END", "X".repeat(20_000));
    assert_eq!(ua_outcome(&rules, Some(user_agent.as_bytes())), "yes");
    // And the next request on this thread still works.
    assert_eq!(ua_outcome(&rules, Some(b"XXEND")), "yes");
    assert_eq!(ua_outcome(&rules, Some(b"YEND")), "no");
}

#[test]
fn lower_casing_is_ascii_only_and_survives_reentry() {
    let lowered = with_ascii_lowercase("ÀB-c".as_bytes(), |outer| {
        let inner = with_ascii_lowercase(b"XY", <[u8]>::to_vec);
        [outer, &inner[..]].concat()
    });
    assert_eq!(lowered, "Àb-cxy".as_bytes());
}

#[test]
fn path_prefix_is_plain_and_case_sensitive() {
    let rules = single_test("path", json!({"pattern": "/api"}));
    assert_eq!(path_outcome(&rules, "/api/users").0, "yes");
    assert_eq!(path_outcome(&rules, "/api").0, "yes");
    assert_eq!(path_outcome(&rules, "/API/users").0, "no");
    assert_eq!(path_outcome(&rules, "/ap").0, "no");
    assert_eq!(
        path_outcome(&rules, "/v1/api").0,
        "no",
        "a prefix, not a search"
    );
    // Regex syntax in a prefix is literal text.
    let rules = single_test("path", json!({"pattern": "/a.b", "regex": false}));
    assert_eq!(path_outcome(&rules, "/a.b/c").0, "yes");
    assert_eq!(path_outcome(&rules, "/axb/c").0, "no");
}

#[test]
fn empty_prefix_matches_every_path() {
    let rules = single_test("path", json!({"pattern": ""}));
    for path in ["", "/", "/anything/at/all"] {
        assert_eq!(path_outcome(&rules, path).0, "yes", "{path:?}");
    }
}

#[test]
fn path_regex_is_an_unanchored_search() {
    let rules = single_test("path", json!({"pattern": "blog", "regex": true}));
    assert_eq!(path_outcome(&rules, "/my/blog/x").0, "yes");
    let rules = single_test("path", json!({"pattern": "^blog", "regex": true}));
    assert_eq!(path_outcome(&rules, "/my/blog/x").0, "no");
}

#[test]
fn path_regex_non_match_goes_to_fail() {
    let rules = compiled(&seed_document());
    let (servername, rewritten_path) =
        backend(rules.evaluate(&request(Some("httpie/1.0"), "/about")));
    assert_eq!(
        servername, "upstream2",
        "the old ELB wrongly sent this to succ"
    );
    assert_eq!(rewritten_path, None);
}

#[test]
fn rewrite_uses_first_capture_group() {
    assert_eq!(
        rewritten("^/blog/(\\S+)$", b"/blog/a/b").as_deref(),
        Some("/a/b")
    );
    // The seed's escaped slashes work in the regex crate too.
    assert_eq!(
        rewritten("^\\/blog\\/(\\S+)$", b"/blog/a/b").as_deref(),
        Some("/a/b")
    );
    // Only the first group counts.
    assert_eq!(
        rewritten("^/(\\w+)/(\\w+)$", b"/first/second").as_deref(),
        Some("/first")
    );
}

#[test]
fn rewrite_without_a_group_goes_to_root() {
    assert_eq!(rewritten("^/old", b"/old/page").as_deref(), Some("/"));
}

#[test]
fn rewrite_with_a_group_that_did_not_take_part_goes_to_root() {
    assert_eq!(rewritten("^/x(/y)?", b"/x").as_deref(), Some("/"));
    assert_eq!(rewritten("^/x/(.*)$", b"/x/").as_deref(), Some("/"));
}

#[test]
fn rewrite_adds_a_leading_slash_only_when_missing() {
    assert_eq!(rewritten("^/blog/(.+)$", b"/blog/a").as_deref(), Some("/a"));
    assert_eq!(rewritten("^/blog(/.+)$", b"/blog/a").as_deref(), Some("/a"));
}

#[test]
fn rewrite_percent_encodes_the_new_path() {
    let target = rewritten("^/files/(.*)$", b"/files/a b?c%d#e/\xff/caf\xc3\xa9");
    assert_eq!(target.as_deref(), Some("/a%20b%3Fc%25d%23e/%FF/caf%C3%A9"));
    let target = target.unwrap_or_default();
    assert!(target.parse::<PathAndQuery>().is_ok(), "{target}");
    // Characters allowed in a path stay as they are.
    assert_eq!(
        rewritten("^/k/(.*)$", b"/k/a-b._~!$&'()*+,;=:@/x").as_deref(),
        Some("/a-b._~!$&'()*+,;=:@/x")
    );
}

#[test]
fn rewrite_seen_through_decode_path_round_trips() {
    let decoded = decode_path("/blog/%E6%97%A5%20x%2Fy");
    let target = rewritten("^/blog/(.*)$", &decoded).unwrap_or_default();
    assert_eq!(target, "/%E6%97%A5%20x/y");
    assert_eq!(decode_path(&target), "/日 x/y".as_bytes());
}

/// A captured dot segment or empty segment is forwarded as captured; only
/// rule matching sees the path normalised. (Found by the rewrite-target
/// property with the capture ".".)
#[test]
fn rewrite_keeps_dot_and_empty_segments_of_the_capture() {
    assert_eq!(rewritten("^/x/(.*)$", b"/x/.").as_deref(), Some("/."));
    assert_eq!(rewritten("^/x/(.*)$", b"/x/a//b").as_deref(), Some("/a//b"));
}

#[test]
fn last_rewrite_wins_and_later_rules_test_the_original_path() {
    let rules = compiled(&json!({"init": "strip-v1", "rules": {
        "strip-v1": {"type": "path", "args": {"pattern": "^/v1/(.*)$", "regex": true,
            "rewrite": true, "succ": "strip-api", "fail": "plain"}},
        // Matches only the ORIGINAL path, "/v1/api/...".
        "strip-api": {"type": "path", "args": {"pattern": "^/v1/api/(.*)$", "regex": true,
            "rewrite": true, "succ": "api", "fail": "v1"}},
        "api": {"type": "backend", "args": {"servername": "api"}},
        "v1": {"type": "backend", "args": {"servername": "v1"}},
        "plain": {"type": "backend", "args": {"servername": "plain"}},
    }}));
    assert_eq!(
        path_outcome(&rules, "/v1/api/users"),
        ("api".to_owned(), Some("/users".to_owned()))
    );
    // A rewrite rule that does not match leaves the earlier rewrite.
    assert_eq!(
        path_outcome(&rules, "/v1/other"),
        ("v1".to_owned(), Some("/other".to_owned()))
    );
    assert_eq!(path_outcome(&rules, "/v2"), ("plain".to_owned(), None));
}

#[test]
fn rewrite_false_keeps_the_path() {
    let rules = single_test(
        "path",
        json!({"pattern": "^/blog/(\\S+)$", "regex": true, "rewrite": false}),
    );
    assert_eq!(path_outcome(&rules, "/blog/a"), ("yes".to_owned(), None));
}

#[test]
fn backend_extra_args_become_headers() {
    let rules = compiled(&json!({"init": "b", "rules": {
        "b": {"type": "backend", "args": {
            "servername": "10.0.0.1:8080",
            "X-Path": "/static",
            "expires": 3600,
            "ratio": 1.5,
            "cache": true,
            "legacy": false,
        }},
    }}));
    let Decision::Backend(choice) = rules.evaluate(&request(None, "/")) else {
        panic!("expected a backend");
    };
    assert_eq!(choice.servername, "10.0.0.1:8080");
    let header = |name: &str| {
        choice
            .headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(choice.headers.len(), 5, "servername is not a header");
    assert_eq!(header("x-path"), Some(HeaderValue::from_static("/static")));
    assert_eq!(header("expires"), Some(HeaderValue::from_static("3600")));
    assert_eq!(header("ratio"), Some(HeaderValue::from_static("1.5")));
    assert_eq!(header("cache"), Some(HeaderValue::from_static("true")));
    assert_eq!(header("legacy"), Some(HeaderValue::from_static("false")));
}

#[test]
fn absent_succ_answers_403() {
    let rules = compiled(&json!({"init": "r1", "rules": {
        "r1": {"type": "ua", "args": {"pattern": "httpie", "fail": "r2"}},
        "r2": {"type": "backend", "args": {"servername": "up"}},
    }}));
    assert_eq!(
        rules.evaluate(&request(Some("HTTPie/1"), "/")),
        Decision::Forbidden { rule: "r1" }
    );
    assert_eq!(backend(rules.evaluate(&request(Some("curl"), "/"))).0, "up");
}

#[test]
fn absent_fail_answers_403() {
    let rules = compiled(&json!({"init": "r1", "rules": {
        "r1": {"type": "ua", "args": {"pattern": "httpie", "succ": "r2"}},
        "r2": {"type": "path", "args": {"pattern": "/ok", "succ": "r3"}},
        "r3": {"type": "backend", "args": {"servername": "up"}},
    }}));
    assert_eq!(
        rules.evaluate(&request(Some("curl"), "/ok")),
        Decision::Forbidden { rule: "r1" }
    );
    assert_eq!(
        rules.evaluate(&request(Some("httpie"), "/nope")),
        Decision::Forbidden { rule: "r2" }
    );
    assert_eq!(
        backend(rules.evaluate(&request(Some("httpie"), "/ok"))).0,
        "up"
    );
}

#[test]
fn null_branch_counts_as_absent() {
    let rules = compiled(&json!({"init": "r1", "rules": {
        "r1": {"type": "path", "args": {"pattern": "/", "succ": "r2", "fail": null}},
        "r2": {"type": "backend", "args": {"servername": "up"}},
    }}));
    assert_eq!(
        rules.evaluate(&request(None, "x")),
        Decision::Forbidden { rule: "r1" }
    );
}

#[test]
fn init_may_be_a_backend_and_unreachable_rules_are_allowed() {
    let rules = compiled(&json!({"init": "only", "rules": {
        "only": {"type": "backend", "args": {"servername": "up"}},
        "unused": {"type": "ua", "args": {"pattern": "x", "succ": "only"}},
    }}));
    assert_eq!(path_outcome(&rules, "/"), ("up".to_owned(), None));
}

#[test]
fn decode_path_decodes_percent_escapes_only() {
    assert!(matches!(
        decode_path("/plain/path"),
        Cow::Borrowed(b"/plain/path")
    ));
    assert_eq!(decode_path("/a%20b%2Fc"), b"/a b/c".as_slice());
    assert_eq!(decode_path("/%ff%FE"), b"/\xff\xfe".as_slice());
    assert_eq!(
        decode_path("/a+b"),
        b"/a+b".as_slice(),
        "+ is not a space in paths"
    );
    assert_eq!(decode_path("/bad%zz%4"), b"/bad%zz%4".as_slice());
    assert_eq!(decode_path("/pct%25"), b"/pct%".as_slice());
}

#[test]
fn accessors_expose_the_original_document() {
    let document = seed_document();
    let rules = compiled(&document);
    assert_eq!(rules.domain(), DOMAIN);
    assert_eq!(rules.document(), &document);
    let mut servernames: Vec<&str> = rules.servernames().collect();
    servernames.sort_unstable();
    assert_eq!(servernames, ["upstream1", "upstream2"]);
}

#[test]
fn compiled_rules_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledRules>();
}

#[test]
fn decode_path_resolves_dot_segments_and_merges_slashes_like_nginx() {
    for (raw, want) in [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/../../x", "/x"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a//", "/a/"),
        ("/..", "/"),
        ("/a/.hidden/..b", "/a/.hidden/..b"),
    ] {
        assert_eq!(decode_path(raw), want.as_bytes(), "{raw}");
    }
    assert!(matches!(decode_path("/plain/.file"), Cow::Borrowed(_)));
}

#[test]
fn a_prefix_rule_cannot_be_sidestepped_with_dot_segments() {
    let rules = crate::rules::compile(
        "example.com",
        &serde_json::json!({"init": "p", "rules": {
            "p": {"type": "path", "args": {"pattern": "/admin", "succ": "deny", "fail": "ok"}},
            "deny": {"type": "backend", "args": {"servername": "deny"}},
            "ok": {"type": "backend", "args": {"servername": "ok"}}}}),
    )
    .expect("valid");
    let path = decode_path("/public/../admin/users");
    let decision = rules.evaluate(&RuleRequest {
        user_agent: None,
        path: &path,
    });
    assert!(matches!(decision, Decision::Backend(choice) if choice.servername == "deny"));
}
