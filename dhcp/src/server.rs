//! The driver: receive, decode, ask the booter, answer, send, log. Nothing else.
//!
//! A bound socket (UDP 67, 4011) is read by a thread of its own in batches
//! (recvmmsg), and answers go out from that thread: the common case, a booter that
//! knows its answers, costs no task, no wake-up of another thread and no readiness
//! polling. The no-bind packet socket is read by a task on the caller's runtime.
//!
//! Each packet is parsed once ([`classify`]). The booter is first asked without
//! waiting, inline: a booter that knows its answers (config, `boot` mode, a warm API
//! cache) answers at once. Only when it answers [`BootDecision::Pending`] does the
//! packet move off the receive loop, to a task on the caller's runtime that lets the
//! booter wait up to [`ProxyConfig::lookup_wait`] on a blocking thread; at most
//! [`ProxyConfig::max_lookups`] such packets wait at once, and past that a packet is
//! dropped and counted (its client's retransmit comes back later).

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::Message;
use dhcproto::{Encodable, Encoder};
use ironpxe_core::event::{emit, BootEvent, DhcpAnswer};
use ironpxe_core::{BootDecision, Booter, MacAddr};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

use crate::decide::{
    answer, classify, ChainloadMemory, Classified, Destination, Ignored, ProxyConfig, RecvMeta,
    Reply, ServerPort,
};
use crate::request::PxeRequest;
use crate::sock::{DhcpSocket, RecvBatch, RECV_BUFFER};

/// Serves ProxyDHCP on the given sockets (usually one for UDP 67 and one for 4011)
/// until `shutdown` completes.
pub async fn serve(
    sockets: Vec<DhcpSocket>,
    cfg: ProxyConfig,
    booter: Arc<dyn Booter>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let lookups = Arc::new(Semaphore::new(cfg.max_lookups.max(1)));
    let shared = Arc::new(Shared {
        cfg,
        booter,
        memory: Mutex::new(ChainloadMemory::default()),
        lookups,
        dropped: DropLog::default(),
    });
    let rt = tokio::runtime::Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for sock in sockets {
        let (shared, sock) = (shared.clone(), Arc::new(sock));
        if !sock.is_blocking() {
            tasks.spawn(async move { run_socket(sock, shared).await });
            continue;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (rt, stop) = (rt.clone(), stop.clone());
        std::thread::Builder::new()
            .name("ironpxe-dhcp-rx".into())
            .spawn(move || {
                let _ = done_tx.send(run_bound(&sock, &shared, &rt, &stop));
            })?;
        tasks.spawn(async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the DHCP receive thread died")))
        });
    }
    // The receive threads look at `stop` at least every RECV_POLL.
    let _stop_threads = StopOnDrop(stop);
    tokio::select! {
        () = shutdown => Ok(()),
        Some(res) = tasks.join_next() => match res {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        },
    }
}

/// Tells the receive threads to end when `serve` returns, however it returns.
pub(crate) struct StopOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Shared {
    cfg: ProxyConfig,
    booter: Arc<dyn Booter>,
    memory: Mutex<ChainloadMemory>,
    /// Permits for packets waiting on the booter.
    lookups: Arc<Semaphore>,
    dropped: DropLog,
}

/// Counts packets dropped because every lookup slot was taken; each one is an
/// event (the metric counts them all), and a warning with the count is written at
/// most once per [`DropLog::EVERY`].
#[derive(Default)]
struct DropLog {
    total: AtomicU64,
    unreported: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn drop_one(&self, req: &PxeRequest, limit: usize) {
        emit(BootEvent::DhcpDropped {
            mac: req.mac,
            limit,
        });
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        let count = self.unreported.swap(0, Ordering::Relaxed);
        warn!(
            count,
            total,
            limit,
            "dropped DHCP packets: all {limit} booter lookup slots are busy; their clients' retransmits are answered later"
        );
    }
}

