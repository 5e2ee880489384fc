//! The tokio driver: receives requests on the well-known socket and runs each read
//! transfer on its own socket (a new TID, RFC 1350) around a [`Transfer`].

use crate::files::{FileSource, OpenError};
use crate::packet::{encode_error, ErrorCode, Mode, Packet, Request, MAX_BLKSIZE, MIN_BLKSIZE};
use crate::transfer::{Outcome, TftpConfig, Transfer};
use ironpxe_core::event::{emit, BootEvent};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Serves read requests arriving on `socket` until `shutdown` completes.
///
/// Each RRQ gets a task with a fresh UDP socket bound to the listener's IP (the
/// unspecified address if the listener is bound to it) and port 0. That socket is not
/// `connect`ed: datagrams from any other address or port are answered with ERROR 5
/// (unknown transfer ID, RFC 1350) and leave the transfer alone.
///
/// Refusals are sent from the listening socket: WRQ gets ERROR 2 ("read-only
/// server"), mail mode ERROR 0, a malformed request ERROR 4, and a request beyond
/// `cfg.max_transfers` concurrent transfers ERROR 0 ("server busy").
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
    let slots = Arc::new(Semaphore::new(cfg.max_transfers));
    let cfg = Arc::new(cfg);
    let mut tasks = JoinSet::new();
    // Requests are small, but RFC 2347 lets option lists grow past 512 bytes.
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    if let Some((req, permit)) = accept(&socket, &buf[..n], peer, &slots).await {
                        let span = tracing::info_span!("tftp", %peer, file = %req.filename);
                        let fut = run_transfer(local_ip, peer, req, files.clone(), cfg.clone(), permit);
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
/// and a concurrency slot when a transfer should start.
async fn accept(
    socket: &UdpSocket,
    datagram: &[u8],
    peer: SocketAddr,
    slots: &Arc<Semaphore>,
) -> Option<(Request, OwnedSemaphorePermit)> {
    let refuse = |code: ErrorCode, msg: String| async move {
        if let Err(e) = socket.send_to(&encode_error(code, &msg), peer).await {
            tracing::debug!(%peer, error = %e, "tftp could not send error");
        }
    };
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(req)) => {
            if req.mode == Mode::Mail {
                refuse(ErrorCode::NotDefined, "mail mode is not supported".into()).await;
                return None;
            }
            match slots.clone().try_acquire_owned() {
                Ok(permit) => Some((req, permit)),
                Err(_) => {
                    emit(BootEvent::TftpFailed {
                        file: req.filename.clone(),
                        peer,
                        reason: "server busy".into(),
                    });
                    refuse(
                        ErrorCode::NotDefined,
                        "server busy: too many transfers, retry later".into(),
                    )
                    .await;
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

/// The largest file served in netascii mode.
const NETASCII_MAX_BYTES: usize = 1 << 20;

async fn run_transfer(
    local_ip: IpAddr,
    peer: SocketAddr,
    req: Request,
    files: Arc<dyn FileSource>,
    cfg: Arc<TftpConfig>,
    _permit: OwnedSemaphorePermit,
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
    let data = match opened {
        Ok(d) => d,
        Err(e) => {
            failed(&e.to_string());
            let _ = sock
                .send_to(&encode_error(e.error_code(), &e.to_string()), peer)
                .await;
            return;
        }
    };
    // Netascii converts a private copy of the file per transfer; keep that copy small.
    // Boot files are binary and always fetched in octet mode.
    if req.mode == Mode::Netascii && data.len() > NETASCII_MAX_BYTES {
        let msg = format!("netascii is limited to files of {NETASCII_MAX_BYTES} bytes; use octet");
        failed(&msg);
        let _ = sock
            .send_to(&encode_error(ErrorCode::NotDefined, &msg), peer)
            .await;
        return;
    }
    let max_blksize = max_blksize_for(local_ip, peer);
    let started = Instant::now();
    let mut t = if max_blksize < cfg.max_blksize {
        let cfg = TftpConfig {
            max_blksize,
            ..TftpConfig::clone(&cfg)
        };
        Transfer::new(started, &req, data, &cfg)
    } else {
        Transfer::new(started, &req, data, &cfg)
    };
    emit(BootEvent::TftpStart {
        file: file.to_string(),
        peer,
        blksize: t.blksize(),
        windowsize: t.windowsize(),
        tsize: req.options.tsize.is_some(),
        size: t.size(),
    });
    let mut buf = vec![0u8; 2048];
    // One timer for the whole transfer, moved only when the deadline comes earlier
    // or after it fired. In lockstep the deadline moves forward on every ACK; letting
    // the timer lag and fire early (a no-op in `handle_timeout`) costs one wake-up
    // per retransmission timeout instead of a timer update per block.
    let mut armed = t.poll_timeout().unwrap_or(started);
    let timer = tokio::time::sleep_until(armed.into());
    tokio::pin!(timer);
    let mut all_sent = false;
    loop {
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
                bytes: t.size(),
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
                    tracing::debug!(%src, "tftp packet from unknown transfer id");
                    let e = encode_error(ErrorCode::UnknownTransferId, "unknown transfer id");
                    let _ = sock.send_to(&e, src).await;
                }
                Err(e) => tracing::debug!(error = %e, "tftp transfer receive error"),
            },
            _ = &mut timer => t.handle_timeout(Instant::now()),
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
