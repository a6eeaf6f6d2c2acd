//! SigV4 verification (AWS4-HMAC-SHA256), in the `Authorization` header
//! form and the presigned query-string form. Pure: the caller passes the
//! request's parts, a key lookup and the time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::{digest, hmac};

use super::query::{percent_decode, uri_encode};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's time may be from the server's.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The parts of a request a signature covers.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The raw query string (without '?'), empty if none.
    pub query: &'a str,
    /// Header names in any case; repeated names are separate entries.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Why a request is refused, in AWS's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and no `X-Amz-Signature` parameter.
    #[error("Request is missing Authentication Token")]
    Missing,
    /// Malformed authorization, scope or date.
    #[error("{0}")]
    Incomplete(String),
    /// The access key is not in the credentials file.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// More than [`MAX_SKEW`] off, or a presigned URL past its expiry.
    #[error(
        "Request has expired. Request time {request_time} is more than 15 minutes from the server time {server_time}."
    )]
    Expired {
        request_time: String,
        server_time: String,
    },
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    Mismatch,
}

impl AuthError {
    /// AWS's error code and HTTP status for it.
    pub fn code_and_status(&self) -> (&'static str, u16) {
        match self {
            Self::Missing => ("MissingAuthenticationToken", 403),
            Self::Incomplete(_) => ("IncompleteSignature", 400),
            Self::UnknownKey => ("InvalidClientTokenId", 403),
            Self::Expired { .. } => ("RequestExpired", 400),
            Self::Mismatch => ("SignatureDoesNotMatch", 403),
        }
    }
}

/// A verified request's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
}

struct Parsed {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// Presigned: seconds the URL stays valid.
    expires: Option<u64>,
}

/// Verifies `request`'s signature. `secret_for` maps an access key ID to
/// its secret; `service`, when given, must be the credential scope's.
pub fn verify(
    request: &SignedRequest<'_>,
    secret_for: impl Fn(&str) -> Option<String>,
    service: Option<&str>,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let parsed = parse(request)?;
    if let Some(wanted) = service
        && parsed.service != wanted
    {
        return Err(AuthError::Incomplete(format!(
            "Credential should be scoped to correct service: '{wanted}'."
        )));
    }
    let request_time = parse_amz_date(&parsed.amz_date).ok_or_else(|| {
        AuthError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'.",
            parsed.amz_date
        ))
    })?;
    if !parsed.amz_date.starts_with(&parsed.date) {
        return Err(AuthError::Incomplete(format!(
            "Credential should be scoped to a valid date: the scope's {} is not the request's {}.",
            parsed.date, parsed.amz_date
        )));
    }
    let skew = match now.duration_since(request_time) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    let window = match parsed.expires {
        Some(seconds) => Duration::from_secs(seconds).min(Duration::from_secs(7 * 24 * 3600)),
        None => MAX_SKEW,
    };
    let expired = match parsed.expires {
        // A presigned URL is good from its date until it expires.
        Some(_) => now > request_time + window || request_time > now + MAX_SKEW,
        None => skew > MAX_SKEW,
    };
    if expired {
        return Err(AuthError::Expired {
            request_time: parsed.amz_date.clone(),
            server_time: format_amz_date(now),
        });
    }
    let secret = secret_for(&parsed.access_key_id).ok_or(AuthError::UnknownKey)?;
    let canonical = canonical_request(request, &parsed)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        parsed.date, parsed.region, parsed.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        parsed.amz_date,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let key = signing_key(&secret, &parsed.date, &parsed.region, &parsed.service);
    let expected = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    let matches: bool =
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), parsed.signature.as_bytes()).into();
    if !matches {
        return Err(AuthError::Mismatch);
    }
    Ok(Verified {
        access_key_id: parsed.access_key_id,
        region: parsed.region,
        service: parsed.service,
    })
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn parse(request: &SignedRequest<'_>) -> Result<Parsed, AuthError> {
    if let Some(authorization) = header(request.headers, "authorization") {
        return parse_header(authorization, request.headers);
    }
    let pairs = query_pairs(request.query);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let Some(signature) = get("X-Amz-Signature") else {
        return Err(AuthError::Missing);
    };
    let missing = |name: &str| AuthError::Incomplete(format!("Missing query parameter {name}."));
    let algorithm = get("X-Amz-Algorithm").ok_or_else(|| missing("X-Amz-Algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(AuthError::Incomplete(format!(
            "Unsupported algorithm {algorithm:?}: only {ALGORITHM}."
        )));
    }
    let credential = get("X-Amz-Credential").ok_or_else(|| missing("X-Amz-Credential"))?;
    let signed = get("X-Amz-SignedHeaders").ok_or_else(|| missing("X-Amz-SignedHeaders"))?;
    let amz_date = get("X-Amz-Date").ok_or_else(|| missing("X-Amz-Date"))?;
    let expires = get("X-Amz-Expires")
        .ok_or_else(|| missing("X-Amz-Expires"))?
        .parse::<u64>()
        .map_err(|_| AuthError::Incomplete("X-Amz-Expires is not a number of seconds.".into()))?;
    let (access_key_id, date, region, service) = parse_credential(&credential)?;
    Ok(Parsed {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').map(str::to_owned).collect(),
        signature,
        amz_date,
        expires: Some(expires),
    })
}