/// The receive loop of a bound socket, on its own thread, until `stop`.
fn run_bound(
    sock: &Arc<DhcpSocket>,
    shared: &Arc<Shared>,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut batch = RecvBatch::new();
    let mut out = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv_batch(&mut batch) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                warn!(error = %e, "dhcp receive failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        for i in 0..n {
            let (bytes, meta) = batch.get(i);
            let Some((msg, classified)) = accept(bytes, &meta) else {
                continue;
            };
            let (mac, arch) = (classified.request.mac, classified.request.arch);
            let decision = shared.booter.decide(mac, arch, Duration::ZERO);
            if decision == BootDecision::Pending {
                let _enter = rt.enter();
                wait_for_booter(sock, shared, msg, classified, meta);
                continue;
            }
            if let Some((reply, dest)) =
                reply_bytes(shared, &msg, classified, &decision, &meta, &mut out)
            {
                let sent = sock.send_now(&out, dest, meta.local_ip);
                answered(sock, reply, &meta, sent);
            }
        }
    }
    Ok(())
}

/// The receive loop of the no-bind packet socket, on the caller's runtime.
async fn run_socket(sock: Arc<DhcpSocket>, shared: Arc<Shared>) -> io::Result<()> {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(1024);
    loop {
        let (n, meta) = match sock.recv(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "dhcp receive failed");
                continue;
            }
        };
        let Some((msg, classified)) = accept(&buf[..n], &meta) else {
            continue;
        };
        let (mac, arch) = (classified.request.mac, classified.request.arch);
        let decision = shared.booter.decide(mac, arch, Duration::ZERO);
        if decision == BootDecision::Pending {
            wait_for_booter(&sock, &shared, msg, classified, meta);
            continue;
        }
        if let Some((reply, dest)) =
            reply_bytes(&shared, &msg, classified, &decision, &meta, &mut out)
        {
            let sent = sock.send(&out, dest, meta.local_ip).await;
            answered(&sock, reply, &meta, sent);
        }
    }
}

/// Decodes and classifies one datagram: the message and what kind of request it is,
/// or `None` (logged) when ProxyDHCP does not answer it.
fn accept(bytes: &[u8], meta: &RecvMeta) -> Option<(Message, Classified)> {
    let msg = match PxeRequest::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            debug!(peer = %meta.src, error = %e, len = bytes.len(), "undecodable DHCP packet");
            return None;
        }
    };
    let request = match PxeRequest::parse(&msg) {
        Ok(r) => r,
        Err(why) => {
            debug!(reason = %why, "dhcp packet not for us");
            return None;
        }
    };
    let (mac, xid) = (request.mac, request.xid);
    match classify(request, meta) {
        Ok(c) => Some((msg, c)),
        Err(why) => {
            if let Some(ip) = requested_address(&msg, &why) {
                emit(BootEvent::DhcpClientAddress { mac, ip: ip.into() });
            }
            log_ignored(&why, mac, xid, meta);
            None
        }
    }
}

/// Moves a packet whose booter has to ask its source to a task that waits for it,
/// off the receive loop; drops it (counted) when every lookup slot is busy. Must run
/// inside the runtime `serve` was called on.
fn wait_for_booter(
    sock: &Arc<DhcpSocket>,
    shared: &Arc<Shared>,
    msg: Message,
    classified: Classified,
    meta: RecvMeta,
) {
    let Ok(permit) = shared.lookups.clone().try_acquire_owned() else {
        shared
            .dropped
            .drop_one(&classified.request, shared.cfg.max_lookups);
        return;
    };
    let (mac, arch, xid) = (
        classified.request.mac,
        classified.request.arch,
        classified.request.xid,
    );
    // One span per waiting exchange, so what happens later reads with its machine.
    let span = info_span!(
        "dhcp",
        mac = %mac,
        xid = format_args!("{xid:#010x}"),
        peer = %meta.src,
    );
    let (sock, shared) = (sock.clone(), shared.clone());
    tokio::spawn(
        async move {
            let booter = shared.booter.clone();
            let wait = shared.cfg.lookup_wait;
            let decision =
                match tokio::task::spawn_blocking(move || booter.decide(mac, arch, wait)).await {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(error = %e, "booter failed while deciding");
                        return;
                    }
                };
            drop(permit);
            let mut out = Vec::new();
            if let Some((reply, dest)) =
                reply_bytes(&shared, &msg, classified, &decision, &meta, &mut out)
            {
                let sent = sock.send(&out, dest, meta.local_ip).await;
                answered(&sock, reply, &meta, sent);
            }
        }
        .instrument(span),
    );
}

