use std::time::Duration;

use serde_json::json;

use crate::upstream::{ServerParams, parse_params};

#[test]
fn nginx_string_is_canonical() {
    assert_eq!(
        ServerParams::default().to_nginx_string(),
        "weight=1 max_fails=1 fail_timeout=10s"
    );
    let params = parse_params("backup max_fails=2 weight=10").unwrap();
    assert_eq!(
        params.to_nginx_string(),
        "weight=10 max_fails=2 fail_timeout=10s backup"
    );
    let params = parse_params("down fail_timeout=1m backup").unwrap();
    assert_eq!(
        params.to_nginx_string(),
        "weight=1 max_fails=1 fail_timeout=60s backup down"
    );
}

#[test]
fn nginx_string_uses_ms_only_for_fractional_seconds() {
    for (text, canonical) in [
        ("500ms", "500ms"),
        ("1500ms", "1500ms"),
        ("2000ms", "2s"),
        ("1s500ms", "1500ms"),
        ("0", "0s"),
    ] {
        let params = parse_params(&format!("fail_timeout={text}")).unwrap();
        assert_eq!(
            params.to_nginx_string(),
            format!("weight=1 max_fails=1 fail_timeout={canonical}")
        );
    }
}

#[test]
fn nginx_string_round_trips_the_examples() {
    for text in [
        "",
        "max_fails=2 weight=10",
        "weight=3 fail_timeout=5s backup",
        "down",
        "fail_timeout=500ms max_fails=0",
        "fail_timeout=1h30m down backup",
    ] {
        let params = parse_params(text).unwrap();
        assert_eq!(
            parse_params(&params.to_nginx_string()),
            Ok(params),
            "{text}"
        );
    }
}

#[test]
fn json_matches_the_readme_get_example() {
    let upstream1 = parse_params("").unwrap().to_json("127.0.0.1:8089");
    assert_eq!(
        upstream1,
        json!({"addr": "127.0.0.1:8089", "fail_timeout": 10, "max_fails": 1,
               "name": "127.0.0.1:8089", "weight": 1})
    );
    let upstream2 = parse_params("max_fails=2 weight=10")
        .unwrap()
        .to_json("127.0.0.1:8089");
    assert_eq!(
        upstream2,
        json!({"addr": "127.0.0.1:8089", "fail_timeout": 10, "max_fails": 2,
               "name": "127.0.0.1:8089", "weight": 10})
    );
    // The integer must stay an integer in the text, as the old ELB printed it.
    assert!(upstream2.to_string().contains("\"fail_timeout\":10,"));
}

#[test]
fn json_adds_flags_only_when_set() {
    let params = parse_params("weight=3 fail_timeout=5s backup").unwrap();
    assert_eq!(
        params.to_json("localhost:8088"),
        json!({"name": "localhost:8088", "addr": "localhost:8088", "weight": 3,
               "max_fails": 1, "fail_timeout": 5, "backup": true})
    );
    let params = parse_params("down").unwrap();
    assert_eq!(
        params.to_json("[::1]:80"),
        json!({"name": "[::1]:80", "addr": "[::1]:80", "weight": 1,
               "max_fails": 1, "fail_timeout": 10, "down": true})
    );
}

#[test]
fn json_fail_timeout_is_a_float_when_fractional() {
    let params = ServerParams {
        fail_timeout: Duration::from_millis(1500),
        ..ServerParams::default()
    };
    let value = params.to_json("a:1");
    assert_eq!(value["fail_timeout"], json!(1.5));
    assert!(value["fail_timeout"].is_f64());
    let params = parse_params("fail_timeout=500ms").unwrap();
    assert_eq!(params.to_json("a:1")["fail_timeout"], json!(0.5));
    let params = parse_params("fail_timeout=0").unwrap();
    assert!(params.to_json("a:1")["fail_timeout"].is_u64());
}
