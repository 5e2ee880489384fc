//! The tokio driver: receives requests on the well-known socket and runs each read
//! transfer on its own socket (a new TID, RFC 1350) around a [`Transfer`].

use crate::content::{Content, ReadError, Reader};
use crate::files::{FileSource, OpenError};
use crate::limits::{Admission, Ticket, TokenBucket, Verdict};
use crate::packet::{encode_error, ErrorCode, Mode, Packet, Request, MAX_BLKSIZE, MIN_BLKSIZE};
use crate::transfer::{Outcome, ReadRequest, TftpConfig, Transfer};
use ironpxe_core::event::{emit, BootEvent};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

/// ERROR 5 answers a transfer socket sends per second, at most, to packets that are
/// not from its client (in bursts of as many), so it cannot be used to reflect a
/// flood.
const STRAY_ERRORS_PER_SECOND: u32 = 10;

/// Refusals the listening port answers per second (and burst): ERRORs to malformed,
/// write or refused requests, each with its event. A flood past this gets no answer
/// and no log line per packet; how many went unanswered is logged at most once per
/// [`Refusals::SUMMARY_EVERY`].
const REFUSALS_PER_SECOND: u32 = 50;

/// Serves read requests arriving on `socket` until `shutdown` completes.
///
/// Each RRQ gets a task with a fresh UDP socket bound to the listener's IP (the
/// unspecified address if the listener is bound to it) and port 0. That socket is not
/// `connect`ed: datagrams from any other address or port are answered with ERROR 5
/// (unknown transfer ID, RFC 1350), at most [`STRAY_ERRORS_PER_SECOND`] a second,
/// and leave the transfer alone.
///
/// Refusals are sent from the listening socket: WRQ gets ERROR 2 ("read-only
/// server"), mail mode ERROR 0, a malformed request ERROR 4, and a request beyond
/// `cfg.max_transfers` concurrent transfers, or beyond `cfg.max_per_address` from
/// one client address, ERROR 0 ("server busy"). A request repeated from the same
/// address and port for a file it is already being sent gets no second transfer: the
/// running one answers it (see `Admission::admit` for why).
///
/// The listening task only parses requests (in one pass over the datagram) and
/// starts tasks: opening and reading files, and everything else a transfer does,
/// happens in the transfer's own task.
///
/// On shutdown the listening socket is closed, so no new request is taken, and
/// transfers still running get `cfg.shutdown_drain` to finish; those still running
/// then are aborted. Receive errors are logged and do not stop the server; the only
/// error returned is failing to read the socket's local address.
pub async fn serve(
    socket: UdpSocket,
    files: Arc<dyn FileSource>,
    cfg: TftpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local_ip = socket.local_addr()?.ip();
    let admission = Arc::new(Mutex::new(Admission::new(
        cfg.max_transfers,
        cfg.max_per_address,
    )));
    let cfg = Arc::new(cfg);
    let mut tasks = JoinSet::new();
    // Requests are small, but RFC 2347 lets option lists grow past 512 bytes.
    let mut buf = vec![0u8; 65536];
    let mut refusals = Refusals::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    if let Some((req, ticket)) = accept(&socket, &buf[..n], peer, &admission, &mut refusals).await {
                        let span = tracing::info_span!("tftp", %peer, file = %req.filename);
                        let fut = run_transfer(local_ip, peer, req, files.clone(), cfg.clone(), ticket);
                        tasks.spawn(fut.instrument(span));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "tftp listener receive error"),
            }
        }
    }
    drop(socket);
    if !tasks.is_empty() {
        tracing::info!(
            running = tasks.len(),
            drain = ?cfg.shutdown_drain,
            "tftp shutting down, letting running transfers finish"
        );
        let finished = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(cfg.shutdown_drain, finished)
            .await
            .is_err()
        {
            tracing::warn!(
                running = tasks.len(),
                "tftp shutdown: transfers still running after {:?}, aborting them",
                cfg.shutdown_drain
            );
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Decides what to do with a datagram on the listening socket. Returns the request
/// and its place among the running transfers when a transfer should start.
async fn accept(
    socket: &UdpSocket,
    datagram: &[u8],
    peer: SocketAddr,
    admission: &Arc<Mutex<Admission>>,
    refusals: &mut Refusals,
) -> Option<(Request, Ticket)> {
    // Past the refusal budget a refusal is neither answered nor logged: only counted.
    let mut refuse = |code: ErrorCode, msg: String| {
        let answer = refusals.allow(Instant::now());
        async move {
            if answer {
                if let Err(e) = socket.send_to(&encode_error(code, &msg), peer).await {
                    tracing::debug!(%peer, error = %e, "tftp could not send error");
                }
            }
            answer
        }
    };
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(req)) => {
            if req.mode == Mode::Mail {
                refuse(ErrorCode::NotDefined, "mail mode is not supported".into()).await;
                return None;
            }
            match Ticket::take(admission, peer, &req.filename) {
                Ok(ticket) => Some((req, ticket)),
                Err(Verdict::Duplicate) => {
                    tracing::debug!(%peer, file = %req.filename, "tftp repeated request joins its transfer");
                    None
                }
                Err(Verdict::ServerFull) => {
                    // Backpressure, not failure: the client's retransmitted request
                    // takes the next free slot.
                    tracing::debug!(%peer, file = %req.filename, "tftp slots all taken; request left for the client to repeat");
                    None
                }
                Err(refused) => {
                    let msg = refused.busy_message().unwrap_or("server busy");
                    if refuse(ErrorCode::NotDefined, msg.into()).await {
                        emit(BootEvent::TftpFailed {
                            file: req.filename.clone(),
                            peer,
                            reason: msg.into(),
                        });
                    }
                    None
                }
            }
        }
        Ok(Packet::Wrq(_)) => {
            refuse(ErrorCode::AccessViolation, "read-only server".into()).await;
            None
        }
        // Never answer an ERROR, whatever its shape (RFC 1350).
        Ok(Packet::Error { .. }) => None,
        Err(_) if datagram.starts_with(&[0, 5]) => None,
        Ok(other) => {
            refuse(
                ErrorCode::IllegalOperation,
                format!("expected a read request, got {}", other.kind()),
            )
            .await;
            None
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "tftp malformed request");
            refuse(
                ErrorCode::IllegalOperation,
                format!("malformed request: {e}"),
            )
            .await;
            None
        }
    }
}

