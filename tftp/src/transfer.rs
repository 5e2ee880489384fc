//! The deterministic state machine of one read transfer.
//!
//! A [`Transfer`] decides what to send and when to wake up. It has no sockets, reads
//! no clock and touches no file: the driver passes `now` in, feeds it datagrams from
//! the peer with [`Transfer::handle`], calls [`Transfer::handle_timeout`] when
//! [`Transfer::poll_timeout`] passes, and sends everything
//! [`Transfer::poll_transmit`] returns.
//!
//! File data comes in the same way. [`Transfer::poll_read`] says which bytes the
//! transfer needs next (the current window and one read ahead), and the driver
//! answers with [`Transfer::provide`] (or [`Transfer::read_failed`]). Bytes every
//! block of which the client has acknowledged are dropped, so a transfer never holds
//! more than [`Transfer::buffer_limit`] bytes, whatever the size of the file.
//!
//! Blocks are counted internally from 1 as `u64`; the wire carries the low 16 bits,
//! so block numbers roll over from 65535 to 0 and files of any size can be served.

use crate::packet::{
    data_header, encode_error, encode_oack, BlockNum, ErrorCode, Mode, Options, Packet, Request,
    DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// TFTP server settings. Every field has a safe default; values out of range are
/// clamped when a transfer starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpConfig {
    /// Largest block size granted to a client that asks for more (default 65464, the
    /// RFC 2348 maximum).
    ///
    /// [`crate::serve`] lowers it per transfer to what the path MTU to the client
    /// carries, so a block never needs IP fragmentation: 1468 on 1500-byte Ethernet
    /// (1500 - 20 IPv4 - 8 UDP - 4 TFTP), and 1468 as well when the MTU cannot be
    /// read. Clients that ask for less get what they ask for; clients that ask for
    /// nothing get 512 (RFC 1350).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440), default 64.
    pub max_windowsize: u16,
    /// Retransmission timeout before the round trip has been measured (default 1 s).
    pub initial_rto: Duration,
    /// Floor of the measured retransmission timeout (default 10 ms).
    pub min_rto: Duration,
    /// Ceiling of the timeout after exponential backoff (default 4 s).
    pub max_rto: Duration,
    /// Retransmissions of the same packet or window without progress before the
    /// transfer fails (default 10; with the defaults above that is at least 13 s of
    /// silence from the client).
    pub max_retries: u32,
    /// Hard limit on the duration of one transfer (default 10 min).
    pub max_lifetime: Duration,
    /// Concurrent transfers the server runs; past this, read requests are left
    /// unanswered, so clients repeat them and start as slots free up (default 1024;
    /// the ironpxe binary sizes it from the open-file limit). A transfer costs a socket and at most
    /// [`Transfer::buffer_limit`] bytes of file data: files in memory are shared,
    /// files on disk are read a chunk at a time. Used by [`crate::serve`].
    pub max_transfers: usize,
    /// Concurrent transfers one client address may run (default
    /// [`DEFAULT_MAX_PER_ADDRESS`]); past this its requests get ERROR 0 "server
    /// busy", so one host cannot take every slot. Used by [`crate::serve`].
    pub max_per_address: usize,
    /// After shutdown is requested, how long [`crate::serve`] lets transfers still
    /// running finish before aborting them (default 30 s).
    pub shutdown_drain: Duration,
}

/// Default of [`TftpConfig::max_per_address`]. A PXE client needs one transfer at a
/// time (two in a row for EDK2's size probe); a few more leave room for machines
/// behind one address.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 8;

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(4),
            max_retries: 10,
            max_lifetime: Duration::from_secs(600),
            max_transfers: 1024,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
            shutdown_drain: Duration::from_secs(30),
        }
    }
}

/// Why a transfer failed on the server's side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// The client stopped acknowledging.
    #[error("no acknowledgement after {retries} retransmissions")]
    Timeout {
        /// Retransmissions made before giving up.
        retries: u32,
    },
    /// The transfer ran longer than [`TftpConfig::max_lifetime`].
    #[error("transfer exceeded its {0:?} lifetime")]
    LifetimeExceeded(Duration),
    /// The client sent a packet that has no place in a read transfer.
    #[error("client sent an unexpected {0} packet")]
    UnexpectedPacket(&'static str),
    /// The file could not be read (see [`Transfer::read_failed`]).
    #[error("cannot read the file: {0}")]
    ReadFailed(String),
}

/// How a transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The last block was acknowledged.
    Complete {
        /// File size in bytes as sent (after netascii conversion, if any).
        bytes: u64,
        /// Data blocks in the file, including the final short block.
        blocks: u64,
        /// Packets (OACK or DATA) sent more than once.
        retransmits: u64,
    },
    /// The client ended the transfer with an ERROR packet. EDK2 does this on purpose
    /// after learning the size from the OACK (code 8), so this is not a failure.
    Aborted {
        /// The client's error code.
        code: ErrorCode,
        /// The client's message.
        message: String,
    },
    /// The server gave up.
    Failed {
        /// Why.
        reason: FailReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// OACK sent, waiting for ACK 0.
    Negotiating,
    /// Sending data, waiting for ACKs.
    Sending,
    Done,
}

/// Retransmission timeout: RFC 6298-style smoothing of measured round trips, doubled
/// per retry, never above the `timeout` the client negotiated.
///
/// The client's `timeout` (RFC 2349) is a ceiling, not a fixed value: clients such as
/// curl always ask for several seconds, and waiting that long for every lost block on
/// a LAN whose round trip is well under a millisecond turns 10% loss into a transfer
/// of many minutes. Retransmitting sooner is harmless: a client that already had the
/// block ignores the copy or repeats its ACK, and repeated ACKs are ignored here.
#[derive(Clone, Debug)]
struct Rto {
    ceiling: Option<Duration>,
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl Rto {
    fn cap(&self) -> Duration {
        let hard = self.max.max(self.initial);
        match self.ceiling {
            Some(c) => c.min(hard),
            None => hard,
        }
    }

    fn base(&self) -> Duration {
        let base = match self.srtt {
            Some(srtt) => (srtt + 4 * self.rttvar).clamp(self.min, self.max),
            None => self.initial,
        };
        base.min(self.cap())
    }

    fn current(&self) -> Duration {
        let factor = 1u32 << self.backoff.min(16);
        self.base().saturating_mul(factor).min(self.cap())
    }

    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.checked_sub(rtt).unwrap_or_else(|| rtt - srtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }
}

/// Bytes a transfer asks for per read (a whole block when blocks are larger). Small
/// enough that a thousand transfers hold little, large enough that a read serves
/// several blocks.
pub const READ_CHUNK: usize = 16 << 10;

/// The next bytes a transfer needs: up to `len` bytes of the data as sent (after any
/// netascii conversion) starting at `offset`. Requests come in order: each starts
/// where the data provided so far ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// Offset in the data as sent.
    pub offset: u64,
    /// Most bytes wanted.
    pub len: usize,
}

