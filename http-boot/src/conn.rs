//! ironpxe's HTTP/1.1 connection driver: it reads requests, hands each to the axum
//! router, and writes the answer, sending local files with sendfile(2).
//!
//! hyper, which `axum::serve` uses, writes every body byte from user space, so a
//! kernel or initrd would be read into a buffer and copied out again, chunk by chunk.
//! Here a local file answer carries a [`SendSlot`]; the driver takes the open file
//! from it and lets the kernel copy from the page cache to the socket. That is what
//! keeps a download's memory at a few kilobytes and its CPU cost low.
//!
//! What the driver implements of HTTP/1.1 is what boot clients use: `GET` and `HEAD`
//! (other methods reach the router, which answers 405), keep-alive and pipelined
//! requests, bodies framed by `Content-Length` (up to [`MAX_BODY`]; a chunked
//! request body is refused with 501), and answers framed by `Content-Length` or,
//! when their length is not known, chunked (HTTP/1.1) or ended by closing the
//! connection (HTTP/1.0). Request heads are parsed with `httparse`.
//!
//! Limits, each closing the connection (the durations and caps are [`HttpLimits`]):
//!
//! - a head larger than [`MAX_HEAD`] bytes or with more than [`MAX_HEADERS`] headers
//!   (431);
//! - a head not complete within the head timeout (408). On a new connection the
//!   clock starts at accept, so a connection that sends nothing is closed then; on a
//!   kept-alive one it starts at the request's first byte;
//! - no new request within the idle timeout on a kept-alive connection;
//! - an answer the client takes nothing of for the send-stall limit. That limit is
//!   the kernel's `TCP_USER_TIMEOUT`: sent data unacknowledged, or the client's
//!   receive window kept shut, for that long. It measures the client's own progress,
//!   so a slow download that keeps moving is never cut, however much of it the
//!   socket buffers hold. (A timer on our writes could not tell: with a few MiB in
//!   the send buffer, a slow client frees space for a write only every few seconds.)
//!
//! Connections are capped ([`HttpLimits::max_connections`]), and one address gets a
//! share ([`HttpLimits::max_connections_per_addr`]): it may always hold that many,
//! and more only while fewer than half of the cap are in use, so one address cannot
//! take the connections every other client needs. A connection over the cap is
//! answered `503` at once, without reading from it, and closed.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Version};
use axum::Router;
use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::body::Transfer;
use crate::ConnAddrs;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (ironpxe's routes take none).
pub const MAX_BODY: usize = 64 * 1024;
/// Time from accept (or, on a kept-alive connection, from a request's first byte) to
/// the end of the request's head, by default.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a kept-alive connection may sit between requests, by default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client may take none of an answer before it is given up, by default.
pub const SEND_STALL: Duration = Duration::from_secs(60);

/// The connection limits of one server: timeouts and caps.
///
/// [`HttpLimits::default`] derives the caps from the process's open-file limit (read
/// when called; ironpxe raises it first): a quarter of it for connections (each may
/// also hold an open file), between 64 and 16,384, and for one address a
/// thirty-second of that, at least 8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// From accept, or from a request's first byte on a kept-alive connection, to
    /// the end of the request's head.
    pub head_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// How long a client may take none of an answer (`TCP_USER_TIMEOUT`).
    pub send_stall: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections one address may always hold; it gets more only while fewer than
    /// half of `max_connections` are open.
    pub max_connections_per_addr: usize,
}

impl HttpLimits {
    /// The default limits for a process allowed `open_files` descriptors.
    pub fn for_open_files(open_files: u64) -> Self {
        let max = (open_files / 4).clamp(64, 16_384) as usize;
        HttpLimits {
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            send_stall: SEND_STALL,
            max_connections: max,
            max_connections_per_addr: (max / 32).max(8),
        }
    }
}

