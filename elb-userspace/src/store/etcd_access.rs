//! How elb proves itself to etcd: TLS (CA, client certificate) and
//! user/password authentication. The files are read at every (re)connect,
//! so rotated certificates and passwords take effect without a restart.
use std::path::{Path, PathBuf};

use clap::Args;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The `elb run` flags for etcd access (flattened into the run flags).
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdAccessArgs {
    /// CA certificate (PEM) that etcd's server certificate must chain to;
    /// turns TLS on for every etcd endpoint.
    #[arg(long, env = "ETCD_CA", value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's `--client-cert-auth`.
    #[arg(long, env = "ETCD_CERT", value_name = "PEM", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,

    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "ETCD_KEY", value_name = "PEM", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user (with --etcd-password-file) when etcd has auth enabled.
    #[arg(long, env = "ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password (one line; a trailing newline
    /// is ignored).
    #[arg(
        long,
        env = "ETCD_PASSWORD_FILE",
        value_name = "PATH",
        requires = "etcd_user"
    )]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAccessArgs {
    pub fn tls(&self) -> bool {
        self.etcd_ca.is_some()
    }
}

/// Why the access files could not be used; names the file and its flag.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {} has no PEM block ({what})", path.display())]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("--etcd-password-file {} is empty", .0.display())]
    EmptyPassword(PathBuf),
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|source| AccessError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn read_pem(flag: &'static str, path: &Path, what: &'static str) -> Result<Vec<u8>, AccessError> {
    let bytes = read(flag, path)?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(AccessError::NotPem {
            flag,
            path: path.to_owned(),
            what,
        });
    }
    Ok(bytes)
}

/// Adds TLS and credentials to `options`, reading the files now.
pub fn apply(
    args: &EtcdAccessArgs,
    mut options: ConnectOptions,
) -> Result<ConnectOptions, AccessError> {
    if let Some(ca) = &args.etcd_ca {
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_pem(
                "--etcd-ca",
                ca,
                "a CA certificate",
            )?))
            // etcd speaks gRPC over HTTP/2 only; do not insist on ALPN.
            .assume_http2(true);
        if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--etcd-cert", cert, "a certificate")?,
                read_pem("--etcd-key", key, "a private key")?,
            ));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&args.etcd_user, &args.etcd_password_file) {
        let bytes = read("--etcd-password-file", file)?;
        let text = String::from_utf8_lossy(&bytes);
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(AccessError::EmptyPassword(file.clone()));
        }
        options = options
            .with_user(user.clone(), password.to_owned())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// Whether an etcd error means etcd refused elb (credentials, TLS trust)
/// rather than being unreachable: retrying does not help, so at start it is
/// fatal. Returns what to tell the operator.
pub fn refusal(err: &etcd_client::Error) -> Option<&'static str> {
    classify(&full_message(err))
}

/// The error with its causes (a TLS failure is only in a cause).
pub fn full_message(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// [`refusal`] on the error's text (with its causes).
pub fn classify(text: &str) -> Option<&'static str> {
    let text = text.to_ascii_lowercase();
    if text.contains("authentication failed") || text.contains("invalid user id or password") {
        Some("etcd refused the user or password (check --etcd-user and --etcd-password-file)")
    } else if text.contains("user name is empty") || text.contains("permission denied") {
        Some("etcd requires authentication or a role elb lacks (check --etcd-user)")
    } else if text.contains("authentication is not enabled") {
        Some("etcd has no authentication enabled, but --etcd-user was given")
    } else if text.contains("unknownissuer") || text.contains("invalid peer certificate") {
        Some("etcd's certificate is not signed by --etcd-ca (or does not name the endpoint)")
    } else if [
        "certificate required",
        "certificaterequired",
        "bad certificate",
        "badcertificate",
    ]
    .iter()
    .any(|alert| text.contains(alert))
    {
        Some("etcd refused the client certificate (check --etcd-cert and --etcd-key)")
    } else if text.contains("invalid certificate")
        || text.contains("private key")
        || text.contains("tls certificate")
    {
        Some("the TLS files cannot be used (check --etcd-ca, --etcd-cert and --etcd-key)")
    } else if text.contains("corrupt message") || text.contains("invalid http version") {
        Some("TLS and plain HTTP do not match: is etcd serving TLS? (check --etcd-ca)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_outages() {
        for (text, needle) in [
            (
                "grpc request error: status: InvalidArgument, message: \"etcdserver: authentication failed, invalid user ID or password\"",
                "--etcd-password-file",
            ),
            (
                "transport error: invalid peer certificate: UnknownIssuer",
                "--etcd-ca",
            ),
            ("received fatal alert: CertificateRequired", "--etcd-cert"),
        ] {
            assert!(classify(text).is_some_and(|m| m.contains(needle)), "{text}");
        }
        for outage in [
            "grpc request error: status: Unavailable, message: \"error trying to connect: tcp connect error: Connection refused (os error 111)\"",
            "transport error: connection reset",
        ] {
            assert_eq!(classify(outage), None, "{outage}");
        }
    }

    #[test]
    fn flags_come_in_pairs() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut args = vec!["elb", "run"];
            args.extend_from_slice(extra);
            crate::cli::Cli::try_parse_from(args).map(|cli| match cli.command {
                crate::cli::Command::Run(run) => run.etcd_access,
                _ => panic!("expected run"),
            })
        };
        let full = parse(&[
            "--etcd-ca=ca",
            "--etcd-cert=c",
            "--etcd-key=k",
            "--etcd-user=u",
            "--etcd-password-file=p",
        ])
        .expect("all flags");
        assert!(full.tls() && full.etcd_user.as_deref() == Some("u"));
        assert!(!parse(&[]).expect("none").tls());
        for half in [
            &["--etcd-ca=ca", "--etcd-cert=c"][..],
            &["--etcd-ca=ca", "--etcd-key=k"],
            &["--etcd-cert=c", "--etcd-key=k"],
            &["--etcd-user=u"],
            &["--etcd-password-file=p"],
        ] {
            assert!(parse(half).is_err(), "{half:?}");
        }
    }

    #[test]
    fn files_are_named_when_unusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let args = EtcdAccessArgs {
            etcd_ca: Some(missing.clone()),
            ..Default::default()
        };
        let err = apply(&args, ConnectOptions::new()).expect_err("missing");
        assert!(err.to_string().contains("--etcd-ca") && err.to_string().contains("missing.pem"));
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let args = EtcdAccessArgs {
            etcd_ca: Some(not_pem),
            ..Default::default()
        };
        assert!(matches!(
            apply(&args, ConnectOptions::new()),
            Err(AccessError::NotPem { .. })
        ));
        let password = dir.path().join("password");
        std::fs::write(&password, "\n").expect("write");
        let args = EtcdAccessArgs {
            etcd_user: Some("root".into()),
            etcd_password_file: Some(password),
            ..Default::default()
        };
        assert!(matches!(
            apply(&args, ConnectOptions::new()),
            Err(AccessError::EmptyPassword(_))
        ));
    }
}
