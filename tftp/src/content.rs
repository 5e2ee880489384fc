//! What a transfer sends: file contents in memory or on disk, and the reader that
//! hands them to a [`Transfer`](crate::Transfer) one chunk at a time.
//!
//! A [`Content`] is what a [`FileSource`](crate::FileSource) opens. Small, hot files
//! (the iPXE binaries, small files of a TFTP root) are [`Content::Memory`], shared by
//! every transfer. Anything else is [`Content::File`]: an open file read by position
//! as the transfer goes, so a transfer holds a few chunks of it and never the whole
//! file, whatever its size.
//!
//! A [`Reader`] answers the transfer's [`ReadRequest`]s in order. Octet data is
//! the file's bytes at the asked offset. Netascii data is converted on the way (LF
//! becomes CR LF and CR becomes CR NUL), chunk by chunk, so it costs no copy of the
//! file either. Reads from memory never block; a file read is first tried with
//! `RWF_NOWAIT`, which succeeds without waiting when the data is in the page cache,
//! and otherwise has to run off the async workers ([`Reader::read_blocking`]).

use crate::transfer::ReadRequest;
use bytes::Bytes;
use rustix::io::{Errno, ReadWriteFlags};
use std::fs::File;
use std::io::IoSliceMut;
use std::sync::Arc;

/// The contents of one file, as a [`FileSource`](crate::FileSource) hands them out.
#[derive(Clone, Debug)]
pub enum Content {
    /// The whole file in memory, shared (cloning is a reference count).
    Memory(Bytes),
    /// An open regular file, read by position while it is served.
    File {
        /// The open file.
        file: Arc<File>,
        /// Its size when it was opened; only this many bytes are served.
        size: u64,
    },
}

impl Content {
    /// The file's size in bytes (before any netascii conversion).
    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(b) => b.len() as u64,
            Content::File { size, .. } => *size,
        }
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when the file is in memory.
    pub fn as_memory(&self) -> Option<&Bytes> {
        match self {
            Content::Memory(b) => Some(b),
            Content::File { .. } => None,
        }
    }
}

impl From<Bytes> for Content {
    fn from(b: Bytes) -> Self {
        Content::Memory(b)
    }
}

/// One answer to a [`ReadRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes at the requested offset, at most the requested length. Shorter is
    /// fine; the transfer asks again.
    pub data: Bytes,
    /// True when `data` ends the file: nothing follows.
    pub last: bool,
}

/// Why a [`Reader`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The answer needs the disk; call [`Reader::read_blocking`] off the runtime.
    #[error("the read would block")]
    WouldBlock,
    /// The file ended before the size it had when it was opened.
    #[error("the file shrank while it was being served")]
    Shrunk,
    /// The request does not follow the previous one (a netascii stream is read in
    /// order only).
    #[error("read at {asked} out of order, expected {expected}")]
    OutOfOrder {
        /// Offset asked for.
        asked: u64,
        /// Offset the reader is at.
        expected: u64,
    },
    /// The operating system refused the read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Converts `input` to netascii into `out` (LF becomes CR LF, CR becomes CR NUL)
/// until `out` holds `room` bytes. Returns how many input bytes were consumed; when
/// only the first byte of a pair fitted, the second is returned to be sent first
/// next time.
pub fn to_netascii(input: &[u8], out: &mut Vec<u8>, room: usize) -> (usize, Option<u8>) {
    let mut used = 0;
    for &b in input {
        if out.len() >= room {
            break;
        }
        used += 1;
        let second = match b {
            b'\n' => {
                out.push(b'\r');
                b'\n'
            }
            b'\r' => {
                out.push(b'\r');
                0
            }
            other => {
                out.push(other);
                continue;
            }
        };
        if out.len() < room {
            out.push(second);
        } else {
            return (used, Some(second));
        }
    }
    (used, None)
}

