use http::uri::PathAndQuery;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{DOMAIN, compiled, seed_document};
use crate::rules::lowercase::with_ascii_lowercase;
use crate::rules::path::rewrite_target;
use crate::rules::{CompiledRules, Decision, RuleRequest, compile, decode_path};

static PATTERNS: [&str; 6] = ["", "a", "^/(\\w+)", "(x|y)+$", "^/blog/(\\S+)$", "\\d"];

static ARG_KEYS: [&str; 7] = [
    "pattern",
    "succ",
    "fail",
    "regex",
    "rewrite",
    "servername",
    "X-Hdr",
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9()\\\\*]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// JSON shaped like a rule document, with every field sometimes wrong.
fn rule_shaped_document() -> impl Strategy<Value = Value> {
    let name = prop_oneof![Just("r0"), Just("r1"), Just("r2"), Just("r3")];
    let value = prop_oneof![
        name.clone().prop_map(Value::from),
        prop::sample::select(&PATTERNS[..]).prop_map(Value::from),
        Just(json!("(")),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!({})),
    ];
    let key = prop::sample::select(&ARG_KEYS[..]);
    let args = prop::collection::btree_map(key, value.clone(), 0..7).prop_map(|map| {
        map.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>()
    });
    let rule_type = prop_oneof![
        Just(json!("ua")),
        Just(json!("path")),
        Just(json!("backend")),
        value.clone(),
    ];
    let rule =
        (rule_type, args).prop_map(|(rule_type, args)| json!({"type": rule_type, "args": args}));
    let rules = prop::collection::btree_map(name, rule, 0..5);
    (value, rules).prop_map(|(init, rules)| {
        let rules: Map<String, Value> = rules.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        json!({"init": init, "rules": rules})
    })
}

/// A valid, acyclic document: rule `i` only points at rules after it.
fn acyclic_document() -> impl Strategy<Value = Value> {
    let rule = (
        0u8..3,
        any::<prop::sample::Index>(),
        any::<(Option<u8>, Option<u8>)>(),
        any::<bool>(),
    );
    (2usize..9, prop::collection::vec(rule, 9), any::<prop::sample::Index>()).prop_map(
        |(count, rules, init)| {
            let mut map = Map::new();
            for (index, (kind, pattern, (succ, fail), rewrite)) in rules.into_iter().take(count).enumerate() {
                let later = count - index - 1;
                let target = |pick: Option<u8>| match pick {
                    Some(pick) if later > 0 => json!(format!("r{}", index + 1 + usize::from(pick) % later)),
                    _ => Value::Null,
                };
                let pattern = pattern.get(&PATTERNS);
                let rule = match kind {
                    _ if later == 0 => json!({"type": "backend", "args": {"servername": format!("up{index}")}}),
                    0 => json!({"type": "backend", "args": {"servername": format!("up{index}"), "x-rule": index}}),
                    1 => json!({"type": "ua", "args": {"pattern": pattern, "succ": target(succ), "fail": target(fail)}}),
                    _ => json!({"type": "path", "args": {"pattern": pattern, "regex": rewrite || index % 2 == 0,
                        "rewrite": rewrite, "succ": target(succ), "fail": target(fail)}}),
                };
                map.insert(format!("r{index}"), rule);
            }
            json!({"init": format!("r{}", init.index(count)), "rules": map})
        },
    )
}

/// Checks what any decision must satisfy.
fn check_decision(rules: &CompiledRules, decision: &Decision<'_>) {
    match decision {
        Decision::Backend(choice) => {
            assert!(rules.servernames().any(|name| name == choice.servername));
            if let Some(path) = &choice.rewritten_path {
                assert!(path.starts_with('/'), "{path}");
                assert!(path.parse::<PathAndQuery>().is_ok(), "{path}");
            }
        }
        Decision::Forbidden { rule } => {
            assert!(rules.document()["rules"].get(*rule).is_some(), "{rule}");
        }
    }
}