impl Default for HttpLimits {
    /// [`HttpLimits::for_open_files`] with the current soft open-file limit.
    fn default() -> Self {
        use nix::sys::resource::{getrlimit, Resource};
        let soft = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Self::for_open_files(soft)
    }
}

/// The answer to a connection over the cap, written without reading the request.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 28\r\nretry-after: 2\r\nconnection: close\r\n\r\ntoo many connections, retry\n";

/// How often, at most, refusals are summarised in a warning.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Open connections, in all and per address.
#[derive(Default)]
struct Counts {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
}

/// The connection counts a server shares with its connection tasks.
#[derive(Clone)]
struct Tally {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    per_addr: usize,
}

/// One open connection, counted until dropped.
struct Permit {
    tally: Tally,
    addr: IpAddr,
}

impl Tally {
    fn new(limits: &HttpLimits) -> Self {
        Tally {
            counts: Arc::default(),
            max: limits.max_connections.max(1),
            per_addr: limits.max_connections_per_addr.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `addr`, or says why it is refused.
    fn admit(&self, addr: IpAddr) -> Result<Permit, &'static str> {
        let mut c = self.lock();
        if c.total >= self.max {
            return Err("connection limit reached");
        }
        let mine = c.by_addr.get(&addr).copied().unwrap_or(0);
        if mine >= self.per_addr && c.total >= self.max / 2 {
            return Err("per-address connection share reached");
        }
        c.total += 1;
        *c.by_addr.entry(addr).or_insert(0) += 1;
        Ok(Permit {
            tally: self.clone(),
            addr,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.tally.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.by_addr.remove(&self.addr);
            }
        }
    }
}

/// The address a connection is counted under: IPv4-mapped IPv6 as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Largest piece handed to one sendfile(2) call, so one fast client cannot hold a
/// runtime worker for long.
const SENDFILE_MAX: usize = 1 << 20;
/// Body bytes gathered into the head's write: a small answer leaves in one segment.
const COALESCE: usize = 16 * 1024;

/// A local file ready to go out, with the transfer that accounts for it.
pub(crate) struct LocalSend {
    pub(crate) file: std::fs::File,
    pub(crate) start: u64,
    pub(crate) count: u64,
    pub(crate) transfer: Transfer,
}

/// Hands a [`LocalSend`] from the file handler to whoever sends it first: the
/// connection driver (sendfile) or the fallback body (chunked reads).
#[derive(Clone)]
pub(crate) struct SendSlot(Arc<Mutex<Option<LocalSend>>>);

impl SendSlot {
    pub(crate) fn new(send: LocalSend) -> Self {
        SendSlot(Arc::new(Mutex::new(Some(send))))
    }

    pub(crate) fn take(&self) -> Option<LocalSend> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Accepts connections on `listener` and serves each on its own task until `stop`
/// turns true; then waits up to `drain` for running answers. Idle connections close
/// at once on `stop`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    stop: watch::Receiver<bool>,
    drain: Duration,
    limits: HttpLimits,
) -> io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopped = stop.clone();
    let tally = Tally::new(&limits);
    let limits = Arc::new(limits);
    let mut refused = 0u64;
    let mut last_warn: Option<tokio::time::Instant> = None;
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept: wait a
                // little for transfers to end rather than spin.
                tracing::debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let permit = match tally.admit(canonical(peer.ip())) {
            Ok(p) => p,
            Err(why) => {
                // Answered without reading, so it costs no more than the accept.
                let _ = stream.try_write(BUSY);
                drop(stream);
                tracing::debug!(%peer, why, "HTTP connection refused");
                refused += 1;
                let now = tokio::time::Instant::now();
                if last_warn.is_none_or(|t| now.duration_since(t) >= REFUSAL_WARN_EVERY) {
                    tracing::warn!(
                        refused,
                        last_peer = %peer,
                        why,
                        max_connections = limits.max_connections,
                        max_connections_per_addr = limits.max_connections_per_addr,
                        "HTTP connections refused (answered 503)"
                    );
                    last_warn = Some(now);
                    refused = 0;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The kernel gives up on a client that takes nothing for the stall limit;
        // where it cannot, the driver times its own writes instead.
        let ms = u32::try_from(limits.send_stall.as_millis()).unwrap_or(u32::MAX);
        let kernel_stall = nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::TcpUserTimeout,
            &ms.max(1),
        )
        .is_ok();
        let addrs = ConnAddrs {
            peer,
            local: stream.local_addr().ok(),
        };
        let ctx = ConnCtx {
            limits: limits.clone(),
            write_timeout: (!kernel_stall).then_some(limits.send_stall),
        };
        tasks.spawn(connection(
            stream,
            addrs,
            router.clone(),
            stop.clone(),
            ctx,
            permit,
        ));
    }
    drop(listener);
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all).await.is_err() {
        tracing::warn!("HTTP shutdown: transfers still running after {drain:?}, stopping anyway");
        tasks.abort_all();
    }
    Ok(())
}

