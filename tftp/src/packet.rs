//! TFTP wire format: RFC 1350 packets plus the option extension (RFC 2347) and the
//! blksize (RFC 2348), tsize/timeout (RFC 2349) and windowsize (RFC 7440) options.
//!
//! [`Packet::parse`] never panics: it checks every length before reading and reports
//! a [`ParseError`] that tells a truncated packet apart from an invalid one.

use bytes::Bytes;
use std::fmt;

/// Smallest block size a client may ask for (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size a client may ask for (RFC 2348).
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size used when the client negotiates none (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// A 16-bit block number as it appears on the wire. Block numbers wrap from 65535 to 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockNum(pub u16);

impl fmt::Display for BlockNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Transfer mode named in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Text with CR LF line ends (RFC 764 NVT ASCII).
    Netascii,
    /// Raw bytes.
    Octet,
    /// Obsolete mail delivery mode; ironpxe refuses it.
    Mail,
}

impl Mode {
    /// The lowercase name written on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TFTP error codes (RFC 1350, plus 8 from RFC 2347). Unknown codes survive a round
/// trip as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionNegotiation,
    /// Any other code.
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
            ErrorCode::Unknown(v) => v,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u16::from(*self))
    }
}

/// The options ironpxe understands. Parsing ignores every other option (RFC 2347) and
/// every option whose value is not a decimal number in range.
///
/// Out-of-range values are handled as follows: `blksize` above 65464 is read as 65464
/// and `windowsize` above 65535 as 65535 (the server may answer with a smaller value
/// anyway); `blksize` below 8, `timeout` outside 1..=255 and `windowsize` 0 are
/// dropped. When an option appears twice, the first occurrence wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Block size in bytes, 8..=65464 (RFC 2348).
    pub blksize: Option<u16>,
    /// Transfer size in bytes; 0 in a read request means "tell me" (RFC 2349).
    pub tsize: Option<u64>,
    /// Retransmission timeout in seconds, 1..=255 (RFC 2349).
    pub timeout: Option<u8>,
    /// Number of blocks sent before waiting for an ACK, >= 1 (RFC 7440).
    pub windowsize: Option<u16>,
}

impl Options {
    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }

    fn apply(&mut self, name: &str, value: &str) {
        // Digits only: `u64::from_str` would also take a leading '+'.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return;
        }
        let Ok(v) = value.parse::<u64>() else {
            return; // more than 20 digits: ignore like any other bad value
        };
        if name.eq_ignore_ascii_case("blksize") {
            if self.blksize.is_none() && v >= u64::from(MIN_BLKSIZE) {
                self.blksize = Some(v.min(u64::from(MAX_BLKSIZE)) as u16);
            }
        } else if name.eq_ignore_ascii_case("tsize") {
            if self.tsize.is_none() {
                self.tsize = Some(v);
            }
        } else if name.eq_ignore_ascii_case("timeout") {
            if self.timeout.is_none() && (1..=255).contains(&v) {
                self.timeout = Some(v as u8);
            }
        } else if name.eq_ignore_ascii_case("windowsize") && self.windowsize.is_none() && v >= 1 {
            self.windowsize = Some(v.min(u64::from(u16::MAX)) as u16);
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let mut put = |name: &str, v: u64| {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(0);
        };
        if let Some(v) = self.blksize {
            put("blksize", v.into());
        }
        if let Some(v) = self.tsize {
            put("tsize", v);
        }
        if let Some(v) = self.timeout {
            put("timeout", v.into());
        }
        if let Some(v) = self.windowsize {
            put("windowsize", v.into());
        }
    }
}

/// A read or write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The file name exactly as sent (see [`crate::normalize_path`] before using it).
    pub filename: String,
    /// The transfer mode, matched case-insensitively.
    pub mode: Mode,
    /// Recognised options.
    pub options: Options,
}