/// Reads a [`Content`] in transfer order, converting to netascii when asked. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Reader {
    content: Content,
    netascii: bool,
    /// Netascii: the next input byte to convert, the offset of the next output byte,
    /// and the second byte of a pair cut at the end of the previous chunk.
    in_pos: u64,
    out_pos: u64,
    pending: Option<u8>,
}

impl Reader {
    /// A reader of `content`, converted to netascii if `netascii`.
    pub fn new(content: Content, netascii: bool) -> Reader {
        Reader {
            content,
            netascii,
            in_pos: 0,
            out_pos: 0,
            pending: None,
        }
    }

    /// Answers `req` if that needs no disk access: always for memory, for a file
    /// when its data is in the page cache. Otherwise [`ReadError::WouldBlock`].
    pub fn read_nonblocking(&mut self, req: ReadRequest) -> Result<Chunk, ReadError> {
        self.read(req, ReadWriteFlags::NOWAIT)
    }

    /// Answers `req`, waiting for the disk if needed. Call it off the async workers.
    pub fn read_blocking(&mut self, req: ReadRequest) -> Result<Chunk, ReadError> {
        self.read(req, ReadWriteFlags::empty())
    }

    fn read(&mut self, req: ReadRequest, flags: ReadWriteFlags) -> Result<Chunk, ReadError> {
        if self.netascii {
            self.read_netascii(req, flags)
        } else {
            self.read_octet(req, flags)
        }
    }

    fn read_octet(&mut self, req: ReadRequest, flags: ReadWriteFlags) -> Result<Chunk, ReadError> {
        let size = self.content.len();
        let off = req.offset.min(size);
        let len = (size - off).min(req.len as u64) as usize;
        let data = match &self.content {
            Content::Memory(b) => b.slice(off as usize..off as usize + len),
            Content::File { file, .. } => {
                let mut buf = vec![0u8; len];
                let n = read_at(file, &mut buf, off, flags)?;
                if n == 0 && len > 0 {
                    return Err(ReadError::Shrunk);
                }
                buf.truncate(n);
                Bytes::from(buf)
            }
        };
        let last = off + data.len() as u64 == size;
        Ok(Chunk { data, last })
    }

    fn read_netascii(
        &mut self,
        req: ReadRequest,
        flags: ReadWriteFlags,
    ) -> Result<Chunk, ReadError> {
        if req.offset != self.out_pos {
            return Err(ReadError::OutOfOrder {
                asked: req.offset,
                expected: self.out_pos,
            });
        }
        let size = self.content.len();
        let room = req.len.max(1);
        let mut out = Vec::with_capacity(room);
        out.extend(self.pending);
        // Convert at most `room` input bytes: each makes one or two output bytes.
        let want = (size - self.in_pos).min((room - out.len()) as u64) as usize;
        let mut pending = None;
        if want > 0 {
            let used;
            (used, pending) = match &self.content {
                Content::Memory(b) => {
                    let start = self.in_pos as usize;
                    to_netascii(&b[start..start + want], &mut out, room)
                }
                Content::File { file, .. } => {
                    let mut raw = vec![0u8; want];
                    // On an error nothing was taken: `self.pending` still holds its byte.
                    let n = read_at(file, &mut raw, self.in_pos, flags)?;
                    if n == 0 {
                        return Err(ReadError::Shrunk);
                    }
                    to_netascii(&raw[..n], &mut out, room)
                }
            };
            self.in_pos += used as u64;
        }
        self.pending = pending;
        self.out_pos += out.len() as u64;
        let last = self.in_pos == size && self.pending.is_none();
        Ok(Chunk {
            data: Bytes::from(out),
            last,
        })
    }
}

