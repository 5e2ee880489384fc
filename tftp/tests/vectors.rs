//! The payloads in testdata/tftp/: requests and ACKs captured from real clients
//! (curl, atftp, tftp-hpa, busybox) on loopback, and crafted hostile ones. The same
//! files seed the fuzzers.

use ironpxe_tftp::packet::BlockNum;
use ironpxe_tftp::{ErrorCode, Mode, Options, Packet, ParseError, Request, TftpConfig, Transfer};
use std::time::Instant;

fn vector(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tftp/");
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rrq(name: &str) -> Request {
    match Packet::parse(&vector(name)) {
        Ok(Packet::Rrq(r)) => r,
        other => panic!("{name}: {other:?}"),
    }
}

/// What the server sends first for `req`, for a file of `size` bytes.
fn first_answer(req: &Request, size: u64) -> Packet {
    let mut t = Transfer::new(Instant::now(), req, size, &TftpConfig::default());
    if let Some(r) = t.poll_read() {
        t.provide(r.offset, vec![b'x'; r.len].into(), false);
    }
    Packet::parse(&t.poll_transmit().expect("a first packet")).unwrap()
}

#[test]
fn captured_requests_parse_and_get_the_expected_first_answer() {
    let curl = rrq("curl-rrq.bin");
    assert_eq!(curl.filename, "undionly.kpxe");
    assert_eq!(
        curl.options,
        Options {
            blksize: Some(1468),
            tsize: Some(0),
            timeout: Some(6),
            windowsize: None
        }
    );
    assert_eq!(
        first_answer(&curl, 70_000),
        Packet::Oack(Options {
            blksize: Some(1468),
            tsize: Some(70_000),
            timeout: Some(6),
            windowsize: None
        })
    );

    let atftp = rrq("atftp-windowsize-rrq.bin");
    assert_eq!(
        (atftp.filename.as_str(), atftp.mode),
        ("ipxe.efi", Mode::Octet)
    );
    assert_eq!(atftp.options.windowsize, Some(16));
    assert!(matches!(
        first_answer(&atftp, 1 << 20),
        Packet::Oack(Options {
            windowsize: Some(16),
            blksize: Some(1468),
            ..
        })
    ));

    let busybox = rrq("busybox-rrq.bin");
    assert_eq!(busybox.filename, "efi/grubx64.efi");
    assert_eq!(busybox.options.blksize, Some(1432));

    // No options: block 1 at once.
    let hpa = rrq("tftp-hpa-rrq.bin");
    assert!(hpa.options.is_empty());
    assert!(matches!(
        first_answer(&hpa, 2000),
        Packet::Data { block: BlockNum(1), payload } if payload.len() == 512
    ));
    let text = rrq("tftp-hpa-netascii-rrq.bin");
    assert_eq!(
        (text.filename.as_str(), text.mode),
        ("boot.txt", Mode::Netascii)
    );

    for (name, block) in [("atftp-ack-0.bin", 0), ("curl-ack-1.bin", 1)] {
        assert_eq!(
            Packet::parse(&vector(name)),
            Ok(Packet::Ack(BlockNum(block)))
        );
    }
}

#[test]
fn crafted_requests_get_their_verdict() {
    let padded = rrq("crafted-rrq-nul-padded.bin");
    assert_eq!(padded.filename, "pxelinux.0");
    assert!(padded.options.is_empty());
    for name in [
        "crafted-rrq-empty-options.bin",
        "crafted-rrq-too-many-options.bin",
    ] {
        assert_eq!(
            Packet::parse(&vector(name)),
            Err(ParseError::TooManyOptions),
            "{name}"
        );
    }
    assert!(matches!(
        Packet::parse(&vector("crafted-error-8-size-probe-abort.bin")),
        Ok(Packet::Error {
            code: ErrorCode::OptionNegotiation,
            ..
        })
    ));
    assert!(matches!(
        Packet::parse(&vector("crafted-wrq.bin")),
        Ok(Packet::Wrq(_))
    ));
}
