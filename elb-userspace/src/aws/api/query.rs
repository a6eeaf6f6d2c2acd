//! Query API parameters: `Action=...&Version=...` from a form body or a
//! query string, with AWS's list encoding
//! (`Listeners.member.1.Protocol=HTTP`). Pure.
use std::collections::BTreeMap;

use super::error::ApiError;

/// `%XX` decoded (invalid escapes kept as they are); `+` stays `+`.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// SigV4's URI encoding: every byte but `A-Za-z0-9-._~` as `%XX`
/// (uppercase); `/` kept when `encode_slash` is false.
pub fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The parameters of one request, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// `application/x-www-form-urlencoded` (body or query string): `+` is
    /// a space. A repeated name keeps its last value.
    pub fn parse(form: &str) -> Self {
        let mut values = BTreeMap::new();
        for part in form.split('&').filter(|part| !part.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            values.insert(
                percent_decode(&key.replace('+', " ")),
                percent_decode(&value.replace('+', " ")),
            );
        }
        Self { values }
    }

    /// Both sources of a request: the query string, then the body, whose
    /// values win.
    pub fn merge(mut self, other: Self) -> Self {
        self.values.extend(other.values);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required parameter, non-empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(ApiError::validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: \
                 Member must not be null",
                lower_first(name)
            ))),
        }
    }

    /// `Name.member.1`, `Name.member.2`, ... until the first gap.
    pub fn list(&self, name: &str) -> Vec<&str> {
        (1..)
            .map_while(|n| self.get(&format!("{name}.member.{n}")))
            .collect()
    }

    /// `Name.member.N.Field` groups, each as its fields (`Field` →
    /// value), until the first N with no field at all.
    pub fn structs(&self, name: &str) -> Vec<BTreeMap<&str, &str>> {
        let mut out = Vec::new();
        for n in 1.. {
            let prefix = format!("{name}.member.{n}.");
            let fields: BTreeMap<&str, &str> = self
                .values
                .range(prefix.clone()..)
                .take_while(|(key, _)| key.starts_with(&prefix))
                .map(|(key, value)| (&key[prefix.len()..], value.as_str()))
                .collect();
            if fields.is_empty() {
                break;
            }
            out.push(fields);
        }
        out
    }

    /// A parameter parsed as an integer in `range`.
    pub fn int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let value: i64 = text.trim().parse().map_err(|_| {
            ApiError::validation(format!(
                "Value '{text}' at '{}' failed to satisfy constraint: Member must be an integer",
                lower_first(name)
            ))
        })?;
        if !range.contains(&value) {
            return Err(ApiError::validation(format!(
                "Value '{value}' at '{}' failed to satisfy constraint: Member must have value \
                 between {} and {}",
                lower_first(name),
                range.start(),
                range.end()
            )));
        }
        Ok(Some(value))
    }

    /// A `true`/`false` parameter.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(text) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(text) => Err(ApiError::validation(format!(
                "Value '{text}' at '{}' failed to satisfy constraint: Member must be true or false",
                lower_first(name)
            ))),
        }
    }
}

/// AWS names parameters in validation messages in lowerCamelCase.
fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_and_structs() {
        let params = Params::parse(
            "Action=CreateLoadBalancer&LoadBalancerName=my-lb\
             &Listeners.member.1.Protocol=HTTP&Listeners.member.1.LoadBalancerPort=80\
             &Listeners.member.1.InstancePort=8080\
             &Listeners.member.2.Protocol=TCP&Listeners.member.2.LoadBalancerPort=443\
             &Listeners.member.2.InstancePort=8443\
             &AvailabilityZones.member.1=us-east-1a&AvailabilityZones.member.2=us-east-1b\
             &Listeners.member.4.Protocol=HTTP",
        );
        assert_eq!(params.get("Action"), Some("CreateLoadBalancer"));
        assert_eq!(
            params.list("AvailabilityZones"),
            ["us-east-1a", "us-east-1b"]
        );
        let listeners = params.structs("Listeners");
        assert_eq!(listeners.len(), 2, "stops at the first gap");
        assert_eq!(listeners[1]["Protocol"], "TCP");
        assert_eq!(listeners[1]["InstancePort"], "8443");
        // Listeners.member.1x must not be taken for member 1.
        let params = Params::parse("L.member.1.A=x&L.member.10.A=y");
        assert_eq!(params.structs("L").len(), 1);
    }

    #[test]
    fn form_decoding() {
        let params = Params::parse("HealthCheck.Target=HTTP%3A8080%2Fhealth&Name=a+b&Empty=");
        assert_eq!(params.get("HealthCheck.Target"), Some("HTTP:8080/health"));
        assert_eq!(params.get("Name"), Some("a b"));
        assert_eq!(params.get("Empty"), Some(""));
        assert!(params.required("Empty").is_err());
        let err = params.required("LoadBalancerName").expect_err("missing");
        assert!(
            err.message.contains("'loadBalancerName'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn numbers_and_booleans_are_checked() {
        let params = Params::parse("A=5&B=x&C=true&D=yes&E=100");
        assert_eq!(params.int("A", 1..=10).expect("A"), Some(5));
        assert!(params.int("B", 1..=10).is_err());
        assert!(params.int("E", 1..=10).is_err());
        assert_eq!(params.int("Z", 1..=10).expect("absent"), None);
        assert_eq!(params.bool("C").expect("C"), Some(true));
        assert!(params.bool("D").is_err());
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved() {
        assert_eq!(uri_encode("a b/c~", true), "a%20b%2Fc~");
        assert_eq!(uri_encode("a b/c", false), "a%20b/c");
        assert_eq!(uri_encode("ሴ", true), "%E1%88%B4");
    }
}
