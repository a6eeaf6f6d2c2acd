//! Body type and small response helpers shared by the proxy and admin API.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body elb sends: streamed from an upstream or built here.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response (`Content-Type: application/json`).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    // Serialising a Value cannot fail; fall back to an empty object anyway.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    with_content_type(status, body, "application/json")
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// A plain-text response for the proxy's own errors (404, 403, 502, 504).
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    with_content_type(
        status,
        format!("{} {}\n", status.as_u16(), message),
        "text/plain; charset=utf-8",
    )
}

fn with_content_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// "a string", "an object"...: what a JSON value is, for error messages.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
