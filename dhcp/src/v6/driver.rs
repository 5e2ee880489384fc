//! The DHCPv6 tokio driver and its sockets: receive, read, ask the booter, answer,
//! save leases, send (and send again), log. The decisions are `decide`'s.
//!
//! Sockets: UDP 547 joined to `ff02::1:2` (All_DHCP_Relay_Agents_and_Servers) on
//! the data NIC, and UDP 4011 for EDK2's boot-server REQUEST; both IPv6-only
//! (`IPV6_V6ONLY`), so they sit next to the IPv4 sockets on the same ports, with
//! `IPV6_RECVPKTINFO` telling the receiving interface and destination. Replies to a
//! client on 4011 leave from the address it sent to (`IPV6_PKTINFO`).

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ironpxe_core::event::{emit, BootEvent, DhcpAnswer};
use ironpxe_core::net6::mac_from_eui64;
use ironpxe_core::{BootDecision, Booter};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn6,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

use super::decide::{
    answer6, classify6, Answer6, ClientMemory, Config6, Ignored6, RecvMeta6, Reply6,
};
use super::leases::{LeaseFile, Leases};
use super::request::{NotBoot6, Parsed6, Request6};
use super::wire::msg;
use crate::decide::ServerPort;

/// `ff02::1:2`, where DHCPv6 clients send.
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// A DHCPv6 server socket for one [`ServerPort`].
pub struct Dhcp6Socket {
    udp: UdpSocket,
    role: ServerPort,
}

impl Dhcp6Socket {
    /// Binds `[::]:port`, IPv6 only, on `device` if given; for the DHCP role, joins
    /// `ff02::1:2` on `device`, or on every interface with IPv6 multicast.
    pub fn bind(role: ServerPort, port: u16, device: Option<&str>) -> io::Result<Self> {
        let sock = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_only_v6(true)?;
        sock.set_reuse_address(true)?;
        if let Some(dev) = device {
            sock.bind_device(Some(dev.as_bytes()))?;
        }
        setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
        if role == ServerPort::Dhcp {
            let ifindexes = match device {
                Some(dev) => vec![nix::net::if_::if_nametoindex(dev).map_err(io::Error::from)?],
                None => multicast_interfaces(),
            };
            for ifindex in ifindexes {
                sock.join_multicast_v6(&ALL_DHCP_SERVERS, ifindex)?;
            }
        }
        Ok(Dhcp6Socket {
            udp: UdpSocket::from_std(sock.into())?,
            role,
        })
    }

    /// The role of this socket.
    pub fn role(&self) -> ServerPort {
        self.role
    }

    /// Receives one datagram: its length, sender, destination and interface.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV6, Ipv6Addr, u32)> {
        let fd = self.udp.as_raw_fd();
        self.udp
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
                let mut iov = [IoSliceMut::new(buf)];
                let m = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                    .map_err(io::Error::from)?;
                let src = m
                    .address
                    .map(SocketAddrV6::from)
                    .unwrap_or_else(|| SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
                let mut dst = Ipv6Addr::UNSPECIFIED;
                let mut ifindex = src.scope_id();
                for c in m.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::Ipv6PacketInfo(info) = c {
                        dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                        ifindex = info.ipi6_ifindex;
                    }
                }
                Ok((m.bytes, src, dst, ifindex))
            })
            .await
    }

    /// Sends `data` to `dest`, from `src` when given (else the kernel chooses).
    pub async fn send(
        &self,
        data: &[u8],
        dest: SocketAddrV6,
        src: Option<Ipv6Addr>,
    ) -> io::Result<()> {
        let fd = self.udp.as_raw_fd();
        let addr = SockaddrIn6::from(dest);
        let info = src.map(|s| libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: s.octets(),
            },
            ipi6_ifindex: dest.scope_id(),
        });
        self.udp
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(data)];
                let cmsgs: Vec<ControlMessage> =
                    info.iter().map(ControlMessage::Ipv6PacketInfo).collect();
                sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&addr))
                    .map(|_| ())
                    .map_err(io::Error::from)
            })
            .await
    }
}

