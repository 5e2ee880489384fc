//! The non-binding DHCP path (`--dhcp-no-bind`): ProxyDHCP next to a DHCP server
//! that already holds UDP 67 on the same host.
//!
//! Receiving: an `AF_PACKET` socket (cooked, IPv4 only) with a classic BPF filter
//! that passes only unfragmented UDP to the server port, so the kernel copies just
//! DHCP to us and the DHCP server keeps its socket. Frames we sent ourselves
//! (`PACKET_OUTGOING`) are dropped. The IPv4 and UDP headers are decoded here, with
//! every length checked ([`parse_ipv4_udp`]).
//!
//! A captured packet is answered only when it was addressed to the receiving
//! interface (the data NIC): to one of its addresses, to 255.255.255.255, or to the
//! subnet broadcast of one of its addresses ([`accept`]). A bound socket gets this
//! from the kernel's IP layer; a packet socket sees every frame on the link, so the
//! check is made here, and the reply always names one of our own addresses, never
//! an address taken from the packet.
//!
//! Each packet is received straight into the driver's buffer and parsed in place: no
//! allocation per packet.
//!
//! Sending: a raw `IPPROTO_RAW` socket with headers built here ([`build_ipv4_udp`]),
//! so replies leave from source port 67 (or 4011) like a bound server's would, while
//! no UDP socket of ours competes for the port. Broadcasts are steered out of the
//! receiving interface with `IP_PKTINFO`.

use std::collections::HashMap;
use std::io;
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, LinkAddr, MsgFlags, SockaddrIn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::decide::{Destination, RecvMeta, ServerPort};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;

/// The link-layer packet type of a captured frame (`sll_pkttype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// Addressed to this host's MAC (`PACKET_HOST`).
    Host,
    /// A link-layer broadcast (`PACKET_BROADCAST`).
    Broadcast,
    /// Anything else: multicast, another host's frame seen in promiscuous mode, or a
    /// frame we sent (`PACKET_OUTGOING`).
    Other,
}

impl LinkType {
    /// Reads `sll_pkttype`.
    pub fn from_pkttype(t: u8) -> LinkType {
        match t {
            0 => LinkType::Host,
            1 => LinkType::Broadcast,
            _ => LinkType::Other,
        }
    }
}

/// One IPv4 address of an interface, with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0-32).
    pub prefix: u8,
}

impl IfAddr {
    /// The subnet's broadcast address; none for /31 and /32, which have none.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        if self.prefix >= 31 {
            return None;
        }
        let host_bits = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
        Some(Ipv4Addr::from(u32::from(self.addr) | host_bits))
    }
}

/// A captured packet that is a DHCP request to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted<'a> {
    /// The datagram.
    pub datagram: Datagram<'a>,
    /// Our address to answer from: `listen_ip` when set, else the receiving
    /// interface's address the packet was sent to (or whose subnet it was
    /// broadcast in, or its first address for 255.255.255.255).
    pub local_ip: Ipv4Addr,
}

/// Why a captured packet is not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// Not a usable IPv4/UDP datagram.
    #[error(transparent)]
    Malformed(#[from] IpError),
    /// A frame for another host, a multicast, or one we sent.
    #[error("not a frame for this host")]
    LinkType,
    /// UDP to another port.
    #[error("UDP port {0} is not ours")]
    Port(u16),
    /// Sent to an IPv4 address the receiving interface does not have.
    #[error("addressed to {0}, not to the receiving interface")]
    NotOurs(Ipv4Addr),
    /// The receiving interface has no IPv4 address to answer from.
    #[error("the receiving interface has no IPv4 address")]
    NoAddress,
}

