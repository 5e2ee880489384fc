//! Local files, streamed from disk in chunks, with a single `Range` honoured.

use std::io::{self, SeekFrom};
use std::path::Path;

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

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
    let mut f = match open_waiting_for_descriptors(path).await {
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
    if start > 0 {
        if let Err(e) = f.seek(SeekFrom::Start(start)).await {
            tracing::error!(path = %path.display(), error = %e, "cannot seek in served file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file");
        }
    }
    let stream = ReaderStream::with_capacity(f.take(count), CHUNK);
    (status, h, req.body(Some(count), &range_text, stream)).into_response()
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
