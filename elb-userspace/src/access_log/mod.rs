//! Access logs (`--access-log PATH|-`, `--access-log-format combined|json`):
//! one line per request, written by a thread of its own.
//!
//! A request only does a non-blocking `try_send` on a bounded queue; the
//! writer thread formats, buffers and writes, so a slow disk never slows a
//! request: when the queue is full the entry is dropped and counted (and
//! the count logged). SIGUSR1 makes the writer reopen its file, for
//! logrotate.
mod body;
mod entry;
mod writer;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
};

pub use body::LoggedBody;
pub use entry::{Entry, Format};

/// Entries waiting for the writer; past this, entries are dropped.
const QUEUE_CAPACITY: usize = 16_384;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output, anything else a file path.
    pub fn parse(value: &str) -> Self {
        if value == "-" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(value))
        }
    }
}

/// Why the access log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot handle SIGUSR1 (access log reopen): {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot start the access-log thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A handle for recording entries; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    queue: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `target` (appending) and starts the writer thread.
    pub fn start(target: Target, format: Format) -> Result<Self, AccessLogError> {
        let reopen = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&reopen))
            .map_err(AccessLogError::Signal)?;
        Self::start_with_reopen(target, format, reopen)
    }

    /// [`AccessLog::start`] with the reopen flag given (tests).
    pub(crate) fn start_with_reopen(
        target: Target,
        format: Format,
        reopen: Arc<AtomicBool>,
    ) -> Result<Self, AccessLogError> {
        let sink = writer::Sink::open(&target)?;
        let (queue, entries) = sync_channel(QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = writer::Writer::new(sink, target, format, reopen, Arc::clone(&dropped));
        std::thread::Builder::new()
            .name("elb-access-log".into())
            .spawn(move || writer.run(&entries))
            .map_err(AccessLogError::Thread)?;
        Ok(Self { queue, dropped })
    }

    /// Queues one entry; never blocks.
    pub fn record(&self, entry: Entry) {
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::*;

    fn entry(status: u16) -> Entry {
        Entry {
            time: SystemTime::now(),
            client: "127.0.0.1".parse().expect("ip"),
            listener: None,
            method: "GET".into(),
            target: "/".into(),
            version: "HTTP/1.1",
            host: Some("a.test".into()),
            status,
            bytes: 0,
            referer: None,
            user_agent: None,
            upstream: None,
            server: None,
            request_time: Duration::ZERO,
            upstream_time: None,
        }
    }

    fn wait_for_lines(path: &std::path::Path, lines: usize) -> String {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{lines} lines not written: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_are_appended_and_the_file_is_reopened_when_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, "kept\n").expect("existing line");
        let reopen = Arc::new(AtomicBool::new(false));
        let log = AccessLog::start_with_reopen(
            Target::File(path.clone()),
            Format::Json,
            Arc::clone(&reopen),
        )
        .expect("start");
        log.record(entry(200));
        log.record(entry(404));
        let text = wait_for_lines(&path, 3);
        assert!(text.starts_with("kept\n"), "appended: {text}");
        let statuses: Vec<u64> = text
            .lines()
            .skip(1)
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).expect("JSON")["status"]
                    .as_u64()
                    .expect("status")
            })
            .collect();
        assert_eq!(statuses, [200, 404]);
        // logrotate: rename, then signal.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        reopen.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(250));
        log.record(entry(502));
        let text = wait_for_lines(&path, 1);
        assert!(text.contains("\"status\":502"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&rotated)
                .expect("old")
                .lines()
                .count(),
            3
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn an_unopenable_file_is_a_clear_error() {
        let error = AccessLog::start_with_reopen(
            Target::File("/nonexistent-dir/access.log".into()),
            Format::Combined,
            Arc::default(),
        )
        .expect_err("no such directory");
        assert!(
            error
                .to_string()
                .starts_with("cannot open the access log /nonexistent-dir/access.log: "),
            "{error}"
        );
    }
}