/// Decides whether a captured packet is a request to us, and which of our addresses
/// answers it. `ours` are the receiving interface's addresses, `listen_ip` the
/// configured address (unspecified when none). Pure and allocation-free.
pub fn accept<'a>(
    pkt: &'a [u8],
    link: LinkType,
    port: u16,
    ours: &[IfAddr],
    listen_ip: Ipv4Addr,
) -> Result<Accepted<'a>, Dropped> {
    if link == LinkType::Other {
        return Err(Dropped::LinkType);
    }
    let d = parse_ipv4_udp(pkt)?;
    if d.dst.port() != port {
        return Err(Dropped::Port(d.dst.port()));
    }
    let dst = *d.dst.ip();
    let listen = (!listen_ip.is_unspecified()).then_some(listen_ip);
    let to = if dst.is_broadcast() {
        ours.first().map(|a| a.addr).or(listen)
    } else if ours.iter().any(|a| a.addr == dst) || listen == Some(dst) {
        Some(dst)
    } else if let Some(a) = ours.iter().find(|a| a.broadcast() == Some(dst)) {
        Some(a.addr)
    } else {
        return Err(Dropped::NotOurs(dst));
    };
    let to = to.ok_or(Dropped::NoAddress)?;
    Ok(Accepted {
        datagram: d,
        local_ip: listen.unwrap_or(to),
    })
}

/// A decoded IPv4/UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// Why a captured packet is not a usable UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Shorter than its headers say.
    #[error("truncated packet")]
    Truncated,
    /// Not IPv4, not UDP, a fragment, or inconsistent lengths.
    #[error("not an unfragmented IPv4/UDP packet")]
    Invalid,
}

/// Field positions of the IPv4 header (RFC 791).
mod ipv4_field {
    use std::ops::Range;
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOTAL_LEN: Range<usize> = 2..4;
    /// Flags and fragment offset.
    pub(super) const FRAGMENT: Range<usize> = 6..8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const SRC: Range<usize> = 12..16;
    pub(super) const DST: Range<usize> = 16..20;
    /// The header without options.
    pub(super) const MIN_HEADER: usize = 20;
}

/// Field positions of the UDP header (RFC 768).
mod udp_field {
    use std::ops::Range;
    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const LENGTH: Range<usize> = 4..6;
    pub(super) const HEADER: usize = 8;
}

fn be16(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    match b.get(r) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

fn ipv4(b: &[u8], r: std::ops::Range<usize>) -> Ipv4Addr {
    match b.get(r) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// A checked view of an IPv4 packet: version 4, a header length of at least 20
/// bytes, and a total length that covers the header and fits in the buffer. Bytes
/// past the total length (link-layer padding) are not part of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4View<'a> {
    /// Exactly the packet's total length.
    buf: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4View<'a> {
    /// Checks the lengths before anything else is read.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, IpError> {
        let Some(&ver_ihl) = buf.get(ipv4_field::VER_IHL) else {
            return Err(IpError::Truncated);
        };
        if buf.len() < ipv4_field::MIN_HEADER {
            return Err(IpError::Truncated);
        }
        if ver_ihl >> 4 != 4 {
            return Err(IpError::Invalid);
        }
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        let total = usize::from(be16(buf, ipv4_field::TOTAL_LEN));
        if header_len < ipv4_field::MIN_HEADER || total < header_len {
            return Err(IpError::Invalid);
        }
        let buf = buf.get(..total).ok_or(IpError::Truncated)?;
        Ok(Ipv4View { buf, header_len })
    }

    /// The source address.
    pub fn src(&self) -> Ipv4Addr {
        ipv4(self.buf, ipv4_field::SRC)
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv4Addr {
        ipv4(self.buf, ipv4_field::DST)
    }

    /// The protocol number (17 for UDP).
    pub fn protocol(&self) -> u8 {
        self.buf[ipv4_field::PROTOCOL]
    }

    /// A fragment: the more-fragments flag or a fragment offset is set.
    pub fn is_fragment(&self) -> bool {
        be16(self.buf, ipv4_field::FRAGMENT) & 0x3fff != 0
    }

    /// What follows the header, up to the total length.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..]
    }
}

