//! The tokio driver on 127.0.0.1, against a small blocking TFTP client.

mod common;

use common::*;
use ironpxe_tftp::packet::{encode_ack, BlockNum};
use ironpxe_tftp::{ErrorCode, Mode, Options, Packet, Request, TftpConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_fetch_returns_the_exact_bytes() {
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    let got = blocking(move || fetch(addr, "/undionly.kpxe", Options::default())).await;
    assert_eq!(
        got,
        Fetched::File {
            data: pattern(100_000).to_vec(),
            oack: None
        }
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_fetch_with_options_returns_the_exact_bytes() {
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    let opts = Options {
        blksize: Some(65464),
        tsize: Some(0),
        windowsize: Some(8),
        timeout: None,
    };
    let got = blocking(move || fetch(addr, "efi/ipxe.efi", opts)).await;
    assert_eq!(
        got,
        Fetched::File {
            data: pattern(300_001).to_vec(),
            // Loopback's 65536-byte MTU carries the largest block RFC 2348 allows.
            oack: Some(Options {
                blksize: Some(65464),
                tsize: Some(300_001),
                windowsize: Some(8),
                timeout: None,
            })
        }
    );
    // Several transfers at once, each on its own TID.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            tokio::task::spawn_blocking(move || {
                let opts = Options {
                    windowsize: Some(4),
                    blksize: Some(1024 + i),
                    ..Options::default()
                };
                fetch(addr, "undionly.kpxe", opts)
            })
        })
        .collect();
    for h in handles {
        match h.await.unwrap() {
            Fetched::File { data, .. } => assert_eq!(data, pattern(100_000).to_vec()),
            other => panic!("{other:?}"),
        }
    }
    let empty = blocking(move || fetch(addr, "empty", Options::default())).await;
    assert_eq!(
        empty,
        Fetched::File {
            data: vec![],
            oack: None
        }
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_gets_error_1_and_bad_path_error_2() {
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    let (got, from) = blocking(move || {
        let s = client();
        s.send_to(&rrq("snponly.efi", Options::default()), addr)
            .unwrap();
        recv(&s)
    })
    .await;
    assert_eq!(
        got,
        Packet::Error {
            code: ErrorCode::FileNotFound,
            message: "file not found".into()
        }
    );
    assert_ne!(from.port(), addr.port(), "sent from the transfer's own TID");
    let got = blocking(move || fetch(addr, "../etc/passwd", Options::default())).await;
    assert!(
        matches!(&got, Fetched::Error(ErrorCode::AccessViolation, m) if m.contains("..")),
        "{got:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrq_mail_and_garbage_are_refused() {
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    blocking(move || {
        let s = client();
        let wrq = Packet::Wrq(Request {
            filename: "upload".into(),
            mode: Mode::Octet,
            options: Options::default(),
        });
        s.send_to(&wrq.encode().unwrap(), addr).unwrap();
        assert_eq!(
            recv(&s).0,
            Packet::Error {
                code: ErrorCode::AccessViolation,
                message: "read-only server".into()
            }
        );
        s.send_to(b"\0\x01undionly.kpxe\0mail\0", addr).unwrap();
        assert!(matches!(
            recv(&s).0,
            Packet::Error { code: ErrorCode::NotDefined, message } if message.contains("mail")
        ));
        s.send_to(b"\0\x01undionly.kpxe", addr).unwrap();
        assert!(matches!(
            recv(&s).0,
            Packet::Error { code: ErrorCode::IllegalOperation, message } if message.contains("truncated")
        ));
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tid_gets_error_5_and_the_transfer_goes_on() {
    // The transfer left behind at the end is aborted once the drain is over.
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
        let (first, tid) = recv(&s);
        assert!(matches!(
            first,
            Packet::Data {
                block: BlockNum(1),
                ..
            }
        ));
        // An intruder acknowledges block 1 from another port.
        let intruder = client();
        intruder.send_to(&encode_ack(BlockNum(1)), tid).unwrap();
        let (reply, from) = recv(&intruder);
        assert_eq!(from, tid);
        assert_eq!(
            reply,
            Packet::Error {
                code: ErrorCode::UnknownTransferId,
                message: "unknown transfer id".into()
            }
        );
        // The real client's transfer is untouched: it still gets block 2 after its ACK,
        // and nothing else arrived in between.
        s.send_to(&encode_ack(BlockNum(1)), tid).unwrap();
        let (p, _) = recv(&s);
        let want = pattern(100_000).slice(512..1024);
        assert_eq!(
            p,
            Packet::Data {
                block: BlockNum(2),
                payload: want
            }
        );
        // Walk away: the server retransmits block 2 on its own.
        let (p, _) = recv(&s);
        assert!(matches!(
            p,
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
async fn past_max_transfers_a_request_waits_for_a_free_slot() {
    let cfg = TftpConfig {
        max_transfers: 1,
        ..TftpConfig::default()
    };
    let srv = Server::start(cfg).await;
    let addr = srv.addr;
    blocking(move || {
        // The EDK2 size probe holds the only slot until it answers the OACK.
        let probe = client();
        let tsize = Options {
            tsize: Some(0),
            ..Options::default()
        };
        probe
            .send_to(&rrq("undionly.kpxe", tsize.clone()), addr)
            .unwrap();
        let (oack, tid) = recv(&probe);
        assert_eq!(
            oack,
            Packet::Oack(Options {
                tsize: Some(100_000),
                ..Options::default()
            })
        );
        // Every slot is taken: the request is not refused (an ERROR would end that
        // client's boot), it goes unanswered.
        let other = client();
        other
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let request = rrq("undionly.kpxe", Options::default());
        other.send_to(&request, addr).unwrap();
        let mut buf = [0u8; 1500];
        assert!(
            other.recv_from(&mut buf).is_err(),
            "a request past the last slot was answered"
        );
        // The probe ends with ERROR 8; the slot frees up, and the client's repeated
        // request starts its transfer.
        let abort = Packet::Error {
            code: ErrorCode::OptionNegotiation,
            message: "tsize probe".into(),
        };
        probe.send_to(&abort.encode().unwrap(), tid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let first = loop {
            other.send_to(&request, addr).unwrap();
            match other.recv_from(&mut buf) {
                Ok((n, from)) => break (Packet::parse(&buf[..n]).unwrap(), from),
                Err(_) if std::time::Instant::now() < deadline => {}
                Err(e) => panic!("the repeated request was never served: {e}"),
            }
        };
        match &first.0 {
            Packet::Data { block, payload } => {
                assert_eq!(block.0, 1);
                assert_eq!(&payload[..], &pattern(100_000)[..512]);
            }
            other => panic!("expected the first block, got {other:?}"),
        }
        assert_ne!(first.1, addr, "the transfer runs on its own port");
        // The client gives up, which ends that transfer.
        let gone = Packet::Error {
            code: ErrorCode::NotDefined,
            message: "done".into(),
        };
        other.send_to(&gone.encode().unwrap(), first.1).unwrap();
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_root_serves_next_to_builtins_and_stays_confined() {
    use ironpxe_tftp::{serve, FileSource, MemoryFiles, Overlay, TftpRoot};
    use std::sync::Arc;
    let top = std::env::temp_dir().join(format!("ironpxe-tftp-root-srv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    let root = top.join("root");
    std::fs::create_dir_all(root.join("grub")).unwrap();
    std::fs::write(top.join("secret"), b"outside the root").unwrap();
    std::fs::write(root.join("grub/grubx64.efi"), pattern(70_000)).unwrap();
    std::fs::write(root.join("undionly.kpxe"), b"shadowed by the built-in").unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("grub/escape")).unwrap();

    let mut builtin = MemoryFiles::new();
    builtin.insert("undionly.kpxe", pattern(1000)).unwrap();
    let mut files = Overlay::new();
    files.push(Arc::new(builtin));
    files.push(Arc::new(TftpRoot::open(&root, 1 << 20).unwrap()) as Arc<dyn FileSource>);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(sock, Arc::new(files), TftpConfig::default(), async {
        let _ = rx.await;
    }));

    let got = blocking(move || {
        let windowed = Options {
            blksize: Some(1468),
            windowsize: Some(16),
            ..Options::default()
        };
        [
            fetch(addr, "/grub/grubx64.efi", windowed),
            fetch(addr, "undionly.kpxe", Options::default()),
            fetch(addr, "grub/escape", Options::default()),
            fetch(addr, "grub/../../secret", Options::default()),
            fetch(addr, "grub/missing", Options::default()),
        ]
    })
    .await;
    let [grub, builtin, escape, dotdot, missing] = got;
    assert!(matches!(&grub, Fetched::File { data, .. } if data[..] == pattern(70_000)[..]));
    assert_eq!(
        builtin,
        Fetched::File {
            data: pattern(1000).to_vec(),
            oack: None
        }
    );
    assert_eq!(
        escape,
        Fetched::Error(
            ErrorCode::AccessViolation,
            "access violation: path leaves the TFTP root".into()
        )
    );
    assert!(matches!(&dotdot, Fetched::Error(ErrorCode::AccessViolation, m) if m.contains("..")));
    assert_eq!(
        missing,
        Fetched::Error(ErrorCode::FileNotFound, "file not found".into())
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&top).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_serves_large_files_converted() {
    // Converted while streaming, so file size no longer matters for netascii.
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    let got =
        blocking(move || fetch_raw(addr, b"\0\x01big.img\0netascii\0blksize\x001432\0")).await;
    let mut want = Vec::new();
    ironpxe_tftp::to_netascii(&pattern(2 << 20), &mut want, usize::MAX);
    assert!(want.len() > 2 << 20, "the pattern has line ends to convert");
    match got {
        Fetched::File { data, oack } => {
            assert!(data == want, "netascii data differs");
            assert_eq!(oack.and_then(|o| o.blksize), Some(1432));
        }
        other => panic!("{other:?}"),
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_takes_no_new_request_and_lets_a_running_transfer_finish() {
    use ironpxe_tftp::{serve, MemoryFiles};
    use std::sync::Arc;
    let mut files = MemoryFiles::new();
    files.insert("undionly.kpxe", pattern(100_000)).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = TftpConfig {
        shutdown_drain: Duration::from_secs(20),
        ..TftpConfig::default()
    };
    let task = tokio::spawn(serve(sock, Arc::new(files), cfg, async {
        let _ = rx.await;
    }));

    let (s, first, tid) = blocking(move || {
        let s = client();
        s.send_to(&rrq("undionly.kpxe", Options::default()), addr)
            .unwrap();
        let (first, tid) = recv(&s);
        (s, first, tid)
    })
    .await;
    assert!(matches!(
        first,
        Packet::Data {
            block: BlockNum(1),
            ..
        }
    ));
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let data = blocking(move || {
        // A new request after shutdown gets no answer.
        let late = client();
        late.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        late.send_to(&rrq("undionly.kpxe", Options::default()), addr)
            .unwrap();
        let mut buf = [0u8; 600];
        assert!(late.recv_from(&mut buf).is_err(), "answered after shutdown");
        // The transfer started before goes on to the last block.
        let mut data = match first {
            Packet::Data { payload, .. } => payload.to_vec(),
            _ => unreachable!(),
        };
        let mut block = BlockNum(1);
        loop {
            s.send_to(&encode_ack(block), tid).unwrap();
            let (p, _) = recv(&s);
            let Packet::Data { block: b, payload } = p else {
                panic!("{p:?}")
            };
            if b == block {
                continue;
            }
            block = b;
            data.extend_from_slice(&payload);
            if payload.len() < 512 {
                s.send_to(&encode_ack(block), tid).unwrap();
                return data;
            }
        }
    })
    .await;
    assert_eq!(data, pattern(100_000).to_vec());
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve did not stop once the transfer finished");
    r.unwrap().unwrap();
}