fn log_ignored(why: &Ignored, mac: MacAddr, xid: u32, meta: &RecvMeta) {
    if why.is_routine() {
        debug!(reason = %why, "dhcp packet not for us");
        return;
    }
    emit(BootEvent::DhcpIgnored {
        mac,
        xid,
        peer: meta.src.into(),
        reason: why.to_string(),
    });
}

/// The address a PXE client asks the site server for, in the REQUEST on port 67
/// that ProxyDHCP does not answer: it tells later TFTP and HTTP requests from that
/// address apart as this machine's.
fn requested_address(msg: &Message, why: &Ignored) -> Option<Ipv4Addr> {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
    if !matches!(
        why,
        Ignored::WrongPort {
            msg_type: MessageType::Request,
            port: ServerPort::Dhcp
        }
    ) {
        return None;
    }
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) if !ip.is_unspecified() => Some(*ip),
        _ => Some(msg.ciaddr()).filter(|ip| !ip.is_unspecified()),
    }
}

/// Builds the reply to one classified packet from the booter's decision and encodes
/// it into `out`; `None` (logged) when there is nothing to send.
fn reply_bytes(
    shared: &Shared,
    msg: &Message,
    classified: Classified,
    decision: &BootDecision,
    meta: &RecvMeta,
    out: &mut Vec<u8>,
) -> Option<(Reply, Destination)> {
    let (mac, xid) = (classified.request.mac, classified.request.xid);
    let outcome = {
        let mut memory = shared.memory.lock().unwrap_or_else(|p| p.into_inner());
        answer(
            &shared.cfg,
            msg,
            classified,
            decision,
            meta,
            Instant::now(),
            &mut memory,
        )
    };
    let reply = match outcome {
        Ok(r) => r,
        Err(why) => {
            log_ignored(&why, mac, xid, meta);
            return None;
        }
    };
    out.clear();
    if let Err(e) = reply.message.encode(&mut Encoder::new(out)) {
        warn!(error = %e, "could not encode DHCP reply");
        return None;
    }
    let dest = reply.dest;
    Some((reply, dest))
}

/// Logs the outcome of sending `reply`: the answer event, or why it did not leave.
fn answered(sock: &DhcpSocket, reply: Reply, meta: &RecvMeta, sent: io::Result<()>) {
    let via = match reply.dest {
        Destination::Broadcast { .. } => "broadcast".to_string(),
        Destination::Unicast(a) => a.to_string(),
    };
    if let Err(e) = sent {
        warn!(mac = %reply.request.mac, dest = %via, error = %e, "could not send DHCP reply");
        return;
    }
    let answer = match sock.role() {
        ServerPort::Dhcp => DhcpAnswer::Offer,
        ServerPort::Pxe => DhcpAnswer::Ack,
    };
    let path = reply.path.kind();
    let Reply {
        path: boot,
        request,
        ..
    } = reply;
    emit(BootEvent::DhcpAnswered {
        answer,
        mac: request.mac,
        arch: request.arch,
        xid: request.xid,
        ipxe: request.ipxe.is_ipxe,
        path,
        boot: boot.into_target(),
        server: meta.local_ip.into(),
        peer: meta.src.into(),
        via,
    });
}
