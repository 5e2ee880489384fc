//! GRUB's files over HTTP, for a GRUB built with the http module (UEFI HTTP Boot):
//! `GET /grub/...` answers what TFTP answers for `grub/...`.
//!
//! A GRUB started by UEFI HTTP Boot has `(http,SERVER:PORT)` as its root and
//! `/grub` as its prefix, so it reads `/grub/grub.cfg`, its machine's
//! configuration and the kernel and initrds from the same paths over HTTP. Each
//! answer carries a `Content-Length` spelled exactly so (GRUB 2.06 matches header
//! names case-sensitively, and without the length reads until the connection
//! closes), closes its connection, and emits [`BootEvent::HttpGrub`]; once the last
//! byte of a machine's last file has gone out, [`BootEvent::GrubBooting`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::loader::{GrubPath, GRUB_DIR};
use ironpxe_http::ConnAddrs;
use ironpxe_tftp::{Content, OpenError};
use tokio_util::io::ReaderStream;

use crate::files::GrubFiles;

/// Routes `GET /grub/{*path}` to `files`.
pub fn router(files: Arc<GrubFiles>) -> Router {
    Router::new()
        .route(&format!("/{GRUB_DIR}/{{*path}}"), get(grub_file))
        .with_state(files)
}

async fn grub_file(
    State(files): State<Arc<GrubFiles>>,
    Path(rest): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<ConnAddrs>>()
        .map(|c| c.0.peer);
    let path = format!("{GRUB_DIR}/{rest}");
    let parsed = GrubPath::parse(&path);
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || files.open_grub(&path))
            .await
            .unwrap_or_else(|e| Err(OpenError::Io(format!("file reader failed: {e}"))))
    };
    let content = match opened {
        Ok(c) => c,
        Err(e) => {
            let status = match e {
                OpenError::NotFound => StatusCode::NOT_FOUND,
                OpenError::AccessViolation(_) => StatusCode::FORBIDDEN,
                OpenError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::debug!(%path, error = %e, "GRUB file not served over HTTP");
            return (status, format!("{e}\n")).into_response();
        }
    };
    let mac = parsed.as_ref().and_then(GrubPath::mac);
    emit(BootEvent::HttpGrub {
        mac,
        file: path.clone(),
        bytes: content.len(),
        peer,
    });
    let on_end: Option<Box<dyn FnOnce() + Send>> = match (parsed, mac) {
        (Some(p), Some(mac)) if p.is_last() => Some(Box::new(move || {
            emit(BootEvent::GrubBooting {
                mac,
                file: path,
                peer,
            })
        })),
        _ => None,
    };
    let len = content.len();
    let content_type = if rest.ends_with(".cfg") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    (
        // GRUB reads `Content-Length: ` only spelled so; without the length it
        // reads until the connection closes.
        axum::Extension(ironpxe_http::CapitalizedHeaders),
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            // A GRUB that did not get the length reads until the connection
            // closes; never keep it waiting for the idle timeout.
            (header::CONNECTION, HeaderValue::from_static("close")),
        ],
        body(content, on_end),
    )
        .into_response()
}

/// The answer's body: from memory, or read from the open file in chunks while it is
/// sent; `on_end` runs as the last chunk is handed to the connection.
fn body(content: Content, on_end: Option<Box<dyn FnOnce() + Send>>) -> Body {
    match content {
        Content::Memory(data) => Body::from_stream(Chunks { data, on_end }),
        Content::File { file, size } => {
            let file = match file.try_clone() {
                Ok(f) => f,
                Err(e) => {
                    let e = std::io::Error::new(e.kind(), format!("cannot read the file: {e}"));
                    return Body::from_stream(futures_util::stream::iter([Err::<Bytes, _>(e)]));
                }
            };
            let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), size);
            let mut left = size;
            let mut on_end = on_end;
            let stream = ReaderStream::with_capacity(reader, CHUNK).map(move |chunk| {
                if let Ok(c) = &chunk {
                    left = left.saturating_sub(c.len() as u64);
                    if left == 0 {
                        if let Some(f) = on_end.take() {
                            f();
                        }
                    }
                }
                chunk
            });
            Body::from_stream(stream)
        }
    }
}

/// A file in memory in 64 KiB chunks that runs `on_end` as the last one is handed to
/// the connection (a server that knows the length stops polling once it has written
/// that many bytes, so the end of the stream is never asked for).
struct Chunks {
    data: Bytes,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

const CHUNK: usize = 64 << 10;

impl Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.data.is_empty() {
            if let Some(f) = self.on_end.take() {
                f();
            }
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        let chunk = self.data.split_to(n);
        if self.data.is_empty() {
            if let Some(f) = self.on_end.take() {
                f();
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}
