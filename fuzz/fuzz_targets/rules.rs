//! Rule documents: parse, compile, evaluate.
//!
//! Input: `document \0 path \0 user-agent` (the request part optional).
//! Properties:
//! - compile never panics; an error names the domain;
//! - a compiled document is the one given, and compiles again from its
//!   stored text (what the admin API writes is what the store reads);
//! - evaluation ends, picks a servername the document names or a rule that
//!   exists, and a rewritten path is a valid URI path starting with `/`;
//! - backend headers are lower-case and none that the proxy owns.
#![no_main]

use elb_fuzz::split_nul;
use elb_userspace::rules::{self, Decision, RuleRequest};
use libfuzzer_sys::fuzz_target;

const DOMAIN: &str = "fuzz.test";

fuzz_target!(|data: &[u8]| {
    let (doc, request) = split_nul(data);
    let (path, user_agent) = split_nul(request);
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return;
    };
    let compiled = match rules::compile(DOMAIN, &doc) {
        Ok(compiled) => compiled,
        Err(err) => {
            assert_eq!(err.domain, DOMAIN);
            assert!(err.to_string().contains(DOMAIN), "{err}");
            return;
        }
    };
    assert_eq!(compiled.document(), &doc);
    assert_eq!(compiled.domain(), DOMAIN);

    let stored = doc.to_string();
    let reread: serde_json::Value =
        serde_json::from_str(&stored).expect("a document serde_json wrote parses back");
    assert_eq!(reread, doc, "the stored text is the same document");
    let again = rules::compile(DOMAIN, &reread).expect("the stored document compiles again");
    assert!(compiled.servernames().eq(again.servernames()));

    let rule_names: Vec<&str> = doc["rules"]
        .as_object()
        .expect("a compiled document has a rules object")
        .keys()
        .map(String::as_str)
        .collect();
    let request = RuleRequest {
        user_agent: (!user_agent.is_empty()).then_some(user_agent),
        path,
    };
    match compiled.evaluate(&request) {
        Decision::Backend(choice) => {
            assert!(
                compiled.servernames().any(|s| s == choice.servername),
                "{:?} is not a servername of the document",
                choice.servername
            );
            if let Some(rewritten) = &choice.rewritten_path {
                assert!(rewritten.starts_with('/'), "{rewritten:?}");
                let parsed = http::uri::PathAndQuery::try_from(rewritten.as_str())
                    .expect("a rewritten path is a valid URI path");
                assert_eq!(
                    parsed.path(),
                    rewritten,
                    "no '?' or '#' leaks into the path"
                );
            }
            for (name, _) in choice.headers {
                assert_eq!(name.as_str(), name.as_str().to_ascii_lowercase());
                assert!(
                    !matches!(
                        name.as_str(),
                        "connection" | "content-length" | "transfer-encoding" | "upgrade" | "te"
                    ),
                    "a backend rule sets {name}"
                );
            }
        }
        Decision::Forbidden { rule } => {
            assert!(rule_names.contains(&rule), "{rule:?} is not a rule");
        }
    }
    // Evaluation reads only: the same request gets the same answer.
    assert_eq!(compiled.evaluate(&request), compiled.evaluate(&request));
});