/// Why a connection ends early; only logged at debug level.
#[derive(Debug)]
enum Close {
    /// The peer closed, timed out or reset; nothing more to say.
    Quiet,
    /// A request we refuse: answer this status, then close.
    Refuse(StatusCode, &'static str),
}

impl From<io::Error> for Close {
    fn from(_: io::Error) -> Self {
        Close::Quiet
    }
}

/// What a connection task needs besides its socket.
struct ConnCtx {
    limits: Arc<HttpLimits>,
    /// The driver's own limit on a write making no progress, when the kernel's
    /// (`TCP_USER_TIMEOUT`) could not be set.
    write_timeout: Option<Duration>,
}

/// Serves one connection's requests in order. `_permit` counts it while it lives.
async fn connection(
    mut io: TcpStream,
    addrs: ConnAddrs,
    router: Router,
    mut stop: watch::Receiver<bool>,
    ctx: ConnCtx,
    _permit: Permit,
) {
    let mut buf = BytesMut::with_capacity(2048);
    let mut out = Vec::with_capacity(1024);
    // The first request's head is due within the head timeout of accept.
    let mut first = Some(tokio::time::Instant::now() + ctx.limits.head_timeout);
    loop {
        let req = match read_request(&mut io, &mut buf, &mut stop, &ctx, first.take()).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(Close::Quiet) => return,
            Err(Close::Refuse(status, why)) => {
                tracing::debug!(peer = %addrs.peer, %status, why, "HTTP request refused");
                if write_refusal(&mut io, &mut out, status, why, &ctx)
                    .await
                    .is_ok()
                {
                    linger(&mut io).await;
                }
                return;
            }
        };
        let head = req.method() == Method::HEAD;
        let version = req.version();
        let keep_alive = wants_keep_alive(&req);
        let mut req = req;
        req.extensions_mut().insert(ConnectInfo(addrs));
        let Ok(resp) = router.clone().oneshot(req).await;
        match write_response(&mut io, &mut out, resp, head, version, keep_alive, &ctx).await {
            Ok(true) if keep_alive => {}
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(peer = %addrs.peer, error = %e, "HTTP answer cut short");
                return;
            }
        }
    }
}

