//! ironpxe's HTTP boot server: the iPXE script, the kernel and initrds.
//!
//! [`router`] builds an axum [`Router`] over an [`HttpState`], which holds the
//! [`Booter`] and an HTTP client for remote files. [`serve`] runs it on a
//! [`TcpListener`] until shutdown. It records each connection's peer and local
//! address as [`ConnAddrs`].
//!
//! A booting machine's requests flow like this:
//!
//! 1. `GET /_/ipxe?mac=M&arch=N`: the booter decides. `Netboot` renders a script with
//!    [`ironpxe_ipxe::boot_script`]. Its base URL is `http://<Host header>`, or the
//!    connection's local address when the header is missing. `Local` answers
//!    [`ironpxe_ipxe::local_boot_script`], `Script` its text verbatim, and `Ignore`
//!    answers 404. The booter is asked with [`Booter::decide`] with the script wait, off the async
//!    workers, so an API booter may wait for its source here.
//! 2. `GET|HEAD /_/file?name=ID`: the booter maps the [`FileId`] back to a [`FileRef`].
//!    A local file is streamed from disk in 64 KiB chunks, never read whole. It
//!    always has a `Content-Length` and accepts a single `Range`. A remote file is
//!    streamed through from its http(s) URL.
//! 3. `GET /_/booting?mac=M&arch=N`: the script's last call before `boot`. It is only
//!    logged.
//!
//! UEFI HTTP Boot firmware starts one step earlier: ProxyDHCP hands it the URL of an
//! iPXE EFI binary, `GET|HEAD /_/bin/<name>`, served from memory
//! ([`HttpState::with_ipxe_binaries`]); that iPXE then asks DHCP again and fetches
//! the script.
//!
//! Route paths and query parameters are those of [`ironpxe_core::urls`], which also
//! builds every URL the DHCP server and the scripts hand out.
//!
//! Every step emits a `tracing` event with target `ironpxe::event` and a field
//! `event`: `http.script`, `http.local`, `http.ignored`, `http.file.start`, `http.file.done`
//! (the body was sent to its end), `http.file.failed` (read error, short file, or the
//! client went away), `http.booting` and `http.bin` (an iPXE binary was requested).

use ironpxe_core::event::{emit, BootEvent};
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ironpxe_core::urls::{
    BootUrls, FileQuery, MachineQuery, BINARY_PREFIX, BOOTING_PATH, FILE_PATH, SCRIPT_PATH,
};
use ironpxe_core::{BootDecision, Booter, FileId, FileRef};
use ironpxe_ipxe::{boot_script, local_boot_script, BootScript, Field, ScriptError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;
use url::Url;

/// Target of ironpxe's structured events.
/// Read size for local files: large enough for few syscalls, small enough that many
/// concurrent clients cost little memory.
const CHUNK: usize = 64 * 1024;

/// What the HTTP handlers share: the booter, and a client for remote files.
#[derive(Clone)]
pub struct HttpState {
    booter: Arc<dyn Booter>,
    client: reqwest::Client,
    binaries: Arc<HashMap<String, Bytes>>,
    script_wait: Duration,
}

/// How long the script handler lets the booter wait for a slow source by default.
/// iPXE waits longer than this for an HTTP answer; a booter bounds it further by its
/// own source timeout.
pub const SCRIPT_WAIT: Duration = Duration::from_secs(10);

impl HttpState {
    /// State that answers with `booter` and fetches remote files with a default
    /// client (rustls, 10 s connect timeout, no overall timeout, as initrds are large).
    pub fn new(booter: Arc<dyn Booter>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ironpxe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self::with_client(booter, client))
    }

    /// State with a caller-configured client for remote files.
    pub fn with_client(booter: Arc<dyn Booter>, client: reqwest::Client) -> Self {
        HttpState {
            booter,
            client,
            binaries: Arc::default(),
            script_wait: SCRIPT_WAIT,
        }
    }

    /// How long the script handler waits for the booter's answer (default
    /// [`SCRIPT_WAIT`]).
    pub fn with_script_wait(mut self, wait: Duration) -> Self {
        self.script_wait = wait;
        self
    }

    /// Serves these iPXE binaries (file name, contents) at `/_/bin/<name>`, for UEFI
    /// HTTP Boot clients.
    pub fn with_ipxe_binaries(mut self, files: impl IntoIterator<Item = (String, Bytes)>) -> Self {
        self.binaries = Arc::new(files.into_iter().collect());
        self
    }
}

