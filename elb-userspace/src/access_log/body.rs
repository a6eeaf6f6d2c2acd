//! A response body that writes its request's access-log entry when it
//! ends (or is dropped: the client went away, or a HEAD answer), with the
//! bytes sent and the time taken by then.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{AccessLog, Entry};
use crate::http_util::{Body, BoxError};

pub struct LoggedBody {
    inner: Body,
    pending: Option<Pending>,
}

struct Pending {
    log: AccessLog,
    entry: Entry,
    started: Instant,
}

impl LoggedBody {
    /// `started`: when the request arrived.
    pub fn new(inner: Body, log: AccessLog, entry: Entry, started: Instant) -> Self {
        Self {
            inner,
            pending: Some(Pending {
                log,
                entry,
                started,
            }),
        }
    }

    fn finish(&mut self) {
        if let Some(Pending {
            log,
            mut entry,
            started,
        }) = self.pending.take()
        {
            entry.request_time = started.elapsed();
            log.record(entry);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(pending)) = (frame.data_ref(), &mut self.pending) {
                    pending.entry.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
