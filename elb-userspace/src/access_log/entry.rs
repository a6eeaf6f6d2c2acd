//! One request's access-log entry and its two line formats, pure.
//!
//! Combined-like (nginx's `combined` plus elb's fields):
//! `IP - - [TIME] "METHOD TARGET VERSION" STATUS BYTES "REFERER" "USER-AGENT"
//! "HOST" LISTENER UPSTREAM SERVER REQUEST_TIME UPSTREAM_TIME`, times in
//! seconds with millisecond resolution, `-` for what a request did not
//! have. Strings are escaped as nginx does (`"`, `\` and bytes outside
//! printable ASCII as `\xHH`), so a client cannot forge a line.
use std::{
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde_json::{Map, Value, json};

/// Everything one line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: SystemTime,
    pub client: IpAddr,
    /// A configured listener's name; `None` for `--listen`.
    pub listener: Option<String>,
    pub method: String,
    /// The request target as received (path and query).
    pub target: String,
    pub version: &'static str,
    pub host: Option<String>,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    /// The upstream (or literal `host:port`) a backend rule chose.
    pub upstream: Option<String>,
    /// The server that answered (the last one tried).
    pub server: Option<String>,
    /// From the request's arrival to the end of its response body.
    pub request_time: Duration,
    /// From sending to the server to its response head, last try.
    pub upstream_time: Option<Duration>,
}

/// Which format lines are written in (`--access-log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Combined,
    Json,
}

impl Entry {
    /// Appends the entry's line, without the newline.
    pub fn write(&self, format: Format, out: &mut String) {
        match format {
            Format::Combined => self.write_combined(out),
            Format::Json => out.push_str(&self.to_json().to_string()),
        }
    }

    fn write_combined(&self, out: &mut String) {
        let time = humantime::format_rfc3339_millis(self.time);
        // Writing to a String cannot fail.
        let _ = write!(out, "{} - - [{time}] \"", self.client);
        escape(&self.method, out);
        out.push(' ');
        escape(&self.target, out);
        let _ = write!(out, " {}\" {} {} ", self.version, self.status, self.bytes);
        quoted(self.referer.as_deref(), out);
        out.push(' ');
        quoted(self.user_agent.as_deref(), out);
        out.push(' ');
        quoted(self.host.as_deref(), out);
        for field in [&self.listener, &self.upstream, &self.server] {
            out.push(' ');
            match field {
                Some(value) if !value.is_empty() => escape(value, out),
                _ => out.push('-'),
            }
        }
        let _ = write!(out, " {}", seconds(self.request_time));
        match self.upstream_time {
            Some(time) => {
                let _ = write!(out, " {}", seconds(time));
            }
            None => out.push_str(" -"),
        }
    }

    /// The same fields as a JSON object (absent ones as `null`).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            object.insert(key.to_owned(), value);
        };
        put(
            "time",
            json!(humantime::format_rfc3339_millis(self.time).to_string()),
        );
        put("client", json!(self.client.to_string()));
        put("listener", json!(self.listener));
        put("method", json!(self.method));
        put("target", json!(self.target));
        put("version", json!(self.version));
        put("host", json!(self.host));
        put("status", json!(self.status));
        put("bytes", json!(self.bytes));
        put("referer", json!(self.referer));
        put("user_agent", json!(self.user_agent));
        put("upstream", json!(self.upstream));
        put("server", json!(self.server));
        put("request_time", json!(self.request_time.as_secs_f64()));
        put(
            "upstream_time",
            json!(self.upstream_time.map(|t| t.as_secs_f64())),
        );
        Value::Object(object)
    }
}

/// `1.234` (seconds, milliseconds kept).
fn seconds(duration: Duration) -> String {
    format!("{}.{:03}", duration.as_secs(), duration.subsec_millis())
}

fn quoted(value: Option<&str>, out: &mut String) {
    match value {
        Some(value) => {
            out.push('"');
            escape(value, out);
            out.push('"');
        }
        None => out.push_str("\"-\""),
    }
}

/// nginx's escaping: `"`, `\` and every byte outside printable ASCII as
/// `\xHH`.
fn escape(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            let _ = write!(out, "\\x{byte:02X}");
        } else {
            out.push(char::from(byte));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_074_800_123),
            client: "10.0.0.9".parse().expect("ip"),
            listener: Some("tls".into()),
            method: "GET".into(),
            target: "/a b?x=\"1\"".into(),
            version: "HTTP/2.0",
            host: Some("www.example.com".into()),
            status: 200,
            bytes: 612,
            referer: None,
            user_agent: Some("curl/8\n\"forged\"".into()),
            upstream: Some("web".into()),
            server: Some("127.0.0.1:8088".into()),
            request_time: Duration::from_micros(3_456),
            upstream_time: Some(Duration::from_micros(2_001)),
        }
    }

    #[test]
    fn combined_lines_have_every_field_and_cannot_be_forged() {
        let mut line = String::new();
        entry().write(Format::Combined, &mut line);
        assert_eq!(
            line,
            "10.0.0.9 - - [2026-11-30T21:40:00.123Z] \"GET /a b?x=\\x221\\x22 HTTP/2.0\" 200 612 \
             \"-\" \"curl/8\\x0A\\x22forged\\x22\" \"www.example.com\" tls web 127.0.0.1:8088 \
             0.003 0.002"
        );
        let mut bare = entry();
        bare.listener = None;
        bare.upstream = None;
        bare.server = None;
        bare.upstream_time = None;
        bare.host = None;
        line.clear();
        bare.write(Format::Combined, &mut line);
        assert!(line.ends_with("\"-\" - - - 0.003 -"), "{line}");
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let mut line = String::new();
        entry().write(Format::Json, &mut line);
        let value: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["time"], "2026-11-30T21:40:00.123Z");
        assert_eq!(value["user_agent"], "curl/8\n\"forged\"");
        assert_eq!(value["referer"], Value::Null);
        assert_eq!(value["status"], 200);
        assert_eq!(value["upstream_time"], 0.002001);
        assert_eq!(value["server"], "127.0.0.1:8088");
        assert!(!line.contains('\n'));
    }
}