/// The data a transfer holds: consecutive chunks, from the first block not yet
/// acknowledged to what has been read ahead.
#[derive(Debug, Default)]
struct Buffer {
    chunks: VecDeque<Bytes>,
    /// Offset of the first byte of `chunks[0]`.
    start: u64,
    /// Offset just past the last byte of the last chunk.
    end: u64,
}

impl Buffer {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.end += data.len() as u64;
            self.chunks.push_back(data);
        }
    }

    /// Drops the chunks that end at or before `offset`.
    fn release(&mut self, offset: u64) {
        while let Some(front) = self.chunks.front() {
            let len = front.len() as u64;
            if self.start + len > offset {
                break;
            }
            self.start += len;
            self.chunks.pop_front();
        }
    }

    fn clear(&mut self) {
        self.start = self.end;
        self.chunks.clear();
    }

    /// Appends bytes `from..to` (all buffered) to `out`.
    fn copy(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        debug_assert!(self.start <= from && to <= self.end);
        let mut pos = self.start;
        for c in &self.chunks {
            let c_end = pos + c.len() as u64;
            if c_end > from {
                let a = from.max(pos) - pos;
                let b = to.min(c_end) - pos;
                out.extend_from_slice(&c[a as usize..b as usize]);
            }
            if c_end >= to {
                break;
            }
            pos = c_end;
        }
    }
}

/// One read transfer, from the request to the last ACK.
#[derive(Debug)]
pub struct Transfer {
    blksize: usize,
    windowsize: u64,
    /// Bytes sent in all: known from the start in octet mode, once the reader says
    /// the data ended in netascii mode.
    size: Option<u64>,
    total_blocks: Option<u64>,
    data: Buffer,
    /// The read asked for and not yet answered.
    reading: Option<ReadRequest>,
    /// Every byte of the data has been provided.
    data_complete: bool,
    read_chunk: usize,
    oack: Option<Vec<u8>>,
    negotiated: Options,
    state: State,
    /// Highest block the client has acknowledged (0: none, or ACK 0 of the OACK).
    last_acked: u64,
    /// Highest block ever handed to the driver.
    highest_sent: u64,
    /// Blocks `send_next..=send_end` are queued for `poll_transmit`.
    send_next: u64,
    send_end: u64,
    oack_queued: bool,
    oack_sent: bool,
    error_queued: Option<Vec<u8>>,
    deadline: Option<Instant>,
    window_sent_at: Instant,
    window_has_resend: bool,
    retries: u32,
    max_retries: u32,
    retransmits: u64,
    rto: Rto,
    expires: Instant,
    max_lifetime: Duration,
    outcome: Option<Outcome>,
}

impl Transfer {
    /// Starts serving a file of `file_size` bytes for `req`. The data itself comes
    /// through [`Transfer::poll_read`] and [`Transfer::provide`].
    ///
    /// Options are negotiated here: `blksize` is capped at `cfg.max_blksize`,
    /// `windowsize` at `cfg.max_windowsize`, `tsize` is answered with the real size and
    /// `timeout` is accepted and then caps the adaptive retransmission timeout. If any option
    /// was accepted the transfer opens with an OACK and waits for ACK 0; otherwise it
    /// sends block 1 straight away.
    ///
    /// Netascii requests are sent converted to netascii, whose size is known only at
    /// the end: `tsize` is then not acknowledged (as tftp-hpa does), and the sizes
    /// reported afterwards ([`Outcome::Complete`]) are those of the converted data.
    /// Mail mode is treated as octet here; [`crate::serve`] refuses it before this
    /// point.
    pub fn new(now: Instant, req: &Request, file_size: u64, cfg: &TftpConfig) -> Transfer {
        let size = (req.mode != Mode::Netascii).then_some(file_size);
        let max_blksize = cfg.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        let max_window = cfg.max_windowsize.max(1);
        let mut negotiated = Options::default();
        let mut blksize = DEFAULT_BLKSIZE;
        if let Some(b) = req.options.blksize {
            blksize = b.clamp(MIN_BLKSIZE, max_blksize);
            negotiated.blksize = Some(blksize);
        }
        let mut windowsize = 1;
        if let Some(w) = req.options.windowsize {
            windowsize = w.clamp(1, max_window);
            negotiated.windowsize = Some(windowsize);
        }
        if req.options.tsize.is_some() {
            negotiated.tsize = size;
        }
        let mut rto_ceiling = None;
        if let Some(t) = req.options.timeout.filter(|&t| t >= 1) {
            negotiated.timeout = Some(t);
            rto_ceiling = Some(Duration::from_secs(t.into()));
        }
        let oack = (!negotiated.is_empty()).then(|| encode_oack(&negotiated));
        let mut t = Transfer {
            blksize: blksize.into(),
            windowsize: windowsize.into(),
            size,
            total_blocks: size.map(|s| s / u64::from(blksize) + 1),
            data: Buffer::default(),
            reading: None,
            data_complete: size == Some(0),
            read_chunk: READ_CHUNK.max(blksize.into()),
            negotiated,
            state: State::Sending,
            last_acked: 0,
            highest_sent: 0,
            send_next: 1,
            send_end: 0,
            oack_queued: false,
            oack_sent: false,
            error_queued: None,
            deadline: None,
            window_sent_at: now,
            window_has_resend: false,
            retries: 0,
            max_retries: cfg.max_retries,
            retransmits: 0,
            rto: Rto {
                ceiling: rto_ceiling,
                srtt: None,
                rttvar: Duration::ZERO,
                backoff: 0,
                initial: cfg.initial_rto.max(Duration::from_millis(1)),
                min: cfg.min_rto.max(Duration::from_millis(1)),
                max: cfg.max_rto.max(cfg.min_rto).max(Duration::from_millis(1)),
            },
            expires: now + cfg.max_lifetime,
            max_lifetime: cfg.max_lifetime,
            outcome: None,
            oack,
        };
        if t.oack.is_some() {
            t.state = State::Negotiating;
            t.queue_oack(now);
        } else {
            t.queue_window(now);
        }
        t
    }

