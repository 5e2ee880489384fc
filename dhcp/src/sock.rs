//! Socket details of the DHCP driver, kept in one place: SO_BINDTODEVICE,
//! SO_BROADCAST, IP_PKTINFO on receive (which interface, which of our addresses) and
//! on send (which interface a broadcast leaves from).

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::decide::{Destination, RecvMeta, ServerPort};
use crate::nobind::PacketSocket;

/// A socket receiving DHCP for one [`ServerPort`]: a bound UDP socket, or the
/// non-binding packet-socket path of [`DhcpSocket::no_bind`].
pub struct DhcpSocket {
    inner: Inner,
    port: ServerPort,
    listen_ip: Ipv4Addr,
}

enum Inner {
    Udp(UdpSocket),
    Packet(Box<PacketSocket>),
}

impl DhcpSocket {
    /// Binds `0.0.0.0:port` (DHCP clients broadcast, so a socket bound to a unicast
    /// address would never see them). With `device`, only packets arriving on that
    /// interface are received. `listen_ip`, when not unspecified, is announced as our
    /// address instead of the receiving interface's.
    pub fn bind(
        role: ServerPort,
        port: u16,
        device: Option<&str>,
        listen_ip: Ipv4Addr,
    ) -> io::Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_broadcast(true)?;
        if let Some(dev) = device {
            sock.bind_device(Some(dev.as_bytes()))?;
        }
        setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        grow_receive_buffer(&sock);
        sock.set_nonblocking(true)?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        Ok(DhcpSocket {
            inner: Inner::Udp(UdpSocket::from_std(sock.into())?),
            port: role,
            listen_ip,
        })
    }

    /// Receives DHCP to UDP `port` without binding it (pixiecore's `--dhcp-no-bind`),
    /// so a DHCP server on the same host can keep the port. Needs CAP_NET_RAW. With
    /// `device`, only packets arriving on that interface are seen.
    pub fn no_bind(
        role: ServerPort,
        port: u16,
        device: Option<&str>,
        listen_ip: Ipv4Addr,
    ) -> io::Result<Self> {
        Ok(DhcpSocket {
            inner: Inner::Packet(Box::new(PacketSocket::open(port, device)?)),
            port: role,
            listen_ip,
        })
    }

    /// The role of this socket.
    pub fn role(&self) -> ServerPort {
        self.port
    }

    /// Receives one datagram with its metadata.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, RecvMeta)> {
        let udp = match &self.inner {
            Inner::Udp(u) => u,
            Inner::Packet(p) => return p.recv(buf, self.port, self.listen_ip).await,
        };
        let fd = udp.as_raw_fd();
        let listen_ip = self.listen_ip;
        let role = self.port;
        udp.async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .map_err(io::Error::from)?;
            let src = msg
                .address
                .map(|a| SocketAddrV4::new(a.ip(), a.port()))
                .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let mut ifindex = 0;
            let mut spec_dst = Ipv4Addr::UNSPECIFIED;
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                    ifindex = info.ipi_ifindex as u32;
                    spec_dst = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                }
            }
            let local_ip = if listen_ip.is_unspecified() {
                spec_dst
            } else {
                listen_ip
            };
            Ok((
                msg.bytes,
                RecvMeta {
                    local_ip,
                    ifindex,
                    port: role,
                    src,
                },
            ))
        })
        .await
    }

    /// Sends a reply from `local_ip`; a broadcast leaves through `ifindex`.
    pub async fn send(&self, data: &[u8], dest: Destination, local_ip: Ipv4Addr) -> io::Result<()> {
        let udp = match &self.inner {
            Inner::Udp(u) => u,
            Inner::Packet(p) => return p.send(data, dest, local_ip).await,
        };
        let fd = udp.as_raw_fd();
        let (to, ifindex) = match dest {
            Destination::Broadcast { ifindex } => {
                (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), ifindex)
            }
            Destination::Unicast(a) => (a, 0),
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: ifindex as libc::c_int,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(local_ip).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let addr = SockaddrIn::from(to);
        udp.async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(data)];
            let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
            sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&addr))
                .map(|_| ())
                .map_err(io::Error::from)
        })
        .await
    }
}

/// The DHCP receive buffer asked for: a rack powering on sends its DISCOVERs within
/// milliseconds, and the default buffer (about 200 KiB, some 300 DISCOVERs with
/// their kernel overhead) overflows before the receive loop drains it.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Asks for [`RECEIVE_BUFFER`], past `net.core.rmem_max` where the process may
/// (root or CAP_NET_ADMIN), else up to that limit. Best effort: a smaller buffer
/// only means more retransmits in a burst.
fn grow_receive_buffer(sock: &Socket) {
    if setsockopt(sock, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = sock.set_recv_buffer_size(RECEIVE_BUFFER);
    }
    tracing::debug!(
        bytes = sock.recv_buffer_size().unwrap_or(0),
        "DHCP receive buffer"
    );
}
