//! The [`Tracked`] response body, which emits `http.file.done` when a file has been
//! sent to its end and `http.file.failed` when it has not.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::Stream;
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::FileId;

/// A response body that logs when it has been sent to the end, or why not.
pub(crate) struct Tracked {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    id: FileId,
    peer: Option<SocketAddr>,
    expected: Option<u64>,
    sent: u64,
    started: Instant,
    finished: bool,
}

impl Tracked {
    /// Wraps `stream`, the body of file `id` sent to `peer`, `expected` bytes long
    /// when known.
    pub(crate) fn body(
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        id: FileId,
        peer: Option<SocketAddr>,
        expected: Option<u64>,
    ) -> Body {
        let mut tracked = Tracked {
            inner: Box::pin(stream),
            id,
            peer,
            expected,
            sent: 0,
            started: Instant::now(),
            finished: false,
        };
        // hyper never polls a body whose Content-Length is 0.
        if expected == Some(0) {
            tracked.done();
        }
        Body::from_stream(tracked)
    }

    fn failed(&mut self, reason: &dyn fmt::Display) {
        self.finished = true;
        emit(BootEvent::FileFailed {
            id: self.id.clone(),
            bytes: self.sent,
            expected: self.expected,
            duration_ms: self.started.elapsed().as_millis() as u64,
            peer: self.peer,
            reason: reason.to_string(),
        });
    }

    fn done(&mut self) {
        self.finished = true;
        emit(BootEvent::FileDone {
            id: self.id.clone(),
            bytes: self.sent,
            duration_ms: self.started.elapsed().as_millis() as u64,
            peer: self.peer,
        });
    }
}

impl Stream for Tracked {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(chunk)) => {
                self.sent += chunk.len() as u64;
                // hyper stops polling once Content-Length bytes are out, so the end of
                // a body of known length is the chunk that completes it.
                if self.expected == Some(self.sent) {
                    self.done();
                }
            }
            Some(Err(e)) => {
                let reason = format!("read error: {e}");
                self.failed(&reason);
            }
            None if self.finished => {}
            None => match self.expected {
                Some(n) if n != self.sent => {
                    let reason = format!("source ended after {} of {n} bytes", self.sent);
                    self.failed(&reason);
                }
                _ => self.done(),
            },
        }
        Poll::Ready(item)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished {
            self.failed(&"client went away before the end");
        }
    }
}
