//! Hostile and broken clients against the tokio driver on loopback: one host asking
//! for every slot, repeated requests, requests built to be slow to parse, and packets
//! sprayed at a transfer's port.

mod common;

use common::*;
use ironpxe_tftp::packet::{encode_ack, BlockNum};
use ironpxe_tftp::{ErrorCode, Options, Packet, TftpConfig, DEFAULT_MAX_PER_ADDRESS};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Everything that arrives on `s` until it has been quiet for `quiet`.
fn collect(s: &UdpSocket, quiet: Duration) -> Vec<(Packet, SocketAddr)> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut got = Vec::new();
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        got.push((Packet::parse(&buf[..n]).expect("server sent garbage"), from));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_transfer() {
    // The transfers left open at the end are aborted once the drain is over.
    let srv = Server::start(TftpConfig {
        shutdown_drain: Duration::from_millis(200),
        ..TftpConfig::default()
    })
    .await;
    let addr = srv.addr;
    blocking(move || {
        // One host opens 3x its share of transfers, each from its own port, and
        // never acknowledges anything.
        let n = 3 * DEFAULT_MAX_PER_ADDRESS;
        let socks: Vec<_> = (0..n).map(|_| client()).collect();
        for s in &socks {
            s.send_to(&rrq("big.img", Options::default()), addr)
                .unwrap();
        }
        let (mut started, mut busy) = (0, 0);
        for s in &socks {
            match recv(s) {
                (
                    Packet::Data {
                        block: BlockNum(1), ..
                    },
                    from,
                ) => {
                    assert_ne!(from, addr);
                    started += 1;
                }
                (
                    Packet::Error {
                        code: ErrorCode::NotDefined,
                        message,
                    },
                    from,
                ) => {
                    assert_eq!(from, addr, "refused by the listener");
                    assert!(message.contains("server busy"), "{message}");
                    assert!(message.contains("address"), "{message}");
                    busy += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            (started, busy),
            (DEFAULT_MAX_PER_ADDRESS, n - DEFAULT_MAX_PER_ADDRESS)
        );
        // Another host is served in full meanwhile.
        let other = client_on([127, 0, 0, 2]);
        other
            .send_to(&rrq("undionly.kpxe", Options::default()), addr)
            .unwrap();
        let (first, tid) = recv(&other);
        assert!(
            matches!(
                first,
                Packet::Data {
                    block: BlockNum(1),
                    ..
                }
            ),
            "{first:?}"
        );
        other.send_to(&encode_ack(BlockNum(1)), tid).unwrap();
        assert!(matches!(
            recv(&other).0,
            Packet::Data {
                block: BlockNum(2),
                ..
            }
        ));
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_joins_the_running_transfer() {
    let srv = Server::start(TftpConfig {
        shutdown_drain: Duration::from_millis(200),
        ..TftpConfig::default()
    })
    .await;
    let addr = srv.addr;
    blocking(move || {
        // Firmware that thinks its first request was lost repeats it, from the same
        // port: 30 times here, faster than the server's first retransmission (1 s).
        let s = client();
        let req = rrq(
            "undionly.kpxe",
            Options {
                blksize: Some(1432),
                ..Options::default()
            },
        );
        for _ in 0..30 {
            s.send_to(&req, addr).unwrap();
        }
        let got = collect(&s, Duration::from_millis(400));
        let tids: HashSet<_> = got.iter().map(|(_, from)| *from).collect();
        assert_eq!(tids.len(), 1, "one transfer, one TID: {got:?}");
        assert!(matches!(&got[..], [(Packet::Oack(_), _)]), "{got:?}");
        // That one transfer goes on normally.
        let tid = got[0].1;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&encode_ack(BlockNum(0)), tid).unwrap();
        loop {
            match recv(&s) {
                (Packet::Oack(_), _) => continue, // its timer's copy
                (p, from) => {
                    assert_eq!(from, tid);
                    assert!(
                        matches!(
                            p,
                            Packet::Data {
                                block: BlockNum(1),
                                ..
                            }
                        ),
                        "{p:?}"
                    );
                    break;
                }
            }
        }
        // Another file from the same port is a transfer of its own.
        s.send_to(&rrq("efi/ipxe.efi", Options::default()), addr)
            .unwrap();
        let (p, from) = recv(&s);
        assert!(
            matches!(
                p,
                Packet::Data {
                    block: BlockNum(1),
                    ..
                }
            ),
            "{p:?}"
        );
        assert_ne!(from, tid);
    })
    .await;
    srv.stop().await;
}

/// The request that cost a second of CPU each when options were parsed in quadratic
/// time: a name, a mode, 65,000 NULs, then `x\0\0`.
fn nul_flood() -> Vec<u8> {
    let mut raw = b"\0\x01a.txt\0octet\0".to_vec();
    raw.extend(std::iter::repeat_n(0u8, 65_000));
    raw.extend_from_slice(b"x\0\0");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_hostile_ones_is_answered() {
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    blocking(move || {
        let hostile = client_on([127, 0, 0, 3]);
        let flood = nul_flood();
        for _ in 0..10 {
            hostile.send_to(&flood, addr).unwrap();
        }
        // Queued behind them on the listening socket; answered within the client's
        // 5 s receive timeout (quadratic parsing took seconds per hostile request).
        let got = fetch(addr, "undionly.kpxe", Options::default());
        assert_eq!(
            got,
            Fetched::File {
                data: pattern(100_000).to_vec(),
                oack: None
            }
        );
        // Each hostile request was refused (those that fitted in the listening
        // socket's receive buffer: ten 65 KB datagrams may not).
        let refusals = collect(&hostile, Duration::from_millis(300));
        assert!((1..=10).contains(&refusals.len()), "{refusals:?}");
        for (p, _) in refusals {
            assert!(
                matches!(&p, Packet::Error { code: ErrorCode::IllegalOperation, message } if message.contains("options")),
                "{p:?}"
            );
        }
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_packets_to_a_transfer_port_get_few_answers() {
    let srv = Server::start(TftpConfig {
        shutdown_drain: Duration::from_millis(200),
        ..TftpConfig::default()
    })
    .await;
    let addr = srv.addr;
    blocking(move || {
        let s = client();
        s.send_to(&rrq("undionly.kpxe", Options::default()), addr)
            .unwrap();
        let (_, tid) = recv(&s);
        // 200 packets from another port, as fast as they go: a reflection attempt.
        let intruder = client_on([127, 0, 0, 4]);
        for _ in 0..200 {
            intruder.send_to(&encode_ack(BlockNum(1)), tid).unwrap();
        }
        let answers = collect(&intruder, Duration::from_millis(300));
        assert!(
            !answers.is_empty(),
            "a stray client still learns its mistake"
        );
        // A burst of 10, then 10 a second: the sending took well under a second.
        assert!(
            answers.len() <= 20,
            "{} answers to 200 stray packets",
            answers.len()
        );
        for (p, from) in &answers {
            assert_eq!(*from, tid);
            assert!(matches!(
                p,
                Packet::Error {
                    code: ErrorCode::UnknownTransferId,
                    ..
                }
            ));
        }
        // The real client's transfer is untouched (skipping copies of block 1 its
        // timer may have sent meanwhile).
        s.send_to(&encode_ack(BlockNum(1)), tid).unwrap();
        loop {
            match recv(&s).0 {
                Packet::Data {
                    block: BlockNum(1), ..
                } => continue,
                p => {
                    assert!(
                        matches!(
                            p,
                            Packet::Data {
                                block: BlockNum(2),
                                ..
                            }
                        ),
                        "{p:?}"
                    );
                    break;
                }
            }
        }
    })
    .await;
    srv.stop().await;
}

/// A flood of garbage and write requests to the listening port is answered up to the
/// refusal budget, not one ERROR per packet, and a good request is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_requests_to_the_listener_gets_few_answers() {
    let srv = Server::start(TftpConfig {
        shutdown_drain: Duration::from_millis(200),
        ..TftpConfig::default()
    })
    .await;
    let addr = srv.addr;
    blocking(move || {
        let flooder = client_on([127, 0, 0, 5]);
        for i in 0..1000u32 {
            // Garbage, and write requests (refused with ERROR 2), alternately.
            let packet = if i % 2 == 0 {
                vec![0, 9, 1, 2, 3]
            } else {
                b"\0\x02upload.bin\0octet\0".to_vec()
            };
            flooder.send_to(&packet, addr).unwrap();
        }
        let answers = collect(&flooder, Duration::from_millis(300));
        assert!(!answers.is_empty(), "the first bad requests are still told");
        // A burst of 50, then 50 a second: the sending took well under a second.
        assert!(
            answers.len() <= 120,
            "{} answers to 1000 bad requests",
            answers.len()
        );
        // A real client right after the flood is served.
        let s = client();
        s.send_to(&rrq("undionly.kpxe", Options::default()), addr)
            .unwrap();
        assert!(matches!(recv(&s).0, Packet::Data { .. }));
    })
    .await;
    srv.stop().await;
}
