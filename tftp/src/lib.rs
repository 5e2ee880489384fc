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
//!   duplicate ACKs and rolls block numbers over past 65535. It holds no socket and
//!   reads no clock, so its tests run on virtual time.
//! - [`FileSource`] supplies file contents; [`MemoryFiles`] is the in-memory
//!   implementation the binary fills with the iPXE binaries at start-up.
//!   [`normalize_path`] is the path policy. [`TftpRoot`] serves a directory
//!   (`--tftp-root`), confined with `openat2(RESOLVE_BENEATH)` and cached in memory
//!   by path; [`Overlay`] stacks sources (built-in iPXE names first).
//! - [`serve`]: the thin tokio driver.
//!
//! # Data flow
//!
//! A read request arrives on the listening socket → [`serve`] checks it and takes a
//! concurrency slot → a task opens a new socket, asks the [`FileSource`] for the file
//! (on the blocking pool if it has to touch the disk), caps the block size at what the
//! path MTU to the client carries, and builds a [`Transfer`] → the task loops: send what the transfer emits, wait for
//! a datagram or the transfer's deadline, pass it in → the outcome is logged.
//!
//! Events go to `tracing` with target `ironpxe::event` and an `event` field:
//! `tftp.start`, `tftp.done`, `tftp.failed` and `tftp.aborted` (the client ended the
//! transfer with an ERROR, as EDK2 does after its size probe).

mod files;
pub mod packet;
mod root;
mod server;
mod transfer;

pub use files::{normalize_path, FileSource, MemoryFiles, OpenError, Overlay, PathError};
pub use packet::{ErrorCode, Mode, Options, Packet, ParseError, Request};
pub use root::{RootError, TftpRoot, DEFAULT_CACHE_BYTES};
pub use server::serve;
pub use transfer::{FailReason, Outcome, TftpConfig, Transfer};
