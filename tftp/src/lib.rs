//! Read-only TFTP server of ironpxe, used to chainload iPXE into PXE firmware.
//!
//! It serves files in octet (and netascii) mode with the blksize, tsize, timeout and
//! windowsize options (RFC 1350, 2347, 2348, 2349, 7440), one socket per transfer.
//!
//! # Layout
//!
//! - [`packet`]: the wire codec. [`Packet::parse`] turns a datagram into a [`Packet`]
//!   and never panics; [`Packet::encode`] goes back.
//! - [`Transfer`]: the deterministic state machine of one read transfer. It takes
//!   datagrams and the current time and says what to send ([`Transfer::poll_transmit`])
//!   and when to wake up ([`Transfer::poll_timeout`]). It negotiates options, measures
//!   the round trip to set its retransmission timeout, backs off exponentially, ignores
//!   duplicate ACKs and rolls block numbers over past 65535. It reads no file either:
//!   it asks for the bytes of the window it sends and one read ahead
//!   ([`Transfer::poll_read`]), and drops them once acknowledged, so what it holds is
//!   bounded by [`Transfer::buffer_limit`] whatever the file's size. It holds no
//!   socket and reads no clock, so its tests run on virtual time.
//! - [`FileSource`] opens files as [`Content`]: in memory and shared
//!   ([`MemoryFiles`], which the binary fills with the iPXE binaries at start-up), or
//!   an open file read by position. [`Reader`] answers a transfer's reads from a
//!   [`Content`], converting to netascii on the way. [`normalize_path`] is the path
//!   policy. [`TftpRoot`] serves a directory (`--tftp-root`), confined with
//!   `openat2(RESOLVE_BENEATH)`; its small files are cached in memory by path, larger
//!   ones streamed. [`Overlay`] stacks sources (built-in iPXE names first).
//! - [`serve`]: the thin tokio driver. It admits at most
//!   [`TftpConfig::max_transfers`] transfers, [`TftpConfig::max_per_address`] per
//!   client address, and one per client port and file.
//!
//! # Data flow
//!
//! A read request arrives on the listening socket → [`serve`] parses it (one pass)
//! and admits it → a task opens a new socket, asks the [`FileSource`] for the file
//! (on the blocking pool if it has to touch the disk), caps the block size at what
//! the path MTU to the client carries, and builds a [`Transfer`] → the task loops:
//! answer the transfer's reads (at once from memory or the page cache, on the
//! blocking pool when the disk must be waited for), send what the transfer emits,
//! wait for a datagram, a read or the transfer's deadline, pass it in → the outcome
//! is logged.
//!
//! Events go to `tracing` with target `ironpxe::event` and an `event` field:
//! `tftp.start`, `tftp.done`, `tftp.failed` and `tftp.aborted` (the client ended the
//! transfer with an ERROR, as EDK2 does after its size probe).

mod content;
mod files;
mod limits;
pub mod packet;
mod root;
mod server;
mod transfer;

pub use content::{to_netascii, Chunk, Content, ReadError, Reader};
pub use files::{normalize_path, FileSource, MemoryFiles, OpenError, Overlay, PathError};
pub use packet::{ErrorCode, Mode, Options, Packet, ParseError, Request};
pub use root::{RootError, TftpRoot, DEFAULT_CACHE_BYTES, DEFAULT_MAX_CACHED_FILE};
pub use server::serve;
pub use transfer::{
    FailReason, Outcome, ReadRequest, TftpConfig, Transfer, DEFAULT_MAX_PER_ADDRESS, READ_CHUNK,
};