/// Interfaces that are up, not loopback and do multicast.
fn multicast_interfaces() -> Vec<u32> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let f = a.flags;
            if f.contains(InterfaceFlags::IFF_UP)
                && f.contains(InterfaceFlags::IFF_MULTICAST)
                && !f.contains(InterfaceFlags::IFF_LOOPBACK)
            {
                if let Ok(i) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) {
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
            }
        }
    }
    out
}

/// The server DUID: DUID-LL of `interface`'s MAC, else of the first interface with
/// one (stable across restarts, as clients compare it), else a DUID-EN of
/// enterprise 343 with a fixed identifier.
pub fn server_duid(interface: Option<&str>) -> Vec<u8> {
    let mac_of = |name: &str| -> Option<[u8; 6]> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        let mac: ironpxe_core::MacAddr = text.trim().parse().ok()?;
        (mac.octets() != [0; 6]).then(|| mac.octets())
    };
    let mac = match interface {
        Some(i) => mac_of(i),
        None => {
            let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.iter().find_map(|n| mac_of(n))
        }
    };
    match mac {
        Some(m) => {
            let mut d = vec![0, 3, 0, 1];
            d.extend_from_slice(&m);
            d
        }
        None => {
            let mut d = vec![0, 2, 0, 0, 1, 87];
            d.extend_from_slice(b"ironpxe");
            d
        }
    }
}

/// The global or unique-local address of each interface, looked up at most every
/// [`AddrCache::REFRESH`].
#[derive(Default)]
struct AddrCache {
    by_if: HashMap<u32, (Ipv6Addr, Instant)>,
}

impl AddrCache {
    const REFRESH: Duration = Duration::from_secs(10);

    fn get(&mut self, ifindex: u32, now: Instant) -> Ipv6Addr {
        if let Some((a, t)) = self.by_if.get(&ifindex) {
            if now.saturating_duration_since(*t) < Self::REFRESH {
                return *a;
            }
        }
        let a = lookup_global(ifindex).unwrap_or(Ipv6Addr::UNSPECIFIED);
        self.by_if.insert(ifindex, (a, now));
        a
    }
}

/// The address to announce on `ifindex`: global or unique-local, an address not
/// formed by EUI-64 first (a configured one rather than SLAAC's), then the lowest.
fn lookup_global(ifindex: u32) -> Option<Ipv6Addr> {
    let name = nix::net::if_::if_indextoname(ifindex).ok()?;
    let name = name.to_string_lossy();
    let mut best: Option<(bool, u128, Ipv6Addr)> = None;
    for a in nix::ifaddrs::getifaddrs().ok()? {
        if a.interface_name != name {
            continue;
        }
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in6())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ironpxe_core::net6::check_announced_v6(ip).is_err() || ip.is_unspecified() {
            continue;
        }
        let key = (mac_from_eui64(ip).is_some(), u128::from(ip), ip);
        if !matches!(best, Some(b) if (b.0, b.1) <= (key.0, key.1)) {
            best = Some(key);
        }
    }
    best.map(|b| b.2)
}

/// What the DHCPv6 responder runs with, besides its sockets.
pub struct Setup6 {
    /// The core's settings.
    pub cfg: Config6,
    /// Our DUID.
    pub server_id: Vec<u8>,
    /// The address to announce; `::` for each interface's own.
    pub listen: Ipv6Addr,
    /// The stateful mode's leases and their file.
    pub leases: Option<(Leases, LeaseFile)>,
    /// How long a packet may wait for a slow booter.
    pub lookup_wait: Duration,
    /// How many packets may wait for the booter at once.
    pub max_lookups: usize,
}

struct Shared {
    cfg: Config6,
    server_id: Vec<u8>,
    listen: Ipv6Addr,
    booter: Arc<dyn Booter>,
    memory: Mutex<ClientMemory>,
    addrs: Mutex<AddrCache>,
    leases: Option<Mutex<Leases>>,
    lease_file: Option<LeaseFile>,
    save_lock: tokio::sync::Mutex<()>,
    lookups: Arc<Semaphore>,
    max_lookups: usize,
    lookup_wait: Duration,
    no_mac_warned: Mutex<Option<Instant>>,
}