fn parse_header(authorization: &str, headers: &[(String, String)]) -> Result<Parsed, AuthError> {
    let rest = authorization
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| {
            AuthError::Incomplete(format!(
                "Authorization header requires the {ALGORITHM} algorithm."
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(value) = part.strip_prefix("Credential=") {
            credential = Some(value);
        } else if let Some(value) = part.strip_prefix("SignedHeaders=") {
            signed = Some(value);
        } else if let Some(value) = part.strip_prefix("Signature=") {
            signature = Some(value);
        }
    }
    let missing = |name: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{name}' parameter. Authorization={authorization}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let amz_date = header(headers, "x-amz-date")
        .ok_or_else(|| {
            AuthError::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .into(),
            )
        })?
        .trim()
        .to_owned();
    let (access_key_id, date, region, service) = parse_credential(credential)?;
    Ok(Parsed {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').map(str::to_owned).collect(),
        signature: signature.to_owned(),
        amz_date,
        expires: None,
    })
}

/// `AKID/20150830/us-east-1/service/aws4_request`.
fn parse_credential(credential: &str) -> Result<(String, String, String, String), AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"]
            if !key.is_empty() && date.len() == 8 && !region.is_empty() && !service.is_empty() =>
        {
            Ok((
                (*key).to_owned(),
                (*date).to_owned(),
                (*region).to_owned(),
                (*service).to_owned(),
            ))
        }
        _ => Err(AuthError::Incomplete(format!(
            "Credential is not <key>/<YYYYMMDD>/<region>/<service>/aws4_request: {credential:?}"
        ))),
    }
}

fn canonical_request(request: &SignedRequest<'_>, parsed: &Parsed) -> Result<String, AuthError> {
    let mut pairs: Vec<(String, String)> = query_pairs(request.query)
        .into_iter()
        .filter(|(key, _)| !(parsed.expires.is_some() && key == "X-Amz-Signature"))
        .map(|(key, value)| (uri_encode(&key, true), uri_encode(&value, true)))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in &parsed.signed_headers {
        let values: Vec<String> = request
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| collapse_spaces(value))
            .collect();
        if values.is_empty() {
            return Err(AuthError::Mismatch);
        }
        headers.push_str(&name.to_ascii_lowercase());
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    let payload = match header(request.headers, "x-amz-content-sha256") {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_owned(),
        _ if parsed.expires.is_some() && request.body.is_empty() => EMPTY_SHA256.to_owned(),
        claimed => {
            let actual = hex(digest::digest(&digest::SHA256, request.body).as_ref());
            if claimed.is_some_and(|claimed| claimed != actual) {
                return Err(AuthError::Mismatch);
            }
            actual
        }
    };
    Ok(format!(
        "{}\n{}\n{query}\n{headers}\n{}\n{payload}",
        request.method,
        canonical_path(request.path),
        parsed.signed_headers.join(";"),
    ))
}

/// Dot segments removed, empty segments dropped, each segment encoded
/// once (the service side of "normalize": true).
fn canonical_path(path: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(uri_encode(&percent_decode(other), true)),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `20150830T123600Z` → a time.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// A time as `20150830T123600Z`.
pub fn format_amz_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let rest = seconds % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A time as `2015-08-30T12:36:00.000Z` (ISO 8601, as AWS's XML has it).
pub fn format_iso8601(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let rest = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests;
