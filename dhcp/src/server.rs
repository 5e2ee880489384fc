//! The tokio driver: receive, decode, ask the booter, answer, send, log. Nothing else.
//!
//! Each packet is parsed once ([`classify`]). The booter is first asked without
//! waiting, inline: a booter that knows its answers (config, `boot` mode, a warm API
//! cache) costs no task and no thread. Only when it answers
//! [`BootDecision::Pending`] does the packet move off the receive loop, to a blocking
//! task that lets the booter wait up to [`ProxyConfig::lookup_wait`]; at most
//! [`ProxyConfig::max_lookups`] such packets wait at once, and past that a packet is
//! dropped and counted (its client's retransmit comes back later).

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::Message;
use dhcproto::Encodable;
use ironpxe_core::event::{emit, BootEvent, DhcpAnswer};
use ironpxe_core::{BootDecision, Booter, MacAddr};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

use crate::decide::{
    answer, classify, ChainloadMemory, Classified, Destination, Ignored, ProxyConfig, RecvMeta,
    Reply, ServerPort,
};
use crate::request::PxeRequest;
use crate::sock::DhcpSocket;

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
    let mut tasks = tokio::task::JoinSet::new();
    for sock in sockets {
        let shared = shared.clone();
        tasks.spawn(async move { run_socket(Arc::new(sock), shared).await });
    }
    tokio::select! {
        () = shutdown => Ok(()),
        Some(res) = tasks.join_next() => match res {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        },
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

/// The receive buffer of each socket, allocated once: a DHCP message (576 to about
/// 1,500 bytes in practice) with room to spare, and, on the no-bind path, the IPv4
/// and UDP headers it arrives with.
const RECV_BUFFER: usize = 4096;

async fn run_socket(sock: Arc<DhcpSocket>, shared: Arc<Shared>) -> io::Result<()> {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, meta) = match sock.recv(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "dhcp receive failed");
                continue;
            }
        };
        let msg = match PxeRequest::decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                debug!(peer = %meta.src, error = %e, len = n, "undecodable DHCP packet");
                continue;
            }
        };
        let request = match PxeRequest::parse(&msg) {
            Ok(r) => r,
            Err(why) => {
                debug!(reason = %why, "dhcp packet not for us");
                continue;
            }
        };
        let (mac, arch, xid) = (request.mac, request.arch, request.xid);
        let classified = match classify(request, &meta) {
            Ok(c) => c,
            Err(why) => {
                if let Some(ip) = requested_address(&msg, &why) {
                    emit(BootEvent::DhcpClientAddress { mac, ip: ip.into() });
                }
                log_ignored(&why, mac, xid, &meta);
                continue;
            }
        };
        // One span per client exchange, so a machine's boot reads straight from the log.
        let span = info_span!(
            "dhcp",
            mac = %mac,
            xid = format_args!("{xid:#010x}"),
            peer = %meta.src,
        );
        let decision = shared.booter.decide(mac, arch, Duration::ZERO);
        if decision != BootDecision::Pending {
            respond(&sock, &shared, &msg, classified, &decision, &meta)
                .instrument(span)
                .await;
            continue;
        }
        // The booter has to ask its source: wait for it off the receive loop.
        let Ok(permit) = shared.lookups.clone().try_acquire_owned() else {
            shared
                .dropped
                .drop_one(&classified.request, shared.cfg.max_lookups);
            continue;
        };
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(
            async move {
                let booter = shared.booter.clone();
                let wait = shared.cfg.lookup_wait;
                let decision =
                    match tokio::task::spawn_blocking(move || booter.decide(mac, arch, wait)).await
                    {
                        Ok(d) => d,
                        Err(e) => {
                            warn!(error = %e, "booter failed while deciding");
                            return;
                        }
                    };
                drop(permit);
                respond(&sock, &shared, &msg, classified, &decision, &meta).await;
            }
            .instrument(span),
        );
    }
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

/// Answers one classified packet with the booter's decision, sends the reply and logs
/// the event.
async fn respond(
    sock: &DhcpSocket,
    shared: &Shared,
    msg: &Message,
    classified: Classified,
    decision: &BootDecision,
    meta: &RecvMeta,
) {
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
            return;
        }
    };
    let bytes = match reply.message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "could not encode DHCP reply");
            return;
        }
    };
    let via = match reply.dest {
        Destination::Broadcast { .. } => "broadcast".to_string(),
        Destination::Unicast(a) => a.to_string(),
    };
    if let Err(e) = sock.send(&bytes, reply.dest, meta.local_ip).await {
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
