//! Each provider's state as `GET /__erulb__/discovery` reports it: last
//! success, last error, server count, provider-specific state (Consul's
//! index). Written by the runner, read by the admin API.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use serde_json::{Map, Value, json};

/// Shared between the runner and the admin API.
#[derive(Clone, Default)]
pub struct DiscoveryBoard {
    providers: Arc<Mutex<BTreeMap<String, Report>>>,
}

#[derive(Clone, Debug, Default)]
struct Report {
    /// `consul (service "web")`.
    provider: String,
    running: bool,
    last_success: Option<SystemTime>,
    last_error: Option<(String, SystemTime)>,
    /// Whether the last result was an error (the error is logged once per
    /// change of its text while this holds).
    failing: bool,
    servers: Option<usize>,
    state: Map<String, Value>,
}

impl DiscoveryBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Report>) -> R) -> R {
        // A panic elsewhere leaves plain data behind: still usable.
        f(&mut self
            .providers
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// A provider starts for `upstream`: a fresh report.
    pub fn started(&self, upstream: &str, provider: String) {
        self.with(|providers| {
            providers.insert(
                upstream.to_owned(),
                Report {
                    provider,
                    running: true,
                    ..Report::default()
                },
            );
        });
    }

    /// The provider of `upstream` stopped (document deleted, or this node
    /// may not run providers).
    pub fn stopped(&self, upstream: &str) {
        self.with(|providers| providers.remove(upstream));
    }

    /// A result was applied: `servers` is the upstream's server count.
    /// True when this ends a run of errors (worth a log line).
    pub fn success(&self, upstream: &str, servers: usize, state: Map<String, Value>) -> bool {
        self.with(|providers| {
            let Some(report) = providers.get_mut(upstream) else {
                return false;
            };
            let recovered = report.failing;
            report.last_success = Some(SystemTime::now());
            report.failing = false;
            report.servers = Some(servers);
            report.state = state;
            recovered
        })
    }

    /// Records an error; true when it is news (the first error after a
    /// success, or a different text), i.e. when to log it.
    pub fn error(&self, upstream: &str, message: String, state: Map<String, Value>) -> bool {
        self.with(|providers| {
            let Some(report) = providers.get_mut(upstream) else {
                return true;
            };
            let news = !report.failing
                || report
                    .last_error
                    .as_ref()
                    .is_none_or(|(last, _)| *last != message);
            report.failing = true;
            report.last_error = Some((message, SystemTime::now()));
            report.state = state;
            news
        })
    }

    /// Marks a provider that cannot run (no provider in this build).
    pub fn not_running(&self, upstream: &str, provider: String, message: String) {
        self.with(|providers| {
            providers.insert(
                upstream.to_owned(),
                Report {
                    provider,
                    running: false,
                    failing: true,
                    last_error: Some((message, SystemTime::now())),
                    ..Report::default()
                },
            );
        });
    }

    /// The report of `upstream`'s provider, if one was started here.
    pub fn report(&self, upstream: &str) -> Option<Value> {
        self.with(|providers| providers.get(upstream).map(Report::to_json))
    }
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl Report {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("provider".into(), json!(self.provider));
        object.insert("running".into(), json!(self.running));
        object.insert(
            "last_success".into(),
            self.last_success.map_or(Value::Null, |at| json!(time(at))),
        );
        object.insert(
            "last_error".into(),
            match &self.last_error {
                Some((message, at)) => json!({"message": message, "at": time(*at)}),
                None => Value::Null,
            },
        );
        object.insert("failing".into(), json!(self.failing));
        object.insert(
            "servers".into(),
            self.servers.map_or(Value::Null, |n| json!(n)),
        );
        for (key, value) in &self.state {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_news_once_per_change() {
        let board = DiscoveryBoard::default();
        board.started("web", "consul (service \"web\")".into());
        assert!(board.error("web", "down".into(), Map::new()));
        assert!(!board.error("web", "down".into(), Map::new()), "same error");
        assert!(board.error("web", "other".into(), Map::new()), "new text");
        assert!(board.success("web", 2, Map::from_iter([("index".to_owned(), json!(7))])));
        assert!(!board.success("web", 2, Map::new()), "no news");
        let report = board.report("web").expect("report");
        assert_eq!(report["servers"], 2);
        assert!(report["index"].is_null(), "the latest state");
        assert_eq!(report["failing"], false);
        assert_eq!(
            report["last_error"]["message"], "other",
            "kept after success"
        );
        assert!(
            board.error("web", "other".into(), Map::new()),
            "after a success"
        );
        board.stopped("web");
        assert!(board.report("web").is_none());
    }
}