/// One TFTP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Read request (opcode 1).
    Rrq(Request),
    /// Write request (opcode 2).
    Wrq(Request),
    /// Data block (opcode 3).
    Data {
        /// Block number.
        block: BlockNum,
        /// Up to blksize bytes; shorter means last block.
        payload: Bytes,
    },
    /// Acknowledgement (opcode 4).
    Ack(BlockNum),
    /// Error (opcode 5).
    Error {
        /// Error code.
        code: ErrorCode,
        /// Human-readable message.
        message: String,
    },
    /// Option acknowledgement (opcode 6, RFC 2347).
    Oack(Options),
}

/// Why a datagram is not a TFTP packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The datagram ends before a field it must contain.
    #[error("truncated packet: missing {missing}")]
    Truncated {
        /// The field that is missing or unterminated.
        missing: &'static str,
    },
    /// The opcode is not 1 to 6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// The offending field.
        field: &'static str,
    },
    /// The request names an empty file.
    #[error("empty filename")]
    EmptyFilename,
    /// The filename is longer than any boot file path ([`MAX_FILENAME`] bytes).
    #[error("filename longer than {MAX_FILENAME} bytes")]
    FilenameTooLong,
    /// The request names a mode other than netascii, octet or mail.
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    /// More than [`MAX_OPTIONS`] option pairs.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
}

impl ParseError {
    /// True when the packet was cut short, as opposed to well-framed but invalid.
    pub fn is_truncated(&self) -> bool {
        matches!(self, ParseError::Truncated { .. })
    }
}

/// Why a [`Packet`] cannot be put on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A text field contains NUL, which would end it early on the wire.
    #[error("{field} contains a NUL byte")]
    NulInString {
        /// The offending field.
        field: &'static str,
    },
    /// A request with an empty file name.
    #[error("empty filename")]
    EmptyFilename,
    /// A DATA payload larger than the largest block size.
    #[error("data payload of {0} bytes exceeds {MAX_BLKSIZE}")]
    PayloadTooLarge(usize),
}

/// A read position in a datagram. Under test it counts the bytes it examines, so
/// tests can check that parsing does a bounded amount of work per byte.
struct Cursor<'a> {
    rest: &'a [u8],
    #[cfg(test)]
    examined: usize,
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Cursor {
            rest,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Splits off the NUL-terminated string at the cursor.
    fn take_cstr(&mut self, missing: &'static str) -> Result<&'a [u8], ParseError> {
        let found = self.rest.iter().position(|&b| b == 0);
        #[cfg(test)]
        {
            self.examined += found.map_or(self.rest.len(), |n| n + 1);
        }
        let Some(nul) = found else {
            return Err(ParseError::Truncated { missing });
        };
        let s = &self.rest[..nul];
        self.rest = &self.rest[nul + 1..];
        Ok(s)
    }
}

/// The most option name/value pairs a request or OACK may carry. Real clients send
/// at most five (blksize, tsize, timeout, windowsize and perhaps a vendor one); the
/// bound keeps a datagram made of empty pairs from costing anything.
pub const MAX_OPTIONS: usize = 32;

fn parse_options(cur: &mut Cursor<'_>) -> Result<Options, ParseError> {
    let mut opts = Options::default();
    // Some PXE ROMs pad requests with NULs: trailing zeros are not an option. Where
    // the padding starts is found once, so every byte is read a bounded number of
    // times however the datagram is made.
    let start = cur.rest.len();
    let end = cur.rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    #[cfg(test)]
    {
        cur.examined += start - end + usize::from(end > 0);
    }
    let mut pairs = 0;
    while start - cur.rest.len() < end {
        pairs += 1;
        if pairs > MAX_OPTIONS {
            return Err(ParseError::TooManyOptions);
        }
        let name = cur.take_cstr("option name terminator")?;
        let value = cur.take_cstr("option value")?;
        // Options we do not know (including non-UTF-8 ones) are ignored, not errors.
        if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
            opts.apply(name, value);
        }
    }
    Ok(opts)
}