/// Builds the routes `/_/ipxe`, `/_/file` and `/_/booting`.
///
/// Serve it with [`serve`], which provides the peer and local addresses the handlers
/// log and use as a fallback base URL. A router served another way still works but
/// logs no peer.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(SCRIPT_PATH, get(script))
        // `get` also answers HEAD; the handler sees the method.
        .route(FILE_PATH, get(file))
        .route(BOOTING_PATH, get(booting))
        .route(&format!("{BINARY_PREFIX}{{name}}"), get(ipxe_binary))
        .layer(axum::middleware::from_fn(client_span))
        .with_state(Arc::new(state))
}

/// Runs each request in a span naming the client (its MAC when the request carries
/// one, and its address), so one machine's requests read together in the log.
async fn client_span(
    conn: Conn,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mac = MachineQuery::parse_mac(req.uri().query().unwrap_or("")).ok();
    let span = tracing::info_span!(
        "http",
        mac = tracing::field::Empty,
        peer = %Peer(conn.peer),
        path = req.uri().path(),
    );
    if let Some(mac) = mac {
        span.record("mac", tracing::field::display(mac));
    }
    tracing::Instrument::instrument(next.run(req), span).await
}

/// Serves `router` on `listener` until `shutdown` completes.
///
/// After the shutdown signal the listener is closed, so new connections are refused,
/// and idle connections are closed. Running requests (downloads) get `drain` to
/// finish, then this returns and those still running are abandoned.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone without a signal: never stop for that.
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<ConnAddrs>(),
    )
    .with_graceful_shutdown(stopped(rx.clone()));
    tokio::select! {
        r = server => r,
        () = async { stopped(rx).await; tokio::time::sleep(drain).await } => {
            tracing::warn!(
                "HTTP shutdown: transfers still running after {drain:?}, stopping anyway"
            );
            Ok(())
        }
    }
}

/// The two ends of a client's TCP connection, recorded by [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAddrs {
    /// The client.
    pub peer: SocketAddr,
    /// Our address on that connection: the address the client reached us at.
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnAddrs {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ConnAddrs {
            peer: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// Connection addresses of a request, whichever way the router was served.
#[derive(Clone, Copy, Debug, Default)]
struct Conn {
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Conn {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        if let Some(ConnectInfo(c)) = ext.get::<ConnectInfo<ConnAddrs>>() {
            return Ok(Conn {
                peer: Some(c.peer),
                local: c.local,
            });
        }
        Ok(Conn {
            peer: ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            local: None,
        })
    }
}

/// Displays an optional peer as its address or `-`.
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("-"),
        }
    }
}