/// A checked view of a UDP datagram: a whole header, and a length field that covers
/// it and fits in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Exactly the datagram's length.
    buf: &'a [u8],
}

impl<'a> UdpView<'a> {
    /// Checks the lengths before anything else is read.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, IpError> {
        if buf.len() < udp_field::HEADER {
            return Err(IpError::Truncated);
        }
        let len = usize::from(be16(buf, udp_field::LENGTH));
        if len < udp_field::HEADER {
            return Err(IpError::Invalid);
        }
        // A length past the IP payload contradicts the IP header.
        let buf = buf.get(..len).ok_or(IpError::Invalid)?;
        Ok(UdpView { buf })
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf, udp_field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf, udp_field::DST_PORT)
    }

    /// The payload, up to the UDP length.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[udp_field::HEADER..]
    }
}

/// Decodes an unfragmented IPv4 packet carrying UDP through the checked views. Never
/// panics; lengths are checked against the buffer before anything is read.
pub fn parse_ipv4_udp(pkt: &[u8]) -> Result<Datagram<'_>, IpError> {
    let ip = Ipv4View::new_checked(pkt)?;
    if ip.is_fragment() || ip.protocol() != IPPROTO_UDP {
        return Err(IpError::Invalid);
    }
    let udp = UdpView::new_checked(ip.payload()).map_err(|_| IpError::Invalid)?;
    Ok(Datagram {
        src: SocketAddrV4::new(ip.src(), udp.src_port()),
        dst: SocketAddrV4::new(ip.dst(), udp.dst_port()),
        payload: udp.payload(),
    })
}

/// Builds an IPv4 packet (TTL 64, don't-fragment clear) carrying one UDP datagram
/// with a correct checksum. `None` if the payload does not fit in one packet.
pub fn build_ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len()).ok()?;
    let total = u16::try_from(20 + 8 + payload.len()).ok()?;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = [
        &src.ip().octets()[..],
        &dst.ip().octets()[..],
        &[0, IPPROTO_UDP],
        &udp_len.to_be_bytes()[..],
        &p[20..],
    ];
    let sum = match checksum(&pseudo) {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// The Internet checksum over the concatenation of `parts` (each of even length,
/// except possibly the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Classic BPF: accept unfragmented IPv4/UDP whose destination port is `port`.
/// Offsets are from the IP header (the socket is `SOCK_DGRAM`, no link header).
fn udp_port_filter(port: u16) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, ldx, jmp, ret) = (libc::BPF_LD, libc::BPF_LDX, libc::BPF_JMP, libc::BPF_RET);
    let (b, h, abs, ind, msh) = (
        libc::BPF_B,
        libc::BPF_H,
        libc::BPF_ABS,
        libc::BPF_IND,
        libc::BPF_MSH,
    );
    vec![
        op(ld | b | abs, 0, 0, 9),                            // A = protocol
        op(jmp | libc::BPF_JEQ | libc::BPF_K, 0, 6, 17),      // UDP?
        op(ld | h | abs, 0, 0, 6),                            // A = flags/fragment
        op(jmp | libc::BPF_JSET | libc::BPF_K, 4, 0, 0x3fff), // a fragment?
        op(ldx | b | msh, 0, 0, 0),                           // X = header length
        op(ld | h | ind, 0, 0, 2),                            // A = UDP dst port
        op(jmp | libc::BPF_JEQ | libc::BPF_K, 0, 1, u32::from(port)),
        op(ret | libc::BPF_K, 0, 0, 0x0004_0000), // accept (whole packet)
        op(ret | libc::BPF_K, 0, 0, 0),           // drop
    ]
}

/// Receives DHCP without binding the UDP port, and sends replies from it.
pub(crate) struct PacketSocket {
    rx: AsyncFd<Socket>,
    tx: AsyncFd<Socket>,
    port: u16,
    /// Interface index → its IPv4 addresses, read on demand and re-read as they age.
    addrs: Mutex<HashMap<u32, Addresses>>,
}