    /// Block size in use.
    pub fn blksize(&self) -> u16 {
        self.blksize as u16
    }

    /// Window size in use (1 = lockstep).
    pub fn windowsize(&self) -> u16 {
        self.windowsize as u16
    }

    /// Bytes that will be sent: known from the start in octet mode, and in netascii
    /// mode once the end of the data has been provided.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The options acknowledged in the OACK (empty when no OACK is sent).
    pub fn negotiated(&self) -> &Options {
        &self.negotiated
    }

    /// Packets sent more than once so far.
    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// Bytes of file data the transfer holds now.
    pub fn buffered_bytes(&self) -> u64 {
        self.data.end - self.data.start
    }

    /// The most bytes of file data this transfer ever holds: a window, plus one
    /// read ahead of it, plus the partly acknowledged read behind it, plus the read
    /// in flight. It depends on the block and window sizes, never on the file size.
    pub fn buffer_limit(&self) -> u64 {
        self.windowsize * self.blksize as u64 + 3 * self.read_chunk as u64
    }

    /// True once every data block, the last one included, has been handed out by
    /// [`Transfer::poll_transmit`] at least once: the client may have the whole file,
    /// even if its last ACK never arrives (a client that boots what it loaded may
    /// stop its network before that ACK leaves).
    pub fn all_sent(&self) -> bool {
        self.total_blocks
            .is_some_and(|total| self.highest_sent >= total)
    }

