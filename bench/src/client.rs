//! The many-transfer client: N TFTP reads started at once on one tokio runtime, each
//! on its own socket, behaving like a firmware client (blksize 1468 and tsize, one
//! ACK per block, RRQ or last ACK repeated after 1 s of silence, 8 repeats at most).
//! It prints one `RESULT` line and one `FAIL` line per failed transfer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use ironpxe_tftp::packet::{encode_ack, BlockNum};
use ironpxe_tftp::{Mode, Options, Packet, Request};
use tokio::net::UdpSocket;

use crate::env::{median, sha256_hex};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    server: Ipv4Addr,
    #[arg(long)]
    file: String,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    sha256: String,
    #[arg(long, default_value_t = 1468)]
    blksize: u16,
    /// Every transfer must be done this many seconds after the start.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
}

/// One finished TFTP read.
pub struct Fetched {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// From the RRQ to the last DATA (user-space clock).
    pub took: Duration,
    /// RRQs and ACKs repeated after silence.
    pub resends: u32,
    /// The size the server announced in its OACK, if it sent one.
    pub tsize: Option<u64>,
    /// Realtime clock just before the RRQ was sent.
    pub rrq_sent: SystemTime,
    /// Kernel receive time of the last DATA.
    pub last_rx: SystemTime,
}

/// What a TFTP read asks for.
#[derive(Clone, Copy, Debug)]
pub struct FetchOptions {
    /// Block size to ask for.
    pub blksize: u16,
    /// RFC 7440 window to ask for; `None` is lockstep.
    pub windowsize: Option<u16>,
}

/// Reads `file` from `server` with blksize `blksize` and tsize, lockstep, one ACK per
/// block; fails when `deadline` passes or the server stays silent for 8 s.
pub async fn fetch(
    server: SocketAddr,
    file: String,
    blksize: u16,
    deadline: Instant,
) -> Result<Fetched> {
    let opts = FetchOptions {
        blksize,
        windowsize: None,
    };
    fetch_with(server, file, opts, deadline).await
}

/// Reads `file` from `server` as `opts` says, with tsize: with a window, one ACK per
/// full window (and for the last block), as EDK2 does; a block out of order makes it
/// ACK the last block it has, so the server resends from there. Fails when `deadline`
/// passes or the server stays silent for 8 s.
pub async fn fetch_with(
    server: SocketAddr,
    file: String,
    opts: FetchOptions,
    deadline: Instant,
) -> Result<Fetched> {
    let start = Instant::now();
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    crate::rxtime::enable(&sock)?;
    let rrq = Packet::Rrq(Request {
        filename: file,
        mode: Mode::Octet,
        options: Options {
            blksize: Some(opts.blksize),
            tsize: Some(0),
            windowsize: opts.windowsize,
            ..Options::default()
        },
    })
    .encode()?;
    let rrq_sent = crate::rxtime::now();
    sock.send_to(&rrq, server).await?;
    let mut last_sent = rrq;
    let mut dest = server;
    let mut tid: Option<SocketAddr> = None;
    let mut size = 512usize;
    let mut window = 1u16;
    let mut expected: u16 = 1;
    let mut in_window = 0u16;
    let mut data = Vec::new();
    let mut resends = 0u32;
    let mut tsize = None;
    let mut silent = 0u32;
    let mut buf = vec![0u8; 65536];
    loop {
        let wait = Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            bail!("deadline passed after {} bytes", data.len());
        }
        let (n, from, at) =
            match tokio::time::timeout(wait, crate::rxtime::recv_from(&sock, &mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    silent += 1;
                    if silent > 8 {
                        bail!("server silent after {} bytes", data.len());
                    }
                    resends += 1;
                    sock.send_to(&last_sent, dest).await?;
                    continue;
                }
            };
        if from.ip() != server.ip() || tid.is_some_and(|t| t != from) {
            continue;
        }
        silent = 0;
        match Packet::parse(&buf[..n]).map_err(|e| anyhow!("bad packet: {e}"))? {
            Packet::Oack(o) if tid.is_none() => {
                tid = Some(from);
                dest = from;
                size = o.blksize.map_or(512, usize::from);
                window = o.windowsize.unwrap_or(1).max(1);
                tsize = o.tsize;
                last_sent = encode_ack(BlockNum(0));
                sock.send_to(&last_sent, dest).await?;
            }
            Packet::Data { block, payload } => {
                if tid.is_none() {
                    tid = Some(from);
                    dest = from;
                }
                if block.0 == expected {
                    data.extend_from_slice(&payload);
                    expected = expected.wrapping_add(1);
                    in_window += 1;
                    let last = payload.len() < size;
                    if last || in_window >= window {
                        in_window = 0;
                        last_sent = encode_ack(block);
                        sock.send_to(&last_sent, dest).await?;
                    }
                    if last {
                        return Ok(Fetched {
                            data,
                            took: start.elapsed(),
                            resends,
                            tsize,
                            rrq_sent,
                            last_rx: at,
                        });
                    }
                } else if block.0.wrapping_sub(expected) < 0x8000 {
                    // A gap in the window: acknowledge what arrived in order, so the
                    // server resends from the first missing block.
                    in_window = 0;
                    last_sent = encode_ack(BlockNum(expected.wrapping_sub(1)));
                    sock.send_to(&last_sent, dest).await?;
                } else if window == 1 && block.0 == expected.wrapping_sub(1) {
                    // Lockstep, and our ACK was late or lost: say it again.
                    sock.send_to(&last_sent, dest).await?;
                }
            }
            Packet::Error { code, message } => bail!("server error {code}: {message}"),
            _ => {}
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = SocketAddr::new(a.server.into(), 69);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(a.deadline_secs);
        let go = Arc::new(tokio::sync::Barrier::new(a.count));
        let mut tasks = Vec::with_capacity(a.count);
        for _ in 0..a.count {
            let (go, file) = (go.clone(), a.file.clone());
            tasks.push(tokio::spawn(async move {
                go.wait().await;
                fetch(server, file, a.blksize, deadline).await
            }));
        }
        let mut took = Vec::new();
        let mut failures = Vec::new();
        let mut resends = 0u32;
        for t in tasks {
            match t.await.map_err(|e| anyhow!("task: {e}")).and_then(|r| r) {
                Ok(f) if sha256_hex(&f.data) == a.sha256 => {
                    took.push(f.took.as_secs_f64() * 1000.0);
                    resends += f.resends;
                }
                Ok(f) => failures.push(format!("wrong bytes ({} received)", f.data.len())),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let wall = start.elapsed().as_secs_f64() * 1000.0;
        took.sort_by(|a, b| a.total_cmp(b));
        let p99 = took.get((took.len() * 99 / 100).min(took.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
        println!(
            "RESULT ok={} failed={} wall_ms={wall:.0} p50_ms={:.0} p99_ms={p99:.0} max_ms={:.0} client_resends={resends}",
            took.len(),
            failures.len(),
            median(&took),
            took.last().copied().unwrap_or(f64::NAN),
        );
        for f in &failures {
            println!("FAIL {f}");
        }
        Ok(())
    })
}
