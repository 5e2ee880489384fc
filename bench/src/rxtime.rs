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

/// Turns the kernel's receive timestamps on for the rest of the process and waits until
/// they are the arrival times; returns whether they are.
///
/// Linux switches arrival stamping on some moments after the first socket asks for it
/// (the switch is flipped from a work queue) and off when the last such socket closes.
/// Until then a packet is stamped when it is read, which would count the clients' own
/// scheduling delay as server latency. So this keeps one stamping socket open for the
/// life of the process and checks, with datagrams to itself on loopback, that a packet
/// left waiting is stamped at its arrival. Some sandboxed kernels never give stamps; the
/// storm's report then says that its times are read times.
pub fn kernel_stamps_work() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let probe = || -> io::Result<bool> {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
            enable(&rx)?;
            rx.set_read_timeout(Some(Duration::from_secs(1)))?;
            let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let wait = Duration::from_millis(5);
            let mut works = false;
            for _ in 0..200 {
                tx.send_to(b"t", rx.local_addr()?)?;
                std::thread::sleep(wait);
                // Wait for the datagram, then take it with its stamp.
                let mut one = [0u8; 1];
                rx.peek_from(&mut one)?;
                let mut buf = [0u8; 4];
                let (_, _, at, kernel) = recv_once(rx.as_raw_fd(), &mut buf)?;
                if !kernel {
                    break;
                }
                if between(at, now()) >= wait / 2 {
                    works = true;
                    break;
                }
            }
            // Keeping the socket keeps the kernel's switch on.
            std::mem::forget(rx);
            Ok(works)
        };
        probe().unwrap_or(false)
    })
}

/// One non-blocking `recvmsg`: bytes read, sender, receive time, and whether that time
/// is the kernel's (otherwise it is `now()`).
fn recv_once(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>, SystemTime, bool)> {
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
    Ok((
        msg.bytes,
        from,
        at.unwrap_or_else(SystemTime::now),
        at.is_some(),
    ))
}

/// Receives one datagram: its length, sender and kernel receive time.
pub async fn recv_from(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SystemTime)> {
    let fd = sock.as_raw_fd();
    loop {
        let (n, from, at, _) = sock
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
    let (n, _, at, _) = stream
        .async_io(Interest::READABLE, || recv_once(fd, buf))
        .await?;
    Ok((n, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_datagram_carries_a_kernel_time_between_send_and_read() {
        let kernel_stamps = kernel_stamps_work();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = now();
        tx.send_to(b"ping", rx.local_addr().unwrap()).await.unwrap();
        // The packet waits in the socket while the task does something else.
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let fd = rx.as_raw_fd();
        let (n, from, at, kernel) = rx
            .async_io(Interest::READABLE, || recv_once(fd, &mut buf))
            .await
            .unwrap();
        let read_at = now();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, Some(tx.local_addr().unwrap()));
        assert!(at >= before, "{at:?} before the send at {before:?}");
        // The probe the report relies on agrees with what the read got.
        assert_eq!(kernel, kernel_stamps);
        if kernel {
            // The kernel time is the arrival, not the late read.
            assert!(
                between(at, read_at) >= Duration::from_millis(40),
                "receive time {at:?} is the read time {read_at:?}, not the arrival"
            );
        } else {
            // No kernel stamp: the read time stands in, never an earlier guess.
            assert!(between(before, at) >= Duration::from_millis(40));
        }
    }

    #[tokio::test]
    async fn tcp_reads_carry_the_arrival_time() {
        let kernel_stamps = kernel_stamps_work();
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
        let slept = now();
        let mut buf = [0u8; 16];
        let fd = c.as_raw_fd();
        let (n, _, at, kernel) = c
            .async_io(Interest::READABLE, || recv_once(fd, &mut buf))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(kernel, kernel_stamps);
        if kernel {
            assert!(between(at, now()) >= Duration::from_millis(40));
        } else {
            assert!(at >= slept, "{at:?} is before the read at {slept:?}");
        }
    }
}