    /// True once nothing is left to send and the transfer is over.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done && self.error_queued.is_none()
    }

    /// How the transfer ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`Transfer::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Done {
            return None;
        }
        Some(match self.deadline {
            Some(d) => d.min(self.expires),
            None => self.expires,
        })
    }

    /// The file data the transfer needs next, if any: answer it with
    /// [`Transfer::provide`] or [`Transfer::read_failed`]. Only one read is
    /// outstanding at a time; until it is answered this returns `None`.
    ///
    /// Data is asked for once the client has accepted the options (no disk read for
    /// a request whose sender never answers), for the window being sent and one
    /// read ahead of it, so the next window's data is usually there before the ACK
    /// that asks for it.
    #[must_use = "a read request taken from the transfer and dropped is never answered"]
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        if self.state != State::Sending || self.reading.is_some() || self.data_complete {
            return None;
        }
        let window_end = (self.last_acked + self.windowsize).saturating_mul(self.blksize as u64);
        let mut want = window_end.saturating_add(self.read_chunk as u64);
        let mut len = self.read_chunk as u64;
        if let Some(size) = self.size {
            want = want.min(size);
            len = len.min(size.saturating_sub(self.data.end));
        }
        if self.data.end >= want || len == 0 {
            return None;
        }
        let req = ReadRequest {
            offset: self.data.end,
            len: len as usize,
        };
        self.reading = Some(req);
        Some(req)
    }

    /// Answers the read request from [`Transfer::poll_read`] that starts at
    /// `offset`: `data` holds up to the requested length (fewer is fine; the
    /// transfer asks again), and `last` says that nothing follows it. Anything that
    /// does not answer the outstanding request is ignored; bytes beyond the request,
    /// or beyond the file's size, are dropped.
    pub fn provide(&mut self, offset: u64, mut data: Bytes, last: bool) {
        let Some(req) = self.reading else {
            return;
        };
        if offset != req.offset {
            return;
        }
        self.reading = None;
        if self.state == State::Done {
            return;
        }
        data.truncate(req.len);
        if let Some(size) = self.size {
            data.truncate((size - self.data.end) as usize);
            if last && self.data.end + (data.len() as u64) < size {
                self.read_failed("the file ended before its size".into());
                return;
            }
        }
        self.data.push(data);
        if last || self.size == Some(self.data.end) {
            self.data_complete = true;
            let size = self.data.end;
            let total = size / self.blksize as u64 + 1;
            self.size = Some(size);
            self.total_blocks = Some(total);
            self.send_end = self.send_end.min(total);
        }
    }

    /// Ends the transfer because the outstanding read failed; the client gets
    /// ERROR 0 with `reason`.
    pub fn read_failed(&mut self, reason: String) {
        self.reading = None;
        if self.state != State::Done {
            self.fail(FailReason::ReadFailed(reason));
        }
    }

    /// The next datagram to send to the peer, if any. Call until it returns `None`.
    ///
    /// A block whose data has not been provided yet is not sent: once
    /// [`Transfer::provide`] brings it, this returns it.
    #[must_use = "a datagram taken from the transfer and dropped is never sent"]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(e) = self.error_queued.take() {
            return Some(e);
        }
        match self.state {
            State::Done => None,
            State::Negotiating => {
                if !self.oack_queued {
                    return None;
                }
                self.oack_queued = false;
                if self.oack_sent {
                    self.retransmits += 1;
                    self.window_has_resend = true;
                }
                self.oack_sent = true;
                self.oack.clone()
            }
            State::Sending => {
                if self.send_next > self.send_end {
                    return None;
                }
                let block = self.send_next;
                let blksize = self.blksize as u64;
                let start = (block - 1).saturating_mul(blksize);
                let mut end = start.saturating_add(blksize);
                if let Some(size) = self.size {
                    end = end.min(size);
                }
                if end > self.data.end || start < self.data.start {
                    return None; // the reader has not provided it yet
                }
                self.send_next += 1;
                if block <= self.highest_sent {
                    self.retransmits += 1;
                    self.window_has_resend = true;
                } else {
                    self.highest_sent = block;
                }
                let mut out = Vec::with_capacity(4 + (end - start) as usize);
                out.extend_from_slice(&data_header(BlockNum(block as u16)));
                self.data.copy(start, end, &mut out);
                Some(out)
            }
        }
    }

    /// Processes one datagram from the peer (the driver has already checked its
    /// source address and port).
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) {
        if self.state == State::Done {
            return;
        }
        if now >= self.expires {
            self.fail(FailReason::LifetimeExceeded(self.max_lifetime));
            return;
        }
        // Garbage from the right peer is dropped: the retransmission timer recovers.
        let Ok(packet) = Packet::parse(datagram) else {
            return;
        };
        match packet {
            Packet::Ack(block) => self.on_ack(now, block),
            Packet::Error { code, message } => {
                // Never answer an ERROR (RFC 1350); just stop.
                self.state = State::Done;
                self.data.clear();
                self.outcome = Some(Outcome::Aborted { code, message });
            }
            other => {
                let kind = other.kind();
                self.fail(FailReason::UnexpectedPacket(kind));
                self.error_queued = Some(encode_error(
                    ErrorCode::IllegalOperation,
                    &format!("unexpected {kind} in a read transfer"),
                ));
            }
        }
    }

    /// Retransmits or gives up if the deadline from [`Transfer::poll_timeout`] passed.
    /// Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        if now >= self.expires {
            self.fail(FailReason::LifetimeExceeded(self.max_lifetime));
            return;
        }
        match self.deadline {
            Some(d) if now >= d => {}
            _ => return,
        }
        if self.retries >= self.max_retries {
            self.fail(FailReason::Timeout {
                retries: self.retries,
            });
            return;
        }
        self.retries += 1;
        self.rto.backoff += 1;
        if self.state == State::Negotiating {
            self.queue_oack(now);
        } else {
            self.queue_window(now);
        }
    }

    fn queue_oack(&mut self, now: Instant) {
        self.oack_queued = true;
        self.window_sent_at = now;
        self.window_has_resend = false;
        self.deadline = Some(now + self.rto.current());
    }

    /// Queues the window that follows the last acknowledged block.
    fn queue_window(&mut self, now: Instant) {
        self.send_next = self.last_acked + 1;
        self.send_end = self.last_acked + self.windowsize;
        if let Some(total) = self.total_blocks {
            self.send_end = self.send_end.min(total);
        }
        self.window_sent_at = now;
        self.window_has_resend = false;
        self.deadline = Some(now + self.rto.current());
    }

    fn on_ack(&mut self, now: Instant, block: BlockNum) {
        match self.state {
            State::Negotiating => {
                if block.0 != 0 {
                    return;
                }
                if !self.window_has_resend {
                    self.rto
                        .sample(now.saturating_duration_since(self.window_sent_at));
                }
                self.state = State::Sending;
                self.progress();
                self.queue_window(now);
            }
            State::Sending => {
                // Where does this 16-bit number fall relative to the last ACK? Only
                // blocks already sent and not yet acknowledged count. A repeat of the
                // last ACK, or an older one, is ignored: answering it would double
                // the traffic for the rest of the transfer (Sorcerer's Apprentice).
                let ahead = u64::from(block.0.wrapping_sub(self.last_acked as u16));
                if ahead == 0 || ahead > self.highest_sent - self.last_acked {
                    return;
                }
                let acked = self.last_acked + ahead;
                if acked == self.send_end && !self.window_has_resend {
                    self.rto
                        .sample(now.saturating_duration_since(self.window_sent_at));
                }
                self.last_acked = acked;
                self.progress();
                // The client holds everything up to here: its bytes are not needed again.
                self.data.release(acked.saturating_mul(self.blksize as u64));
                if Some(acked) == self.total_blocks {
                    self.state = State::Done;
                    self.deadline = None;
                    self.data.clear();
                    self.outcome = Some(Outcome::Complete {
                        bytes: self.size.unwrap_or(self.data.end),
                        blocks: acked,
                        retransmits: self.retransmits,
                    });
                } else {
                    // With windowsize > 1 an ACK inside the window means the client
                    // missed the block after it: the next window starts there.
                    self.queue_window(now);
                }
            }
            State::Done => {}
        }
    }

    fn progress(&mut self) {
        self.retries = 0;
        self.rto.backoff = 0;
    }

    fn fail(&mut self, reason: FailReason) {
        self.error_queued = Some(encode_error(ErrorCode::NotDefined, &reason.to_string()));
        self.state = State::Done;
        self.deadline = None;
        self.data.clear();
        self.outcome = Some(Outcome::Failed { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Content, Reader};
    use crate::packet::{encode_ack, encode_data};

    /// A transfer and its file, whose reads are answered the way the driver does.
    struct Tx {
        t: Transfer,
        reader: Reader,
        peak_buffered: u64,
    }

    impl std::ops::Deref for Tx {
        type Target = Transfer;
        fn deref(&self) -> &Transfer {
            &self.t
        }
    }

    impl std::ops::DerefMut for Tx {
        fn deref_mut(&mut self) -> &mut Transfer {
            &mut self.t
        }
    }

    impl Tx {
        /// Answers every read the transfer asks for.
        fn serve_reads(&mut self) {
            while let Some(r) = self.t.poll_read() {
                let c = self.reader.read_nonblocking(r).expect("memory reads");
                self.t.provide(r.offset, c.data, c.last);
                self.peak_buffered = self.peak_buffered.max(self.t.buffered_bytes());
                assert!(self.t.buffered_bytes() <= self.t.buffer_limit());
            }
        }

        /// The next datagram, with reads answered first.
        fn next(&mut self) -> Option<Vec<u8>> {
            self.serve_reads();
            self.t.poll_transmit()
        }
    }

    fn start(now: Instant, req: &Request, file: Bytes, cfg: &TftpConfig) -> Tx {
        let t = Transfer::new(now, req, file.len() as u64, cfg);
        Tx {
            t,
            reader: Reader::new(Content::Memory(file), req.mode == Mode::Netascii),
            peak_buffered: 0,
        }
    }

    fn req(options: Options) -> Request {
        Request {
            filename: "undionly.kpxe".into(),
            mode: Mode::Octet,
            options,
        }
    }

    fn file(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn ack(b: u16) -> Vec<u8> {
        encode_ack(BlockNum(b))
    }

    fn drain(t: &mut Tx) -> Vec<Packet> {
        std::iter::from_fn(|| t.next())
            .map(|d| Packet::parse(&d).expect("transfer emitted an unparsable packet"))
            .collect()
    }

    /// Block numbers of DATA packets; panics on anything else.
    fn blocks(ps: &[Packet]) -> Vec<u16> {
        ps.iter()
            .map(|p| match p {
                Packet::Data { block, .. } => block.0,
                other => panic!("expected DATA, got {other:?}"),
            })
            .collect()
    }

    fn data(p: &Packet) -> (u16, Bytes) {
        match p {
            Packet::Data { block, payload } => (block.0, payload.clone()),
            other => panic!("expected DATA, got {other:?}"),
        }
    }

    #[test]
    fn lockstep_happy_path() {
        let f = file(1200);
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            f.clone(),
            &TftpConfig::default(),
        );
        assert_eq!((t.blksize(), t.windowsize()), (512, 1));
        let mut got = Vec::new();
        for b in 1..=3u16 {
            let ps = drain(&mut t);
            assert_eq!(ps.len(), 1);
            let (n, payload) = data(&ps[0]);
            assert_eq!(n, b);
            got.extend_from_slice(&payload);
            assert!(!t.is_finished());
            t.handle(t0 + Duration::from_millis(u64::from(b)), &ack(b));
        }
        assert_eq!(got, f);
        assert!(t.is_finished());
        assert!(t.poll_transmit().is_none());
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 1200,
                blocks: 3,
                retransmits: 0
            })
        );
    }

    #[test]
    fn all_sent_once_the_last_block_went_out_before_its_ack() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(1024),
            &TftpConfig::default(),
        );
        // 1024 bytes in 512-byte blocks: two full blocks and an empty last one.
        for b in 1..=2u16 {
            assert_eq!(blocks(&drain(&mut t)), [b]);
            assert!(!t.all_sent());
            t.handle(t0, &ack(b));
        }
        assert_eq!(blocks(&drain(&mut t)), [3]);
        assert!(t.all_sent() && !t.is_finished());
        // The last ACK never comes: the transfer fails, but every byte went out.
        for i in 1..=20u64 {
            t.handle_timeout(t0 + Duration::from_secs(10 * i));
            let _ = drain(&mut t);
        }
        assert!(matches!(t.outcome(), Some(Outcome::Failed { .. })));
        assert!(t.all_sent());
    }

    #[test]
    fn options_are_acknowledged_and_data_waits_for_ack_0() {
        let t0 = Instant::now();
        let opts = Options {
            blksize: Some(1024),
            tsize: Some(0),
            timeout: Some(3),
            windowsize: Some(2),
        };
        let mut t = start(t0, &req(opts), file(3000), &TftpConfig::default());
        assert_eq!(
            drain(&mut t),
            vec![Packet::Oack(Options {
                blksize: Some(1024),
                tsize: Some(3000),
                timeout: Some(3),
                windowsize: Some(2),
            })]
        );
        // Until ACK 0 nothing else goes out; a wrong ACK does not start the data.
        t.handle(t0, &ack(1));
        assert!(drain(&mut t).is_empty());
        // The client's timeout (3 s) only caps the retransmission timeout: before any
        // round trip is measured the initial 1 s applies.
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        t.handle(t0, &ack(0));
        let ps = drain(&mut t);
        assert_eq!(blocks(&ps), [1, 2]);
        assert_eq!(data(&ps[1]).1.len(), 1024);
        t.handle(t0, &ack(2));
        let ps = drain(&mut t);
        assert_eq!(blocks(&ps), [3]);
        assert_eq!(data(&ps[0]).1.len(), 3000 - 2048);
        t.handle(t0, &ack(3));
        assert!(t.is_finished());
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Complete { blocks: 3, .. })
        ));
    }

    #[test]
    fn tsize_probe_aborted_with_error_8_is_not_a_failure() {
        let t0 = Instant::now();
        let opts = Options {
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), file(70_000), &TftpConfig::default());
        assert_eq!(
            drain(&mut t),
            vec![Packet::Oack(Options {
                tsize: Some(70_000),
                ..Options::default()
            })]
        );
        t.handle(t0, &encode_error(ErrorCode::OptionNegotiation, "aborted"));
        assert!(t.is_finished());
        assert!(t.poll_transmit().is_none(), "an ERROR is never answered");
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Aborted {
                code: ErrorCode::OptionNegotiation,
                message: "aborted".into()
            })
        );
    }

    #[test]
    fn blksize_is_clamped_to_the_configured_maximum() {
        let t0 = Instant::now();
        let ask = |b: u16, max: u16| {
            let cfg = TftpConfig {
                max_blksize: max,
                ..TftpConfig::default()
            };
            let opts = Options {
                blksize: Some(b),
                ..Options::default()
            };
            let mut t = start(t0, &req(opts), file(100_000), &cfg);
            let Packet::Oack(o) = &drain(&mut t)[0] else {
                panic!("no OACK")
            };
            assert_eq!(o.blksize, Some(t.blksize()));
            t.handle(t0, &ack(0));
            assert_eq!(data(&drain(&mut t)[0]).1.len(), usize::from(t.blksize()));
            t.blksize()
        };
        assert_eq!(ask(65464, 1468), 1468);
        assert_eq!(ask(1432, 1468), 1432);
        assert_eq!(ask(8, 1468), 8);
        assert_eq!(ask(4096, 512), 512);
        assert_eq!(ask(9000, 65535), 9000);
        assert_eq!(ask(65464, 65535), 65464);
    }

    #[test]
    fn windowsize_is_clamped() {
        let opts = Options {
            windowsize: Some(1000),
            ..Options::default()
        };
        let t = start(Instant::now(), &req(opts), file(10), &TftpConfig::default());
        assert_eq!(t.windowsize(), 64);
        assert_eq!(t.negotiated().windowsize, Some(64));
    }

    #[test]
    fn window_of_4_recovers_from_a_lost_block() {
        let t0 = Instant::now();
        let f = file(5000); // 9 full blocks of 512 and one of 392
        let opts = Options {
            windowsize: Some(4),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), f.clone(), &TftpConfig::default());
        assert!(matches!(drain(&mut t)[..], [Packet::Oack(_)]));
        t.handle(t0, &ack(0));
        let w = drain(&mut t);
        assert_eq!(blocks(&w), [1, 2, 3, 4]);
        // Block 2 is lost: the client acknowledges 1, the last block it has in order.
        t.handle(t0, &ack(1));
        let w = drain(&mut t);
        assert_eq!(blocks(&w), [2, 3, 4, 5]);
        assert_eq!(t.retransmits(), 3);
        // Blocks 3 and 4 of the first window arrive late; the client repeats ACK 1.
        t.handle(t0, &ack(1));
        assert!(drain(&mut t).is_empty());
        t.handle(t0, &ack(5));
        assert_eq!(blocks(&drain(&mut t)), [6, 7, 8, 9]);
        t.handle(t0, &ack(9));
        let last = drain(&mut t);
        assert_eq!(blocks(&last), [10]);
        assert_eq!(data(&last[0]).1, f.slice(4608..));
        t.handle(t0, &ack(10));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 5000,
                blocks: 10,
                retransmits: 3
            })
        );
    }

    #[test]
    fn retransmits_with_backoff_then_fails_after_the_cap() {
        let t0 = Instant::now();
        let cfg = TftpConfig::default(); // 1 s initial, 4 s cap, 10 retries
        let mut t = start(t0, &req(Options::default()), file(100), &cfg);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let d = t.poll_timeout().unwrap();
            waits.push((d - now).as_secs());
            // Early wake-ups do nothing.
            t.handle_timeout(d - Duration::from_millis(1));
            assert!(drain(&mut t).is_empty());
            now = d;
            t.handle_timeout(now);
            assert_eq!(blocks(&drain(&mut t)), [1]);
        }
        assert_eq!(waits, [1, 2, 4, 4, 4, 4, 4, 4, 4, 4]);
        assert_eq!(t.retransmits(), 10);
        let d = t.poll_timeout().unwrap();
        assert_eq!(d - now, Duration::from_secs(4));
        t.handle_timeout(d);
        let ps = drain(&mut t);
        assert!(
            matches!(
                &ps[..],
                [Packet::Error {
                    code: ErrorCode::NotDefined,
                    ..
                }]
            ),
            "{ps:?}"
        );
        assert!(t.is_finished());
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Failed {
                reason: FailReason::Timeout { retries: 10 }
            })
        );
    }

    #[test]
    fn progress_resets_the_backoff() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(2000),
            &TftpConfig::default(),
        );
        drain(&mut t);
        t.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(blocks(&drain(&mut t)), [1]);
        t.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(blocks(&drain(&mut t)), [1]);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(7)));
        let now = t0 + Duration::from_secs(4);
        t.handle(now, &ack(1));
        assert_eq!(blocks(&drain(&mut t)), [2]);
        // Retransmitted window: no RTT sample (Karn), backoff reset to the initial RTO.
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn timeout_adapts_to_the_measured_round_trip() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(5000),
            &TftpConfig::default(),
        );
        let mut now = t0;
        for b in 1..=4u16 {
            drain(&mut t);
            now += Duration::from_millis(2);
            t.handle(now, &ack(b));
        }
        drain(&mut t);
        // srtt 2 ms, rttvar shrinking below 1 ms: clamped to the 10 ms floor.
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_millis(10)));

        let mut t = start(
            t0,
            &req(Options::default()),
            file(5000),
            &TftpConfig::default(),
        );
        drain(&mut t);
        t.handle(t0 + Duration::from_millis(100), &ack(1));
        drain(&mut t);
        // First sample 100 ms: srtt 100, rttvar 50, RTO 300 ms.
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + Duration::from_millis(100 + 300))
        );
    }

    #[test]
    fn client_timeout_caps_the_backoff_but_does_not_slow_recovery() {
        // curl asks for timeout 6; on a LAN a lost block must still be resent in
        // milliseconds, and backoff must stop at 2 s when the client asks for 2.
        let t0 = Instant::now();
        let opts = Options {
            timeout: Some(6),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), file(5000), &TftpConfig::default());
        assert_eq!(t.negotiated().timeout, Some(6), "acknowledged in the OACK");
        drain(&mut t);
        let mut now = t0 + Duration::from_micros(200);
        t.handle(now, &ack(0));
        for b in 1..=3u16 {
            drain(&mut t);
            now += Duration::from_micros(200);
            t.handle(now, &ack(b));
        }
        drain(&mut t);
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_millis(10)));

        let opts = Options {
            timeout: Some(2),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), file(5000), &TftpConfig::default());
        drain(&mut t);
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..4 {
            let d = t.poll_timeout().unwrap();
            waits.push((d - now).as_millis());
            now = d;
            t.handle_timeout(now);
            drain(&mut t);
        }
        assert_eq!(waits, [1000, 2000, 2000, 2000]);
    }

    #[test]
    fn duplicate_and_stray_acks_cause_no_transmission() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(2000),
            &TftpConfig::default(),
        );
        let mut sent = drain(&mut t).len();
        t.handle(t0, &ack(1));
        sent += drain(&mut t).len();
        assert_eq!(sent, 2);
        // Repeats of ACK 1, an ACK 0, and an ACK for a block never sent.
        for b in [1, 1, 0, 3, 4, 65535, 1] {
            t.handle(t0, &ack(b));
            sent += drain(&mut t).len();
        }
        assert_eq!(sent, 2, "duplicate ACKs must not trigger sends");
        t.handle(t0, &ack(2));
        assert_eq!(blocks(&drain(&mut t)), [3]);
        t.handle(t0, &ack(2));
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.retransmits(), 0);
        // Garbage from the peer is dropped too.
        t.handle(t0, b"\0");
        t.handle(t0, b"\0\x09xx");
        assert!(drain(&mut t).is_empty());
        t.handle(t0, &ack(3));
        assert_eq!(blocks(&drain(&mut t)), [4]);
        t.handle(t0, &ack(4));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 2000,
                blocks: 4,
                retransmits: 0
            })
        );
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let t0 = Instant::now();
        let n_blocks: u64 = 70_001;
        let f = file(70_000 * 8 + 3);
        let opts = Options {
            blksize: Some(8),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), f.clone(), &TftpConfig::default());
        assert!(matches!(drain(&mut t)[..], [Packet::Oack(_)]));
        let mut wire = 0u16;
        t.handle(t0, &ack(0));
        let mut got = Vec::with_capacity(f.len());
        let mut sent = 0u64;
        for abs in 1..=n_blocks {
            let d = t.next().expect("a block");
            assert!(t.next().is_none());
            sent += 1;
            assert_eq!(u16::from_be_bytes([d[2], d[3]]), abs as u16);
            match abs {
                65535 => assert_eq!(&d[2..4], [0xff, 0xff]),
                65536 => assert_eq!(&d[2..4], [0, 0]),
                65537 => assert_eq!(&d[2..4], [0, 1]),
                _ => {}
            }
            got.extend_from_slice(&d[4..]);
            wire = wire.wrapping_add(1);
            t.handle(
                t0,
                &d[2..4].iter().fold(vec![0, 4], |mut v, b| {
                    v.push(*b);
                    v
                }),
            );
        }
        assert_eq!(wire, (n_blocks % 65536) as u16);
        assert_eq!(sent, n_blocks);
        assert_eq!(got, f);
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: f.len() as u64,
                blocks: n_blocks,
                retransmits: 0
            })
        );
    }

    #[test]
    fn rollover_with_a_window_keeps_acks_straight() {
        // Windows of 64 cross 65535 -> 0; an old ACK from before the wrap is ignored.
        let t0 = Instant::now();
        let f = file(66_000 * 8);
        let opts = Options {
            blksize: Some(8),
            windowsize: Some(64),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), f.clone(), &TftpConfig::default());
        drain(&mut t);
        t.handle(t0, &ack(0));
        let mut got = Vec::new();
        let mut stale_tested = false;
        while !t.is_finished() {
            let w = drain(&mut t);
            assert!(!w.is_empty());
            let (last, _) = data(w.last().unwrap());
            for p in &w {
                got.extend_from_slice(&data(p).1);
            }
            if last == 64 && got.len() > 65536 * 8 {
                // First window after the wrap (last ACK was 0): 65500 is stale.
                t.handle(t0, &ack(65500));
                assert!(drain(&mut t).is_empty());
                stale_tested = true;
            }
            t.handle(t0, &ack(last));
        }
        assert!(stale_tested);
        assert_eq!(got, f);
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Complete {
                blocks: 66_001,
                retransmits: 0,
                ..
            })
        ));
    }

    #[test]
    fn size_multiple_of_blksize_ends_with_an_empty_block() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(1024),
            &TftpConfig::default(),
        );
        assert_eq!(data(&drain(&mut t)[0]), (1, file(1024).slice(..512)));
        t.handle(t0, &ack(1));
        assert_eq!(data(&drain(&mut t)[0]).1.len(), 512);
        t.handle(t0, &ack(2));
        assert_eq!(data(&drain(&mut t)[0]), (3, Bytes::new()));
        assert!(!t.is_finished());
        t.handle(t0, &ack(3));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 1024,
                blocks: 3,
                retransmits: 0
            })
        );
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let t0 = Instant::now();
        let opts = Options {
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), Bytes::new(), &TftpConfig::default());
        assert_eq!(
            drain(&mut t),
            vec![Packet::Oack(Options {
                tsize: Some(0),
                ..Options::default()
            })]
        );
        t.handle(t0, &ack(0));
        assert_eq!(data(&drain(&mut t)[0]), (1, Bytes::new()));
        t.handle(t0, &ack(1));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 0,
                blocks: 1,
                retransmits: 0
            })
        );
    }

    #[test]
    fn lost_oack_is_retransmitted() {
        let t0 = Instant::now();
        let opts = Options {
            blksize: Some(1432),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), file(10), &TftpConfig::default());
        assert!(matches!(drain(&mut t)[..], [Packet::Oack(_)]));
        t.handle_timeout(t0 + Duration::from_secs(1));
        assert!(matches!(drain(&mut t)[..], [Packet::Oack(_)]));
        t.handle(t0 + Duration::from_millis(1001), &ack(0));
        assert_eq!(blocks(&drain(&mut t)), [1]);
        t.handle(t0 + Duration::from_millis(1002), &ack(1));
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Complete { retransmits: 1, .. })
        ));
    }

    #[test]
    fn lifetime_is_bounded() {
        let t0 = Instant::now();
        let cfg = TftpConfig {
            max_lifetime: Duration::from_secs(5),
            initial_rto: Duration::from_secs(10),
            ..TftpConfig::default()
        };
        let mut t = start(t0, &req(Options::default()), file(100_000), &cfg);
        drain(&mut t);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        t.handle_timeout(t0 + Duration::from_secs(5));
        assert!(matches!(
            drain(&mut t)[..],
            [Packet::Error {
                code: ErrorCode::NotDefined,
                ..
            }]
        ));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Failed {
                reason: FailReason::LifetimeExceeded(Duration::from_secs(5))
            })
        );
    }

    #[test]
    fn unexpected_packet_from_peer_fails_with_error_4() {
        let t0 = Instant::now();
        let mut t = start(
            t0,
            &req(Options::default()),
            file(100),
            &TftpConfig::default(),
        );
        drain(&mut t);
        t.handle(t0, &encode_data(BlockNum(1), b"x"));
        assert!(matches!(
            drain(&mut t)[..],
            [Packet::Error {
                code: ErrorCode::IllegalOperation,
                ..
            }]
        ));
        assert!(t.is_finished());
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Failed {
                reason: FailReason::UnexpectedPacket("DATA")
            })
        );
    }

    #[test]
    fn netascii_converts_line_ends() {
        let t0 = Instant::now();
        let r = Request {
            filename: "boot.txt".into(),
            mode: Mode::Netascii,
            options: Options {
                tsize: Some(0),
                ..Options::default()
            },
        };
        let mut t = start(
            t0,
            &r,
            Bytes::from_static(b"a\nb\rc"),
            &TftpConfig::default(),
        );
        // The converted size is known only at the end: tsize is not acknowledged, so
        // there is no OACK and block 1 goes out at once.
        assert_eq!(t.size(), None);
        assert_eq!(
            data(&drain(&mut t)[0]),
            (1, Bytes::from_static(b"a\r\nb\r\0c"))
        );
        t.handle(t0, &ack(1));
        assert_eq!(
            t.outcome(),
            Some(&Outcome::Complete {
                bytes: 7,
                blocks: 1,
                retransmits: 0
            })
        );
    }

    /// Acknowledges every window until the end; returns the bytes received.
    fn run_to_end(t: &mut Tx, t0: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        if matches!(drain(t).first(), Some(Packet::Oack(_))) {
            t.handle(t0, &ack(0));
        } else {
            panic!("expected an OACK first");
        }
        while !t.is_finished() {
            let w = drain(t);
            let (last, _) = data(w.last().expect("a window"));
            for p in &w {
                got.extend_from_slice(&data(p).1);
            }
            t.handle(t0, &ack(last));
        }
        got
    }

    #[test]
    fn a_large_file_is_held_a_window_at_a_time() {
        let t0 = Instant::now();
        let f = file(8 << 20);
        let opts = Options {
            blksize: Some(1468),
            windowsize: Some(16),
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = start(t0, &req(opts), f.clone(), &TftpConfig::default());
        let limit = t.buffer_limit();
        // The bound depends on the window, not on the file.
        assert_eq!(limit, 16 * 1468 + 3 * READ_CHUNK as u64);
        let got = run_to_end(&mut t, t0);
        assert_eq!(got, f);
        assert!(t.peak_buffered <= limit, "{} > {limit}", t.peak_buffered);
        assert!(t.peak_buffered > 0);
        assert_eq!(t.buffered_bytes(), 0, "everything released at the end");
    }

    #[test]
    fn netascii_is_converted_while_streaming_within_the_budget() {
        let t0 = Instant::now();
        let text: Bytes = (0..(4 << 20))
            .map(|i: u32| match i % 61 {
                0 => b'\n',
                30 => b'\r',
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        let r = Request {
            filename: "notes.txt".into(),
            mode: Mode::Netascii,
            options: Options {
                blksize: Some(1024),
                windowsize: Some(8),
                ..Options::default()
            },
        };
        let mut t = start(t0, &r, text.clone(), &TftpConfig::default());
        let got = run_to_end(&mut t, t0);
        let mut want = Vec::new();
        crate::content::to_netascii(&text, &mut want, usize::MAX);
        assert_eq!(got, want);
        assert!(t.peak_buffered <= t.buffer_limit());
        assert!(
            t.buffer_limit() < text.len() as u64 / 50,
            "a copy of the file is never made"
        );
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Complete { bytes, .. }) if *bytes == want.len() as u64
        ));
    }

    #[test]
    fn blocks_wait_for_their_data_and_reads_are_checked() {
        let t0 = Instant::now();
        let mut t = Transfer::new(t0, &req(Options::default()), 2000, &TftpConfig::default());
        // Nothing to send before the data comes; one read at a time.
        let r = t.poll_read().expect("a read");
        assert_eq!((r.offset, r.len), (0, 2000));
        assert!(t.poll_read().is_none());
        assert!(t.poll_transmit().is_none());
        // An answer to another offset is ignored.
        t.provide(5, Bytes::from_static(b"zz"), false);
        assert!(t.poll_transmit().is_none());
        // A short answer: block 1 is not complete yet.
        let f = file(2000);
        t.provide(0, f.slice(..100), false);
        assert!(t.poll_transmit().is_none());
        let r = t.poll_read().expect("the rest");
        assert_eq!((r.offset, r.len), (100, 1900));
        // More than asked, and beyond the size: cut.
        let mut more = f.slice(100..).to_vec();
        more.extend_from_slice(b"extra");
        t.provide(100, Bytes::from(more), true);
        let p = Packet::parse(&t.poll_transmit().unwrap()).unwrap();
        assert_eq!(data(&p), (1, f.slice(..512)));
        assert!(t.poll_read().is_none(), "all data is there");
        for b in 1..=3 {
            t.handle(t0, &ack(b));
            assert!(t.poll_transmit().is_some());
        }
        t.handle(t0, &ack(4));
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Complete { bytes: 2000, .. })
        ));

        // A file that ends before its size fails the transfer with ERROR 0.
        let mut t = Transfer::new(t0, &req(Options::default()), 2000, &TftpConfig::default());
        let r = t.poll_read().unwrap();
        t.provide(r.offset, f.slice(..10), true);
        let p = Packet::parse(&t.poll_transmit().unwrap()).unwrap();
        assert!(matches!(
            p,
            Packet::Error {
                code: ErrorCode::NotDefined,
                ..
            }
        ));
        assert!(matches!(
            t.outcome(),
            Some(Outcome::Failed {
                reason: FailReason::ReadFailed(_)
            })
        ));
        // So does a read error.
        let mut t = Transfer::new(t0, &req(Options::default()), 2000, &TftpConfig::default());
        let _ = t.poll_read().unwrap();
        t.read_failed("disk on fire".into());
        let p = Packet::parse(&t.poll_transmit().unwrap()).unwrap();
        assert!(matches!(p, Packet::Error { message, .. } if message.contains("disk on fire")));
        assert!(t.is_finished());
    }

    #[test]
    fn no_data_is_read_before_the_client_accepts_the_options() {
        let t0 = Instant::now();
        let opts = Options {
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = Transfer::new(t0, &req(opts), 1 << 40, &TftpConfig::default());
        assert!(t.poll_read().is_none());
        let p = Packet::parse(&t.poll_transmit().unwrap()).unwrap();
        assert_eq!(
            p,
            Packet::Oack(Options {
                tsize: Some(1 << 40),
                ..Options::default()
            })
        );
        assert!(t.poll_read().is_none());
        t.handle(t0, &ack(0));
        let r = t.poll_read().unwrap();
        assert_eq!((r.offset, r.len), (0, READ_CHUNK));
    }
}
