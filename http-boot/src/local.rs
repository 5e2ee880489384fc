//! Local files, sent with sendfile(2) by ironpxe's connection driver (or streamed
//! from disk in chunks by any other server), with a single `Range` honoured.

use std::io::{self, SeekFrom};
use std::path::Path;

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::io::Seek;

use axum::body::Body;
use futures_util::future::Either;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::body::Tracked;
use crate::conn::{LocalSend, SendSlot};
use crate::file::FileRequest;
use crate::plain;
use crate::range::{parse_range, ByteRange};

/// Read size for local files: large enough for few syscalls, small enough that many
/// concurrent clients cost little memory.
const CHUNK: usize = 64 * 1024;

pub(crate) async fn serve_local(
    req: FileRequest<'_>,
    path: &Path,
    headers: &HeaderMap,
) -> Response {
    let f = match open_waiting_for_descriptors(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), id = %req.id, "served file is missing");
            return plain(StatusCode::NOT_FOUND, "file not found");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open served file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot open file");
        }
    };
    let meta = match f.metadata().await {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            tracing::error!(path = %path.display(), "served file is not a regular file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "not a regular file");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot stat served file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file");
        }
    };
    let len = meta.len();
    // Without validators we cannot honour If-Range, so its presence means "send all".
    let range_header = if headers.contains_key(header::IF_RANGE) {
        None
    } else {
        headers.get(header::RANGE).and_then(|v| v.to_str().ok())
    };
    let (status, start, count, range_text) = match parse_range(range_header, len) {
        ByteRange::Full => (StatusCode::OK, 0, len, "-".to_string()),
        ByteRange::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            format!("{start}-{end}"),
        ),
        ByteRange::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [
                    (header::CONTENT_RANGE, format!("bytes */{len}")),
                    (header::ACCEPT_RANGES, "bytes".to_string()),
                ],
            )
                .into_response();
        }
    };

    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + count - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if req.head {
        tracing::debug!(id = %req.id, file = %req.fref, bytes = count, "HEAD");
        return (status, h).into_response();
    }
    if count == 0 {
        let empty = futures_util::stream::empty();
        return (status, h, req.body(Some(0), &range_text, empty)).into_response();
    }
    let file = f.into_std().await;
    let transfer = req.start(Some(count), &range_text);
    let slot = SendSlot::new(LocalSend {
        file,
        start,
        count,
        transfer,
    });
    let mut resp = (status, h, fallback_body(slot.clone())).into_response();
    // ironpxe's own connection driver takes the file from here and sends it with
    // sendfile(2); any other server polls the body, which reads it in chunks.
    resp.extensions_mut().insert(slot);
    resp
}

/// The body of a local file for a server that does not use [`SendSlot`]: chunks read
/// through `tokio::fs`, started only when polled, so a body dropped unpolled (the
/// file went out through sendfile) costs nothing.
fn fallback_body(slot: SendSlot) -> Body {
    let stream = futures_util::stream::once(async move { slot.take() }).flat_map(|send| {
        let Some(LocalSend {
            mut file,
            start,
            count,
            transfer,
        }) = send
        else {
            return Either::Right(futures_util::stream::empty());
        };
        let seeked = file.seek(SeekFrom::Start(start));
        let reader = tokio::fs::File::from_std(file).take(count);
        let stream = ReaderStream::with_capacity(reader, CHUNK);
        let stream = futures_util::stream::iter(seeked.err().map(Err)).chain(stream);
        Either::Left(Tracked::new(stream, transfer))
    });
    Body::from_stream(stream)
}

/// How long a download waits for a file descriptor when the process is at its
/// open-file limit, before it fails.
const DESCRIPTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens `path`; at the open-file limit (EMFILE, ENFILE) it waits for transfers to
/// finish and free descriptors, up to [`DESCRIPTOR_WAIT`], instead of failing the
/// download at once: backpressure for a rack that boots at once.
async fn open_waiting_for_descriptors(path: &Path) -> io::Result<tokio::fs::File> {
    let deadline = tokio::time::Instant::now() + DESCRIPTOR_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match tokio::fs::File::open(path).await {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!(path = %path.display(), "out of file descriptors; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            r => return r,
        }
    }
}
