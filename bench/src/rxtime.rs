//! Kernel receive timestamps for the storm's clients.
//!
//! With `SO_TIMESTAMPNS` on a socket, every `recvmsg` carries the time (the realtime
//! clock) at which the kernel received the packet, before the receiving task was
//! scheduled. The storm measures each phase from the moment a request was handed to
//! the kernel (a realtime reading just before the send call) to the kernel's receive
//! time of the answer's last packet, so the clients' own scheduling delay, which is
//! large with thousands of tasks on two cores, is not counted as server latency.
//!
//! On a TCP socket the timestamp is that of the most recent segment whose data the
//! read returned.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

/// Turns on kernel receive timestamps for `sock`.
pub fn enable(sock: &impl AsFd) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// The realtime clock now, as the send side of a measured interval.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// `to - from`, zero if the clock went backwards.
pub fn between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

fn time_of(ts: TimeSpec) -> SystemTime {
    UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// One non-blocking `recvmsg`: bytes read, sender, kernel receive time (or `now()`
/// when the kernel gave none).
fn recv_once(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>, SystemTime)> {
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut at = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                at = Some(time_of(ts));
            }
        }
    }
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::V4((*v4).into()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
    });
    Ok((msg.bytes, from, at.unwrap_or_else(SystemTime::now)))
}

/// Receives one datagram: its length, sender and kernel receive time.
pub async fn recv_from(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SystemTime)> {
    let fd = sock.as_raw_fd();
    loop {
        let (n, from, at) = sock
            .async_io(Interest::READABLE, || recv_once(fd, buf))
            .await?;
        if let Some(from) = from {
            return Ok((n, from, at));
        }
    }
}

/// Reads from a TCP stream: bytes read (0 at the end) and the kernel receive time of
/// the data.
pub async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, SystemTime)> {
    let fd = stream.as_raw_fd();
    let (n, _, at) = stream
        .async_io(Interest::READABLE, || recv_once(fd, buf))
        .await?;
    Ok((n, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_datagram_carries_a_kernel_time_between_send_and_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = now();
        tx.send_to(b"ping", rx.local_addr().unwrap()).await.unwrap();
        // The packet waits in the socket while the task does something else.
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let (n, from, at) = recv_from(&rx, &mut buf).await.unwrap();
        let read_at = now();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, tx.local_addr().unwrap());
        assert!(at >= before, "{at:?} before the send at {before:?}");
        // The kernel time is the arrival, not the late read.
        assert!(
            between(at, read_at) >= Duration::from_millis(40),
            "receive time {at:?} is the read time {read_at:?}, not the arrival"
        );
    }

    #[tokio::test]
    async fn tcp_reads_carry_the_arrival_time() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, b"hello")
                .await
                .unwrap();
            s
        });
        let c = TcpStream::connect(addr).await.unwrap();
        enable(&c).unwrap();
        let _keep = server.await.unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let (n, at) = read(&c, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(between(at, now()) >= Duration::from_millis(40));
    }
}