/// Reads one request: its head (parsed with httparse) and its body. `None` when the
/// peer closed between requests, or `stop` came while idle, or a new connection
/// sent nothing by `first` (the first request's deadline).
async fn read_request(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    stop: &mut watch::Receiver<bool>,
    ctx: &ConnCtx,
    first: Option<tokio::time::Instant>,
) -> Result<Option<Request<Body>>, Close> {
    let limits = &ctx.limits;
    let mut deadline = first;
    let (builder, head_len) = loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse_head(buf)? {
                break parsed;
            }
            if buf.len() >= MAX_HEAD {
                return Err(Close::Refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ));
            }
            // Part of this head came in with the previous request: its clock runs.
            if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + limits.head_timeout);
            }
        }
        let idle = buf.is_empty();
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + limits.idle_timeout);
        let read = tokio::time::timeout_at(until, io.read_buf(buf));
        let n = tokio::select! {
            r = read => match r {
                Ok(r) => r?,
                Err(_) if idle => return Ok(None),
                Err(_) => return Err(Close::Refuse(StatusCode::REQUEST_TIMEOUT, "request head too slow")),
            },
            _ = stop.wait_for(|s| *s), if idle => return Ok(None),
        };
        if n == 0 {
            return if idle { Ok(None) } else { Err(Close::Quiet) };
        }
        if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + limits.head_timeout);
        }
    };
    buf.advance(head_len);
    let headers = builder.headers_ref().cloned().unwrap_or_default();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Close::Refuse(
            StatusCode::NOT_IMPLEMENTED,
            "request bodies with Transfer-Encoding are not accepted",
        ));
    }
    let len = match headers.get(header::CONTENT_LENGTH) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or(Close::Refuse(StatusCode::BAD_REQUEST, "bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(Close::Refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    if len > buf.len() {
        let expects = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects {
            send(io, b"HTTP/1.1 100 Continue\r\n\r\n", ctx).await?;
        }
        let d = tokio::time::Instant::now() + limits.head_timeout;
        while buf.len() < len {
            match tokio::time::timeout_at(d, io.read_buf(buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Close::Quiet),
                Ok(Ok(_)) => {}
                Err(_) => {
                    return Err(Close::Refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "request body too slow",
                    ))
                }
            }
        }
    }
    let body = if len == 0 {
        Body::empty()
    } else {
        Body::from(buf.split_to(len).freeze())
    };
    builder
        .body(body)
        .map(Some)
        .map_err(|_| Close::Refuse(StatusCode::BAD_REQUEST, "malformed request"))
}

/// Parses a complete head at the start of `buf`: a request builder and the head's
/// length, or `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(axum::http::request::Builder, usize)>, Close> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Close::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            ))
        }
        Err(_) => return Err(Close::Refuse(StatusCode::BAD_REQUEST, "malformed request")),
    };
    let bad = || Close::Refuse(StatusCode::BAD_REQUEST, "malformed request");
    let method = Method::from_bytes(req.method.ok_or_else(bad)?.as_bytes()).map_err(|_| bad())?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut b = Request::builder()
        .method(method)
        .uri(req.path.ok_or_else(bad)?)
        .version(version);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad())?;
        b = b.header(name, value);
    }
    Ok(Some((b, len)))
}

