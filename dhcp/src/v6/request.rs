//! Reading a DHCPv6 message as a boot request: which machine, which firmware, what
//! it asks for.
//!
//! Only messages with vendor class enterprise 343 `PXEClient...`/`HTTPClient...`
//! (RFC 5970's boot clients) or user class `iPXE` are boot requests; every other
//! DHCPv6 client is [`NotBoot6::NotBootClient`] and never answered.
//!
//! # Which MAC
//!
//! The per-machine configuration is keyed by MAC, and DHCPv6 carries none in its
//! header. In order:
//!
//! 1. the client DUID, when it is DUID-LLT or DUID-LL over Ethernet (EDK2 without an
//!    SMBIOS UUID);
//! 2. the client link-layer address option (79) a relay agent added (RFC 6939);
//! 3. the client's link-local address, when it is formed from the MAC by EUI-64
//!    (iPXE and EDK2 form theirs that way): the datagram's source, or the innermost
//!    relay's peer address;
//! 4. what the same DUID's earlier message told (see `ClientMemory` in `decide`):
//!    EDK2's REQUEST to port 4011 comes from its new global address.
//!
//! iPXE always sends DUID-UUID, and EDK2 does when the machine has an SMBIOS UUID
//! (QEMU with `-uuid`). With DUID-UUID, no relay option 79, and a source address
//! that is not EUI-64 (privacy or stable-private addresses), no MAC can be known:
//! the message is [`NotBoot6::NoMac`] and not answered.

use std::net::Ipv6Addr;

use ironpxe_core::net6::mac_from_eui64;
use ironpxe_core::{ClientArch, MacAddr};

use super::wire::{self, msg, opt, Datagram, IaNa, RelayHop, WireError};
use crate::request::VendorClass;

/// IANA's enterprise number of the PXE vendor class (Intel).
pub const PXE_ENTERPRISE: u32 = 343;

/// Where the MAC of a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacSource {
    /// The client's DUID-LLT or DUID-LL.
    Duid,
    /// The relay agent's client link-layer address option.
    Relay,
    /// The client's EUI-64 link-local address.
    Eui64,
    /// An earlier message with the same DUID.
    Remembered,
}

impl MacSource {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MacSource::Duid => "duid",
            MacSource::Relay => "relay",
            MacSource::Eui64 => "eui64",
            MacSource::Remembered => "remembered",
        }
    }
}

/// The facts of a DHCPv6 boot request that decisions are made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request6 {
    /// Message type (`wire::msg`).
    pub msg_type: u8,
    /// Transaction id.
    pub xid: [u8; 3],
    /// The client DUID, echoed in replies and keying its lease.
    pub client_id: Vec<u8>,
    /// The server DUID the client addressed, if any.
    pub server_id: Option<Vec<u8>>,
    /// The machine.
    pub mac: MacAddr,
    /// How the MAC was found.
    pub mac_from: MacSource,
    /// Option 61, or the architecture in the vendor class string.
    pub arch: ClientArch,
    /// The vendor class (PXEClient for iPXE without one).
    pub class: VendorClass,
    /// User class `iPXE`.
    pub ipxe: bool,
    /// The client's IA_NA, if it asked for an address.
    pub ia_na: Option<IaNa>,
    /// The relays it came through, outermost first.
    pub relays: Vec<RelayHop>,
    /// The client's own address: the datagram source, or the innermost relay's
    /// peer address.
    pub client_addr: Ipv6Addr,
}

/// Why a DHCPv6 message is not a boot request ironpxe answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotBoot6 {
    /// Not a DHCPv6 message ironpxe can read.
    #[error("malformed DHCPv6 message: {0}")]
    Wire(#[from] WireError),
    /// A message type a server never answers (ADVERTISE, REPLY, ...).
    #[error("DHCPv6 message type {0} is not answered")]
    MessageType(u8),
    /// No client identifier.
    #[error("no client identifier")]
    NoClientId,
    /// An ordinary DHCPv6 client: never answered.
    #[error(
        "not a PXE or HTTP Boot client (no vendor class PXEClient/HTTPClient, no user class iPXE)"
    )]
    NotBootClient,
    /// No way to tell the client's MAC.
    #[error(
        "cannot tell the MAC of this client: its DUID is type {duid_type} (not DUID-LLT/LL), \
         no relay named its link-layer address, and {addr} is not an EUI-64 address"
    )]
    NoMac {
        /// The DUID type.
        duid_type: u16,
        /// The client's address.
        addr: Ipv6Addr,
    },
}

/// The parts of a boot request read before its MAC is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed6 {
    /// Message type.
    pub msg_type: u8,
    /// Transaction id.
    pub xid: [u8; 3],
    /// Client DUID.
    pub client_id: Vec<u8>,
    /// Server DUID named by the client.
    pub server_id: Option<Vec<u8>>,
    /// MAC from the DUID or a relay, if either gives one.
    pub mac: Option<(MacAddr, MacSource)>,
    /// Architecture.
    pub arch: ClientArch,
    /// Vendor class.
    pub class: VendorClass,
    /// User class iPXE.
    pub ipxe: bool,
    /// IA_NA.
    pub ia_na: Option<IaNa>,
    /// Relays, outermost first.
    pub relays: Vec<RelayHop>,
    /// The client's address.
    pub client_addr: Ipv6Addr,
}