/// One positioned read of up to `buf.len()` bytes; fewer only at the end of the file
/// or when `RWF_NOWAIT` found part of the range outside the page cache.
fn read_at(
    file: &File,
    buf: &mut [u8],
    off: u64,
    flags: ReadWriteFlags,
) -> Result<usize, ReadError> {
    let mut done = 0;
    while done < buf.len() {
        let r = rustix::io::preadv2(
            file,
            &mut [IoSliceMut::new(&mut buf[done..])],
            off + done as u64,
            flags,
        );
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            // Not in the page cache, or a kernel without RWF_NOWAIT for this file.
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL)
                if !flags.is_empty() =>
            {
                if done > 0 {
                    break;
                }
                return Err(ReadError::WouldBlock);
            }
            Err(e) => return Err(ReadError::Io(e.into())),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netascii_all(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (used, pending) = to_netascii(input, &mut out, usize::MAX);
        assert_eq!((used, pending), (input.len(), None));
        out
    }

    /// Reads everything in chunks of `len`, as a transfer would.
    fn drain(r: &mut Reader, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let c = match r.read_nonblocking(ReadRequest {
                offset: out.len() as u64,
                len,
            }) {
                Ok(c) => c,
                Err(ReadError::WouldBlock) => r
                    .read_blocking(ReadRequest {
                        offset: out.len() as u64,
                        len,
                    })
                    .unwrap(),
                Err(e) => panic!("{e}"),
            };
            assert!(c.data.len() <= len);
            out.extend_from_slice(&c.data);
            if c.last {
                return out;
            }
            assert!(!c.data.is_empty(), "no progress");
        }
    }

    #[test]
    fn netascii_conversion() {
        assert_eq!(netascii_all(b"a\nb\rc"), b"a\r\nb\r\0c");
        assert_eq!(netascii_all(b"\r\n"), b"\r\0\r\n");
        assert_eq!(netascii_all(b""), b"");
        // A pair cut at the end of the room: the second byte comes back.
        let mut out = Vec::new();
        assert_eq!(to_netascii(b"ab\ncd", &mut out, 3), (3, Some(b'\n')));
        assert_eq!(out, b"ab\r");
    }

    #[test]
    fn chunked_netascii_equals_whole_conversion_for_every_chunk_size() {
        let text: Vec<u8> = (0..3000u32)
            .map(|i| match i % 7 {
                0 => b'\n',
                3 => b'\r',
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        let want = netascii_all(&text);
        for len in [1, 2, 3, 7, 512, 4096] {
            let mut r = Reader::new(Content::Memory(Bytes::from(text.clone())), true);
            assert_eq!(drain(&mut r, len), want, "chunks of {len}");
        }
        let mut r = Reader::new(Content::Memory(Bytes::new()), true);
        assert_eq!(drain(&mut r, 512), b"");
    }

    #[test]
    fn file_reads_match_memory_reads_and_notice_a_shrunk_file() {
        let dir = std::env::temp_dir().join(format!("ironpxe-content-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        for netascii in [false, true] {
            let mem = drain(
                &mut Reader::new(Content::Memory(Bytes::from(data.clone())), netascii),
                1468,
            );
            let disk = drain(
                &mut Reader::new(
                    Content::File {
                        file: file.clone(),
                        size: data.len() as u64,
                    },
                    netascii,
                ),
                1468,
            );
            assert_eq!(mem, disk);
        }
        // Truncated behind the reader's back: an error, not a short transfer.
        let mut r = Reader::new(
            Content::File {
                file: file.clone(),
                size: data.len() as u64,
            },
            false,
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let req = ReadRequest {
            offset: 2000,
            len: 512,
        };
        assert!(matches!(r.read_blocking(req), Err(ReadError::Shrunk)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netascii_reads_must_follow_each_other() {
        let mut r = Reader::new(Content::Memory(Bytes::from_static(b"abc")), true);
        let e = r
            .read_nonblocking(ReadRequest { offset: 1, len: 2 })
            .unwrap_err();
        assert!(matches!(
            e,
            ReadError::OutOfOrder {
                asked: 1,
                expected: 0
            }
        ));
    }
}
