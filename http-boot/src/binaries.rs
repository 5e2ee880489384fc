//! The `/_/bin/<name>` iPXE binaries, served from memory to UEFI HTTP Boot firmware.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ironpxe_core::event::{emit, BootEvent};

use crate::{plain, Conn, HttpState, Peer};

/// An iPXE binary by file name. EDK2's HTTP Boot accepts an image whose
/// Content-Type is `application/efi` (or whose URL ends in `.efi`).
pub(crate) async fn ipxe_binary(
    State(st): State<Arc<HttpState>>,
    conn: Conn,
    method: Method,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let Some(bytes) = st.binaries.get(&name).cloned() else {
        tracing::debug!(%name, peer = %Peer(conn.peer), "request for an unknown iPXE binary");
        return plain(StatusCode::NOT_FOUND, "unknown file");
    };
    let content_type = if name.ends_with(".efi") {
        "application/efi"
    } else {
        "application/octet-stream"
    };
    emit(BootEvent::HttpBinary {
        file: name.clone(),
        bytes: bytes.len() as u64,
        head: method == Method::HEAD,
        peer: conn.peer,
    });
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_LENGTH, HeaderValue::from(bytes.len())),
    ];
    if method == Method::HEAD {
        return (headers, Body::empty()).into_response();
    }
    (headers, Body::from(bytes)).into_response()
}
