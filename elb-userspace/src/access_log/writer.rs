//! The access log's writer thread: formats entries into a buffer, writes
//! it when it fills or the queue goes quiet (at most every
//! [`FLUSH_INTERVAL`]), reopens the file when asked (SIGUSR1), and reports
//! dropped entries once per [`DROP_REPORT_INTERVAL`].
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use super::{AccessLogError, Entry, Format, Target};

/// A line waits at most this long in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered bytes that are written at once.
const BUFFER_BYTES: usize = 64 << 10;
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

pub enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Sink {
    pub fn open(target: &Target) -> Result<Self, AccessLogError> {
        match target {
            Target::Stdout => Ok(Self::Stdout(io::stdout())),
            Target::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Self::File)
                .map_err(|source| AccessLogError::Open {
                    path: path.display().to_string(),
                    source,
                }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Self::File(file) => file.write_all(bytes),
        }
    }
}

pub struct Writer {
    sink: Sink,
    target: Target,
    format: Format,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    buffer: String,
    reported_drops: u64,
    last_drop_report: Option<Instant>,
}

impl Writer {
    pub fn new(
        sink: Sink,
        target: Target,
        format: Format,
        reopen: Arc<AtomicBool>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            sink,
            target,
            format,
            reopen,
            dropped,
            buffer: String::with_capacity(BUFFER_BYTES),
            reported_drops: 0,
            last_drop_report: None,
        }
    }

    /// Runs until every [`super::AccessLog`] handle is gone.
    pub fn run(mut self, entries: &Receiver<Entry>) {
        loop {
            match entries.recv_timeout(FLUSH_INTERVAL) {
                Ok(entry) => {
                    entry.write(self.format, &mut self.buffer);
                    self.buffer.push('\n');
                    // Take what else is queued before writing.
                    while self.buffer.len() < BUFFER_BYTES {
                        let Ok(entry) = entries.try_recv() else { break };
                        entry.write(self.format, &mut self.buffer);
                        self.buffer.push('\n');
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.reopen_sink();
            }
            self.report_drops();
        }
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if let Err(error) = self.sink.write_all(self.buffer.as_bytes()) {
            // The lines are lost; say so rather than retry forever.
            tracing::warn!(%error, "cannot write the access log; lines lost");
        }
        self.buffer.clear();
    }

    fn reopen_sink(&mut self) {
        self.flush();
        match Sink::open(&self.target) {
            Ok(sink) => {
                self.sink = sink;
                tracing::info!(target = ?self.target, "access log reopened (SIGUSR1)");
            }
            Err(error) => {
                // Keep writing to the old file rather than nowhere.
                tracing::warn!(%error, "cannot reopen the access log; still writing the old file");
            }
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == self.reported_drops
            || self
                .last_drop_report
                .is_some_and(|at| at.elapsed() < DROP_REPORT_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            dropped = dropped - self.reported_drops,
            total = dropped,
            "access-log entries dropped: the writer could not keep up"
        );
        self.reported_drops = dropped;
        self.last_drop_report = Some(Instant::now());
    }
}
