//! Test helpers: a server on 127.0.0.1 and a small blocking TFTP client.
#![allow(dead_code)]

use bytes::Bytes;
use ironpxe_tftp::packet::{encode_ack, BlockNum};
use ironpxe_tftp::{serve, ErrorCode, MemoryFiles, Mode, Options, Packet, Request, TftpConfig};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) struct Server {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start(cfg: TftpConfig) -> Server {
        let mut files = MemoryFiles::new();
        files.insert("undionly.kpxe", pattern(100_000)).unwrap();
        files.insert("efi/ipxe.efi", pattern(300_001)).unwrap();
        files.insert("empty", Bytes::new()).unwrap();
        files.insert("big.img", pattern(2 << 20)).unwrap();
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(serve(sock, Arc::new(files), cfg, async {
            let _ = rx.await;
        }));
        Server { addr, stop, task }
    }

    pub(crate) async fn stop(self) {
        self.stop.send(()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve did not stop on shutdown");
        r.unwrap().unwrap();
    }
}

pub(crate) fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 253) as u8 ^ (i >> 8) as u8).collect()
}

pub(crate) fn client() -> UdpSocket {
    client_on([127, 0, 0, 1])
}

/// A client on another loopback address (all of 127/8 is local), so tests can play
/// several hosts.
pub(crate) fn client_on(ip: [u8; 4]) -> UdpSocket {
    let s = UdpSocket::bind((std::net::Ipv4Addr::from(ip), 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

pub(crate) fn rrq(name: &str, options: Options) -> Vec<u8> {
    Packet::Rrq(Request {
        filename: name.into(),
        mode: Mode::Octet,
        options,
    })
    .encode()
    .unwrap()
}

pub(crate) fn recv(s: &UdpSocket) -> (Packet, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("no reply from server");
    (Packet::parse(&buf[..n]).expect("server sent garbage"), from)
}

#[derive(Debug, PartialEq)]
pub(crate) enum Fetched {
    File {
        data: Vec<u8>,
        oack: Option<Options>,
    },
    Error(ErrorCode, String),
}

/// Fetches `name` like a real client: ACK 0 after an OACK, then one ACK per window.
pub(crate) fn fetch(server: SocketAddr, name: &str, options: Options) -> Fetched {
    fetch_raw(server, &rrq(name, options))
}

/// Like [`fetch`], with the request given as bytes.
pub(crate) fn fetch_raw(server: SocketAddr, request: &[u8]) -> Fetched {
    let s = client();
    s.send_to(request, server).unwrap();
    let (first, tid) = recv(&s);
    assert_eq!(tid.ip(), server.ip());
    if let Packet::Error { code, message } = first {
        // Refusals (busy, WRQ) come from the listener; file errors from a new TID.
        return Fetched::Error(code, message);
    }
    assert_ne!(tid.port(), server.port(), "transfer must use a new TID");
    let mut blksize = 512usize;
    let mut window = 1u16;
    let mut oack = None;
    let mut pending = Some(first);
    if let Some(Packet::Oack(o)) = &pending {
        blksize = o.blksize.map_or(512, usize::from);
        window = o.windowsize.unwrap_or(1);
        oack = Some(o.clone());
        pending = None;
        s.send_to(&encode_ack(BlockNum(0)), tid).unwrap();
    }
    let mut data = Vec::new();
    let mut expected = 1u16;
    let mut in_window = 0u16;
    loop {
        let pkt = match pending.take() {
            Some(p) => p,
            None => {
                let (p, from) = recv(&s);
                assert_eq!(from, tid);
                p
            }
        };
        match pkt {
            Packet::Data { block, payload } => {
                // A copy of a block already received: the server's timer fired before
                // our ACK arrived (a busy machine can delay us past its 10 ms floor).
                if (block.0.wrapping_sub(expected) as i16) < 0 {
                    continue;
                }
                assert_eq!(block.0, expected, "out of order on loopback");
                assert!(payload.len() <= blksize);
                data.extend_from_slice(&payload);
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = payload.len() < blksize;
                if last || in_window == window {
                    s.send_to(&encode_ack(block), tid).unwrap();
                    in_window = 0;
                }
                if last {
                    return Fetched::File { data, oack };
                }
            }
            Packet::Error { code, message } => return Fetched::Error(code, message),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
