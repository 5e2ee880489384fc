//! Memory use of the tokio driver, measured as this process's peak RSS
//! (`/proc/self/status`, reset through `/proc/self/clear_refs`): a file's size, the
//! number of transfers of it, and netascii conversion must not show up in it.
//! Linux only. The tests run one at a time, since they share the process.

mod common;

use common::*;
use ironpxe_tftp::packet::{encode_ack, BlockNum};
use ironpxe_tftp::{serve, FileSource, MemoryFiles, Options, Packet, TftpConfig, TftpRoot};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A field of /proc/self/status, in KiB.
fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = s
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts a new peak-RSS measurement; returns the RSS now, in KiB.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("resetting the peak RSS needs /proc/self/clear_refs (Linux 4.0 or later)");
    status_kib("VmRSS:")
}

/// How far the peak RSS rose above `base`, in MiB.
fn peak_growth_mib(base: u64) -> u64 {
    status_kib("VmHWM:").saturating_sub(base) / 1024
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("ironpxe-tftp-mem-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

async fn start(files: Arc<dyn FileSource>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = TftpConfig {
        shutdown_drain: Duration::from_millis(100),
        ..TftpConfig::default()
    };
    tokio::spawn(serve(sock, files, cfg, async {
        let _ = rx.await;
    }));
    (addr, stop)
}

/// Asks for `name` with blksize 1468 and windowsize 16, takes `blocks` blocks, and
/// returns the socket and the transfer's ID, leaving the transfer running.
fn take_blocks(
    server: SocketAddr,
    from: [u8; 4],
    name: &str,
    blocks: u16,
) -> (UdpSocket, SocketAddr) {
    let s = client_on(from);
    let opts = Options {
        blksize: Some(1468),
        windowsize: Some(16),
        ..Options::default()
    };
    s.send_to(&rrq(name, opts), server).unwrap();
    let (p, tid) = recv(&s);
    assert!(matches!(p, Packet::Oack(_)), "{p:?}");
    s.send_to(&encode_ack(BlockNum(0)), tid).unwrap();
    let mut next = 1u16;
    while next <= blocks {
        let (p, _) = recv(&s);
        let Packet::Data { block, payload } = p else {
            panic!("{p:?}")
        };
        if block.0 != next {
            continue; // a copy after a timeout, or a block after one we missed
        }
        assert_eq!(payload.len(), 1468);
        if next.is_multiple_of(16) || next == blocks {
            s.send_to(&encode_ack(block), tid).unwrap();
        }
        next += 1;
    }
    (s, tid)
}

fn abort(s: &UdpSocket, tid: SocketAddr) {
    let e = Packet::Error {
        code: ironpxe_tftp::ErrorCode::NotDefined,
        message: "enough".into(),
    };
    s.send_to(&e.encode().unwrap(), tid).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terabyte_file_streams_in_bounded_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let d = dir("sparse");
    // 1 TiB with no blocks on disk. Reading it whole aborted the process.
    std::fs::File::create(d.0.join("huge.img"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let root = TftpRoot::open(&d.0, ironpxe_tftp::DEFAULT_CACHE_BYTES).unwrap();
    let (addr, stop) = start(Arc::new(root)).await;
    let growth = blocking(move || {
        let base = reset_peak();
        let s = client();
        let probe = Options {
            tsize: Some(0),
            ..Options::default()
        };
        s.send_to(&rrq("huge.img", probe), addr).unwrap();
        let (p, tid) = recv(&s);
        assert_eq!(
            p,
            Packet::Oack(Options {
                tsize: Some(1 << 40),
                ..Options::default()
            })
        );
        abort(&s, tid);
        // 6,000 blocks (8.8 MB) of it, then walk away.
        let (s, tid) = take_blocks(addr, [127, 0, 0, 1], "huge.img", 6000);
        abort(&s, tid);
        peak_growth_mib(base)
    })
    .await;
    eprintln!("1 TiB file, 6,000 blocks: peak RSS grew by {growth} MiB");
    assert!(growth < 32, "peak RSS grew by {growth} MiB");
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_of_a_large_file_share_no_copy_of_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let d = dir("large");
    std::fs::File::create(d.0.join("disk.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // A small cache: the file is larger than it, as a large image is larger than the
    // default one.
    let root = TftpRoot::open(&d.0, 1 << 20).unwrap();
    let (addr, stop) = start(Arc::new(root)).await;
    let growth = blocking(move || {
        let base = reset_peak();
        let clients: Vec<_> = (0..5)
            .map(|_| {
                std::thread::spawn(move || take_blocks(addr, [127, 0, 0, 1], "disk.img", 2000))
            })
            .collect();
        // All five transfers are still running while the peak is read.
        let held: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
        let growth = peak_growth_mib(base);
        for (s, tid) in &held {
            abort(s, *tid);
        }
        growth
    })
    .await;
    // Each transfer holding its own copy made this 5 x 64 MiB.
    eprintln!("5 transfers of a 64 MiB file: peak RSS grew by {growth} MiB");
    assert!(growth < 32, "peak RSS grew by {growth} MiB");
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_transfers_hold_no_converted_copy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let text: Vec<u8> = (0..(1u32 << 20))
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let mut files = MemoryFiles::new();
    files.insert("notes.txt", text).unwrap();
    let (addr, stop) = start(Arc::new(files)).await;
    let growth = blocking(move || {
        let base = reset_peak();
        // 64 netascii transfers from 8 hosts, each holding after its first block.
        let mut held = Vec::new();
        for host in 0..8u8 {
            for _ in 0..8 {
                let s = client_on([127, 0, 0, 20 + host]);
                s.send_to(b"\0\x01notes.txt\0netascii\0", addr).unwrap();
                let (p, tid) = recv(&s);
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
                held.push((s, tid));
            }
        }
        let growth = peak_growth_mib(base);
        for (s, tid) in &held {
            abort(s, *tid);
        }
        growth
    })
    .await;
    // A converted copy per transfer made this 64 x 1 MiB.
    eprintln!("64 netascii transfers of 1 MiB: peak RSS grew by {growth} MiB");
    assert!(growth < 24, "peak RSS grew by {growth} MiB");
    stop.send(()).unwrap();
}