/// Serves DHCPv6 on `sockets` until `shutdown` completes.
pub async fn serve6(
    sockets: Vec<Dhcp6Socket>,
    setup: Setup6,
    booter: Arc<dyn Booter>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (leases, lease_file) = match setup.leases {
        Some((l, f)) => (Some(Mutex::new(l)), Some(f)),
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        cfg: setup.cfg,
        server_id: setup.server_id,
        listen: setup.listen,
        booter,
        memory: Mutex::default(),
        addrs: Mutex::default(),
        leases,
        lease_file,
        save_lock: tokio::sync::Mutex::new(()),
        lookups: Arc::new(Semaphore::new(setup.max_lookups.max(1))),
        max_lookups: setup.max_lookups.max(1),
        lookup_wait: setup.lookup_wait,
        no_mac_warned: Mutex::new(None),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_socket(sock: Arc<Dhcp6Socket>, shared: Arc<Shared>) -> io::Result<()> {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, src, dst, ifindex) = match sock.recv(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "dhcpv6 receive failed");
                continue;
            }
        };
        let now = Instant::now();
        let parsed = match Parsed6::parse(&buf[..n], *src.ip()) {
            Ok(p) => p,
            Err(why) => {
                debug!(peer = %src, reason = %why, "dhcpv6 packet not for us");
                continue;
            }
        };
        let remembered = lock(&shared.memory).get(&parsed.client_id, now);
        let req = match parsed.into_request(remembered) {
            Ok(r) => r,
            Err(why) => {
                warn_no_mac(&shared, &why, src);
                continue;
            }
        };
        if req.mac_from != super::request::MacSource::Remembered {
            lock(&shared.memory).record(&req.client_id, req.mac, now);
        }
        let local_ip = if shared.listen.is_unspecified() {
            lock(&shared.addrs).get(ifindex, now)
        } else {
            shared.listen
        };
        let meta = RecvMeta6 {
            local_ip,
            dst_ip: dst,
            ifindex,
            port: sock.role(),
            src,
        };
        let answer = match classify6(&req, &meta, &shared.server_id, shared.leases.is_some()) {
            Ok(a) => a,
            Err(why) => {
                // A REQUEST to the site's server names the address the client takes:
                // later TFTP and HTTP requests from it are this machine's.
                if why == Ignored6::OtherServer && req.msg_type == msg::REQUEST {
                    for a in req.ia_na.iter().flat_map(|ia| ia.addrs.iter()) {
                        emit(BootEvent::DhcpClientAddress {
                            mac: req.mac,
                            ip: (*a).into(),
                        });
                    }
                }
                log_ignored(&why, &req, &meta);
                continue;
            }
        };
        let span = info_span!(
            "dhcp6",
            mac = %req.mac,
            xid = format_args!("{:#08x}", xid_num(req.xid)),
            peer = %src,
        );
        let decision = shared.booter.decide(req.mac, req.arch, Duration::ZERO);
        if decision != BootDecision::Pending {
            respond(&sock, &shared, req, answer, &decision, &meta)
                .instrument(span)
                .await;
            continue;
        }
        let Ok(permit) = shared.lookups.clone().try_acquire_owned() else {
            emit(BootEvent::DhcpDropped {
                mac: req.mac,
                limit: shared.max_lookups,
            });
            continue;
        };
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(
            async move {
                let booter = shared.booter.clone();
                let wait = shared.lookup_wait;
                let (mac, arch) = (req.mac, req.arch);
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
                respond(&sock, &shared, req, answer, &decision, &meta).await;
            }
            .instrument(span),
        );
    }
}

fn xid_num(x: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, x[0], x[1], x[2]])
}

/// A boot client without a MAC is worth a warning, but not one per packet.
fn warn_no_mac(shared: &Shared, why: &NotBoot6, src: SocketAddrV6) {
    if !matches!(why, NotBoot6::NoMac { .. }) {
        debug!(peer = %src, reason = %why, "dhcpv6 packet not for us");
        return;
    }
    let now = Instant::now();
    let mut last = lock(&shared.no_mac_warned);
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
        debug!(peer = %src, reason = %why, "dhcpv6 boot client not answered");
        return;
    }
    *last = Some(now);
    warn!(peer = %src, reason = %why, "dhcpv6 boot client not answered");
}

