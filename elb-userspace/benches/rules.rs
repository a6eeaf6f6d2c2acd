//! Rule evaluation cost on the spec's seed document. Target: ≤ 1 µs.
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use elb_userspace::rules::{CompiledRules, Decision, RuleRequest, compile};
use serde_json::json;

fn seed_rules() -> CompiledRules {
    let doc = json!({"init": "r1",
     "rules": {
       "r1": {"type": "ua",      "args": {"pattern": "httpie(\\S+)$", "succ": "r4", "fail": "r3"}},
       "r2": {"type": "backend", "args": {"servername": "upstream1"}},
       "r3": {"type": "backend", "args": {"servername": "upstream2"}},
       "r4": {"type": "path",    "args": {"regex": true, "pattern": "^\\/blog\\/(\\S+)$",
                                          "succ": "r2", "fail": "r3", "rewrite": false}}}});
    match compile("example.com", &doc) {
        Ok(rules) => rules,
        Err(error) => panic!("the seed document must compile: {error}"),
    }
}

fn servername(decision: Decision<'_>) -> &str {
    match decision {
        Decision::Backend(choice) => choice.servername,
        Decision::Forbidden { rule } => rule,
    }
}

fn evaluate_seed(c: &mut Criterion) {
    let rules = seed_rules();
    // ua match → path regex match → backend: the longest walk.
    let longest = RuleRequest {
        user_agent: Some(b"HTTPie/0.9.9"),
        path: b"/blog/2017/09/25/hello-world",
    };
    assert_eq!(servername(rules.evaluate(&longest)), "upstream1");
    c.bench_function("rules/seed/ua_match_path_match", |b| {
        b.iter(|| servername(black_box(&rules).evaluate(black_box(&longest))).len())
    });

    let browser = RuleRequest {
        user_agent: Some(
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
              Chrome/126.0.0.0 Safari/537.36",
        ),
        path: b"/blog/2017/09/25/hello-world",
    };
    assert_eq!(servername(rules.evaluate(&browser)), "upstream2");
    c.bench_function("rules/seed/ua_non_match", |b| {
        b.iter(|| servername(black_box(&rules).evaluate(black_box(&browser))).len())
    });
}

criterion_group!(benches, evaluate_seed);
criterion_main!(benches);
