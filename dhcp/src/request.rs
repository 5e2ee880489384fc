//! Reading a DHCP packet as a PXE boot request.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use ironpxe_core::{ClientArch, MacAddr};

/// The vendor class a boot client announces in option 60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorClass {
    /// `PXEClient...`: firmware PXE or iPXE.
    PxeClient,
    /// `HTTPClient...`: UEFI HTTP Boot.
    HttpClient,
}

impl VendorClass {
    /// The class string echoed in replies.
    pub fn as_str(self) -> &'static str {
        match self {
            VendorClass::PxeClient => "PXEClient",
            VendorClass::HttpClient => "HTTPClient",
        }
    }
}

/// A client machine identifier (option 97, RFC 4578 section 2.3): type 0 followed by
/// a 16-byte GUID. PXE clients send it and expect it back in the offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientGuid([u8; 16]);

impl ClientGuid {
    /// The option's length on the wire: the type octet and the GUID.
    pub const OPTION_LEN: usize = 17;

    /// Reads the option's data; `None` unless it is exactly type 0 and 16 bytes.
    pub fn from_option(data: &[u8]) -> Option<ClientGuid> {
        match data {
            [0, guid @ ..] => guid.try_into().ok().map(ClientGuid),
            _ => None,
        }
    }

    /// The option's data, as echoed in a reply.
    pub fn to_option(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::OPTION_LEN);
        v.push(0);
        v.extend_from_slice(&self.0);
        v
    }

    /// The 16 GUID bytes, in the order the client sent them.
    pub fn octets(self) -> [u8; 16] {
        self.0
    }
}

/// What iPXE says about itself (options 77 and 175).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpxeInfo {
    /// The client is iPXE (user class "iPXE" or an option 175 block).
    pub is_ipxe: bool,
    /// It can fetch over HTTP (option 175, encapsulated code 19).
    pub http: bool,
}

/// The facts of a boot request that decisions are made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PxeRequest {
    /// DHCP message type (DISCOVER, REQUEST, INFORM).
    pub msg_type: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// Client hardware address.
    pub mac: MacAddr,
    /// Firmware architecture (option 93); BIOS when absent, as PXE 2.1 clients that
    /// predate RFC 4578 are x86 BIOS.
    pub arch: ClientArch,
    /// Option 60 class.
    pub class: VendorClass,
    /// iPXE self-description.
    pub ipxe: IpxeInfo,
    /// Option 97 (client machine identifier), echoed back when it is well formed.
    pub guid: Option<ClientGuid>,
    /// Relay agent address (0 when not relayed).
    pub giaddr: Ipv4Addr,
}

/// Why a packet is not a PXE boot request ironpxe should consider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotPxe {
    /// A server reply, not a client request.
    #[error("not a BOOTREQUEST")]
    NotRequest,
    /// No option 53.
    #[error("no DHCP message type")]
    NoMessageType,
    /// A message type ProxyDHCP never answers (RELEASE, DECLINE, ...).
    #[error("message type {0:?} is not answered")]
    MessageType(MessageType),
    /// Not an Ethernet hardware address.
    #[error("hardware type {htype} / length {hlen} is not Ethernet")]
    NotEthernet {
        /// htype field.
        htype: u8,
        /// hlen field.
        hlen: u8,
    },
    /// No option 60, or one that is neither PXEClient nor HTTPClient.
    #[error("vendor class {0:?} is not PXEClient/HTTPClient")]
    NotPxeClass(String),
}