impl Parsed6 {
    /// Reads `bytes`, received from `src`.
    pub fn parse(bytes: &[u8], src: Ipv6Addr) -> Result<Self, NotBoot6> {
        let d = Datagram::parse(bytes)?;
        let m = d.message;
        if !matches!(
            m.msg_type,
            msg::SOLICIT
                | msg::REQUEST
                | msg::CONFIRM
                | msg::RENEW
                | msg::REBIND
                | msg::RELEASE
                | msg::DECLINE
                | msg::INFORMATION_REQUEST
        ) {
            return Err(NotBoot6::MessageType(m.msg_type));
        }
        let o = m.options;
        let client_id = o
            .get(opt::CLIENT_ID)
            .filter(|d| !d.is_empty())
            .ok_or(NotBoot6::NoClientId)?;
        let mut class = None;
        let mut class_arch = None;
        if let Some(data) = o.get(opt::VENDOR_CLASS) {
            let (ent, strings) = wire::vendor_class(data)?;
            if ent == PXE_ENTERPRISE {
                for s in strings {
                    if s.starts_with(b"PXEClient") {
                        class = Some(VendorClass::PxeClient);
                    } else if s.starts_with(b"HTTPClient") {
                        class = Some(VendorClass::HttpClient);
                    } else {
                        continue;
                    }
                    class_arch = arch_from_class(s);
                    break;
                }
            }
        }
        let ipxe = match o.get(opt::USER_CLASS) {
            Some(data) => wire::length_prefixed(data)?.iter().any(|s| *s == b"iPXE"),
            None => false,
        };
        let class = match (class, ipxe) {
            (Some(c), _) => c,
            (None, true) => VendorClass::PxeClient,
            (None, false) => return Err(NotBoot6::NotBootClient),
        };
        let arch = match o.get(opt::CLIENT_ARCH) {
            Some(a) if a.len() >= 2 => ClientArch::from_code(u16::from_be_bytes([a[0], a[1]])),
            Some(_) => {
                return Err(WireError::Invalid {
                    what: "client architecture option",
                }
                .into())
            }
            None => class_arch.unwrap_or(ClientArch::EfiX64),
        };
        let ia_na = o.get(opt::IA_NA).map(IaNa::parse).transpose()?;
        let server_id = o.get(opt::SERVER_ID).map(<[u8]>::to_vec);
        let client_addr = d.relays.last().map_or(src, |r| r.peer_addr);
        // Only boot clients get this far: allocate from here on.
        let client_id = client_id.to_vec();
        let mac = mac_from_duid(&client_id)
            .map(|m| (m, MacSource::Duid))
            .or_else(|| {
                let (htype, addr) = d.relays.last()?.client_linklayer.as_ref()?;
                (*htype == 1 && addr.len() == 6).then(|| {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(addr);
                    (MacAddr(b), MacSource::Relay)
                })
            })
            .or_else(|| {
                let ll = client_addr.segments()[0] & 0xffc0 == 0xfe80;
                ll.then(|| mac_from_eui64(client_addr))
                    .flatten()
                    .map(|m| (m, MacSource::Eui64))
            });
        Ok(Parsed6 {
            msg_type: m.msg_type,
            xid: m.xid,
            client_id,
            server_id,
            mac,
            arch,
            class,
            ipxe,
            ia_na,
            relays: d.relays,
            client_addr,
        })
    }

    /// The request, with `remembered` as the MAC when the message itself names none.
    pub fn into_request(self, remembered: Option<MacAddr>) -> Result<Request6, NotBoot6> {
        let (mac, mac_from) = match (self.mac, remembered) {
            (Some(m), _) => m,
            (None, Some(m)) => (m, MacSource::Remembered),
            (None, None) => {
                return Err(NotBoot6::NoMac {
                    duid_type: duid_type(&self.client_id),
                    addr: self.client_addr,
                })
            }
        };
        Ok(Request6 {
            msg_type: self.msg_type,
            xid: self.xid,
            client_id: self.client_id,
            server_id: self.server_id,
            mac,
            mac_from,
            arch: self.arch,
            class: self.class,
            ipxe: self.ipxe,
            ia_na: self.ia_na,
            relays: self.relays,
            client_addr: self.client_addr,
        })
    }
}

/// The DUID's type, 0 if it is too short to have one.
pub fn duid_type(duid: &[u8]) -> u16 {
    match duid {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// The MAC in a DUID-LLT (type 1) or DUID-LL (type 3) of hardware type 1.
pub fn mac_from_duid(duid: &[u8]) -> Option<MacAddr> {
    let (htype, addr) = match duid_type(duid) {
        1 => (duid.get(2..4)?, duid.get(8..)?),
        3 => (duid.get(2..4)?, duid.get(4..)?),
        _ => return None,
    };
    if htype != [0, 1] || addr.len() != 6 {
        return None;
    }
    let mut b = [0u8; 6];
    b.copy_from_slice(addr);
    Some(MacAddr(b))
}

/// `PXEClient:Arch:00007:...` carries the architecture too.
fn arch_from_class(class: &[u8]) -> Option<ClientArch> {
    let s = std::str::from_utf8(class).ok()?;
    let mut parts = s.split(':');
    parts.next()?;
    if parts.next()? != "Arch" {
        return None;
    }
    parts.next()?.parse::<u16>().ok().map(ClientArch::from_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_from_duids() {
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let llt = [0, 1, 0, 1, 1, 2, 3, 4, 0x52, 0x54, 0, 1, 2, 3];
        let ll = [0, 3, 0, 1, 0x52, 0x54, 0, 1, 2, 3];
        assert_eq!(mac_from_duid(&llt), Some(mac));
        assert_eq!(mac_from_duid(&ll), Some(mac));
        assert_eq!(mac_from_duid(&[0, 4, 1, 2, 3]), None);
        assert_eq!(mac_from_duid(&[0, 3, 0, 6, 1, 2, 3, 4, 5, 6]), None);
        assert_eq!(mac_from_duid(&[0, 1, 0, 1]), None);
        assert_eq!(mac_from_duid(&[]), None);
        assert_eq!(duid_type(&[0]), 0);
    }
}
