//! How a file transfer is accounted for: [`Transfer`] emits `http.file.done` when a
//! file has been sent to its end and `http.file.failed` when it has not, whichever
//! way it is sent; [`Tracked`] is the response body that drives a transfer from a
//! stream of chunks.

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

/// One file on its way to one client. Dropped before [`Transfer::done`] or
/// [`Transfer::failed`], it reports that the client went away.
pub(crate) struct Transfer {
    id: FileId,
    peer: Option<SocketAddr>,
    expected: Option<u64>,
    sent: u64,
    started: Instant,
    finished: bool,
}

impl Transfer {
    /// File `id` to `peer`, `expected` bytes long when known.
    pub(crate) fn new(id: FileId, peer: Option<SocketAddr>, expected: Option<u64>) -> Self {
        Transfer {
            id,
            peer,
            expected,
            sent: 0,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Counts `n` more bytes handed to the socket.
    pub(crate) fn sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// Bytes sent so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.sent
    }

    pub(crate) fn failed(&mut self, reason: &dyn fmt::Display) {
        if self.finished {
            return;
        }
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

    pub(crate) fn done(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        emit(BootEvent::FileDone {
            id: self.id.clone(),
            bytes: self.sent,
            duration_ms: self.started.elapsed().as_millis() as u64,
            peer: self.peer,
        });
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.finished {
            self.failed(&"client went away before the end");
        }
    }
}

/// A response body that logs when it has been sent to the end, or why not.
pub(crate) struct Tracked {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    t: Transfer,
}

impl Tracked {
    /// Wraps `stream`, the body of transfer `t`.
    pub(crate) fn new(
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        mut t: Transfer,
    ) -> Self {
        // A body whose Content-Length is 0 is never polled.
        if t.expected == Some(0) {
            t.done();
        }
        Tracked {
            inner: Box::pin(stream),
            t,
        }
    }

    /// [`Tracked::new`] as a response body.
    pub(crate) fn body(
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        t: Transfer,
    ) -> Body {
        Body::from_stream(Tracked::new(stream, t))
    }
}

impl Stream for Tracked {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        let t = &mut self.t;
        match &item {
            Some(Ok(chunk)) => {
                t.sent(chunk.len() as u64);
                // The writer stops polling once Content-Length bytes are out, so the
                // end of a body of known length is the chunk that completes it.
                if t.expected == Some(t.sent) {
                    t.done();
                }
            }
            Some(Err(e)) => {
                let reason = format!("read error: {e}");
                t.failed(&reason);
            }
            None => match t.expected {
                Some(n) if n != t.sent => {
                    let reason = format!("source ended after {} of {n} bytes", t.sent);
                    t.failed(&reason);
                }
                _ => t.done(),
            },
        }
        Poll::Ready(item)
    }
}
