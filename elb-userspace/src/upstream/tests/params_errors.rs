use crate::upstream::{ParamsError, parse_params};

fn message(text: &str) -> String {
    match parse_params(text) {
        Ok(params) => panic!("{text:?} parsed as {params:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn unknown_parameters() {
    for token in [
        "max_conn=1",
        "slow_start=10s",
        "foo",
        "Weight=2",
        "TLS",
        "http2",
        "=5",
        "resolve",
    ] {
        assert_eq!(
            parse_params(&format!("weight=2 {token}")),
            Err(ParamsError::UnknownParameter {
                token: token.into()
            })
        );
    }
    assert_eq!(
        message("slow_start=10s"),
        "unknown server parameter \"slow_start=10s\" (supported: weight=N, max_fails=N, \
         fail_timeout=TIME, backup, down, zone=NAME, max_conns=N, tls, h2)"
    );
}

#[test]
fn missing_values() {
    for token in ["weight=", "max_fails=", "fail_timeout=", "weight"] {
        assert_eq!(
            parse_params(token),
            Err(ParamsError::MissingValue {
                token: token.into()
            })
        );
    }
    assert_eq!(
        message("weight="),
        "server parameter \"weight=\" has no value after '='"
    );
}

#[test]
fn bad_numbers() {
    for (token, value) in [
        ("weight=x", "x"),
        ("weight=-1", "-1"),
        ("weight=+1", "+1"),
        ("weight=1.5", "1.5"),
        ("max_fails=2x", "2x"),
        ("weight==1", "=1"),
    ] {
        assert_eq!(
            parse_params(token),
            Err(ParamsError::BadNumber {
                token: token.into(),
                value: value.into()
            })
        );
    }
    assert_eq!(
        message("max_fails=two"),
        "server parameter \"max_fails=two\": \"two\" is not a whole number"
    );
}

#[test]
fn zero_weight() {
    for token in ["weight=0", "weight=000"] {
        assert_eq!(
            parse_params(token),
            Err(ParamsError::ZeroWeight {
                token: token.into()
            })
        );
    }
    assert_eq!(
        message("weight=0"),
        "server parameter \"weight=0\": weight must be at least 1"
    );
}

#[test]
fn bad_durations() {
    for value in [
        "s", "10x", "1.5s", "-1s", "10ss", "1s1m", "1m1m", "1mss", "10S", "5ms1s", "1s30",
    ] {
        let token = format!("fail_timeout={value}");
        assert_eq!(
            parse_params(&token),
            Err(ParamsError::BadDuration {
                token: token.clone(),
                value: value.into()
            }),
            "{value}"
        );
    }
    assert_eq!(
        message("fail_timeout=5x"),
        "server parameter \"fail_timeout=5x\": \"5x\" is not a duration \
         (examples: 10, 10s, 500ms, 1m, 1h30m)"
    );
}

#[test]
fn overflows() {
    for (token, value, limit) in [
        ("weight=4294967296", "4294967296", "4294967295"),
        (
            "max_fails=99999999999999999999",
            "99999999999999999999",
            "4294967295",
        ),
        ("fail_timeout=2147483648", "2147483648", "2147483647s"),
        (
            "fail_timeout=2147483647001ms",
            "2147483647001ms",
            "2147483647s",
        ),
        ("fail_timeout=69y", "69y", "2147483647s"),
        (
            "fail_timeout=99999999999999999999999s",
            "99999999999999999999999s",
            "2147483647s",
        ),
        (
            "fail_timeout=18446744073709551615y",
            "18446744073709551615y",
            "2147483647s",
        ),
    ] {
        assert_eq!(
            parse_params(token),
            Err(ParamsError::Overflow {
                token: token.into(),
                value: value.into(),
                limit
            }),
            "{token}"
        );
    }
    assert_eq!(
        message("weight=4294967296"),
        "server parameter \"weight=4294967296\": \"4294967296\" is too large \
         (the limit is 4294967295)"
    );
}

#[test]
fn values_on_flags() {
    for (token, flag) in [
        ("backup=1", "backup"),
        ("down=", "down"),
        ("down=true", "down"),
        ("tls=1", "tls"),
        ("tls=on", "tls"),
        ("h2=", "h2"),
    ] {
        assert_eq!(
            parse_params(token),
            Err(ParamsError::ValueOnFlag {
                token: token.into(),
                flag
            })
        );
    }
    assert_eq!(
        message("backup=1"),
        "server parameter \"backup=1\": \"backup\" is a flag and takes no value"
    );
}

#[test]
fn duplicates() {
    for (text, token, name) in [
        ("weight=1 weight=2", "weight=2", "weight"),
        ("max_fails=1 max_fails=1", "max_fails=1", "max_fails"),
        (
            "fail_timeout=1 fail_timeout=2s",
            "fail_timeout=2s",
            "fail_timeout",
        ),
        ("backup backup", "backup", "backup"),
        ("down weight=2 down", "down", "down"),
        ("tls h2 tls", "tls", "tls"),
        ("h2 h2", "h2", "h2"),
    ] {
        assert_eq!(
            parse_params(text),
            Err(ParamsError::Duplicate {
                token: token.into(),
                name
            }),
            "{text}"
        );
    }
    assert_eq!(
        message("weight=1 weight=2"),
        "server parameter \"weight=2\": \"weight\" is given more than once"
    );
}