/// A short plain-text answer, one line.
fn plain(status: StatusCode, msg: impl fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

/// The `mac` and `arch` parameters, or a one-line reason for a 400.
fn machine(query: Option<&str>) -> Result<MachineQuery, String> {
    MachineQuery::parse(query.unwrap_or("")).map_err(|e| e.to_string())
}

/// `http://<Host>`, or `http://<local address>` without a Host header.
fn base_url(headers: &HeaderMap, local: Option<SocketAddr>) -> Result<BootUrls, String> {
    if let Some(host) = headers.get(header::HOST) {
        return host
            .to_str()
            .ok()
            .filter(|h| !h.contains('@'))
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            .and_then(|h| BootUrls::http_host(h.as_str()).ok())
            .ok_or_else(|| format!("invalid Host header {host:?}"));
    }
    match local {
        Some(a) if !a.ip().is_unspecified() => Ok(BootUrls::http(a.ip(), a.port())),
        _ => Err("missing Host header".to_string()),
    }
}

async fn script(
    State(st): State<Arc<HttpState>>,
    conn: Conn,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let MachineQuery { mac, arch } = match machine(query.as_deref()) {
        Ok(m) => m,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    let base = match base_url(&headers, conn.local) {
        Ok(b) => b,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    // Booters may consult an API; keep a slow one off the async workers.
    let booter = st.booter.clone();
    let wait = st.script_wait;
    let decision = match tokio::task::spawn_blocking(move || booter.decide(mac, arch, wait)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%mac, error = %e, "booter failed while deciding");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "booter failed");
        }
    };
    let spec = match decision {
        BootDecision::Netboot(spec) => spec,
        BootDecision::Local => {
            emit(BootEvent::HttpLocal {
                mac,
                arch,
                peer: conn.peer,
            });
            return (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                local_boot_script(mac, arch),
            )
                .into_response();
        }
        BootDecision::Script(text) => {
            emit(BootEvent::HttpScript {
                mac,
                arch,
                bytes: text.len() as u64,
                custom: true,
                peer: conn.peer,
            });
            return (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text.to_string(),
            )
                .into_response();
        }
        BootDecision::Ignore(reason) => {
            let body = format!("not booting {mac}: {reason}");
            emit(BootEvent::HttpIgnored { mac, reason });
            return plain(StatusCode::NOT_FOUND, body);
        }
        BootDecision::Pending => {
            let reason = format!("the boot source did not answer within {wait:?}");
            let body = format!("not booting {mac} yet: {reason}");
            emit(BootEvent::HttpIgnored { mac, reason });
            return plain(StatusCode::SERVICE_UNAVAILABLE, body);
        }
    };
    match boot_script(&BootScript {
        base_url: base.base(),
        mac,
        arch,
        spec: &spec,
    }) {
        Ok(text) => {
            emit(BootEvent::HttpScript {
                mac,
                arch,
                bytes: text.len() as u64,
                custom: false,
                peer: conn.peer,
            });
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Err(
            e @ ScriptError::Unrepresentable {
                field: Field::BaseUrl,
                ..
            },
        ) => plain(StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::error!(%mac, error = %e, "cannot render the boot script");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the boot script: {e}"),
            )
        }
    }
}

async fn booting(conn: Conn, RawQuery(query): RawQuery) -> Response {
    match machine(query.as_deref()) {
        Ok(MachineQuery { mac, arch }) => {
            emit(BootEvent::HttpBooting {
                mac,
                arch,
                peer: conn.peer,
            });
            StatusCode::OK.into_response()
        }
        Err(msg) => plain(StatusCode::BAD_REQUEST, msg),
    }
}

/// An iPXE binary by file name. EDK2's HTTP Boot accepts an image whose
/// Content-Type is `application/efi` (or whose URL ends in `.efi`).
async fn ipxe_binary(
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

async fn file(
    State(st): State<Arc<HttpState>>,
    conn: Conn,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let id = match FileQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q.id,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let Some(fref) = st.booter.file(&id) else {
        tracing::debug!(%id, peer = %Peer(conn.peer), "request for an unknown file id");
        return plain(StatusCode::NOT_FOUND, "unknown file");
    };
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

/// One file request, for logging.
struct FileRequest<'a> {
    id: FileId,
    fref: &'a FileRef,
    head: bool,
    peer: Option<SocketAddr>,
}

impl FileRequest<'_> {
    /// Logs the start and wraps the body so its end (or failure) is logged too.
    fn body(
        self,
        bytes: Option<u64>,
        range: &str,
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    ) -> Body {
        emit(BootEvent::FileStart {
            id: self.id.clone(),
            file: self.fref.to_string(),
            bytes,
            range: range.to_string(),
            peer: self.peer,
        });
        let mut tracked = Tracked {
            inner: Box::pin(stream),
            id: self.id,
            peer: self.peer,
            expected: bytes,
            sent: 0,
            started: Instant::now(),
            finished: false,
        };
        // hyper never polls a body whose Content-Length is 0.
        if bytes == Some(0) {
            tracked.done();
        }
        Body::from_stream(tracked)
    }
}