/// One interface's addresses, as last read.
struct Addresses {
    list: Vec<IfAddr>,
    read: Option<Instant>,
}

impl Addresses {
    fn older_than(&self, now: Instant, age: Duration) -> bool {
        self.read
            .is_none_or(|t| now.saturating_duration_since(t) >= age)
    }

    fn reread(&mut self, ifindex: u32, now: Instant) {
        interface_ipv4(ifindex, &mut self.list);
        self.read = Some(now);
    }
}

/// Addresses are re-read at most this old, so a changed address is noticed...
const ADDRS_MAX_AGE: Duration = Duration::from_secs(5);
/// ...and, for a packet to an address we do not know, at most this often, so a flood
/// of packets to foreign addresses costs one interface dump per second.
const ADDRS_MISS_AGE: Duration = Duration::from_secs(1);

impl PacketSocket {
    /// Opens the capture (on `device` only, when given) and the raw send socket.
    pub(crate) fn open(port: u16, device: Option<&str>) -> io::Result<Self> {
        let proto = Protocol::from(i32::from(ETH_P_IP.to_be()));
        let rx = Socket::new(Domain::PACKET, Type::DGRAM, Some(proto))?;
        rx.attach_filter(&udp_port_filter(port))?;
        if let Some(dev) = device {
            let link = link_addr(dev)?;
            nix::sys::socket::bind(rx.as_raw_fd(), &link).map_err(io::Error::from)?;
        }
        rx.set_nonblocking(true)?;
        let tx = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        tx.set_broadcast(true)?;
        tx.set_nonblocking(true)?;
        Ok(PacketSocket {
            rx: async_fd(rx)?,
            tx: async_fd(tx)?,
            port,
            addrs: Mutex::new(HashMap::new()),
        })
    }

    /// Receives the next DHCP request to us: the IPv4 packet lands in `buf`, and its
    /// UDP payload is moved to the front of it. A packet larger than `buf` arrives
    /// truncated and is dropped.
    pub(crate) async fn recv(
        &self,
        buf: &mut [u8],
        role: ServerPort,
        listen_ip: Ipv4Addr,
    ) -> io::Result<(usize, RecvMeta)> {
        loop {
            let (n, from) = self
                .rx
                .async_io(Interest::READABLE, |s| {
                    nix::sys::socket::recvfrom::<LinkAddr>(s.as_raw_fd(), buf)
                        .map_err(io::Error::from)
                })
                .await?;
            let Some(from) = from else { continue };
            let ifindex = from.ifindex() as u32;
            let link = LinkType::from_pkttype(from.pkttype());
            let pkt = &buf[..n.min(buf.len())];
            let Some((range, src, local_ip)) = self.check(pkt, link, ifindex, listen_ip) else {
                continue;
            };
            let len = range.len();
            buf.copy_within(range, 0);
            return Ok((
                len,
                RecvMeta {
                    local_ip,
                    ifindex,
                    port: role,
                    src,
                },
            ));
        }
    }

    /// [`accept`] against the receiving interface's addresses: the payload's range in
    /// `pkt`, the sender, and our address to answer from.
    fn check(
        &self,
        pkt: &[u8],
        link: LinkType,
        ifindex: u32,
        listen_ip: Ipv4Addr,
    ) -> Option<(std::ops::Range<usize>, SocketAddrV4, Ipv4Addr)> {
        let mut cache = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let addrs = cache.entry(ifindex).or_insert_with(|| Addresses {
            list: Vec::new(),
            read: None,
        });
        if addrs.older_than(now, ADDRS_MAX_AGE) {
            addrs.reread(ifindex, now);
        }
        let mut verdict = accept(pkt, link, self.port, &addrs.list, listen_ip);
        // An address we may not know yet: read the interface again (rate-limited).
        if matches!(verdict, Err(Dropped::NotOurs(_) | Dropped::NoAddress))
            && addrs.older_than(now, ADDRS_MISS_AGE)
        {
            addrs.reread(ifindex, now);
            verdict = accept(pkt, link, self.port, &addrs.list, listen_ip);
        }
        match verdict {
            Ok(a) => {
                let start = a.datagram.payload.as_ptr() as usize - pkt.as_ptr() as usize;
                Some((
                    start..start + a.datagram.payload.len(),
                    a.datagram.src,
                    a.local_ip,
                ))
            }
            Err(why) => {
                tracing::trace!(reason = %why, ifindex, "captured packet dropped");
                None
            }
        }
    }