/// Whether the client asked to keep the connection: HTTP/1.1 unless
/// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
fn wants_keep_alive<B>(req: &Request<B>) -> bool {
    let has = |token: &str| {
        req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    match req.version() {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// Writes the status line and headers of `status` into `out`.
fn put_head(
    out: &mut Vec<u8>,
    version: Version,
    status: StatusCode,
    headers: &axum::http::HeaderMap,
    capitalized: bool,
) {
    out.clear();
    let v = if version == Version::HTTP_10 {
        "1.0"
    } else {
        "1.1"
    };
    let _ = write!(
        out,
        "HTTP/{v} {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        if capitalized {
            let mut upper = true;
            for &c in name.as_str().as_bytes() {
                out.push(if upper { c.to_ascii_uppercase() } else { c });
                upper = c == b'-';
            }
        } else {
            out.extend_from_slice(name.as_str().as_bytes());
        }
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

async fn write_refusal(
    io: &mut TcpStream,
    out: &mut Vec<u8>,
    status: StatusCode,
    why: &str,
    ctx: &ConnCtx,
) -> io::Result<()> {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        why.len() + 1
    );
    send(io, out, ctx).await
}

/// Closes our side and reads what the client still sends, for a moment, so that
/// closing with unread input (which makes the kernel send a reset) cannot destroy
/// the answer before the client has read it.
async fn linger(io: &mut TcpStream) {
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 256 * 1024usize;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Runs one write step; under the driver's own stall limit when the kernel's is not
/// in force.
async fn stall_limited<T>(
    ctx: &ConnCtx,
    step: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match ctx.write_timeout {
        None => step.await,
        Some(t) => tokio::time::timeout(t, step)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?,
    }
}

/// Writes `bytes`, giving up when the client takes none for the send-stall limit.
async fn send(io: &mut TcpStream, mut bytes: &[u8], ctx: &ConnCtx) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = stall_limited(ctx, io.write(bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Writes one answer. Returns whether the connection may carry another request.
async fn write_response(
    io: &mut TcpStream,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    head: bool,
    version: Version,
    keep_alive: bool,
    ctx: &ConnCtx,
) -> io::Result<bool> {
    let (mut parts, body) = resp.into_parts();
    let local = parts.extensions.remove::<SendSlot>().and_then(|s| s.take());
    let no_body = head
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    // A handler that answers `Connection: close` ends the connection after its
    // answer (GRUB's http client reads a body until the connection closes).
    let handler_closes = parts
        .headers
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut reuse = keep_alive && !handler_closes;
    // How the body is framed on the wire.
    let mut chunked = false;
    if !no_body && local.is_none() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match http_body::Body::size_hint(&body).exact() {
            Some(n) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None if version == Version::HTTP_11 => {
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                chunked = true;
            }
            None => reuse = false,
        }
    }
    if !reuse {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if version == Version::HTTP_10 {
        // An HTTP/1.0 client assumes the connection closes unless told otherwise.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    let capitalized = parts
        .extensions
        .get::<crate::CapitalizedHeaders>()
        .is_some();
    put_head(out, version, parts.status, &parts.headers, capitalized);
    out.extend_from_slice(b"\r\n");

    if let Some(mut local) = local {
        send(io, out, ctx).await?;
        return match send_file(io, &mut local, ctx).await {
            Ok(()) => {
                local.transfer.done();
                Ok(reuse)
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::TimedOut
                ) {
                    let why = format!("client went away before the end: {e}");
                    local.transfer.failed(&why);
                } else {
                    local.transfer.failed(&e);
                }
                Err(e)
            }
        };
    }
    if no_body {
        send(io, out, ctx).await?;
        return Ok(reuse);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut written = 0u64;
    let mut body = body;
    loop {
        // Whatever is gathered goes out before waiting for a body that is not ready:
        // a live stream (server-sent events) must show its head and each event at
        // once, not when 16 KiB have piled up.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    send(io, out, ctx).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(io::Error::other)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        written += data.len() as u64;
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            send(io, out, ctx).await?;
            out.clear();
            send(io, &data, ctx).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if declared.is_some_and(|d| written >= d) {
            break;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(io, out, ctx).await?;
    // A body shorter than it said leaves the client unable to find the next answer.
    Ok(reuse && declared.is_none_or(|d| d == written))
}

/// Sends `local`'s range of its file with sendfile(2), counting progress on its
/// transfer.
async fn send_file(io: &mut TcpStream, local: &mut LocalSend, ctx: &ConnCtx) -> io::Result<()> {
    let end = local.start + local.count;
    let mut offset = local.start as i64;
    while (offset as u64) < end {
        let want = (end - offset as u64).min(SENDFILE_MAX as u64) as usize;
        let step = async {
            loop {
                io.writable().await?;
                match io.try_io(Interest::WRITABLE, || {
                    nix::sys::sendfile::sendfile64(
                        io.as_fd(),
                        local.file.as_fd(),
                        Some(&mut offset),
                        want,
                    )
                    .map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        let n = stall_limited(ctx, step).await?;
        if n == 0 {
            let sent = local.transfer.bytes();
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("source ended after {sent} of {} bytes", local.count),
            ));
        }
        local.transfer.sent(n as u64);
    }
    Ok(())
}
