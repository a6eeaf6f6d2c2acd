use serde_json::json;

use super::*;

fn parse(name: &str, doc: Value) -> Result<L4Service, L4ServiceError> {
    L4Service::parse(name, &doc.to_string())
}

fn service(name: &str, vip: &str, proto: L4Proto) -> L4Service {
    L4Service {
        name: name.into(),
        vip: vip.parse().expect(vip),
        proto,
        upstream: "up".into(),
        snat: None,
        table_size: DEFAULT_TABLE_SIZE,
    }
}

#[test]
fn minimal_ipv4_and_ipv6_services_parse_with_defaults() {
    let v4 = parse(
        "web",
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up"}),
    )
    .expect("v4");
    assert_eq!(v4, service("web", "10.0.0.1:80", L4Proto::Tcp));
    assert_eq!(v4.table_size, 65537);

    let v6 = parse(
        "dns6",
        json!({"vip": "[2001:db8::53]:53", "proto": "udp", "upstream": "up"}),
    )
    .expect("v6");
    assert_eq!(v6, service("dns6", "[2001:db8::53]:53", L4Proto::Udp));
}

#[test]
fn optional_fields_parse_and_round_trip_through_to_json() {
    for doc in [
        json!({"vip": "10.0.0.1:443", "proto": "tcp", "upstream": "up", "snat": "192.0.2.1", "table_size": 251}),
        json!({"vip": "[2001:db8::1]:443", "proto": "udp", "upstream": "up", "snat": "2001:db8::ff", "table_size": 131071}),
        json!({"vip": "10.0.0.1:1", "proto": "udp", "upstream": "u", "table_size": 2}),
    ] {
        let parsed = parse("s", doc.clone()).expect("valid");
        assert_eq!(parsed.to_json(), doc, "to_json is the stored shape");
        assert_eq!(
            L4Service::parse("s", &parsed.to_json().to_string()).expect("reparse"),
            parsed
        );
    }
}

#[test]
fn to_json_omits_snat_and_always_has_table_size() {
    let json = service("web", "[::1]:80", L4Proto::Tcp).to_json();
    assert_eq!(
        json,
        json!({"vip": "[::1]:80", "proto": "tcp", "upstream": "up", "table_size": 65537})
    );
}

#[test]
fn null_optional_fields_count_as_absent() {
    let parsed = parse(
        "s",
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": null, "table_size": null}),
    )
    .expect("valid");
    assert_eq!(parsed, service("s", "10.0.0.1:80", L4Proto::Tcp));
}

#[test]
fn proto_displays_lower_case() {
    assert_eq!(L4Proto::Tcp.to_string(), "tcp");
    assert_eq!(L4Proto::Udp.to_string(), "udp");
}