/// Kahn's algorithm on `edges[node] = successors`: true when acyclic.
fn is_acyclic(edges: &[Vec<usize>]) -> bool {
    let mut incoming = vec![0usize; edges.len()];
    for &target in edges.iter().flatten() {
        incoming[target] += 1;
    }
    let mut ready: Vec<usize> = (0..edges.len())
        .filter(|&node| incoming[node] == 0)
        .collect();
    let mut removed = 0;
    while let Some(node) = ready.pop() {
        removed += 1;
        for &target in &edges[node] {
            incoming[target] -= 1;
            if incoming[target] == 0 {
                ready.push(target);
            }
        }
    }
    removed == edges.len()
}

proptest! {
    #[test]
    fn seed_evaluation_never_panics(
        user_agent in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        path in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let rules = compiled(&seed_document());
        let request = RuleRequest { user_agent: user_agent.as_deref(), path: &path };
        let decision = rules.evaluate(&request);
        check_decision(&rules, &decision);
        prop_assert!(matches!(decision, Decision::Backend(_)), "the seed always has both branches");
    }

    #[test]
    fn valid_documents_compile_and_always_decide(
        doc in acyclic_document(),
        user_agent in prop::option::of("[a-zA-Z0-9/ .]{0,16}"),
        path in "/[a-z0-9/%x]{0,16}",
    ) {
        let rules = compiled(&doc);
        let path = decode_path(&path);
        let request = RuleRequest { user_agent: user_agent.as_deref().map(str::as_bytes), path: &path };
        check_decision(&rules, &rules.evaluate(&request));
    }

    #[test]
    fn compile_never_panics_on_any_json(doc in any_json()) {
        let _ = compile(DOMAIN, &doc);
    }

    #[test]
    fn compile_never_panics_on_rule_shaped_json(doc in rule_shaped_document()) {
        if let Ok(rules) = compile(DOMAIN, &doc) {
            for (user_agent, path) in [(None, &b"/"[..]), (Some(&b"A1"[..]), &b"/blog/x1"[..])] {
                check_decision(&rules, &rules.evaluate(&RuleRequest { user_agent, path }));
            }
        }
    }

    #[test]
    fn exactly_the_cyclic_graphs_are_rejected(
        branches in prop::collection::vec(any::<(Option<u8>, Option<u8>)>(), 1..8),
    ) {
        let count = branches.len();
        let target = |pick: Option<u8>| pick.map(|pick| usize::from(pick) % count);
        let edges: Vec<Vec<usize>> = branches
            .iter()
            .map(|&(succ, fail)| target(succ).into_iter().chain(target(fail)).collect())
            .collect();
        let rules: Map<String, Value> = branches
            .iter()
            .enumerate()
            .map(|(index, &(succ, fail))| {
                let name = |node: Option<usize>| node.map(|node| format!("r{node}"));
                let args = json!({"pattern": "a", "succ": name(target(succ)), "fail": name(target(fail))});
                (format!("r{index}"), json!({"type": "ua", "args": args}))
            })
            .collect();
        let result = compile(DOMAIN, &json!({"init": "r0", "rules": rules}));
        match result {
            Ok(_) => prop_assert!(is_acyclic(&edges)),
            Err(error) => {
                prop_assert!(!is_acyclic(&edges));
                prop_assert!(error.problem.starts_with("the rules form a cycle"), "{}", error);
            }
        }
    }

    #[test]
    fn rewrite_targets_are_valid_paths_that_decode_back(capture in prop::collection::vec(any::<u8>(), 0..48)) {
        let target = rewrite_target(&capture);
        prop_assert!(target.parse::<PathAndQuery>().is_ok(), "{}", target);
        prop_assert!(!target.contains(['?', '#']));
        let mut expected = capture.clone();
        if expected.first() != Some(&b'/') {
            expected.insert(0, b'/');
        }
        // Percent-decoding gives the capture back byte for byte. (Not
        // `decode_path`: it also removes dot segments and empty segments
        // for rule matching, so a capture like "." or "a//b" would differ.)
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&target).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn lower_casing_matches_std(input in prop::collection::vec(any::<u8>(), 0..64)) {
        let lowered = with_ascii_lowercase(&input, <[u8]>::to_vec);
        prop_assert_eq!(lowered, input.to_ascii_lowercase());
    }
}
