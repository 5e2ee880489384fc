//! The `/_/file` handler: maps a file id back to its file, checks that the machine
//! asking was given it ([`crate::grants`]), and hands the request to
//! [`crate::local`] or [`crate::remote`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::HeaderMap;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::urls::{FileQuery, MachineQuery};
use ironpxe_core::{BootDecision, FileId, FileRef};

use crate::body::{Tracked, Transfer};
use crate::local::serve_local;
use crate::remote::serve_remote;
use crate::{plain, Conn, HttpState, Peer};

pub(crate) async fn file(
    State(st): State<Arc<HttpState>>,
    conn: Conn,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (id, machine) = match FileQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => (q.id, q.machine),
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let Some(fref) = st.booter.file(&id) else {
        tracing::debug!(%id, peer = %Peer(conn.peer), "request for an unknown file id");
        return plain(StatusCode::NOT_FOUND, "unknown file");
    };
    if !given(&st, machine, &id).await {
        // The same answer as for an unknown id: nothing tells whether it exists.
        tracing::debug!(
            %id,
            mac = %machine.mac,
            peer = %Peer(conn.peer),
            "file not given to this machine"
        );
        return plain(StatusCode::NOT_FOUND, "unknown file");
    }
    let req = FileRequest {
        id,
        fref: &fref,
        head: method == Method::HEAD,
        peer: conn.peer,
    };
    match &fref {
        FileRef::Local(path) => serve_local(req, path, &headers).await,
        FileRef::Remote(url) => serve_remote(req, &st.client, url, &headers).await,
    }
}

/// Whether `machine` was given file `id`: in a script it fetched, or by what the
/// booter says it boots now (after a restart, or once its grant was dropped).
async fn given(st: &HttpState, machine: MachineQuery, id: &FileId) -> bool {
    if st.grants.holds(machine.mac, id) {
        return true;
    }
    let booter = st.booter.clone();
    let MachineQuery { mac, arch } = machine;
    // Answered from what the booter knows now; an API booter is not waited for.
    let decision =
        tokio::task::spawn_blocking(move || booter.decide(mac, arch, Duration::ZERO)).await;
    match decision {
        Ok(BootDecision::Netboot(spec)) if spec.file_ids().contains(id) => {
            st.grants.grant(mac, &spec);
            true
        }
        _ => false,
    }
}

/// One file request, for logging.
pub(crate) struct FileRequest<'a> {
    pub(crate) id: FileId,
    pub(crate) fref: &'a FileRef,
    pub(crate) head: bool,
    peer: Option<SocketAddr>,
}

impl FileRequest<'_> {
    /// Logs the start and returns the transfer that logs the end (or failure).
    pub(crate) fn start(self, bytes: Option<u64>, range: &str) -> Transfer {
        emit(BootEvent::FileStart {
            id: self.id.clone(),
            file: self.fref.to_string(),
            bytes,
            range: range.to_string(),
            peer: self.peer,
        });
        Transfer::new(self.id, self.peer, bytes)
    }

    /// Logs the start and wraps the body so its end (or failure) is logged too.
    pub(crate) fn body(
        self,
        bytes: Option<u64>,
        range: &str,
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    ) -> Body {
        Tracked::body(stream, self.start(bytes, range))
    }
}
