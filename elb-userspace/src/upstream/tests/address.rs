use crate::upstream::{ParamsError, validate_server_address};

#[test]
fn accepts_ipv4_ipv6_and_dns_names() {
    for server in [
        "127.0.0.1:8088",
        "0.0.0.0:1",
        "10.0.0.255:65535",
        "[::1]:80",
        "[2001:db8::1]:443",
        "[::ffff:10.0.0.1]:8080",
        "localhost:8088",
        "my-host.example.com:80",
        "example.com.:80",
        "a:1",
        "1host:80",
        "host:080",
    ] {
        assert_eq!(validate_server_address(server), Ok(()), "{server}");
    }
    let long_label = "a".repeat(63);
    assert_eq!(
        validate_server_address(&format!("{long_label}.io:80")),
        Ok(())
    );
}

fn reason(server: &str) -> &'static str {
    match validate_server_address(server) {
        Err(ParamsError::BadAddress {
            server: named,
            reason,
        }) => {
            assert_eq!(named, server);
            reason
        }
        other => panic!("{server:?}: {other:?}"),
    }
}

#[test]
fn rejects_bad_ports() {
    for server in ["127.0.0.1", "localhost", ""] {
        assert_eq!(reason(server), "missing ':port' (expected host:port)");
    }
    assert_eq!(reason("127.0.0.1:"), "missing port after ':'");
    for server in ["a:80a", "a:+80", "a:-1", "a: 80", "[::1]:http"] {
        assert_eq!(reason(server), "the port is not a number", "{server}");
    }
    for server in ["a:0", "a:65536", "a:99999999999999999999", "[::1]:0"] {
        assert_eq!(
            reason(server),
            "the port must be between 1 and 65535",
            "{server}"
        );
    }
}

#[test]
fn rejects_bad_ipv6() {
    assert_eq!(
        reason("::1:80"),
        "IPv6 addresses must be in brackets, e.g. [::1]:80"
    );
    assert_eq!(reason("[::1:80"), "missing ']' after the IPv6 address");
    assert_eq!(
        reason("[::1]"),
        "expected ':port' after the bracketed IPv6 address"
    );
    assert_eq!(
        reason("[::1]80"),
        "expected ':port' after the bracketed IPv6 address"
    );
    for server in ["[zz::1]:80", "[]:80", "[127.0.0.1]:80", "[fe80::1%eth0]:80"] {
        assert_eq!(
            reason(server),
            "the text between '[' and ']' is not an IPv6 address",
            "{server}"
        );
    }
}

#[test]
fn rejects_bad_hosts() {
    assert_eq!(reason(":80"), "missing host before ':port'");
    for server in [
        "256.0.0.1:80",
        "1.2.3:80",
        "1.2.3.4.5:80",
        "123:80",
        "1..2.3:80",
    ] {
        assert_eq!(reason(server), "not a valid IPv4 address", "{server}");
    }
    for server in [
        "under_score:80",
        "host name:80",
        "héllo:80",
        "a/b:80",
        "a@b:80",
    ] {
        assert_eq!(
            reason(server),
            "the host name may contain only letters, digits, '-' and '.'",
            "{server}"
        );
    }
    for server in ["a..b:80", ".a:80", "a.b..:80"] {
        assert_eq!(
            reason(server),
            "the host name has an empty label (\"..\" or a leading '.')",
            "{server}"
        );
    }
    for server in ["-a.com:80", "a-.com:80", "a.-b:80"] {
        assert_eq!(
            reason(server),
            "a label of the host name starts or ends with '-'",
            "{server}"
        );
    }
    let long_label = "a".repeat(64);
    assert_eq!(
        reason(&format!("{long_label}.io:80")),
        "a label of the host name is longer than 63 characters"
    );
    let long_name = ["abcdefghi"; 26].join(".");
    assert_eq!(long_name.len(), 259);
    assert_eq!(
        reason(&format!("{long_name}:80")),
        "the host name is longer than 253 characters"
    );
}

#[test]
fn error_message_names_the_server() {
    assert_eq!(
        validate_server_address("localhost:0")
            .unwrap_err()
            .to_string(),
        "invalid server address \"localhost:0\": the port must be between 1 and 65535"
    );
}
