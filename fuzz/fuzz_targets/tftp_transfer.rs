//! The transfer state machine fed an arbitrary sequence of events on virtual time:
//! datagrams of any content, ACKs near and far from the window, client errors,
//! timeouts, reads answered late, short or not at all, and read failures.
//!
//! Invariants checked after every event:
//! - every datagram it emits parses;
//! - every DATA block is a block of the file (never one past its end), with exactly
//!   the file's bytes at that place (after netascii conversion), and full-sized but
//!   for the last;
//! - an OACK comes only before the first DATA;
//! - the data it holds never exceeds its buffer limit;
//! - once finished it sends nothing and wants no timer; a completed transfer
//!   reports the file's size.
//!
//! Input layout: a header (mode, options, configuration, file size and pattern),
//! then events, one control byte each plus their arguments.
#![no_main]

use ironpxe_tftp::packet::{encode_ack, encode_error, BlockNum};
use ironpxe_tftp::{
    to_netascii, Content, ErrorCode, Mode, Options, Outcome, Packet, ReadRequest, Reader, Request,
    TftpConfig, Transfer,
};
use std::time::{Duration, Instant};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The largest file: enough blocks of 8 bytes to roll the block number over.
const MAX_FILE: usize = 600 << 10;

/// A file of `len` bytes: one period of a pattern chosen by `seed` (binary, or
/// text with LF, CR and NUL), repeated. Built by copying, so large files are cheap.
fn file(len: usize, seed: u8) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ab\ncd\r\0ef";
    let period: Vec<u8> = (0..PERIOD)
        .map(|i| {
            if seed & 1 == 0 {
                (i as u8).wrapping_mul(seed | 1) ^ (i >> 9) as u8
            } else {
                ALPHABET[(i * usize::from(seed) + (i >> 5)) % ALPHABET.len()]
            }
        })
        .collect();
    let mut f = Vec::with_capacity(len);
    while f.len() < len {
        let n = (len - f.len()).min(PERIOD);
        f.extend_from_slice(&period[..n]);
    }
    f
}

const PERIOD: usize = 4099;

/// The bytes the client must receive, converted to netascii only as far as blocks
/// are checked (converting a whole large file per input would dominate the run).
struct Expected {
    file: Vec<u8>,
    netascii: bool,
    converted: Vec<u8>,
    converted_from: usize,
    len: usize,
}

impl Expected {
    fn new(file: Vec<u8>, netascii: bool) -> Expected {
        let mut len = file.len();
        if netascii {
            // Each LF and CR becomes two bytes; count them per period.
            let extra = |b: &[u8]| b.iter().filter(|&&c| c == b'\n' || c == b'\r').count();
            let full = file.len() / PERIOD;
            len += full * extra(&file[..PERIOD.min(file.len())]) + extra(&file[full * PERIOD..]);
        }
        Expected {
            file,
            netascii,
            converted: Vec::new(),
            converted_from: 0,
            len,
        }
    }

    /// Bytes `start..end` of what is sent.
    fn range(&mut self, start: usize, end: usize) -> &[u8] {
        if !self.netascii {
            return &self.file[start..end];
        }
        while self.converted.len() < end && self.converted_from < self.file.len() {
            let n = (self.file.len() - self.converted_from).min(4096);
            let from = self.converted_from;
            to_netascii(&self.file[from..from + n], &mut self.converted, usize::MAX);
            self.converted_from += n;
        }
        &self.converted[start..end]
    }
}

struct Check {
    sent: Expected,
    blksize: usize,
    total: u64,
    data_seen: bool,
}

impl Check {
    fn datagram(&mut self, d: &[u8]) {
        // DATA is checked in place: it is nearly every datagram, and parsing copies it.
        if let [0, 3, a, b, payload @ ..] = d {
            self.data(u16::from_be_bytes([*a, *b]), payload);
            return;
        }
        match Packet::parse(d).expect("the transfer emitted an unparsable datagram") {
            Packet::Oack(_) => assert!(!self.data_seen, "OACK after DATA"),
            Packet::Error { .. } => {}
            other => panic!("the transfer emitted {other:?}"),
        }
    }

