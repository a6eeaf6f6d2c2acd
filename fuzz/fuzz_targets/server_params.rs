//! Server parameter strings (`weight=3 max_fails=2 fail_timeout=10s backup`)
//! and server addresses (`host:port`), as stored under
//! `/$ELBNAME/upstreams/$upstream/$server`.
//!
//! Input: `params` or `params \0 address`.
//! Properties:
//! - parsing never panics; accepted parameters have a weight of at least 1
//!   and their canonical form parses back to the same parameters;
//! - an accepted address, put in a server key, reads back as the same
//!   server of the same upstream (the store and the admin API agree).
#![no_main]

use elb_fuzz::split_nul;
use elb_userspace::{
    config::{KeyLayout, StoreKey},
    upstream::{parse_params, validate_server_address},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (params, address) = split_nul(data);
    if let Ok(text) = std::str::from_utf8(params)
        && let Ok(parsed) = parse_params(text)
    {
        assert!(parsed.weight >= 1);
        let canonical = parsed.to_nginx_string();
        assert_eq!(
            parse_params(&canonical).as_ref(),
            Ok(&parsed),
            "{text:?} -> {canonical:?}"
        );
        let json = parsed.to_json("x:1");
        assert_eq!(json["weight"], parsed.weight);
    }
    if let Ok(address) = std::str::from_utf8(address)
        && validate_server_address(address).is_ok()
    {
        let layout = KeyLayout::new("ELB");
        let key = layout.server_key("up", address);
        assert_eq!(
            layout.parse(&key),
            Some(StoreKey::Server {
                upstream: "up",
                server: address
            }),
            "{key:?}"
        );
    }
});
