//! `--aws-api-credentials FILE`: the standard AWS shared-credentials INI
//! (`[profile]` sections with `aws_access_key_id` and
//! `aws_secret_access_key`). Every profile is accepted. Pure parsing;
//! errors name the file, line and profile, never a secret.
use std::{collections::BTreeMap, path::Path};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("AWS API credentials file {path}: {message}")]
    Read { path: String, message: String },
    #[error("AWS API credentials file {path}, line {line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("AWS API credentials file {path}, profile [{profile}]: {message}")]
    Profile {
        path: String,
        profile: String,
        message: String,
    },
    #[error(
        "AWS API credentials file {path}: no profile with aws_access_key_id and aws_secret_access_key"
    )]
    Empty { path: String },
}

/// Access key ID → secret. `Debug` does not show the secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_ids", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|err| CredentialsError::Read {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// `path` only names the file in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, CredentialsError> {
        // Profile name → (key id, secret), in file order.
        let mut profiles: Vec<(String, Option<String>, Option<String>)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let syntax = |message: String| CredentialsError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(section) = line.strip_prefix('[') {
                let name = section
                    .strip_suffix(']')
                    .ok_or_else(|| syntax("a section header must end with ']'".into()))?
                    .trim();
                let name = name.strip_prefix("profile ").unwrap_or(name).trim();
                if name.is_empty() {
                    return Err(syntax("an empty profile name".into()));
                }
                profiles.push((name.to_owned(), None, None));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| syntax("expected `name = value` or `[profile]`".into()))?;
            let (key, value) = (key.trim(), value.trim());
            let Some(profile) = profiles.last_mut() else {
                return Err(syntax(format!("{key:?} is outside any [profile] section")));
            };
            match key {
                "aws_access_key_id" => profile.1 = Some(value.to_owned()),
                "aws_secret_access_key" => profile.2 = Some(value.to_owned()),
                // aws_session_token, region, ...: not needed to verify.
                _ => {}
            }
        }
        let mut secrets = BTreeMap::new();
        for (profile, key, secret) in profiles {
            let problem = |message: &str| CredentialsError::Profile {
                path: path.to_owned(),
                profile: profile.clone(),
                message: message.to_owned(),
            };
            match (key, secret) {
                (Some(key), Some(secret)) if !key.is_empty() && !secret.is_empty() => {
                    if secrets.insert(key.clone(), secret).is_some() {
                        return Err(problem(&format!(
                            "access key ID {key} is also in another profile"
                        )));
                    }
                }
                (None, None) => {} // e.g. a profile with only a region
                (None, _) => {
                    return Err(problem("aws_secret_access_key without aws_access_key_id"));
                }
                (_, None) => {
                    return Err(problem("aws_access_key_id without aws_secret_access_key"));
                }
                _ => {
                    return Err(problem(
                        "an empty aws_access_key_id or aws_secret_access_key",
                    ));
                }
            }
        }
        if secrets.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { secrets })
    }

    pub fn secret(&self, access_key_id: &str) -> Option<&str> {
        self.secrets.get(access_key_id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_counts() {
        let creds = Credentials::parse(
            "creds",
            "# comment\n[default]\naws_access_key_id = AKID1\naws_secret_access_key = s1\n\n\
             [profile ops]\naws_access_key_id=AKID2\naws_secret_access_key=s2\nregion=us-east-1\n\
             [only-region]\nregion = eu-west-1\n",
        )
        .expect("valid");
        assert_eq!(creds.len(), 2);
        assert_eq!(creds.secret("AKID1"), Some("s1"));
        assert_eq!(creds.secret("AKID2"), Some("s2"));
        assert_eq!(creds.secret("AKID3"), None);
        assert!(
            !format!("{creds:?}").contains("s1"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn bad_files_are_named_without_secrets() {
        for (text, wanted) in [
            ("aws_access_key_id = A\n", "line 1"),
            ("[default\n", "line 1"),
            ("[a]\nnonsense\n", "line 2"),
            ("[a]\naws_access_key_id = A\n", "profile [a]"),
            ("[a]\naws_secret_access_key = TOPSECRET\n", "profile [a]"),
            ("", "no profile"),
            (
                "[a]\naws_access_key_id=A\naws_secret_access_key=TOPSECRET\n\
                 [b]\naws_access_key_id=A\naws_secret_access_key=TOPSECRET2\n",
                "also in another profile",
            ),
        ] {
            let err = Credentials::parse("/etc/creds", text)
                .expect_err(text)
                .to_string();
            assert!(err.contains("/etc/creds"), "{err}");
            assert!(err.contains(wanted), "{text:?}: {err}");
            assert!(!err.contains("TOPSECRET"), "{err}");
        }
    }
}
