//! The driver of the built-in DHCP server: a thread receives on UDP 67, asks the
//! [`ServerCore`], stores leases, adds boot information for PXE clients and sends.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType, OptionCode};
use dhcproto::Encodable;
use ironpxe_core::config::DhcpServerSettings;
use ironpxe_core::event::{emit, BootEvent, DhcpAnswer};
use ironpxe_core::{BootDecision, Booter};
use tracing::{debug, info, warn};

use super::core::{Decision, ServerCore, ServerReply, Silence};
use super::leases::LeaseStore;
use crate::decide::{
    answer, classify, ChainloadMemory, Destination, ProxyConfig, RecvMeta, Reply, ServerPort,
};
use crate::request::PxeRequest;
use crate::server::StopOnDrop;
use crate::sock::{DhcpSocket, RecvBatch};

/// What the DHCP server hands out, and where its leases are kept.
pub struct ServerMode {
    /// `[dhcp]` with the reservations.
    pub settings: DhcpServerSettings,
    /// The lease store (the state database).
    pub store: Arc<dyn LeaseStore>,
}

/// Serves DHCP on `sockets`: the UDP 67 socket as the DHCP server, the others (UDP
/// 4011) as ProxyDHCP, until `shutdown` completes.
pub async fn serve(
    sockets: Vec<DhcpSocket>,
    proxy: ProxyConfig,
    booter: Arc<dyn Booter>,
    server: ServerMode,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (mine, others): (Vec<DhcpSocket>, Vec<DhcpSocket>) = sockets
        .into_iter()
        .partition(|s| s.role() == ServerPort::Dhcp);
    let store = server.store.clone();
    let leases = tokio::task::spawn_blocking(move || store.load())
        .await
        .map_err(io::Error::other)?
        .map_err(|e| io::Error::other(format!("cannot read the leases: {e}")))?;
    info!(
        leases = leases.len(),
        reservations = server.settings.reservations.len(),
        pool = ?server.settings.pool,
        "DHCP server (mode = \"server\") on UDP 67"
    );
    let core = ServerCore::new(server.settings, leases);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_threads = StopOnDrop(stop.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for sock in mine {
        if !sock.is_blocking() {
            return Err(io::Error::other(
                "the DHCP server needs UDP 67 bound (not --dhcp-no-bind)",
            ));
        }
        let driver = Driver {
            core: core.clone(),
            store: server.store.clone(),
            proxy: proxy.clone(),
            booter: booter.clone(),
            memory: ChainloadMemory::default(),
            pool_full_logged: None,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("ironpxe-dhcp-server".into())
            .spawn(move || {
                let _ = done_tx.send(driver.run(&sock, &stop));
            })?;
        tasks.spawn(async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the DHCP server thread died")))
        });
    }
    if !others.is_empty() {
        let (proxy, booter) = (proxy.clone(), booter.clone());
        tasks.spawn(async move {
            crate::server::serve(others, proxy, booter, std::future::pending()).await
        });
    }
    tokio::select! {
        () = shutdown => Ok(()),
        Some(res) = tasks.join_next() => match res {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        },
    }
}

struct Driver {
    core: ServerCore,
    store: Arc<dyn LeaseStore>,
    proxy: ProxyConfig,
    booter: Arc<dyn Booter>,
    memory: ChainloadMemory,
    pool_full_logged: Option<Instant>,
}

/// Now, as Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Driver {
    /// The server loop, on its own thread: a batch of datagrams at a time (each wait
    /// at most [`crate::sock::RECV_POLL`], so `stop` is seen), each decided, its lease
    /// stored when it needs one, and answered from this thread.
    fn run(mut self, sock: &DhcpSocket, stop: &AtomicBool) -> io::Result<()> {
        let mut batch = RecvBatch::new();
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
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for i in 0..n {
                let (bytes, meta) = batch.get(i);
                let msg = match PxeRequest::decode(bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(peer = %meta.src, error = %e, len = bytes.len(), "undecodable DHCP packet");
                        continue;
                    }
                };
                self.one(sock, &msg, &meta);
            }
        }
        Ok(())
    }

    /// Decides, stores and answers one message.
    fn one(&mut self, sock: &DhcpSocket, msg: &Message, meta: &RecvMeta) {
        match self.core.handle(msg, meta, now_ms()) {
            Decision::Silent(why) => self.silent(msg, why),
            Decision::Reply(reply) => {
                let Some(reply) = self.with_boot(msg, meta, reply) else {
                    return;
                };
                if let Some(reason) = &reply.nak_reason {
                    info!(mac = %chaddr(msg), reason = %reason, "DHCPNAK");
                }
                send(sock, &reply, meta);
            }
            Decision::Commit { lease, reply } => {
                // The fsync of the store happens here, before the ACK exists.
                if let Err(e) = self.store.put(&lease) {
                    // No ACK without a stored lease; the client asks again.
                    warn!(mac = %lease.mac, ip = %lease.ip, error = %e, "cannot store the lease; not acknowledging it");
                    return;
                }
                self.core.committed(lease.clone());
                let Some(reply) = self.with_boot(msg, meta, reply) else {
                    return;
                };
                if send(sock, &reply, meta) {
                    emit(BootEvent::DhcpLease {
                        mac: lease.mac,
                        ip: lease.ip.into(),
                        kind: if lease.reserved { "reserved" } else { "pool" },
                        hostname: lease.hostname.clone().unwrap_or_default(),
                        lease_s: lease.expires_ms.saturating_sub(now_ms()) / 1000,
                    });
                    // Later TFTP and HTTP requests from this address are its.
                    emit(BootEvent::DhcpClientAddress {
                        mac: lease.mac,
                        ip: lease.ip.into(),
                    });
                }
            }
            Decision::Forget { mac } => match self.store.remove(mac) {
                Ok(()) => {
                    self.core.forgotten(&mac);
                    info!(%mac, "lease released");
                }
                Err(e) => warn!(%mac, error = %e, "cannot remove the lease"),
            },
        }
    }

    fn silent(&mut self, msg: &Message, why: Silence) {
        match why {
            Silence::PoolFull(..) => {
                let now = Instant::now();
                if self
                    .pool_full_logged
                    .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
                {
                    self.pool_full_logged = Some(now);
                    warn!(mac = %chaddr(msg), reason = %why, "DHCP client not answered");
                }
            }
            other => debug!(mac = %chaddr(msg), reason = %other, "DHCP packet not answered"),
        }
    }

    /// For a PXE client, adds what it boots (ProxyDHCP's answer) to the reply. An
    /// OFFER to a PXE client whose boot source has not answered yet is not sent:
    /// its retransmit gets the whole offer. Returns the reply to send.
    fn with_boot(
        &mut self,
        msg: &Message,
        meta: &RecvMeta,
        mut reply: ServerReply,
    ) -> Option<ServerReply> {
        if reply.kind == MessageType::Nak {
            return Some(reply);
        }
        let Ok(mut req) = PxeRequest::parse(msg) else {
            return Some(reply);
        };
        let (mac, arch, xid) = (req.mac, req.arch, req.xid);
        req.msg_type = MessageType::Discover;
        let as_offer = RecvMeta {
            port: ServerPort::Dhcp,
            ..*meta
        };
        let Ok(mut classified) = classify(req, &as_offer) else {
            return Some(reply);
        };
        classified.reply_type = reply.kind;
        let decision = self.booter.decide(mac, arch, Duration::ZERO);
        if decision == BootDecision::Pending && reply.kind == MessageType::Offer {
            debug!(%mac, "boot source not answered yet; the retransmitted DISCOVER gets the offer");
            return None;
        }
        match answer(
            &self.proxy,
            msg,
            classified,
            &decision,
            meta,
            Instant::now(),
            &mut self.memory,
        ) {
            Ok(Reply {
                message,
                path,
                request,
                ..
            }) => {
                merge_boot(&mut reply.message, &message);
                emit(BootEvent::DhcpAnswered {
                    answer: if reply.kind == MessageType::Offer {
                        DhcpAnswer::Offer
                    } else {
                        DhcpAnswer::Ack
                    },
                    mac,
                    arch,
                    xid,
                    ipxe: request.ipxe.is_ipxe,
                    path: path.kind(),
                    boot: path.into_target(),
                    server: meta.local_ip.into(),
                    peer: meta.src.into(),
                    via: via(reply.dest),
                });
            }
            Err(why) => debug!(%mac, reason = %why, "address only: no boot information"),
        }
        Some(reply)
    }
}