/// The listening port's budget of refusals ([`REFUSALS_PER_SECOND`]), and the count
/// of requests it left unanswered.
struct Refusals {
    bucket: TokenBucket,
    unanswered: u64,
    last_summary: Option<Instant>,
}

impl Refusals {
    /// At most one summary line this often.
    const SUMMARY_EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Refusals {
            bucket: TokenBucket::new(REFUSALS_PER_SECOND, REFUSALS_PER_SECOND),
            unanswered: 0,
            last_summary: None,
        }
    }

    /// Whether a datagram received at `now` may be answered if it is refused.
    /// Valid requests are taken either way; this only limits what refusals cost.
    fn allow(&mut self, now: Instant) -> bool {
        if self.bucket.allow(now) {
            return true;
        }
        self.unanswered += 1;
        let due = self
            .last_summary
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::SUMMARY_EVERY);
        if due {
            tracing::warn!(
                unanswered = self.unanswered,
                limit_per_second = REFUSALS_PER_SECOND,
                "tftp: more bad or refused requests than the listener answers; the rest get no answer"
            );
            self.unanswered = 0;
            self.last_summary = Some(now);
        }
        false
    }
}

/// A read that has to wait for the disk, on the blocking pool; the reader goes
/// with it and comes back with the answer.
type PendingRead = JoinHandle<(
    Reader,
    ReadRequest,
    Result<crate::content::Chunk, ReadError>,
)>;

/// Waits for the read in flight, if any (never completes otherwise).
async fn read_done(
    pending: &mut Option<PendingRead>,
) -> Result<
    (
        Reader,
        ReadRequest,
        Result<crate::content::Chunk, ReadError>,
    ),
    tokio::task::JoinError,
