//! Socket details of the DHCP driver, kept in one place: SO_BINDTODEVICE,
//! SO_BROADCAST, IP_PKTINFO on receive (which interface, which of our addresses) and
//! on send (which interface a broadcast leaves from).
//!
//! A bound UDP socket is blocking and read by a thread of its own with recvmmsg(2)
//! ([`DhcpSocket::recv_batch`]): one call waits for the first datagram and returns
//! every one queued behind it, so a burst costs one system call per batch and a
//! quiet server one per packet, with no readiness polling in between.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use std::time::Duration;

use nix::sys::socket::{
    recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};

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
    /// Blocking, with a receive timeout of [`RECV_POLL`].
    Udp(std::net::UdpSocket),
    Packet(Box<PacketSocket>),
}

/// How long a blocking receive waits before its thread looks whether the server
/// is shutting down.
pub(crate) const RECV_POLL: Duration = Duration::from_millis(250);

/// Datagrams one [`DhcpSocket::recv_batch`] call can return.
pub(crate) const BATCH: usize = 32;

/// The receive buffer of each datagram: a DHCP message (576 to about 1,500 bytes in
/// practice) with room to spare, and, on the no-bind path, the IPv4 and UDP headers
/// it arrives with.
pub(crate) const RECV_BUFFER: usize = 4096;

/// Buffers and headers for [`DhcpSocket::recv_batch`], allocated once per socket.
pub(crate) struct RecvBatch {
    storage: Vec<u8>,
    lens: [usize; BATCH],
    metas: [RecvMeta; BATCH],
    headers: MultiHeaders<SockaddrIn>,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        let none = RecvMeta {
            local_ip: Ipv4Addr::UNSPECIFIED,
            ifindex: 0,
            port: ServerPort::Dhcp,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        RecvBatch {
            storage: vec![0; BATCH * RECV_BUFFER],
            lens: [0; BATCH],
            metas: [none; BATCH],
            headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(libc::in_pktinfo))),
        }
    }

    /// Datagram `i` of the last batch and how it was received.
    pub(crate) fn get(&self, i: usize) -> (&[u8], RecvMeta) {
        let start = i * RECV_BUFFER;
        (
            &self.storage[start..start + self.lens[i].min(RECV_BUFFER)],
            self.metas[i],
        )
    }
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
        sock.set_read_timeout(Some(RECV_POLL))?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        Ok(DhcpSocket {
            inner: Inner::Udp(sock.into()),
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

    /// Whether this socket is read with [`DhcpSocket::recv_batch`] on a thread of its
    /// own (a bound UDP socket) rather than with [`DhcpSocket::recv`].
    pub(crate) fn is_blocking(&self) -> bool {
        matches!(self.inner, Inner::Udp(_))
    }

    /// Receives one datagram with its metadata (the no-bind path).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, RecvMeta)> {
        match &self.inner {
            Inner::Packet(p) => p.recv(buf, self.port, self.listen_ip).await,
            Inner::Udp(_) => Err(io::Error::other(
                "a bound DHCP socket is read with recv_batch",
            )),
        }
    }

    /// Waits up to [`RECV_POLL`] for datagrams on a bound socket, then returns how many
    /// are in `batch` (each with its metadata from IP_PKTINFO). A timeout is
    /// `WouldBlock`.
    pub(crate) fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let Inner::Udp(udp) = &self.inner else {
            return Err(io::Error::other("recv_batch is for bound sockets"));
        };
        let fd = udp.as_raw_fd();
        let mut chunks = batch.storage.chunks_exact_mut(RECV_BUFFER);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(
            fd,
            &mut batch.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )
        .map_err(io::Error::from)?;
        let mut n = 0;
        for msg in results {
            let src = msg
                .address
                .map(|a| SocketAddrV4::new(a.ip(), a.port()))
                .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let mut ifindex = 0;
            let mut spec_dst = Ipv4Addr::UNSPECIFIED;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                        ifindex = info.ipi_ifindex as u32;
                        spec_dst = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                    }
                }
            }
            let local_ip = if self.listen_ip.is_unspecified() {
                spec_dst
            } else {
                self.listen_ip
            };
            batch.lens[n] = msg.bytes;
            batch.metas[n] = RecvMeta {
                local_ip,
                ifindex,
                port: self.port,
                src,
            };
            n += 1;
        }
        Ok(n)
    }

    /// Sends a reply from `local_ip`; a broadcast leaves through `ifindex`.
    pub async fn send(&self, data: &[u8], dest: Destination, local_ip: Ipv4Addr) -> io::Result<()> {
        match &self.inner {
            Inner::Packet(p) => p.send(data, dest, local_ip).await,
            Inner::Udp(_) => self.send_now(data, dest, local_ip),
        }
    }

    /// Sends a reply on a bound socket, from the calling thread: a UDP send only
    /// waits when the socket's send buffer is full.
    pub(crate) fn send_now(
        &self,
        data: &[u8],
        dest: Destination,
        local_ip: Ipv4Addr,
    ) -> io::Result<()> {
        let Inner::Udp(udp) = &self.inner else {
            return Err(io::Error::other("send_now is for bound sockets"));
        };
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
        let iov = [IoSlice::new(data)];
        let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
        sendmsg(
            udp.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
        .map_err(io::Error::from)
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
