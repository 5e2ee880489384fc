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
//! 2. `GET|HEAD /_/file?name=ID&mac=M&arch=N`: the booter maps the [`FileId`] back
//!    to a [`FileRef`], which is served only to a machine that was given it (see
//!    `grants`): another MAC gets 404. A local file is sent with sendfile(2), never
//!    read whole. It always has a `Content-Length` and accepts a single `Range`. A
//!    remote file is streamed through from its http(s) URL.
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
//!
//! # Layout
//!
//! - `lib.rs`: [`HttpState`], [`router`], [`serve`] and the connection addresses
//!   ([`ConnAddrs`]) every handler sees, and the plain-text error answer they share;
//! - `script`: the `/_/ipxe` script handler and the `/_/booting` callback;
//! - `grants`: which machine was given which file;
//! - `file`: the `/_/file` handler, which maps the id to a [`FileRef`] and hands the
//!   request to `local` (files on disk, with `range` parsing the `Range` header) or
//!   `remote` (http(s) files streamed through);
//! - `body`: the transfer accounting that emits `http.file.done` or `http.file.failed`;
//! - `conn`: the HTTP/1.1 connection driver [`serve`] runs, with sendfile for local
//!   files;
//! - `binaries`: the `/_/bin/` iPXE binaries.
//!
//! [`FileId`]: ironpxe_core::FileId
//! [`FileRef`]: ironpxe_core::FileRef

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use bytes::Bytes;
use ironpxe_core::urls::{MachineQuery, BINARY_PREFIX, BOOTING_PATH, FILE_PATH, SCRIPT_PATH};
use ironpxe_core::Booter;
use tokio::net::TcpListener;

mod binaries;
mod body;
mod conn;
mod file;
mod grants;
mod local;
mod range;
mod remote;
mod script;

pub use conn::{
    HttpLimits, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_BODY, MAX_HEAD, MAX_HEADERS, SEND_STALL,
};

/// Put in an answer's extensions to have its header names written capitalized
/// (`Content-Length`), for clients that match them case-sensitively: GRUB 2.06's
/// http reads the length only from `Content-Length: `.
#[derive(Clone, Copy, Debug, Default)]
pub struct CapitalizedHeaders;

/// What the HTTP handlers share: the booter, and a client for remote files.
#[derive(Clone)]
pub struct HttpState {
    booter: Arc<dyn Booter>,
    client: reqwest::Client,
    binaries: Arc<HashMap<String, Bytes>>,
    script_wait: Duration,
    grants: Arc<grants::Grants>,
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
            grants: Arc::default(),
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
        .route(SCRIPT_PATH, get(script::script))
        // `get` also answers HEAD; the handler sees the method.
        .route(FILE_PATH, get(file::file))
        .route(BOOTING_PATH, get(script::booting))
        .route(
            &format!("{BINARY_PREFIX}{{name}}"),
            get(binaries::ipxe_binary),
        )
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

/// Serves `router` on `listener` until `shutdown` completes, with the default
/// [`HttpLimits`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, drain, HttpLimits::default()).await
}

/// Serves `router` on `listener` until `shutdown` completes.
///
/// Connections are served by ironpxe's own HTTP/1.1 driver (see [`conn`]), which
/// sends local files with sendfile(2). Its fixed limits are [`MAX_HEAD`] and
/// [`MAX_HEADERS`]; its timeouts and connection caps are `limits`.
///
/// After the shutdown signal the listener is closed, so new connections are refused,
/// and idle connections are closed. Running requests (downloads) get `drain` to
/// finish, then this returns and those still running are abandoned.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    limits: HttpLimits,
) -> io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    conn::accept_loop(listener, router, rx, drain, limits).await
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
