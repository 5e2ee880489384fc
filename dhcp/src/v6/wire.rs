//! A checked view of received DHCPv6 datagrams (RFC 8415): the client message, and
//! the relay agents it came through.
//!
//! Every length is checked before it is read, so no input can make the parser
//! panic; a short field is [`WireError::Truncated`], a field that cannot be what it
//! claims is [`WireError::Invalid`]. Replies are built with `dhcproto`'s v6 types
//! (see `decide`); reading stays here, where the bytes are under our own checks.

use std::net::Ipv6Addr;

/// DHCPv6 message types (RFC 8415 section 7.3).
pub mod msg {
    /// SOLICIT.
    pub const SOLICIT: u8 = 1;
    /// ADVERTISE.
    pub const ADVERTISE: u8 = 2;
    /// REQUEST.
    pub const REQUEST: u8 = 3;
    /// CONFIRM.
    pub const CONFIRM: u8 = 4;
    /// RENEW.
    pub const RENEW: u8 = 5;
    /// REBIND.
    pub const REBIND: u8 = 6;
    /// REPLY.
    pub const REPLY: u8 = 7;
    /// RELEASE.
    pub const RELEASE: u8 = 8;
    /// DECLINE.
    pub const DECLINE: u8 = 9;
    /// INFORMATION-REQUEST.
    pub const INFORMATION_REQUEST: u8 = 11;
    /// RELAY-FORW.
    pub const RELAY_FORW: u8 = 12;
    /// RELAY-REPL.
    pub const RELAY_REPL: u8 = 13;
}

/// DHCPv6 option codes ironpxe reads or writes.
pub mod opt {
    /// Client identifier (a DUID).
    pub const CLIENT_ID: u16 = 1;
    /// Server identifier (a DUID).
    pub const SERVER_ID: u16 = 2;
    /// Identity association for non-temporary addresses.
    pub const IA_NA: u16 = 3;
    /// An address inside an IA_NA.
    pub const IAADDR: u16 = 5;
    /// Option request.
    pub const ORO: u16 = 6;
    /// Server preference.
    pub const PREFERENCE: u16 = 7;
    /// A relayed message.
    pub const RELAY_MSG: u16 = 9;
    /// Status code.
    pub const STATUS_CODE: u16 = 13;
    /// User class (iPXE sends `iPXE`).
    pub const USER_CLASS: u16 = 15;
    /// Vendor class (`PXEClient...`, `HTTPClient...` under enterprise 343).
    pub const VENDOR_CLASS: u16 = 16;
    /// Interface id of a relay agent, echoed in RELAY-REPL.
    pub const INTERFACE_ID: u16 = 18;
    /// Boot file URL (RFC 5970).
    pub const BOOTFILE_URL: u16 = 59;
    /// Client system architecture (RFC 5970).
    pub const CLIENT_ARCH: u16 = 61;
    /// Client link-layer address, added by a relay agent (RFC 6939).
    pub const CLIENT_LINKLAYER_ADDR: u16 = 79;
}

/// Why a datagram is not a DHCPv6 message ironpxe can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the field being read.
    #[error("truncated {what}")]
    Truncated {
        /// The field.
        what: &'static str,
    },
    /// A field whose content cannot be what it says.
    #[error("invalid {what}")]
    Invalid {
        /// The field.
        what: &'static str,
    },
    /// Relays nested deeper than RFC 8415's hop limit.
    #[error("more than {0} nested relay messages")]
    TooManyRelays(usize),
}

/// One option: its code and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOption<'a> {
    /// Option code.
    pub code: u16,
    /// Option data (without code and length).
    pub data: &'a [u8],
}

/// Options of a message or of an encapsulating option, checked as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    data: &'a [u8],
}