/// The longest filename a request may carry. Boot file paths are short; a bound
/// keeps a hostile request from carrying kilobytes into logs and the status store.
pub const MAX_FILENAME: usize = 512;

fn parse_request(cur: &mut Cursor<'_>) -> Result<Request, ParseError> {
    let filename = cur.take_cstr("filename terminator")?;
    let mode = cur.take_cstr("mode")?;
    let filename =
        std::str::from_utf8(filename).map_err(|_| ParseError::NotUtf8 { field: "filename" })?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    if filename.len() > MAX_FILENAME {
        return Err(ParseError::FilenameTooLong);
    }
    let mode_str = std::str::from_utf8(mode).map_err(|_| ParseError::NotUtf8 { field: "mode" })?;
    let mode = if mode_str.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode_str.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode_str.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(ParseError::UnknownMode(mode_str.to_string()));
    };
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options: parse_options(cur)?,
    })
}

fn be16(buf: &[u8], missing: &'static str) -> Result<u16, ParseError> {
    match buf {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ParseError::Truncated { missing }),
    }
}

impl Packet {
    /// Decodes one datagram.
    ///
    /// Lenient where strictness helps nobody: trailing bytes after an ACK are
    /// ignored, and an ERROR message may lack its NUL and is decoded lossily.
    pub fn parse(buf: &[u8]) -> Result<Packet, ParseError> {
        let op = be16(buf, "opcode")?;
        let rest = &buf[2..];
        match op {
            OP_RRQ => Ok(Packet::Rrq(parse_request(&mut Cursor::new(rest))?)),
            OP_WRQ => Ok(Packet::Wrq(parse_request(&mut Cursor::new(rest))?)),
            OP_DATA => {
                let block = BlockNum(be16(rest, "block number")?);
                Ok(Packet::Data {
                    block,
                    payload: Bytes::copy_from_slice(&rest[2..]),
                })
            }
            OP_ACK => Ok(Packet::Ack(BlockNum(be16(rest, "block number")?))),
            OP_ERROR => {
                let code = ErrorCode::from(be16(rest, "error code")?);
                let msg = &rest[2..];
                let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(&msg[..end]).into_owned(),
                })
            }
            OP_OACK => Ok(Packet::Oack(parse_options(&mut Cursor::new(rest))?)),
            other => Err(ParseError::UnknownOpcode(other)),
        }
    }

    /// The opcode's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Rrq(_) => "RRQ",
            Packet::Wrq(_) => "WRQ",
            Packet::Data { .. } => "DATA",
            Packet::Ack(_) => "ACK",
            Packet::Error { .. } => "ERROR",
            Packet::Oack(_) => "OACK",
        }
    }

    /// Encodes the packet, refusing text fields that contain NUL.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        match self {
            Packet::Rrq(req) | Packet::Wrq(req) => {
                if req.filename.is_empty() {
                    return Err(EncodeError::EmptyFilename);
                }
                if req.filename.contains('\0') {
                    return Err(EncodeError::NulInString { field: "filename" });
                }
                let op = if matches!(self, Packet::Rrq(_)) {
                    OP_RRQ
                } else {
                    OP_WRQ
                };
                out.extend_from_slice(&op.to_be_bytes());
                out.extend_from_slice(req.filename.as_bytes());
                out.push(0);
                out.extend_from_slice(req.mode.as_str().as_bytes());
                out.push(0);
                req.options.encode_into(&mut out);
            }
            Packet::Data { block, payload } => {
                if payload.len() > usize::from(MAX_BLKSIZE) {
                    return Err(EncodeError::PayloadTooLarge(payload.len()));
                }
                out = encode_data(*block, payload);
            }
            Packet::Ack(block) => out = encode_ack(*block),
            Packet::Error { code, message } => {
                if message.contains('\0') {
                    return Err(EncodeError::NulInString { field: "message" });
                }
                out = encode_error(*code, message);
            }
            Packet::Oack(opts) => out = encode_oack(opts),
        }
        Ok(out)
    }
}