/// Copies the boot information of a ProxyDHCP reply into a DHCP server reply: the
/// boot server and file, and the PXE options (60, 97, 67, 43).
pub fn merge_boot(into: &mut Message, boot: &Message) {
    into.set_siaddr(boot.siaddr());
    if let Some(f) = boot.fname() {
        into.set_fname(f);
    }
    for code in [
        OptionCode::ClassIdentifier,
        OptionCode::ClientMachineIdentifier,
        OptionCode::BootfileName,
        OptionCode::VendorExtensions,
    ] {
        if let Some(o) = boot.opts().get(code) {
            into.opts_mut().insert(o.clone());
        }
    }
}

/// The client's hardware address for logs. `Message::chaddr` slices by the
/// untrusted hlen, so it is read only when hlen fits the 16-byte field.
fn chaddr(msg: &Message) -> String {
    if msg.hlen() > 16 {
        return format!("(hlen {})", msg.hlen());
    }
    msg.chaddr()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn via(dest: Destination) -> String {
    match dest {
        Destination::Broadcast { .. } => "broadcast".to_string(),
        Destination::Unicast(a) => a.to_string(),
    }
}

/// Sends a reply; whether it went out.
fn send(sock: &DhcpSocket, reply: &ServerReply, meta: &RecvMeta) -> bool {
    let bytes = match reply.message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "could not encode DHCP reply");
            return false;
        }
    };
    if let Err(e) = sock.send_now(&bytes, reply.dest, meta.local_ip) {
        warn!(dest = %via(reply.dest), error = %e, "could not send DHCP reply");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Decodable;

    #[test]
    fn a_hostile_hlen_is_logged_not_sliced() {
        let mut m = Message::default();
        m.set_chaddr(&[1, 2, 3, 4, 5, 6]);
        let mut bytes = m.to_vec().unwrap();
        bytes[2] = 200; // hlen
        let m = Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(chaddr(&m), "(hlen 200)");
    }
}