    fn data(&mut self, block: u16, payload: &[u8]) {
        self.data_seen = true;
        assert!(payload.len() <= self.blksize);
        // The absolute blocks this 16-bit number can stand for; one must fit.
        let ok = (0u64..)
            .map(|wrap| wrap * 65536 + u64::from(block))
            .take_while(|k| *k <= self.total)
            .filter(|k| *k >= 1)
            .any(|k| {
                let start = ((k - 1) as usize) * self.blksize;
                let end = (start + self.blksize).min(self.sent.len);
                let full = k < self.total;
                (!full || payload.len() == self.blksize)
                    && start <= self.sent.len
                    && payload[..] == *self.sent.range(start, end)
            });
        assert!(ok, "block {block} is not a block of the file");
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let flags = inp.u8();
    let netascii = flags & 1 != 0;
    let mut options = Options::default();
    let (blksize, windowsize, timeout) = (inp.u16(), inp.u16(), inp.u8());
    if flags & 2 != 0 {
        options.blksize = Some(blksize.max(8));
    }
    if flags & 4 != 0 {
        options.windowsize = Some(windowsize.max(1));
    }
    if flags & 8 != 0 {
        options.tsize = Some(0);
    }
    if flags & 16 != 0 && timeout > 0 {
        options.timeout = Some(timeout);
    }
    let cfg = TftpConfig {
        max_blksize: inp.u16(),
        max_windowsize: u16::from(inp.u8() % 65),
        max_retries: u32::from(inp.u8() % 16),
        initial_rto: Duration::from_millis(u64::from(inp.u16())),
        max_lifetime: Duration::from_secs(u64::from(inp.u8()) * 10 + 1),
        ..TftpConfig::default()
    };
    // Mostly small files, which run fast. Large ones, for block numbers that roll
    // over, when the header asks, and then with blocks of 8 to 16 bytes, so that
    // retransmitted windows stay small.
    let large = flags & 0x60 == 0x60;
    let len = if large {
        options.blksize = Some(8 + blksize % 9);
        ((usize::from(inp.u8()) << 16) | usize::from(inp.u16())) % (MAX_FILE + 1)
    } else {
        usize::from(inp.u16()) % 8192
    };
    let f = file(len, inp.u8());
    let req = Request {
        filename: "f".into(),
        mode: if netascii {
            Mode::Netascii
        } else {
            Mode::Octet
        },
        options,
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut t = Transfer::new(now, &req, f.len() as u64, &cfg);
    let mut reader = Reader::new(Content::Memory(f.clone().into()), netascii);
    let mut check = Check {
        sent: Expected::new(f, netascii),
        blksize: usize::from(t.blksize()),
        total: 0,
        data_seen: false,
    };
    check.total = check.sent.len as u64 / check.blksize as u64 + 1;
    let mut last_block = 0u16;
    let mut pending: Option<ReadRequest> = None;

    loop {
        // Answer reads unless this event says to hold them back.
        let control = inp.u8();
        if control & 0x80 == 0 {
            loop {
                let r = match pending.take().or_else(|| t.poll_read()) {
                    Some(r) => r,
                    None => break,
                };
                assert!(r.len > 0);
                let c = reader.read_nonblocking(r).expect("memory reads never fail");
                assert!(c.data.len() <= r.len);
                t.provide(r.offset, c.data, c.last);
            }
        } else if pending.is_none() {
            pending = t.poll_read();
        }
        while let Some(d) = t.poll_transmit() {
            if let [0, 3, a, b, ..] = d[..] {
                last_block = u16::from_be_bytes([a, b]);
            }
            check.datagram(&d);
        }
        assert!(t.buffered_bytes() <= t.buffer_limit());
        if t.is_finished() {
            assert!(t.poll_timeout().is_none());
            assert!(t.poll_transmit().is_none());
            if let Some(Outcome::Complete { bytes, blocks, .. }) = t.outcome() {
                assert_eq!(*bytes, check.sent.len as u64);
                assert_eq!(*blocks, check.total);
            }
            break;
        }
        assert!(
            t.poll_timeout().is_some(),
            "a running transfer wants a timer"
        );
        if inp.is_empty() {
            break;
        }
        match control & 0x7f {
            0..=39 => t.handle(now, &encode_ack(BlockNum(last_block))),
            40..=59 => {
                let delta = inp.u8() as i8;
                t.handle(
                    now,
                    &encode_ack(BlockNum(last_block.wrapping_add(delta as u16))),
                );
            }
            60..=69 => t.handle(now, &encode_ack(BlockNum(inp.u16()))),
            70..=79 => {
                let n = usize::from(inp.u16());
                let d = inp.bytes(n).to_vec();
                t.handle(now, &d);
            }
            80..=84 => t.handle(now, &encode_error(ErrorCode::OptionNegotiation, "fuzz")),
            85..=99 => {
                now += Duration::from_millis(u64::from(inp.u16()));
                t.handle_timeout(now);
            }
            100..=109 => {
                if let Some(d) = t.poll_timeout() {
                    now = now.max(d);
                    t.handle_timeout(now);
                }
            }
            110..=119 => {
                // A short answer to the held-back read.
                if let Some(mut r) = pending.take() {
                    r.len = 1 + usize::from(inp.u16()) % r.len;
                    let c = reader.read_nonblocking(r).expect("memory reads never fail");
                    t.provide(r.offset, c.data, c.last);
                }
            }
            120..=122 => {
                if pending.take().is_some() {
                    t.read_failed("fuzz".into());
                }
            }
            _ => {
                // An answer at an offset no read asked for is ignored. (The driver
                // never answers the outstanding read with wrong bytes: the core
                // cannot tell them from the file's.)
                let mut offset = u64::from(inp.u16());
                if pending.is_some_and(|r| r.offset == offset) {
                    offset += 1;
                }
                t.provide(offset, b"stray".to_vec().into(), inp.u8() & 1 == 0);
            }
        }
    }
});
