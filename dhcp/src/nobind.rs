//! The non-binding DHCP path (`--dhcp-no-bind`): ProxyDHCP next to a DHCP server
//! that already holds UDP 67 on the same host.
//!
//! Receiving: an `AF_PACKET` socket (cooked, IPv4 only) with a classic BPF filter
//! that passes only unfragmented UDP to the server port, so the kernel copies just
//! DHCP to us and the DHCP server keeps its socket. Frames we sent ourselves
//! (`PACKET_OUTGOING`) are dropped. The IPv4 and UDP headers are decoded here, with
//! every length checked ([`parse_ipv4_udp`]).
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

use nix::sys::socket::{sendmsg, ControlMessage, LinkAddr, MsgFlags, SockaddrIn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::decide::{Destination, RecvMeta, ServerPort};

const ETH_P_IP: u16 = 0x0800;
const PACKET_OUTGOING: u8 = 4;
const IPPROTO_UDP: u8 = 17;

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

/// Decodes an IPv4 packet carrying UDP. Never panics; lengths are checked against
/// the buffer before anything is read.
pub fn parse_ipv4_udp(pkt: &[u8]) -> Result<Datagram<'_>, IpError> {
    if pkt.len() < 20 {
        return Err(IpError::Truncated);
    }
    if pkt[0] >> 4 != 4 {
        return Err(IpError::Invalid);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl + 8 {
        return Err(IpError::Invalid);
    }
    if pkt.len() < total {
        return Err(IpError::Truncated);
    }
    // More-fragments flag or a fragment offset: not a whole datagram.
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 || pkt[9] != IPPROTO_UDP {
        return Err(IpError::Invalid);
    }
    let src_ip = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst_ip = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let udp = &pkt[ihl..total];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return Err(IpError::Invalid);
    }
    Ok(Datagram {
        src: SocketAddrV4::new(src_ip, src_port),
        dst: SocketAddrV4::new(dst_ip, dst_port),
        payload: &udp[8..udp_len],
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
    ]
    .concat();
    let sum = match checksum(&[&pseudo, &p[20..]]) {
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
    /// Interface index → its first IPv4 address, filled on demand.
    addrs: Mutex<HashMap<u32, Ipv4Addr>>,
}

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

    /// Receives the next DHCP datagram to our port: copies its payload into `buf`.
    pub(crate) async fn recv(
        &self,
        buf: &mut [u8],
        role: ServerPort,
        listen_ip: Ipv4Addr,
    ) -> io::Result<(usize, RecvMeta)> {
        let mut pkt = vec![0u8; 65536];
        loop {
            let (n, from) = self
                .rx
                .async_io(Interest::READABLE, |s| {
                    nix::sys::socket::recvfrom::<LinkAddr>(s.as_raw_fd(), &mut pkt)
                        .map_err(io::Error::from)
                })
                .await?;
            let Some(from) = from else { continue };
            if from.pkttype() == PACKET_OUTGOING {
                continue;
            }
            let Ok(d) = parse_ipv4_udp(&pkt[..n.min(pkt.len())]) else {
                continue;
            };
            if d.dst.port() != self.port || d.payload.len() > buf.len() {
                continue;
            }
            let ifindex = from.ifindex() as u32;
            let local_ip = if !listen_ip.is_unspecified() {
                listen_ip
            } else if !d.dst.ip().is_broadcast() && !d.dst.ip().is_multicast() {
                *d.dst.ip()
            } else {
                match self.interface_addr(ifindex) {
                    Some(ip) => ip,
                    None => continue,
                }
            };
            buf[..d.payload.len()].copy_from_slice(d.payload);
            return Ok((
                d.payload.len(),
                RecvMeta {
                    local_ip,
                    ifindex,
                    port: role,
                    src: d.src,
                },
            ));
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

    fn interface_addr(&self, ifindex: u32) -> Option<Ipv4Addr> {
        let mut cache = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = cache.get(&ifindex) {
            return Some(*ip);
        }
        let ip = interface_ipv4(ifindex)?;
        cache.insert(ifindex, ip);
        Some(ip)
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

/// The first IPv4 address of the interface with index `ifindex`.
fn interface_ipv4(ifindex: u32) -> Option<Ipv4Addr> {
    let name = interface_name(ifindex)?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        (a.interface_name == name)
            .then(|| a.address.as_ref()?.as_sockaddr_in().map(|s| s.ip()))
            .flatten()
    })
}

fn interface_name(ifindex: u32) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let link = a.address.as_ref()?.as_link_addr()?;
        (link.ifindex() == ifindex as usize).then(|| a.interface_name.clone())
    })
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
        // Every byte value at every position: no panic.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut p = good.clone();
                p[i] = v;
                let _ = parse_ipv4_udp(&p);
            }
        }
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