/// Each case: a document that differs from a valid one in one way, and
/// words the error must contain (besides the service name).
#[test]
fn every_invalid_field_is_named() {
    let base = |vip: &str| json!({"vip": vip, "proto": "tcp", "upstream": "up"});
    let with = |vip: &str, key: &str, value: Value| {
        let mut doc = base(vip);
        doc[key] = value;
        doc
    };
    let without = |key: &str| {
        let mut doc = base("10.0.0.1:80");
        doc.as_object_mut().expect("object").remove(key);
        doc
    };
    let cases: Vec<(Value, &[&str])> = vec![
        (json!([1]), &["JSON object"]),
        (json!("10.0.0.1:80"), &["JSON object"]),
        (
            with("10.0.0.1:80", "vips", json!("x")),
            &["unknown field", "\"vips\""],
        ),
        (
            with("10.0.0.1:80", "weight", json!(1)),
            &["unknown field", "weight"],
        ),
        (without("vip"), &["\"vip\"", "missing"]),
        (without("proto"), &["\"proto\"", "missing"]),
        (without("upstream"), &["\"upstream\"", "missing"]),
        (base("10.0.0.1"), &["\"vip\"", "not IP:PORT"]),
        (base("10.0.0.1:0"), &["\"vip\"", "port 0"]),
        (base("10.0.0.1:65536"), &["\"vip\"", "not IP:PORT"]),
        (base("::1:80"), &["\"vip\"", "not IP:PORT", "[::1]:80"]),
        (base("[::1]:0"), &["\"vip\"", "port 0"]),
        (base("[::1]"), &["\"vip\"", "not IP:PORT"]),
        (base("example.com:80"), &["\"vip\"", "not IP:PORT"]),
        (base("0.0.0.0:80"), &["\"vip\"", "unspecified"]),
        (base("[::]:80"), &["\"vip\"", "unspecified"]),
        (base("224.0.0.1:80"), &["\"vip\"", "multicast"]),
        (base("[ff02::1]:80"), &["\"vip\"", "multicast"]),
        (base("[::ffff:10.0.0.1]:80"), &["\"vip\"", "IPv4-mapped"]),
        (base(" 10.0.0.1:80"), &["\"vip\"", "not IP:PORT"]),
        (
            with("10.0.0.1:80", "vip", json!(80)),
            &["\"vip\"", "string"],
        ),
        (
            with("10.0.0.1:80", "proto", json!("TCP")),
            &["\"proto\"", "\"TCP\""],
        ),
        (
            with("10.0.0.1:80", "proto", json!("sctp")),
            &["\"proto\"", "tcp", "udp"],
        ),
        (
            with("10.0.0.1:80", "upstream", json!("")),
            &["\"upstream\"", "empty"],
        ),
        (
            with("10.0.0.1:80", "upstream", json!("a/b")),
            &["\"upstream\"", "'/'"],
        ),
        (
            with("10.0.0.1:80", "upstream", json!(["up"])),
            &["\"upstream\"", "string"],
        ),
        (
            with("10.0.0.1:80", "snat", json!("2001:db8::1")),
            &["\"snat\"", "IPv6", "IPv4"],
        ),
        (
            with("[2001:db8::1]:80", "snat", json!("192.0.2.1")),
            &["\"snat\"", "IPv4", "IPv6"],
        ),
        (
            with("10.0.0.1:80", "snat", json!("192.0.2.1:80")),
            &["\"snat\"", "not an IP address"],
        ),
        (
            with("10.0.0.1:80", "snat", json!("0.0.0.0")),
            &["\"snat\"", "unspecified"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(65536)),
            &["\"table_size\"", "prime", "65536"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(1)),
            &["\"table_size\"", "prime", "between 2 and 131071"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(0)),
            &["\"table_size\"", "prime"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(131101)),
            &["\"table_size\"", "131101"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(4_294_967_311_u64)),
            &["\"table_size\""],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(-7)),
            &["\"table_size\"", "whole number"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!(251.0)),
            &["\"table_size\"", "whole number"],
        ),
        (
            with("10.0.0.1:80", "table_size", json!("251")),
            &["\"table_size\"", "whole number"],
        ),
    ];
    for (doc, needles) in cases {
        let message = parse("svc1", doc.clone())
            .expect_err(&doc.to_string())
            .to_string();
        assert!(message.contains("\"svc1\""), "{doc}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{doc}: {message:?} should mention {needle:?}"
            );
        }
    }
}

#[test]
fn bad_names_and_bad_json_are_refused() {
    let doc = json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up"}).to_string();
    for (name, needle) in [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a b", "' '"),
        ("tab\t", "'\\t'"),
    ] {
        let message = L4Service::parse(name, &doc).expect_err(name).to_string();
        assert!(
            message.contains("service name") && message.contains(needle),
            "{name:?}: {message}"
        );
    }
    assert!(L4Service::parse(&"x".repeat(254), &doc).is_err());
    assert!(L4Service::parse("web-1.example_2:x", &doc).is_ok());
    let message = L4Service::parse("web", "{not json")
        .expect_err("bad json")
        .to_string();
    assert!(
        message.contains("\"web\"") && message.contains("not valid JSON"),
        "{message}"
    );
}

#[test]
fn the_same_vip_and_proto_twice_is_refused() {
    let a = service("a", "10.0.0.1:80", L4Proto::Tcp);
    let udp = service("udp", "10.0.0.1:80", L4Proto::Udp);
    let other_port = service("port", "10.0.0.1:81", L4Proto::Tcp);
    let v6 = service("v6", "[2001:db8::1]:80", L4Proto::Tcp);
    assert_eq!(check_unique_vips([&a, &udp, &other_port, &v6]), Ok(()));
    let b = service("b", "10.0.0.1:80", L4Proto::Tcp);
    let message = check_unique_vips([&a, &udp, &b])
        .expect_err("duplicate")
        .to_string();
    assert_eq!(
        message,
        "services \"b\" and \"a\" both use tcp VIP 10.0.0.1:80"
    );
    let v6b = service("v6b", "[2001:db8:0::1]:80", L4Proto::Tcp);
    assert!(check_unique_vips([&v6, &v6b]).is_err());
}

