//! The canonical form of a domain name, the one a client's `Host` carries:
//! ASCII lower case, internationalised names as IDNA punycode
//! (`bücher.test` → `xn--bcher-kva.test`). Domains are stored and matched
//! under this form, so two spellings of one domain are one domain.
use super::keys::validate_key_segment;

/// The canonical form of `name`, or why it cannot be a domain (the message
/// names it). An optional `:port` suffix is kept as it is.
pub fn normalize_domain(name: &str) -> Result<String, String> {
    validate_key_segment("domain", name)?;
    if name.is_ascii() {
        return Ok(name.to_ascii_lowercase());
    }
    let (host, port) = split_port(name);
    let ascii = idna::domain_to_ascii(host).map_err(|_| {
        format!("domain name {name:?} is not a valid internationalised domain name (IDNA)")
    })?;
    let canonical = format!("{ascii}{port}");
    validate_key_segment("domain", &canonical)
        .map_err(|e| format!("domain name {name:?} becomes {canonical:?} in IDNA: {e}"))?;
    Ok(canonical)
}

/// Whether `name` is already canonical; cheap for the common case (ASCII
/// without upper case), so whole-store scans stay fast.
pub fn is_canonical(name: &str) -> bool {
    if name.is_ascii() {
        return !name.bytes().any(|b| b.is_ascii_uppercase());
    }
    normalize_domain(name).is_ok_and(|canonical| canonical == name)
}

/// `host:port` → (`host`, `:port`); no port → (`name`, "").
fn split_port(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, &name[host.len()..])
        }
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_names_are_lower_cased() {
        assert_eq!(normalize_domain("Probe.TEST").as_deref(), Ok("probe.test"));
        assert_eq!(
            normalize_domain("a.example:8080").as_deref(),
            Ok("a.example:8080")
        );
        assert_eq!(normalize_domain("10.0.0.1").as_deref(), Ok("10.0.0.1"));
    }

    #[test]
    fn internationalised_names_become_punycode() {
        assert_eq!(
            normalize_domain("bücher.test").as_deref(),
            Ok("xn--bcher-kva.test")
        );
        assert_eq!(
            normalize_domain("BÜCHER.test:81").as_deref(),
            Ok("xn--bcher-kva.test:81")
        );
        assert!(is_canonical("xn--bcher-kva.test"));
        assert!(!is_canonical("bücher.test"));
        assert!(!is_canonical("Probe.test"));
    }

    #[test]
    fn path_components_wildcards_and_bad_idna_are_refused() {
        for bad in [
            "..",
            ".",
            "*",
            "*.probe.test",
            "a/b",
            "",
            "bü\u{200b}\u{0301}\u{fffd}.test",
        ] {
            let err = normalize_domain(bad).expect_err(bad);
            assert!(err.contains("domain"), "{bad}: {err}");
        }
    }
}