> {
    match pending {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn run_transfer(
    local_ip: IpAddr,
    peer: SocketAddr,
    req: Request,
    files: Arc<dyn FileSource>,
    cfg: Arc<TftpConfig>,
    _ticket: Ticket,
) {
    let file = req.filename.as_str();
    let failed = |reason: &str| {
        emit(BootEvent::TftpFailed {
            file: file.to_string(),
            peer,
            reason: reason.to_string(),
        });
    };
    let sock = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            failed(&format!("cannot open transfer socket: {e}"));
            return;
        }
    };
    let opened = match files.open_nonblocking(file) {
        Some(r) => r,
        None => {
            let (files, name) = (files.clone(), req.filename.clone());
            tokio::task::spawn_blocking(move || files.open(&name))
                .await
                .unwrap_or_else(|e| Err(OpenError::Io(format!("file reader failed: {e}"))))
        }
    };
    let content: Content = match opened {
        Ok(c) => c,
        Err(e) => {
            failed(&e.to_string());
            let _ = sock
                .send_to(&encode_error(e.error_code(), &e.to_string()), peer)
                .await;
            return;
        }
    };
    let max_blksize = max_blksize_for(local_ip, peer);
    let started = Instant::now();
    let size = content.len();
    let mut t = if max_blksize < cfg.max_blksize {
        let cfg = TftpConfig {
            max_blksize,
            ..TftpConfig::clone(&cfg)
        };
        Transfer::new(started, &req, size, &cfg)
    } else {
        Transfer::new(started, &req, size, &cfg)
    };
    emit(BootEvent::TftpStart {
        file: file.to_string(),
        peer,
        blksize: t.blksize(),
        windowsize: t.windowsize(),
        tsize: req.options.tsize.is_some(),
        size,
    });
    // The reader is here when no read is in flight, and on the blocking pool with
    // the read otherwise.
    let mut reader = Some(Reader::new(content, req.mode == Mode::Netascii));
    let mut pending: Option<PendingRead> = None;
    let mut stray = TokenBucket::new(STRAY_ERRORS_PER_SECOND, STRAY_ERRORS_PER_SECOND);
    let mut buf = vec![0u8; 2048];
    // One timer for the whole transfer, moved only when the deadline comes earlier
    // or after it fired. In lockstep the deadline moves forward on every ACK; letting
    // the timer lag and fire early (a no-op in `handle_timeout`) costs one wake-up
    // per retransmission timeout instead of a timer update per block.
    let mut armed = t.poll_timeout().unwrap_or(started);
    let timer = tokio::time::sleep_until(armed.into());
    tokio::pin!(timer);
    // "Every byte sent" matters only for GRUB's kernels and initrds (the last one
    // marks the machine's boot, since GRUB cannot call back); other transfers skip
    // the event.
    let mut all_sent = !matches!(
        ironpxe_core::loader::GrubPath::parse(&file),
        Some(ironpxe_core::loader::GrubPath::File { .. })
    );
    loop {
        // Data from memory or the page cache is read here at once; a read that has
        // to wait for the disk goes to the blocking pool, and the transfer goes on
        // with what it holds meanwhile.
        while let Some(rd) = reader.as_mut() {
            let Some(r) = t.poll_read() else {
                break;
            };
            match rd.read_nonblocking(r) {
                Ok(c) => t.provide(r.offset, c.data, c.last),
                Err(ReadError::WouldBlock) => {
                    let Some(mut rd) = reader.take() else {
                        break;
                    };
                    pending = Some(tokio::task::spawn_blocking(move || {
                        let res = rd.read_blocking(r);
                        (rd, r, res)
                    }));
                }
                Err(e) => t.read_failed(e.to_string()),
            }
        }
        while let Some(pkt) = t.poll_transmit() {
            // A failed send is a lost packet; the retransmission timer recovers.
            if let Err(e) = sock.send_to(&pkt, peer).await {
                tracing::debug!(error = %e, "tftp send failed");
            }
        }
        if !all_sent && t.all_sent() {
            all_sent = true;
            emit(BootEvent::TftpSent {
                file: file.to_string(),
                peer,
                bytes: t.size().unwrap_or_default(),
            });
        }
        if t.is_finished() {
            break;
        }
        let Some(deadline) = t.poll_timeout() else {
            break;
        };
        if deadline < armed || timer.is_elapsed() {
            armed = deadline;
            timer.as_mut().reset(deadline.into());
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) if src == peer => t.handle(Instant::now(), &buf[..n]),
                Ok((_, src)) => {
                    if stray.allow(Instant::now()) {
                        tracing::debug!(%src, "tftp packet from unknown transfer id");
                        let e = encode_error(ErrorCode::UnknownTransferId, "unknown transfer id");
                        let _ = sock.send_to(&e, src).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "tftp transfer receive error"),
            },
            _ = &mut timer => t.handle_timeout(Instant::now()),
            done = read_done(&mut pending) => {
                pending = None;
                match done {
                    Ok((rd, r, res)) => {
                        reader = Some(rd);
                        match res {
                            Ok(c) => t.provide(r.offset, c.data, c.last),
                            Err(e) => t.read_failed(e.to_string()),
                        }
                    }
                    Err(e) => t.read_failed(format!("file reader failed: {e}")),
                }
            }
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    match t.outcome() {
        Some(Outcome::Complete {
            bytes, retransmits, ..
        }) => emit(BootEvent::TftpDone {
            file: file.to_string(),
            peer,
            bytes: *bytes,
            duration_ms,
            blksize: t.blksize(),
            windowsize: t.windowsize(),
            retransmits: *retransmits,
        }),
        Some(Outcome::Aborted { code, message }) => emit(BootEvent::TftpAborted {
            file: file.to_string(),
            peer,
            code: u16::from(*code),
            message: message.to_string(),
            duration_ms,
        }),
        Some(Outcome::Failed { reason }) => failed(&reason.to_string()),
        None => failed("transfer stopped without an outcome"),
    }
}

/// Block size used when the path MTU cannot be read: a 1500-byte Ethernet MTU minus
/// the IPv4, UDP and TFTP headers.
const FALLBACK_MAX_BLKSIZE: u16 = 1468;

/// The largest block that reaches `peer` without IP fragmentation: the path MTU the
/// kernel knows for the route (the interface MTU, or less if ICMP said so) minus the
/// IP, UDP and TFTP headers.
fn max_blksize_for(local_ip: IpAddr, peer: SocketAddr) -> u16 {
    let mtu = path_mtu(local_ip, peer);
    let overhead = if peer.is_ipv4() {
        20 + 8 + 4
    } else {
        40 + 8 + 4
    };
    match mtu {
        Some(m) if m > overhead + usize::from(MIN_BLKSIZE) => {
            (m - overhead).min(usize::from(MAX_BLKSIZE)) as u16
        }
        _ => FALLBACK_MAX_BLKSIZE,
    }
}

fn path_mtu(local_ip: IpAddr, peer: SocketAddr) -> Option<usize> {
    if !peer.is_ipv4() {
        return None;
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).ok()?;
    probe.connect(peer).ok()?;
    let mtu = nix::sys::socket::getsockopt(&probe, nix::sys::socket::sockopt::IpMtu).ok()?;
    usize::try_from(mtu).ok()
}