impl PxeRequest {
    /// Decodes a received datagram.
    ///
    /// `dhcproto` has debug assertions on some option lengths, so in debug builds a
    /// crafted option could panic inside the decoder; the panic is contained here and
    /// reported as a malformed packet, so no input can take the server down.
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        use dhcproto::Decodable;
        match std::panic::catch_unwind(|| Message::decode(&mut dhcproto::Decoder::new(bytes))) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("malformed option".to_string()),
        }
    }

    /// Extracts the boot-relevant facts of `msg`, or says why it is not a PXE request.
    pub fn parse(msg: &Message) -> Result<Self, NotPxe> {
        if msg.opcode() != dhcproto::v4::Opcode::BootRequest {
            return Err(NotPxe::NotRequest);
        }
        let msg_type = msg.opts().msg_type().ok_or(NotPxe::NoMessageType)?;
        if !matches!(
            msg_type,
            MessageType::Discover | MessageType::Request | MessageType::Inform
        ) {
            return Err(NotPxe::MessageType(msg_type));
        }
        let htype: u8 = msg.htype().into();
        let hlen = msg.hlen();
        // `Message::chaddr()` slices by the untrusted hlen; only call it once hlen is
        // known to fit.
        let mac = (htype == 1 && hlen == 6)
            .then(|| MacAddr::from_chaddr(htype, hlen, msg.chaddr()))
            .flatten()
            .ok_or(NotPxe::NotEthernet { htype, hlen })?;
        let class_bytes = match msg.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(b)) => b.as_slice(),
            _ => &[][..],
        };
        let class = if class_bytes.starts_with(b"PXEClient") {
            VendorClass::PxeClient
        } else if class_bytes.starts_with(b"HTTPClient") {
            VendorClass::HttpClient
        } else {
            return Err(NotPxe::NotPxeClass(
                String::from_utf8_lossy(class_bytes).into_owned(),
            ));
        };
        let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => ClientArch::from_code(u16::from(*a)),
            _ => arch_from_class(class_bytes).unwrap_or(ClientArch::Bios),
        };
        // Anything but type 0 with 16 bytes is not echoed: a reply must not carry
        // whatever length a client chose to send.
        let guid = match msg.opts().get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(g)) => ClientGuid::from_option(g),
            _ => None,
        };
        Ok(PxeRequest {
            msg_type,
            xid: msg.xid(),
            mac,
            arch,
            class,
            ipxe: ipxe_info(msg),
            guid,
            giaddr: msg.giaddr(),
        })
    }
}

/// `PXEClient:Arch:00007:...` carries the architecture too; used when option 93 is
/// missing.
fn arch_from_class(class: &[u8]) -> Option<ClientArch> {
    let s = std::str::from_utf8(class).ok()?;
    let mut parts = s.split(':');
    parts.next()?;
    if parts.next()? != "Arch" {
        return None;
    }
    parts.next()?.parse::<u16>().ok().map(ClientArch::from_code)
}

fn ipxe_info(msg: &Message) -> IpxeInfo {
    let user_class_ipxe = match msg.opts().get(OptionCode::UserClass) {
        // RFC 3004 user classes are length-prefixed; iPXE sends the bare string "iPXE".
        Some(DhcpOption::UserClass(uc)) => {
            uc.as_slice() == b"iPXE" || uc.windows(4).any(|w| w == b"iPXE")
        }
        _ => false,
    };
    let features = match msg.opts().get(OptionCode::Unknown(175)) {
        Some(DhcpOption::Unknown(o)) => Some(o.data().to_vec()),
        _ => None,
    };
    let http = features
        .as_deref()
        .map(|f| {
            encapsulated(f).any(|(code, val)| code == 19 && val.first().is_some_and(|v| *v != 0))
        })
        .unwrap_or(false);
    IpxeInfo {
        is_ipxe: user_class_ipxe || features.is_some(),
        http,
    }
}

/// Iterates over an encapsulated TLV block (options 43, 175), stopping at the end
/// marker or at the first truncated entry.
pub(crate) fn encapsulated(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || loop {
        let (&code, tail) = rest.split_first()?;
        match code {
            0 => rest = tail,
            255 => return None,
            _ => {
                let (&len, tail) = tail.split_first()?;
                if tail.len() < len as usize {
                    rest = &[];
                    return None;
                }
                let (val, after) = tail.split_at(len as usize);
                rest = after;
                return Some((code, val));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulated_stops_on_truncation() {
        let v: Vec<_> = encapsulated(&[19, 1, 1, 0, 24, 1, 1, 255, 9, 9]).collect();
        assert_eq!(v, vec![(19, &[1u8][..]), (24, &[1u8][..])]);
        let v: Vec<_> = encapsulated(&[19, 5, 1]).collect();
        assert!(v.is_empty());
        let v: Vec<_> = encapsulated(&[19]).collect();
        assert!(v.is_empty());
    }

    #[test]
    fn only_a_type_0_guid_of_16_bytes_is_a_client_guid() {
        let good = [[0u8].as_slice(), &[0xab; 16]].concat();
        let g = ClientGuid::from_option(&good).unwrap();
        assert_eq!(g.octets(), [0xab; 16]);
        assert_eq!(g.to_option(), good);
        for bad in [
            &[][..],
            &[0][..],
            &good[..16],
            &[good.as_slice(), &[0]].concat()[..],
            &[[1u8].as_slice(), &[0xab; 16]].concat()[..],
            &[0u8; 255][..],
        ] {
            assert_eq!(ClientGuid::from_option(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn arch_from_class_string() {
        assert_eq!(
            arch_from_class(b"PXEClient:Arch:00007:UNDI:003016"),
            Some(ClientArch::EfiX64)
        );
        assert_eq!(arch_from_class(b"PXEClient"), None);
        assert_eq!(arch_from_class(b"PXEClient:Arch:xx"), None);
    }
}