impl<'a> Options<'a> {
    /// Checks that `data` is a sequence of complete options.
    pub fn new_checked(data: &'a [u8]) -> Result<Self, WireError> {
        let mut rest = data;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(WireError::Truncated {
                    what: "option header",
                });
            }
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            if rest.len() < 4 + len {
                return Err(WireError::Truncated { what: "option" });
            }
            rest = &rest[4 + len..];
        }
        Ok(Options { data })
    }

    /// Every option, in order.
    pub fn iter(&self) -> impl Iterator<Item = RawOption<'a>> + 'a {
        let mut rest = self.data;
        std::iter::from_fn(move || {
            // `new_checked` proved each header and body complete.
            let (head, tail) = rest.split_at_checked(4)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let (data, after) = tail.split_at_checked(len)?;
            rest = after;
            Some(RawOption { code, data })
        })
    }

    /// The first option with `code`.
    pub fn get(&self, code: u16) -> Option<&'a [u8]> {
        self.iter().find(|o| o.code == code).map(|o| o.data)
    }
}

/// A client message (anything but RELAY-FORW/RELAY-REPL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientMessage<'a> {
    /// Message type.
    pub msg_type: u8,
    /// Transaction id.
    pub xid: [u8; 3],
    /// Its options.
    pub options: Options<'a>,
}

/// One relay agent a message passed through (RELAY-FORW), outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHop {
    /// Hop count field.
    pub hop_count: u8,
    /// Link address field.
    pub link_addr: Ipv6Addr,
    /// Peer address field: the client (innermost hop) or the next relay.
    pub peer_addr: Ipv6Addr,
    /// The interface-id option, echoed back in the RELAY-REPL.
    pub interface_id: Option<Vec<u8>>,
    /// The client link-layer address option (RFC 6939): hardware type and address.
    pub client_linklayer: Option<(u16, Vec<u8>)>,
}

/// A received datagram: the client message and the relays around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The client's message.
    pub message: ClientMessage<'a>,
    /// The relays it came through, outermost (the sender of the datagram) first.
    pub relays: Vec<RelayHop>,
}

/// RFC 8415's HOP_COUNT_LIMIT.
pub const MAX_RELAYS: usize = 8;

impl<'a> Datagram<'a> {
    /// Reads a datagram received on a DHCPv6 server port.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut relays = Vec::new();
        let mut cur = bytes;
        loop {
            let (&t, _) = cur.split_first().ok_or(WireError::Truncated {
                what: "message type",
            })?;
            match t {
                msg::RELAY_FORW => {
                    if relays.len() == MAX_RELAYS {
                        return Err(WireError::TooManyRelays(MAX_RELAYS));
                    }
                    if cur.len() < 34 {
                        return Err(WireError::Truncated {
                            what: "relay header",
                        });
                    }
                    let addr = |at: usize| {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(&cur[at..at + 16]);
                        Ipv6Addr::from(o)
                    };
                    let options = Options::new_checked(&cur[34..])?;
                    let client_linklayer = match options.get(opt::CLIENT_LINKLAYER_ADDR) {
                        Some(d) if d.len() >= 2 => {
                            Some((u16::from_be_bytes([d[0], d[1]]), d[2..].to_vec()))
                        }
                        Some(_) => {
                            return Err(WireError::Invalid {
                                what: "client link-layer address option",
                            })
                        }
                        None => None,
                    };
                    relays.push(RelayHop {
                        hop_count: cur[1],
                        link_addr: addr(2),
                        peer_addr: addr(18),
                        interface_id: options.get(opt::INTERFACE_ID).map(<[u8]>::to_vec),
                        client_linklayer,
                    });
                    cur = options.get(opt::RELAY_MSG).ok_or(WireError::Invalid {
                        what: "relay message without a relayed message",
                    })?;
                }
                msg::RELAY_REPL => {
                    return Err(WireError::Invalid {
                        what: "RELAY-REPL sent to a server",
                    })
                }
                _ => {
                    if cur.len() < 4 {
                        return Err(WireError::Truncated {
                            what: "message header",
                        });
                    }
                    return Ok(Datagram {
                        message: ClientMessage {
                            msg_type: t,
                            xid: [cur[1], cur[2], cur[3]],
                            options: Options::new_checked(&cur[4..])?,
                        },
                        relays,
                    });
                }
            }
        }
    }
}

