//! Validation of the ELB name (`ELBNAME` / `--name`), which becomes an etcd
//! key prefix, a metric prefix and a bpffs directory name.
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the ELB name is empty")]
    Empty,
    #[error("the ELB name {0:?} is longer than 64 bytes")]
    TooLong(String),
    #[error(
        "the ELB name {name:?} contains {bad:?}; use only ASCII letters, digits, '_', '-' and '.'"
    )]
    BadCharacter { name: String, bad: char },
    #[error("the ELB name {0:?} is not allowed (it is a path component)")]
    Reserved(String),
}

/// Accepts names that are safe as a path component and an etcd key segment.
pub fn validate_elb_name(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 64 {
        return Err(NameError::TooLong(name.to_owned()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved(name.to_owned()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadCharacter {
            name: name.to_owned(),
            bad,
        });
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_default_and_typical_names() {
        for name in ["ELB", "elb-prod_1", "a.b"] {
            assert_eq!(validate_elb_name(name).as_deref(), Ok(name));
        }
    }

    #[test]
    fn rejects_path_tricks_and_empty() {
        assert_eq!(validate_elb_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_elb_name(".."),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(
            validate_elb_name("a/b"),
            Err(NameError::BadCharacter { bad: '/', .. })
        ));
        assert!(matches!(
            validate_elb_name(&"x".repeat(65)),
            Err(NameError::TooLong(_))
        ));
    }
}