/// Encodes a DATA packet.
pub fn encode_data(block: BlockNum, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&data_header(block));
    out.extend_from_slice(payload);
    out
}

/// The four bytes that start a DATA packet, for a payload gathered from pieces.
pub(crate) fn data_header(block: BlockNum) -> [u8; 4] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.0.to_be_bytes();
    [a, b, c, d]
}

/// Encodes an ACK packet.
pub fn encode_ack(block: BlockNum) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    out.extend_from_slice(&OP_ACK.to_be_bytes());
    out.extend_from_slice(&block.0.to_be_bytes());
    out
}

/// Encodes an OACK packet.
pub fn encode_oack(opts: &Options) -> Vec<u8> {
    let mut out = OP_OACK.to_be_bytes().to_vec();
    opts.encode_into(&mut out);
    out
}

/// Encodes an ERROR packet. NUL bytes in `message` become spaces so the message
/// cannot end early; this never fails, which suits replies built from error text.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&u16::from(code).to_be_bytes());
    out.extend(message.bytes().map(|b| if b == 0 { b' ' } else { b }));
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> Packet {
        let p = Packet::parse(bytes).expect("parse");
        let again = p.encode().expect("encode");
        assert_eq!(Packet::parse(&again).expect("reparse"), p);
        p
    }

    #[test]
    fn rrq_with_options_roundtrips_case_insensitively() {
        let raw =
            b"\0\x01/undionly.kpxe\0OcTeT\0BLKSIZE\x001432\0tsize\x000\0WindowSize\x004\0timeout\x005\0";
        let p = roundtrip(raw);
        assert_eq!(
            p,
            Packet::Rrq(Request {
                filename: "/undionly.kpxe".into(),
                mode: Mode::Octet,
                options: Options {
                    blksize: Some(1432),
                    tsize: Some(0),
                    timeout: Some(5),
                    windowsize: Some(4),
                },
            })
        );
        // Canonical encoding: lowercase names in a fixed order.
        assert_eq!(
            p.encode().unwrap(),
            b"\0\x01/undionly.kpxe\0octet\0blksize\x001432\0tsize\x000\0timeout\x005\0windowsize\x004\0"
        );
    }

    #[test]
    fn unknown_options_and_bad_values_are_ignored() {
        let raw =
            b"\0\x01f\0octet\0multicast\0\0blksize\0abc\0tsize\0+5\0timeout\x00256\0windowsize\x000\0";
        let Packet::Rrq(req) = roundtrip(raw) else {
            panic!("not an RRQ")
        };
        assert!(req.options.is_empty(), "{:?}", req.options);
    }

    #[test]
    fn huge_option_values_are_clamped_or_ignored() {
        let raw = b"\0\x01f\0octet\0blksize\x0099999999999999999999999999\0windowsize\x00100000\0tsize\x0018446744073709551615\0";
        let Packet::Rrq(req) = roundtrip(raw) else {
            panic!("not an RRQ")
        };
        // Over 20 digits does not fit u64: ignored. 100000 fits: clamped.
        assert_eq!(req.options.blksize, None);
        assert_eq!(req.options.windowsize, Some(65535));
        assert_eq!(req.options.tsize, Some(u64::MAX));
        let Packet::Rrq(req) = roundtrip(b"\0\x01f\0octet\0blksize\x0070000\0blksize\x00512\0")
        else {
            panic!()
        };
        assert_eq!(req.options.blksize, Some(MAX_BLKSIZE));
        let Packet::Rrq(req) = roundtrip(b"\0\x01f\0octet\0blksize\x007\0") else {
            panic!()
        };
        assert_eq!(req.options.blksize, None);
    }

    #[test]
    fn nul_padding_after_request_is_tolerated() {
        let Packet::Rrq(req) = roundtrip(b"\0\x01pxelinux.0\0octet\0\0\0\0") else {
            panic!()
        };
        assert_eq!(req.filename, "pxelinux.0");
        assert!(req.options.is_empty());
    }

    #[test]
    fn other_packets_roundtrip() {
        assert_eq!(roundtrip(b"\0\x04\xff\xff"), Packet::Ack(BlockNum(65535)));
        assert_eq!(
            roundtrip(b"\0\x03\0\x07abc"),
            Packet::Data {
                block: BlockNum(7),
                payload: Bytes::from_static(b"abc")
            }
        );
        assert_eq!(
            roundtrip(b"\0\x03\0\x00"),
            Packet::Data {
                block: BlockNum(0),
                payload: Bytes::new()
            }
        );
        assert_eq!(
            roundtrip(b"\0\x05\0\x08user aborted\0"),
            Packet::Error {
                code: ErrorCode::OptionNegotiation,
                message: "user aborted".into()
            }
        );
        assert_eq!(
            roundtrip(b"\0\x05\x01\x00\0"),
            Packet::Error {
                code: ErrorCode::Unknown(256),
                message: String::new()
            }
        );
        assert_eq!(
            roundtrip(b"\0\x06blksize\x001468\0tsize\x001234\0"),
            Packet::Oack(Options {
                blksize: Some(1468),
                tsize: Some(1234),
                ..Options::default()
            })
        );
        let Packet::Wrq(req) = roundtrip(b"\0\x02up\0NETASCII\0") else {
            panic!()
        };
        assert_eq!(req.mode, Mode::Netascii);
    }

    #[test]
    fn error_without_nul_is_accepted() {
        assert_eq!(
            Packet::parse(b"\0\x05\0\x01gone").unwrap(),
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "gone".into()
            }
        );
    }

    #[test]
    fn truncated_inputs_are_reported_as_truncated() {
        let cases: &[&[u8]] = &[
            b"",
            b"\0",
            b"\0\x01",
            b"\0\x01file",
            b"\0\x01file\0octet",
            b"\0\x01file\0octet\0blksize",
            b"\0\x01file\0octet\0blksize\0",
            b"\0\x01file\0octet\0blksize\x00512",
            b"\0\x03\0",
            b"\0\x04",
            b"\0\x04\x01",
            b"\0\x05\0",
            b"\0\x06tsize\0",
        ];
        for c in cases {
            let e = Packet::parse(c).unwrap_err();
            assert!(e.is_truncated(), "{c:?} -> {e:?}");
        }
    }

    #[test]
    fn overlong_filenames_are_refused() {
        let mut ok = b"\0\x01".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_FILENAME));
        ok.extend_from_slice(b"\0octet\0");
        assert!(Packet::parse(&ok).is_ok());
        let mut long = b"\0\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_FILENAME + 1));
        long.extend_from_slice(b"\0octet\0");
        assert_eq!(
            Packet::parse(&long).unwrap_err(),
            ParseError::FilenameTooLong
        );
    }

    #[test]
    fn invalid_inputs_are_reported_as_invalid() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"\0\x00", ParseError::UnknownOpcode(0)),
            (b"\0\x07abc", ParseError::UnknownOpcode(7)),
            (b"\xff\xff", ParseError::UnknownOpcode(65535)),
            (b"\0\x01\0octet\0", ParseError::EmptyFilename),
            (
                b"\0\x01f\0binary\0",
                ParseError::UnknownMode("binary".into()),
            ),
            (
                b"\0\x01f\xff\0octet\0",
                ParseError::NotUtf8 { field: "filename" },
            ),
        ];
        for (c, want) in cases {
            let e = Packet::parse(c).unwrap_err();
            assert!(!e.is_truncated());
            assert_eq!(&e, want);
        }
    }

    #[test]
    fn parser_survives_every_prefix_and_byte_flip() {
        let raw = b"\0\x01/ipxe.efi\0octet\0blksize\x001468\0tsize\x000\0windowsize\x008\0";
        for n in 0..=raw.len() {
            let _ = Packet::parse(&raw[..n]);
        }
        for i in 0..raw.len() {
            for v in [0u8, 1, b'9', 0x80, 0xff] {
                let mut m = raw.to_vec();
                m[i] = v;
                if let Ok(p) = Packet::parse(&m) {
                    // Whatever parses must encode and parse back to itself.
                    if let Ok(enc) = p.encode() {
                        assert_eq!(Packet::parse(&enc).unwrap(), p);
                    }
                }
            }
        }
    }

    #[test]
    fn encode_refuses_nul_in_strings() {
        let req = Request {
            filename: "a\0b".into(),
            mode: Mode::Octet,
            options: Options::default(),
        };
        assert_eq!(
            Packet::Rrq(req).encode(),
            Err(EncodeError::NulInString { field: "filename" })
        );
        assert_eq!(
            encode_error(ErrorCode::NotDefined, "x\0y"),
            b"\0\x05\0\0x y\0".to_vec()
        );
    }

    /// Parses a request the way `Packet::parse` does and returns how many bytes the
    /// parser examined.
    fn request_work(raw: &[u8]) -> (Result<Request, ParseError>, usize) {
        assert_eq!(&raw[..2], b"\0\x01");
        let mut cur = Cursor::new(&raw[2..]);
        let r = parse_request(&mut cur);
        (r, cur.examined)
    }

    /// The request that cost a second of CPU when options were parsed in quadratic
    /// time: a name, a mode, 65,000 NULs, then `x\0\0`.
    fn nul_flood() -> Vec<u8> {
        let mut raw = b"\0\x01a.txt\0octet\0".to_vec();
        raw.extend(std::iter::repeat_n(0u8, 65_000));
        raw.extend_from_slice(b"x\0\0");
        raw
    }

    #[test]
    fn a_flood_of_empty_options_is_refused_in_one_pass() {
        let raw = nul_flood();
        assert_eq!(Packet::parse(&raw), Err(ParseError::TooManyOptions));
        let (r, work) = request_work(&raw);
        assert_eq!(r, Err(ParseError::TooManyOptions));
        // Refused after looking at the first pairs and the padding scan: about one
        // look per byte, not one per byte per option.
        assert!(
            work <= raw.len() + 2 * MAX_OPTIONS,
            "{work} for {}",
            raw.len()
        );
    }

    #[test]
    fn option_parsing_examines_each_byte_a_bounded_number_of_times() {
        // The largest datagram, filled in several shapes: real options with NUL
        // padding, one huge unknown option, and options up to the cap.
        let mut padded = b"\0\x01f\0octet\0blksize\x001468\0tsize\x000\0".to_vec();
        padded.resize(65_507, 0);
        let mut huge = b"\0\x01f\0octet\0".to_vec();
        huge.extend(std::iter::repeat_n(b'v', 65_000));
        huge.extend_from_slice(b"\0x\0");
        let mut many = b"\0\x01f\0octet\0".to_vec();
        for i in 0..MAX_OPTIONS {
            many.extend_from_slice(format!("opt{i}\0{}\0", "9".repeat(1000)).as_bytes());
        }
        for raw in [&padded, &huge, &many] {
            let (r, work) = request_work(raw);
            assert!(r.is_ok(), "{r:?}");
            assert!(work <= 2 * raw.len(), "{work} for {}", raw.len());
        }
        let (r, _) = request_work(&padded);
        assert_eq!(r.unwrap().options.blksize, Some(1468));
        // One pair more than the cap is refused.
        many.extend_from_slice(b"one\0more\0");
        assert_eq!(request_work(&many).0, Err(ParseError::TooManyOptions));
    }
}