async fn serve_local(req: FileRequest<'_>, path: &Path, headers: &HeaderMap) -> Response {
    let mut f = match tokio::fs::File::open(path).await {
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

/// Upstream headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::LAST_MODIFIED,
    header::ETAG,
];

async fn serve_remote(
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

/// A parsed `Range` header against a file of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable range: send the whole file (absent, malformed, multiple ranges or
    /// another unit are all ignored, as RFC 9110 allows).
    Full,
    /// Bytes `start..=end`, already clamped to the file.
    Part { start: u64, end: u64 },
    /// A well-formed range that selects nothing: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
fn parse_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(h) = header else {
        return ByteRange::Full;
    };
    let Some((unit, spec)) = h.split_once('=') else {
        return ByteRange::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if a.is_empty() {
        // Suffix: the last n bytes.
        return match num(b) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if len == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = num(a) else {
        return ByteRange::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return ByteRange::Full,
        }
    };
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part {
        start,
        end: end.min(len - 1),
    }
}

/// A response body that logs when it has been sent to the end, or why not.
struct Tracked {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    id: FileId,
    peer: Option<SocketAddr>,
    expected: Option<u64>,
    sent: u64,
    started: Instant,
    finished: bool,
}

impl Tracked {
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
}

impl Tracked {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let r = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(r("bytes=0-4", 10), Part { start: 0, end: 4 });
        assert_eq!(r("bytes=3-", 10), Part { start: 3, end: 9 });
        assert_eq!(r("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(r("bytes=-30", 10), Part { start: 0, end: 9 });
        assert_eq!(r("bytes=5-100", 10), Part { start: 5, end: 9 });
        assert_eq!(r("BYTES = 9-9", 10), Part { start: 9, end: 9 });
        assert_eq!(r("bytes=10-", 10), Unsatisfiable);
        assert_eq!(r("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
        // Ignored, whole file: malformed, reversed, multiple, other unit.
        for h in [
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes",
            "bytes=1",
        ] {
            assert_eq!(r(h, 10), Full, "{h}");
        }
        assert_eq!(
            r("bytes=0-", u64::MAX),
            Part {
                start: 0,
                end: u64::MAX - 1
            }
        );
    }

    #[test]
    fn machine_params() {
        // The parsing itself is tested in ironpxe_core::urls; here, that a bad query
        // gives one line.
        assert_eq!(
            machine(Some("arch=7&mac=52-54-00-12-34-56")).unwrap(),
            MachineQuery {
                mac: ironpxe_core::MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                arch: ironpxe_core::ClientArch::EfiX64
            }
        );
        assert_eq!(machine(None).unwrap_err(), "missing mac parameter");
        assert!(machine(Some("arch=0&mac=zz"))
            .unwrap_err()
            .contains("invalid MAC"));
    }

    #[test]
    fn base_urls() {
        let mut h = HeaderMap::new();
        let local: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let base = |h: &HeaderMap, local| base_url(h, local).map(|b| b.to_string());
        assert_eq!(base(&h, Some(local)).unwrap(), "http://10.0.0.2:8080");
        assert_eq!(
            base(&h, Some("[fd00::2]:80".parse().unwrap())).unwrap(),
            "http://[fd00::2]"
        );
        assert!(base_url(&h, Some("0.0.0.0:80".parse().unwrap())).is_err());
        assert!(base_url(&h, None).is_err());
        h.insert(header::HOST, HeaderValue::from_static("[fd00::2]:8080"));
        assert_eq!(base(&h, Some(local)).unwrap(), "http://[fd00::2]:8080");
        for bad in ["a b", "user@host", "a/b", "${x}"] {
            h.insert(header::HOST, HeaderValue::from_static(bad));
            assert!(base_url(&h, Some(local)).is_err(), "{bad}");
        }
    }
}