    /// Sends a reply from `local_ip`:our port.
    pub(crate) async fn send(
        &self,
        data: &[u8],
        dest: Destination,
        local_ip: Ipv4Addr,
    ) -> io::Result<()> {
        let (to, ifindex) = match dest {
            Destination::Broadcast { ifindex } => {
                (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), ifindex)
            }
            Destination::Unicast(a) => (a, 0),
        };
        let pkt = build_ipv4_udp(SocketAddrV4::new(local_ip, self.port), to, data)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "reply too large"))?;
        let info = libc::in_pktinfo {
            ipi_ifindex: ifindex as libc::c_int,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(local_ip).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let addr = SockaddrIn::from(SocketAddrV4::new(*to.ip(), 0));
        self.tx
            .async_io(Interest::WRITABLE, |s| {
                let iov = [IoSlice::new(&pkt)];
                let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
                let cmsgs: &[ControlMessage] = if ifindex == 0 { &[] } else { &cmsgs };
                sendmsg(s.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), Some(&addr))
                    .map(|_| ())
                    .map_err(io::Error::from)
            })
            .await
    }
}

/// Registers a socket with the runtime. `AsyncFd::new` is deprecated because a `T`
/// that does not own its descriptor could close it under the reactor; a
/// `socket2::Socket` owns its descriptor and closes it only on drop, after the
/// `AsyncFd` has deregistered it.
#[allow(deprecated)]
fn async_fd(s: Socket) -> io::Result<AsyncFd<Socket>> {
    AsyncFd::new(s)
}

/// Reads the IPv4 addresses of the interface with index `ifindex` into `out` (empty
/// when it has none, or is gone).
fn interface_ipv4(ifindex: u32, out: &mut Vec<IfAddr>) {
    out.clear();
    let Ok(name) = nix::net::if_::if_indextoname(ifindex) else {
        return;
    };
    let Ok(name) = name.to_str() else { return };
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return;
    };
    for a in addrs.filter(|a| a.interface_name == name) {
        let Some(addr) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
            continue;
        };
        let prefix = a
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
        out.push(IfAddr {
            addr: addr.ip(),
            prefix,
        });
    }
}

/// The packet-socket address of interface `dev`, for bind().
fn link_addr(dev: &str) -> io::Result<LinkAddr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for a in addrs {
        if a.interface_name == dev {
            if let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
                return Ok(*link);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no network interface named {dev}"),
    ))
}

