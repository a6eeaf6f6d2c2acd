use std::time::Duration;

use crate::upstream::{ServerParams, parse_params};

fn params(weight: u32, max_fails: u32, fail_timeout_ms: u64) -> ServerParams {
    ServerParams {
        weight,
        max_fails,
        fail_timeout: Duration::from_millis(fail_timeout_ms),
        backup: false,
        down: false,
        zone: None,
        max_conns: 0,
        tls: false,
        h2: false,
    }
}

#[test]
fn defaults_are_nginx_defaults() {
    assert_eq!(ServerParams::default(), params(1, 1, 10_000));
}

#[test]
fn empty_and_blank_give_defaults() {
    for text in ["", " ", "\t \n"] {
        assert_eq!(parse_params(text), Ok(ServerParams::default()), "{text:?}");
    }
}

#[test]
fn spec_and_readme_examples() {
    assert_eq!(
        parse_params("max_fails=2 weight=10"),
        Ok(params(10, 2, 10_000))
    );
    assert_eq!(
        parse_params("weight=3 fail_timeout=5s backup"),
        Ok(ServerParams {
            backup: true,
            ..params(3, 1, 5_000)
        })
    );
    assert_eq!(
        parse_params("down"),
        Ok(ServerParams {
            down: true,
            ..ServerParams::default()
        })
    );
}

#[test]
fn every_parameter_together_in_any_order_and_spacing() {
    assert_eq!(
        parse_params("  down\tfail_timeout=30s  backup max_fails=0\nweight=7 "),
        Ok(ServerParams {
            backup: true,
            down: true,
            ..params(7, 0, 30_000)
        })
    );
}

#[test]
fn max_fails_zero_is_allowed() {
    assert_eq!(parse_params("max_fails=0"), Ok(params(1, 0, 10_000)));
}

#[test]
fn numbers_up_to_u32_max_and_leading_zeros() {
    assert_eq!(
        parse_params("weight=4294967295 max_fails=4294967295"),
        Ok(params(u32::MAX, u32::MAX, 10_000))
    );
    assert_eq!(parse_params("weight=007"), Ok(params(7, 1, 10_000)));
}

#[test]
fn fail_timeout_units() {
    let cases: [(&str, u64); 17] = [
        ("10", 10_000),
        ("10s", 10_000),
        ("500ms", 500),
        ("0", 0),
        ("0s", 0),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
        ("1M", 2_592_000_000),
        ("1y", 31_536_000_000),
        ("1m30s", 90_000),
        ("1h30m", 5_400_000),
        ("1s500ms", 1_500),
        ("1m30", 90_000), // nginx: a trailing bare number is seconds
        ("1h1m1s1ms", 3_661_001),
        ("1500ms", 1_500),
    ];
    for (text, ms) in cases {
        assert_eq!(
            parse_params(&format!("fail_timeout={text}")),
            Ok(params(1, 1, ms)),
            "{text}"
        );
    }
}

#[test]
fn fail_timeout_limit_is_nginx_int32_seconds() {
    assert_eq!(
        parse_params("fail_timeout=2147483647"),
        Ok(params(1, 1, 2_147_483_647_000))
    );
    assert_eq!(
        parse_params("fail_timeout=2147483647000ms"),
        Ok(params(1, 1, 2_147_483_647_000))
    );
}

#[test]
fn zone_is_a_name_and_round_trips() {
    let parsed = parse_params("weight=2 zone=us-east-1a").expect("zone");
    assert_eq!(parsed.zone.as_deref(), Some("us-east-1a"));
    assert_eq!(parse_params(&parsed.to_nginx_string()), Ok(parsed.clone()));
    assert_eq!(parsed.to_json("a:1")["zone"], "us-east-1a");
    for bad in ["zone=", "zone", "zone=a/b", "zone=a zone=b"] {
        assert!(parse_params(bad).is_err(), "{bad}");
    }
}

#[test]
fn max_conns_as_nginx_writes_it() {
    let params = parse_params("weight=2 max_conns=100").expect("parse");
    assert_eq!(params.max_conns, 100);
    assert_eq!(
        params.to_nginx_string(),
        "weight=2 max_fails=1 fail_timeout=10s max_conns=100"
    );
    assert_eq!(params.to_json("a:1")["max_conns"], 100);
    assert_eq!(parse_params(&params.to_nginx_string()), Ok(params));
    // 0, the default, leaves --max-server-connections in charge and is
    // not written out.
    let default = parse_params("max_conns=0").expect("parse");
    assert_eq!(default, ServerParams::default());
    assert!(default.to_json("a:1").get("max_conns").is_none());
    assert!(parse_params("max_conns=1 max_conns=2").is_err());
    assert!(parse_params("max_conns=-1").is_err());
    assert!(parse_params("max_conns").is_err());
}

#[test]
fn tls_and_h2_are_flags_that_round_trip() {
    let params = parse_params("weight=2 tls h2").expect("parse");
    assert!(params.tls && params.h2);
    assert_eq!(
        params.to_nginx_string(),
        "weight=2 max_fails=1 fail_timeout=10s tls h2"
    );
    assert_eq!(parse_params(&params.to_nginx_string()), Ok(params.clone()));
    let json = params.to_json("a:1");
    assert_eq!(
        (json["tls"].clone(), json["h2"].clone()),
        (true.into(), true.into())
    );
    let h2_only = parse_params("h2").expect("parse");
    assert!(h2_only.h2 && !h2_only.tls);
    // Unset flags are neither written nor listed.
    let plain = ServerParams::default();
    assert!(!plain.to_nginx_string().contains("tls"));
    assert!(plain.to_json("a:1").get("tls").is_none());
    assert!(plain.to_json("a:1").get("h2").is_none());
}
