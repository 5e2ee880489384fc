//! Remote files, streamed through from their http(s) URL.

use std::io;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use url::Url;

use crate::file::FileRequest;
use crate::plain;

/// Upstream headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::LAST_MODIFIED,
    header::ETAG,
];

pub(crate) async fn serve_remote(
    req: FileRequest<'_>,
    client: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
) -> Response {
    let method = if req.head {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let range = headers.get(header::RANGE).cloned();
    let mut up = client.request(method, url.clone());
    for name in [header::RANGE, header::IF_RANGE] {
        if let Some(v) = headers.get(&name) {
            up = up.header(name, v.clone());
        }
    }
    let resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot fetch remote file");
            return plain(StatusCode::BAD_GATEWAY, "upstream fetch failed");
        }
    };
    let status = resp.status();
    let relay_416 = status == StatusCode::RANGE_NOT_SATISFIABLE && range.is_some();
    if !status.is_success() && !relay_416 {
        tracing::warn!(%url, %status, "remote file answered with an error");
        return plain(
            StatusCode::BAD_GATEWAY,
            format!("upstream answered {status}"),
        );
    }
    // Pass 206 only when we asked for a range; anything else 2xx becomes 200.
    let status = if relay_416 || (status == StatusCode::PARTIAL_CONTENT && range.is_some()) {
        status
    } else {
        StatusCode::OK
    };
    let mut h = HeaderMap::new();
    for name in PASSED_HEADERS {
        if let Some(v) = resp.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if req.head || relay_416 {
        return (status, h).into_response();
    }
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let range_text = range
        .as_ref()
        .and_then(|r| r.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let stream = resp.bytes_stream().map(|r| r.map_err(io::Error::other));
    (status, h, req.body(bytes, &range_text, stream)).into_response()
}