/// The name of the interface that holds `ip`, if any.
pub fn interface_with_addr(ip: Ipv4Addr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let has = a.address.as_ref()?.as_sockaddr_in()?.ip() == ip;
        has.then(|| a.interface_name.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 67);
        let dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        for payload in [&b""[..], b"x", b"hello dhcp"] {
            let p = build_ipv4_udp(src, dst, payload).unwrap();
            assert_eq!(p.len(), 28 + payload.len());
            // A correct header and datagram sum to zero.
            assert_eq!(checksum(&[&p[..20]]), 0);
            let d = parse_ipv4_udp(&p).unwrap();
            assert_eq!((d.src, d.dst, d.payload), (src, dst, payload));
            // Ethernet pads short frames: the padding is not payload.
            let padded = [p.as_slice(), &[0xee; 18]].concat();
            assert_eq!(parse_ipv4_udp(&padded).unwrap().payload, payload);
            let ip = Ipv4View::new_checked(&padded).unwrap();
            assert_eq!(ip.payload().len(), 8 + payload.len());
            assert_eq!(
                UdpView::new_checked(ip.payload()).unwrap().payload(),
                payload
            );
        }
    }

    #[test]
    fn udp_checksum_matches_a_known_packet() {
        // 10.0.0.1:1234 -> 10.0.0.2:5678 "hi", checksum computed by hand:
        // pseudo 0a00 0001 0a00 0002 0011 000a + udp 04d2 162e 000a 0000 6869
        let p = build_ipv4_udp(
            "10.0.0.1:1234".parse().unwrap(),
            "10.0.0.2:5678".parse().unwrap(),
            b"hi",
        )
        .unwrap();
        assert_eq!(&p[26..28], &[0x68, 0x6e]);
    }

    #[test]
    fn malformed_packets_are_rejected_without_panic() {
        let good = build_ipv4_udp(
            "10.0.0.1:68".parse().unwrap(),
            "255.255.255.255:67".parse().unwrap(),
            b"payload",
        )
        .unwrap();
        for n in 0..good.len() {
            assert!(parse_ipv4_udp(&good[..n]).is_err(), "prefix {n}");
        }
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(parse_ipv4_udp(&v6), Err(IpError::Invalid));
        let mut tcp = good.clone();
        tcp[9] = 6;
        assert_eq!(parse_ipv4_udp(&tcp), Err(IpError::Invalid));
        let mut frag = good.clone();
        frag[7] = 1;
        assert_eq!(parse_ipv4_udp(&frag), Err(IpError::Invalid));
        let mut ihl = good.clone();
        ihl[0] = 0x4f; // 60-byte header in a 35-byte packet
        assert_eq!(parse_ipv4_udp(&ihl), Err(IpError::Invalid));
        let mut udp_len = good.clone();
        udp_len[25] = 200;
        assert_eq!(parse_ipv4_udp(&udp_len), Err(IpError::Invalid));
        let mut udp_short = good.clone();
        udp_short[25] = 7; // shorter than its own header
        assert_eq!(parse_ipv4_udp(&udp_short), Err(IpError::Invalid));
        let mut total = good.clone();
        total[3] = 27; // the IP payload cannot hold a UDP header
        assert_eq!(parse_ipv4_udp(&total), Err(IpError::Invalid));
        assert_eq!(UdpView::new_checked(&[0; 7]), Err(IpError::Truncated));
        // Every byte value at every position: no panic.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut p = good.clone();
                p[i] = v;
                let _ = parse_ipv4_udp(&p);
            }
        }
    }

    const OURS: [IfAddr; 2] = [
        IfAddr {
            addr: Ipv4Addr::new(10, 9, 8, 1),
            prefix: 24,
        },
        IfAddr {
            addr: Ipv4Addr::new(192, 168, 7, 5),
            prefix: 30,
        },
    ];

    fn to(dst: &str) -> Vec<u8> {
        build_ipv4_udp(
            "0.0.0.0:68".parse().unwrap(),
            SocketAddrV4::new(dst.parse().unwrap(), 67),
            b"dhcp",
        )
        .unwrap()
    }

    fn verdict(dst: &str, link: LinkType, listen: Ipv4Addr) -> Result<Ipv4Addr, Dropped> {
        let p = to(dst);
        accept(&p, link, 67, &OURS, listen).map(|a| {
            assert_eq!(a.datagram.payload, b"dhcp");
            a.local_ip
        })
    }

    /// A packet to an address the interface does not have is not ours, whatever its
    /// link-layer destination; every answer names one of our own addresses.
    #[test]
    fn only_packets_to_the_interface_are_answered_and_from_its_address() {
        use LinkType::{Broadcast, Host, Other};
        let none = Ipv4Addr::UNSPECIFIED;
        let a = Ipv4Addr::new(10, 9, 8, 1);
        let b = Ipv4Addr::new(192, 168, 7, 5);
        let foreign = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(
            verdict("10.9.9.9", Host, none),
            Err(Dropped::NotOurs(foreign))
        );
        assert_eq!(
            verdict("10.9.9.9", Broadcast, none),
            Err(Dropped::NotOurs(foreign))
        );
        assert_eq!(verdict("255.255.255.255", Broadcast, none), Ok(a));
        assert_eq!(verdict("10.9.8.1", Host, none), Ok(a));
        assert_eq!(verdict("192.168.7.5", Host, none), Ok(b));
        // Subnet broadcasts: the address of that subnet answers.
        assert_eq!(verdict("10.9.8.255", Broadcast, none), Ok(a));
        assert_eq!(verdict("192.168.7.7", Broadcast, none), Ok(b));
        // Another subnet's broadcast, multicast, and 0.0.0.0 are not ours.
        for dst in ["10.9.9.255", "224.0.0.1", "0.0.0.0", "192.168.7.255"] {
            assert!(
                matches!(verdict(dst, Broadcast, none), Err(Dropped::NotOurs(_))),
                "{dst}"
            );
        }
        // A frame for another host (promiscuous capture) or one we sent.
        assert_eq!(
            verdict("255.255.255.255", Other, none),
            Err(Dropped::LinkType)
        );
        // With -l, replies name the listen address, and it counts as ours.
        let l = Ipv4Addr::new(10, 9, 8, 77);
        assert_eq!(verdict("255.255.255.255", Broadcast, l), Ok(l));
        assert_eq!(verdict("192.168.7.5", Host, l), Ok(l));
        assert_eq!(verdict("10.9.8.77", Host, l), Ok(l));
        assert_eq!(verdict("10.9.9.9", Host, l), Err(Dropped::NotOurs(foreign)));
        // An interface without an address cannot answer, not even a broadcast.
        let p = to("255.255.255.255");
        assert_eq!(
            accept(&p, Broadcast, 67, &[], none),
            Err(Dropped::NoAddress)
        );
        assert_eq!(accept(&p, Broadcast, 67, &[], l).map(|a| a.local_ip), Ok(l));
        // Another port, and truncation.
        assert_eq!(
            accept(&p, Broadcast, 4011, &OURS, none),
            Err(Dropped::Port(67))
        );
        assert_eq!(
            accept(&p[..p.len() - 1], Broadcast, 67, &OURS, none),
            Err(Dropped::Malformed(IpError::Truncated))
        );
    }

    #[test]
    fn subnet_broadcasts() {
        let b = |addr: [u8; 4], prefix| {
            IfAddr {
                addr: addr.into(),
                prefix,
            }
            .broadcast()
        };
        assert_eq!(b([10, 9, 8, 1], 24), Some(Ipv4Addr::new(10, 9, 8, 255)));
        assert_eq!(b([10, 9, 8, 1], 0), Some(Ipv4Addr::BROADCAST));
        assert_eq!(b([10, 9, 8, 1], 8), Some(Ipv4Addr::new(10, 255, 255, 255)));
        assert_eq!(b([10, 9, 8, 1], 30), Some(Ipv4Addr::new(10, 9, 8, 3)));
        assert_eq!(b([10, 9, 8, 1], 31), None);
        assert_eq!(b([10, 9, 8, 1], 32), None);
        assert_eq!(b([10, 9, 8, 1], 40), None);
    }

    #[test]
    fn filter_is_well_formed() {
        let f = udp_port_filter(67);
        assert_eq!(f.len(), 9);
        assert_eq!(f[6].k, 67);
        // Every failed test jumps to the final "drop".
        for (i, jf) in [(1, 6), (6, 1)] {
            assert_eq!(i + 1 + usize::from(f[i].jf), f.len() - 1);
            assert_eq!(f[i].jf, jf);
        }
        assert_eq!(3 + 1 + usize::from(f[3].jt), f.len() - 1);
    }
}