#[test]
fn upstream_servers_must_be_literals_of_the_vip_family() {
    let v4 = service("web", "10.0.0.1:80", L4Proto::Tcp);
    let v6 = service("web6", "[2001:db8::1]:80", L4Proto::Tcp);
    assert_eq!(v4.check_servers(["10.1.0.1:8080", "10.1.0.2:8080"]), Ok(()));
    assert_eq!(v6.check_servers(["[2001:db8::2]:8080"]), Ok(()));
    assert_eq!(v4.check_servers([]), Ok(()));
    for (service, servers, bad, needle) in [
        (
            &v4,
            vec!["10.1.0.1:80", "[2001:db8::2]:80"],
            "[2001:db8::2]:80",
            "is IPv6 but the VIP 10.0.0.1:80 is IPv4",
        ),
        (
            &v6,
            vec!["10.1.0.1:80"],
            "10.1.0.1:80",
            "is IPv4 but the VIP [2001:db8::1]:80 is IPv6",
        ),
        (
            &v4,
            vec!["localhost:80"],
            "localhost:80",
            "not an IP:port literal",
        ),
        (
            &v6,
            vec!["backend.example:443"],
            "backend.example:443",
            "not an IP:port literal",
        ),
    ] {
        let message = service.check_servers(servers).expect_err(bad).to_string();
        assert!(
            message.contains(&format!("{:?}", service.name))
                && message.contains("upstream \"up\"")
                && message.contains(&format!("server {bad:?}"))
                && message.contains(needle),
            "{message}"
        );
    }
}

#[test]
fn snat_pools_parse_and_keep_their_shape() {
    for doc in [
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": ["10.0.0.10", "10.0.0.11"], "table_size": 251}),
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": ["10.0.0.10"], "table_size": 251}),
        json!({"vip": "[2001:db8::1]:53", "proto": "udp", "upstream": "up", "snat": ["2001:db8::a", "2001:db8::b", "2001:db8::c"], "table_size": 251}),
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": "10.0.0.10", "table_size": 251}),
    ] {
        let parsed = parse("s", doc.clone()).expect("valid");
        assert_eq!(parsed.to_json(), doc, "GET returns the stored shape");
        assert_eq!(
            L4Service::parse("s", &parsed.to_json().to_string()).expect("reparse"),
            parsed
        );
    }
    let pool = parse(
        "s",
        json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": ["10.0.0.10", "10.0.0.11"]}),
    )
    .expect("pool");
    let snat = pool.snat.expect("snat");
    let want: Vec<IpAddr> = vec![
        "10.0.0.10".parse().expect("ip"),
        "10.0.0.11".parse().expect("ip"),
    ];
    assert_eq!(snat.addrs(), want.as_slice());
    assert_eq!(snat.first(), want[0]);
    let eight: Vec<String> = (1..=8).map(|i| format!("10.0.0.{i}")).collect();
    let doc = json!({"vip": "10.0.0.1:80", "proto": "tcp", "upstream": "up", "snat": eight});
    assert_eq!(
        parse("s", doc)
            .expect("eight")
            .snat
            .expect("snat")
            .addrs()
            .len(),
        8
    );
}

#[test]
fn bad_snat_pools_name_the_field_and_the_index() {
    let with = |vip: &str, snat: Value| json!({"vip": vip, "proto": "tcp", "upstream": "up", "snat": snat});
    let nine: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
    let cases: Vec<(Value, &[&str])> = vec![
        (with("10.0.0.1:80", json!([])), &["1 to 8", "got 0"]),
        (with("10.0.0.1:80", json!(nine)), &["1 to 8", "got 9"]),
        (
            with(
                "10.0.0.1:80",
                json!(["10.0.0.10", "10.0.0.11", "10.0.0.10"]),
            ),
            &["[2]", "10.0.0.10", "already [0]"],
        ),
        (
            with("10.0.0.1:80", json!(["10.0.0.10", "x"])),
            &["[1]", "\"x\"", "not an IP address"],
        ),
        (
            with("10.0.0.1:80", json!(["10.0.0.10", "2001:db8::1"])),
            &["[1]", "IPv6", "IPv4"],
        ),
        (
            with("10.0.0.1:80", json!(["0.0.0.0"])),
            &["[0]", "unspecified"],
        ),
        (
            with("10.0.0.1:80", json!(["10.0.0.10", 7])),
            &["[1]", "must be a string"],
        ),
        (with("10.0.0.1:80", json!(7)), &["IP address or a list"]),
        (
            with("10.0.0.1:80", json!({"a": "10.0.0.10"})),
            &["IP address or a list"],
        ),
    ];
    for (doc, needles) in cases {
        let message = parse("svc1", doc.clone())
            .expect_err(&doc.to_string())
            .to_string();
        assert!(
            message.contains("\"svc1\"") && message.contains("\"snat\""),
            "{doc}: {message}"
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{doc}: {message:?} should mention {needle:?}"
            );
        }
    }
}