fn log_ignored(why: &Ignored6, req: &Request6, meta: &RecvMeta6) {
    if why.is_routine() {
        debug!(mac = %req.mac, reason = %why, "dhcpv6 packet not for us");
        return;
    }
    emit(BootEvent::DhcpIgnored {
        mac: req.mac,
        xid: xid_num(req.xid),
        peer: SocketAddr::V6(meta.src),
        reason: why.to_string(),
    });
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn respond(
    sock: &Arc<Dhcp6Socket>,
    shared: &Shared,
    req: Request6,
    answer: Answer6,
    decision: &BootDecision,
    meta: &RecvMeta6,
) {
    let (mac, xid) = (req.mac, req.xid);
    // Leases change and are saved under one lock, in order.
    let _saving = shared.save_lock.lock().await;
    let outcome = {
        let mut leases = shared.leases.as_ref().map(lock);
        answer6(
            &shared.cfg,
            req,
            answer,
            decision,
            meta,
            &shared.server_id,
            leases.as_deref_mut(),
            unix_now(),
        )
        .map(|r| {
            let snapshot = (r.leases_changed)
                .then(|| leases.as_deref().cloned())
                .flatten();
            (r, snapshot)
        })
    };
    let (reply, snapshot) = match outcome {
        Ok(r) => r,
        Err(why) => {
            if why.is_routine() {
                debug!(mac = %mac, reason = %why, "dhcpv6 packet not for us");
            } else {
                emit(BootEvent::DhcpIgnored {
                    mac,
                    xid: xid_num(xid),
                    peer: SocketAddr::V6(meta.src),
                    reason: why.to_string(),
                });
            }
            return;
        }
    };
    // A lease is on disk before the client hears of it.
    if let (Some(snapshot), Some(file)) = (snapshot, shared.lease_file.clone()) {
        let saved = tokio::task::spawn_blocking(move || file.save(&snapshot)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot save the DHCPv6 leases; not answering");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot save the DHCPv6 leases; not answering");
                return;
            }
        }
    }
    drop(_saving);
    send_reply(sock, reply, meta).await;
}

async fn send_reply(sock: &Arc<Dhcp6Socket>, reply: Reply6, meta: &RecvMeta6) {
    // On 4011 the client talks to one of our addresses: answer from that one.
    let src = (meta.port == ServerPort::Pxe && !meta.dst_ip.is_multicast()).then_some(meta.dst_ip);
    if let Err(e) = sock.send(&reply.bytes, reply.dest, src).await {
        warn!(mac = %reply.request.mac, dest = %reply.dest, error = %e, "could not send DHCPv6 reply");
        return;
    }
    let req = &reply.request;
    if let Some(path) = &reply.path {
        emit(BootEvent::DhcpAnswered {
            answer: match reply.answer {
                Answer6::Advertise => DhcpAnswer::Offer,
                Answer6::Reply | Answer6::PxeReply => DhcpAnswer::Ack,
            },
            mac: req.mac,
            arch: req.arch,
            xid: xid_num(req.xid),
            ipxe: req.ipxe,
            path: path.kind(),
            boot: path.target().to_string(),
            server: meta.local_ip.into(),
            peer: SocketAddr::V6(meta.src),
            via: reply.dest.to_string(),
        });
    }
    let client_ip = match reply.answer {
        Answer6::PxeReply => Some(req.client_addr),
        _ => reply.address,
    };
    if let Some(ip) = client_ip.filter(|ip| !ip.is_unspecified()) {
        emit(BootEvent::DhcpClientAddress {
            mac: req.mac,
            ip: ip.into(),
        });
    }
    if reply.resend.is_empty() {
        return;
    }
    // EDK2 opens its port 4011 only after sending: send again a little later,
    // off the receive loop.
    let sock = sock.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for delay in reply.resend.iter().copied() {
            tokio::time::sleep_until(start + delay).await;
            if let Err(e) = sock.send(&reply.bytes, reply.dest, src).await {
                debug!(dest = %reply.dest, error = %e, "could not resend DHCPv6 reply");
            }
        }
    });
}
