//! Availability zones: the one document `/$ELBNAME/zones` =
//! `{"disabled": ["us-east-1a", ...]}` (AWS's `disable_zones` /
//! `enable_zones`). Every server in a disabled zone drains.
use std::collections::BTreeSet;

use serde_json::{Value, json};

/// The zones document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zones {
    pub disabled: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZonesError {
    #[error("the zones document is not valid JSON: {0}")]
    NotJson(String),
    #[error("the zones document must be {{\"disabled\": [\"zone\", ...]}}: {0}")]
    Shape(String),
    #[error("the zones document, field \"disabled\": {0}")]
    BadZone(String),
}

impl Zones {
    pub fn parse(text: &str) -> Result<Self, ZonesError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ZonesError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, ZonesError> {
        let object = value
            .as_object()
            .ok_or_else(|| ZonesError::Shape(format!("got {value}")))?;
        if let Some(field) = object.keys().find(|k| k.as_str() != "disabled") {
            return Err(ZonesError::Shape(format!("unknown field {field:?}")));
        }
        let mut disabled = BTreeSet::new();
        if let Some(list) = object.get("disabled") {
            let list = list
                .as_array()
                .ok_or_else(|| ZonesError::BadZone(format!("{list} is not an array")))?;
            for (i, item) in list.iter().enumerate() {
                let zone = item.as_str().ok_or_else(|| {
                    ZonesError::BadZone(format!("element {i} is not a string: {item}"))
                })?;
                validate_zone_name(zone).map_err(ZonesError::BadZone)?;
                disabled.insert(zone.to_owned());
            }
        }
        Ok(Self { disabled })
    }

    pub fn to_json(&self) -> Value {
        json!({ "disabled": self.disabled })
    }
}

/// Zone names as AWS spells them: `[A-Za-z0-9_.-]`, 1 to 64 bytes.
pub fn validate_zone_name(zone: &str) -> Result<(), String> {
    let valid = !zone.is_empty()
        && zone.len() <= 64
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{zone:?} is not a zone name (1 to 64 of A-Z a-z 0-9 _ . -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let zones = Zones::parse(r#"{"disabled": ["us-east-1b", "us-east-1a"]}"#).expect("zones");
        assert_eq!(zones.disabled.len(), 2);
        assert_eq!(Zones::from_value(&zones.to_json()).expect("again"), zones);
        assert_eq!(Zones::parse("{}").expect("empty"), Zones::default());
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        for (text, expected) in [
            ("[]", "must be"),
            (r#"{"enabled": []}"#, "unknown field \"enabled\""),
            (r#"{"disabled": "a"}"#, "not an array"),
            (r#"{"disabled": [1]}"#, "element 0"),
            (r#"{"disabled": ["a b"]}"#, "not a zone name"),
            ("{", "not valid JSON"),
        ] {
            let error = Zones::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
