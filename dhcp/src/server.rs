//! The tokio driver: receive, decode, ask the core, send, log. Nothing else.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dhcproto::v4::Message;
use dhcproto::Encodable;
use ironpxe_core::Booter;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::decide::{decide, ChainloadMemory, Destination, ProxyConfig, RecvMeta, ServerPort};
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
    let shared = Arc::new(Shared {
        cfg,
        booter,
        memory: Mutex::new(ChainloadMemory::default()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for sock in sockets {
        let shared = shared.clone();
        tasks.spawn(async move { run_socket(sock, shared).await });
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
}

async fn run_socket(sock: DhcpSocket, shared: Arc<Shared>) -> io::Result<()> {
    let mut buf = vec![0u8; 2048];
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
        // One span per client exchange, so a machine's boot reads straight from the log.
        let span = info_span!(
            "dhcp",
            mac = %mac_of(&msg),
            xid = format_args!("{:#010x}", msg.xid()),
            peer = %meta.src,
        );
        handle(&sock, &shared, &msg, &meta).instrument(span).await;
    }
}

/// Decides on one decoded packet, sends the reply and logs the event.
async fn handle(sock: &DhcpSocket, shared: &Shared, msg: &Message, meta: &RecvMeta) {
    let outcome = {
        let mut memory = shared.memory.lock().unwrap_or_else(|p| p.into_inner());
        decide(
            &shared.cfg,
            shared.booter.as_ref(),
            msg,
            meta,
            Instant::now(),
            &mut memory,
        )
    };
    let reply = match outcome {
        Ok(r) => r,
        Err(why) if why.is_routine() => {
            debug!(reason = %why, "dhcp packet not for us");
            return;
        }
        Err(why) => {
            info!(target: "ironpxe::event", event = "dhcp.ignore", mac = %mac_of(msg), xid = format_args!("{:#010x}", msg.xid()), peer = %meta.src, reason = %why);
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
    let event = match sock.role() {
        ServerPort::Dhcp => "dhcp.offer",
        ServerPort::Pxe => "dhcp.ack",
    };
    info!(
        target: "ironpxe::event",
        event,
        mac = %reply.request.mac,
        arch = %reply.request.arch,
        xid = format_args!("{:#010x}", reply.request.xid),
        ipxe = reply.request.ipxe.is_ipxe,
        path = reply.path.kind(),
        boot = reply.path.target(),
        server = %meta.local_ip,
        peer = %meta.src,
        via = %via,
    );
}

fn mac_of(msg: &Message) -> String {
    match PxeRequest::parse(msg) {
        Ok(r) => r.mac.to_string(),
        Err(_) => "-".into(),
    }
}