/// An IA_NA option's fields and the addresses in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IaNa {
    /// The IAID.
    pub iaid: u32,
    /// The addresses the client named (IAADDR options).
    pub addrs: Vec<Ipv6Addr>,
}

impl IaNa {
    /// Reads an IA_NA option's data.
    pub fn parse(data: &[u8]) -> Result<Self, WireError> {
        if data.len() < 12 {
            return Err(WireError::Truncated { what: "IA_NA" });
        }
        let iaid = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let inner = Options::new_checked(&data[12..])?;
        let mut addrs = Vec::new();
        for o in inner.iter().filter(|o| o.code == opt::IAADDR) {
            if o.data.len() < 24 {
                return Err(WireError::Truncated { what: "IAADDR" });
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&o.data[..16]);
            addrs.push(Ipv6Addr::from(a));
        }
        Ok(IaNa { iaid, addrs })
    }
}

/// Reads a vendor class option (16): the enterprise number and its strings.
pub fn vendor_class(data: &[u8]) -> Result<(u32, Vec<&[u8]>), WireError> {
    if data.len() < 4 {
        return Err(WireError::Truncated {
            what: "vendor class",
        });
    }
    let ent = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    Ok((ent, length_prefixed(&data[4..])?))
}

/// Reads the length-prefixed strings of a user or vendor class.
pub fn length_prefixed(mut data: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 2 {
            return Err(WireError::Truncated {
                what: "class string length",
            });
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let body = data.get(2..2 + len).ok_or(WireError::Truncated {
            what: "class string",
        })?;
        out.push(body);
        data = &data[2 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncations_are_errors_not_panics() {
        for bad in [
            &[][..],
            &[1, 0, 0][..],
            &[1, 0, 0, 0, 0, 1, 0, 5, 1][..],
            &[1, 0, 0, 0, 0][..],
            &[12, 0][..],
        ] {
            assert!(Datagram::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IaNa::parse(&[0; 11]).is_err());
        assert!(IaNa::parse(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 9]).is_err());
        assert!(vendor_class(&[0, 0, 1]).is_err());
        assert!(length_prefixed(&[0, 5, 1]).is_err());
    }

    #[test]
    fn relays_unwrap_to_the_client_message() {
        let inner = [1u8, 0xaa, 0xbb, 0xcc, 0, 8, 0, 2, 0, 0];
        let mut relay = vec![12u8, 0];
        relay.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        relay.extend_from_slice(
            &"fe80::5054:ff:fe12:3456"
                .parse::<Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        relay.extend_from_slice(&[0, 18, 0, 2, b'e', b'0']);
        relay.extend_from_slice(&[0, 79, 0, 8, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        relay.extend_from_slice(&[0, 9, 0, inner.len() as u8]);
        relay.extend_from_slice(&inner);
        let d = Datagram::parse(&relay).unwrap();
        assert_eq!(d.message.msg_type, msg::SOLICIT);
        assert_eq!(d.message.xid, [0xaa, 0xbb, 0xcc]);
        assert_eq!(d.relays.len(), 1);
        assert_eq!(d.relays[0].interface_id.as_deref(), Some(&b"e0"[..]));
        assert_eq!(
            d.relays[0].client_linklayer,
            Some((1, vec![0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        // Nine relays deep is refused.
        let mut m = inner.to_vec();
        for _ in 0..9 {
            let mut r = vec![12u8, 0];
            r.extend_from_slice(&[0; 32]);
            r.extend_from_slice(&[0, 9]);
            r.extend_from_slice(&(m.len() as u16).to_be_bytes());
            r.extend_from_slice(&m);
            m = r;
        }
        assert_eq!(
            Datagram::parse(&m),
            Err(WireError::TooManyRelays(MAX_RELAYS))
        );
    }
}
