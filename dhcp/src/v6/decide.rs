//! The DHCPv6 decision core: one boot request in, at most one reply out.
//!
//! Pure and deterministic: the time, the leases and the memory of client MACs are
//! passed in, so every branch is a unit test without sockets.
//!
//! | received                          | port | answer                                              |
//! |-----------------------------------|------|-----------------------------------------------------|
//! | SOLICIT                           | 547  | ADVERTISE: boot URL (59), vendor class (16); with an address (IA_NA) and preference 255 where the stateful mode applies |
//! | REQUEST to our server id          | 547  | REPLY: the address and the boot URL (stateful)      |
//! | RENEW, REBIND, RELEASE, DECLINE   | 547  | REPLY for our leases (stateful)                     |
//! | INFORMATION-REQUEST               | 547  | REPLY: boot URL (a stateless iPXE)                  |
//! | REQUEST                           | 4011 | REPLY: boot URL, sent again after 0.3 s and 1 s     |
//!
//! Without the stateful mode ironpxe answers the ProxyDHCP way: no address, only
//! where to boot. EDK2 takes that (its address comes from the site's server), then
//! asks the boot server named in option 59 on UDP 4011 (PXE) or fetches the URL
//! (HTTP Boot). EDK2 opens its port 4011 only after sending that REQUEST, so a REPLY
//! sent at once can meet an ICMP port unreachable: the driver sends it again on
//! [`Config6::pxe_resend`]. iPXE ignores an ADVERTISE without an address, so
//! iPXE over DHCPv6 needs the stateful mode (or gets its script over IPv4).

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, Message, MessageType, OptionCode, Status, StatusCode,
    UnknownOption, IANA,
};
use dhcproto::Encodable;
use ironpxe_core::config::StatefulFor;
use ironpxe_core::urls::tftp_url;
use ironpxe_core::{BootDecision, BootUrls, ClientArch, IpxeBinaries, MacAddr};

use super::leases::{LeaseKey, Leases};
use super::request::{NotBoot6, Request6, PXE_ENTERPRISE};
use super::wire::{msg, opt, RelayHop};
use crate::decide::{BootPath, ServerPort};
use crate::request::VendorClass;

/// Settings of the DHCPv6 core.
#[derive(Clone, Debug)]
pub struct Config6 {
    /// Port of ironpxe's HTTP server.
    pub http_port: u16,
    /// Chainload binaries.
    pub binaries: IpxeBinaries,
    /// The stateful mode: who gets an address, and for how long.
    pub stateful: Option<Stateful>,
    /// When the REPLY to a port 4011 REQUEST is sent again, after the first.
    pub pxe_resend: Vec<Duration>,
    /// A preference option in ADVERTISEs without an address (none by default: with
    /// 255, EDK2 selects at once and fails if the site server's answer has not
    /// arrived yet). For measuring clients, not for production.
    pub proxy_preference: Option<u8>,
}

/// The stateful mode's settings (the range lives in [`Leases`]).
#[derive(Clone, Copy, Debug)]
pub struct Stateful {
    /// Which clients get an address.
    pub for_whom: StatefulFor,
    /// Preferred lifetime, seconds.
    pub preferred: u32,
    /// Valid lifetime, seconds.
    pub valid: u32,
}

impl Default for Stateful {
    fn default() -> Self {
        Stateful {
            for_whom: StatefulFor::Ipxe,
            preferred: 1800,
            valid: 3600,
        }
    }
}

/// Default of [`Config6::pxe_resend`].
pub const PXE_RESEND: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1000)];

impl Default for Config6 {
    fn default() -> Self {
        Config6 {
            http_port: 80,
            binaries: IpxeBinaries::default(),
            stateful: None,
            pxe_resend: PXE_RESEND.to_vec(),
            proxy_preference: None,
        }
    }
}

/// Where and how a DHCPv6 datagram was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta6 {
    /// Our global or unique-local address on the receiving interface: announced in
    /// every URL.
    pub local_ip: Ipv6Addr,
    /// The address the datagram was sent to (multicast, or ours on 4011).
    pub dst_ip: Ipv6Addr,
    /// The receiving interface.
    pub ifindex: u32,
    /// UDP 547 or 4011.
    pub port: ServerPort,
    /// The sender (a client, or a relay agent).
    pub src: SocketAddrV6,
}

/// Why a boot request got no reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored6 {
    /// Not a boot request at all.
    #[error("{0}")]
    NotBoot(#[from] NotBoot6),
    /// Addressed to another DHCPv6 server (the site's).
    #[error("for another DHCPv6 server")]
    OtherServer,
    /// A message this port does not answer.
    #[error("DHCPv6 message type {msg_type} on {port:?} port is not answered")]
    WrongPort {
        /// Message type.
        msg_type: u8,
        /// Port.
        port: ServerPort,
    },
    /// Lease business, but the stateful mode is off.
    #[error("DHCPv6 message type {0} concerns leases, and the stateful mode is off")]
    NotStateful(u8),
    /// The booter declined this machine.
    #[error("{0}")]
    Booter(String),
    /// The booter's source has not answered yet.
    #[error("the boot source has not answered yet; the client's retransmit gets the answer")]
    Pending,
    /// No iPXE binary for this firmware.
    #[error("no iPXE binary configured for firmware {0} (option 61 = {code})", code = .0.code())]
    NoBinary(ClientArch),
    /// No iPXE binary for this UEFI HTTP Boot client.
    #[error("no iPXE binary configured for UEFI HTTP Boot client {0} (option 61 = {code})", code = .0.code())]
    NoHttpBinary(ClientArch),
    /// A firmware ironpxe does not boot.
    #[error("unsupported client firmware {0} (option 61 = {code}); not answering", code = .0.code())]
    UnsupportedArch(ClientArch),
    /// No global or unique-local address on the receiving interface to announce.
    #[error(
        "no global or unique-local IPv6 address on interface {0} to announce; set --listen-addr6"
    )]
    NoLocalAddress(u32),
}

impl Ignored6 {
    /// Traffic that is simply not ours (debug level only).
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            Ignored6::NotBoot(
                NotBoot6::Wire(_) | NotBoot6::MessageType(_) | NotBoot6::NotBootClient
            ) | Ignored6::OtherServer
                | Ignored6::WrongPort { .. }
                | Ignored6::NotStateful(_)
        )
    }
}

/// What a reply is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer6 {
    /// ADVERTISE to a SOLICIT.
    Advertise,
    /// REPLY on port 547.
    Reply,
    /// REPLY to a boot-server REQUEST on port 4011.
    PxeReply,
}

impl Answer6 {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer6::Advertise => "advertise",
            Answer6::Reply => "reply",
            Answer6::PxeReply => "reply-4011",
        }
    }
}

/// Says whether, and with what, a request is answered, before the booter is asked.
pub fn classify6(
    req: &Request6,
    meta: &RecvMeta6,
    server_id: &[u8],
    stateful: bool,
) -> Result<Answer6, Ignored6> {
    let ours = |req: &Request6| match &req.server_id {
        Some(s) if s.as_slice() != server_id => Err(Ignored6::OtherServer),
        _ => Ok(()),
    };
    let t = req.msg_type;
    let answer = match (meta.port, t) {
        (ServerPort::Pxe, msg::REQUEST | msg::INFORMATION_REQUEST) => Answer6::PxeReply,
        (ServerPort::Pxe, _) => {
            return Err(Ignored6::WrongPort {
                msg_type: t,
                port: meta.port,
            })
        }
        (ServerPort::Dhcp, msg::SOLICIT) => Answer6::Advertise,
        (ServerPort::Dhcp, msg::INFORMATION_REQUEST) => {
            ours(req)?;
            Answer6::Reply
        }
        (ServerPort::Dhcp, msg::REQUEST | msg::RENEW | msg::RELEASE | msg::DECLINE) => {
            if req.server_id.is_none() || ours(req).is_err() {
                return Err(Ignored6::OtherServer);
            }
            if !stateful {
                return Err(Ignored6::NotStateful(t));
            }
            Answer6::Reply
        }
        (ServerPort::Dhcp, msg::REBIND) if stateful => Answer6::Reply,
        (ServerPort::Dhcp, _) => {
            return Err(Ignored6::WrongPort {
                msg_type: t,
                port: meta.port,
            })
        }
    };
    if matches!(
        req.arch,
        ClientArch::Unknown(_) | ClientArch::EfiArm32 | ClientArch::HttpArm32
    ) || (is_http_boot(req) && req.arch == ClientArch::Bios)
    {
        return Err(Ignored6::UnsupportedArch(req.arch));
    }
    Ok(answer)
}

fn is_http_boot(req: &Request6) -> bool {
    !req.ipxe && (req.class == VendorClass::HttpClient || req.arch.is_http_boot())
}

/// A reply to send.
#[derive(Clone, Debug)]
pub struct Reply6 {
    /// The encoded datagram (a RELAY-REPL when the request was relayed).
    pub bytes: Vec<u8>,
    /// Where to send it.
    pub dest: SocketAddrV6,
    /// Send it again after these delays (port 4011 replies).
    pub resend: Vec<Duration>,
    /// What it is.
    pub answer: Answer6,
    /// What it tells the client to boot (nothing for RELEASE or DECLINE).
    pub path: Option<BootPath>,
    /// The address it hands out, if any.
    pub address: Option<Ipv6Addr>,
    /// The leases changed: save them before sending.
    pub leases_changed: bool,
    /// The request it answers.
    pub request: Request6,
}

/// Remembers the MAC of each DUID seen with one, for messages that carry none (the
/// port 4011 REQUEST of EDK2 comes from its new address).
#[derive(Debug, Default)]
pub struct ClientMemory {
    macs: HashMap<Vec<u8>, (MacAddr, Instant)>,
}

impl ClientMemory {
    const MAX: usize = 4096;
    /// How long a DUID's MAC is remembered.
    pub const TTL: Duration = Duration::from_secs(600);

    /// The MAC last seen with `duid`.
    pub fn get(&self, duid: &[u8], now: Instant) -> Option<MacAddr> {
        self.macs
            .get(duid)
            .filter(|(_, t)| now.saturating_duration_since(*t) <= Self::TTL)
            .map(|(m, _)| *m)
    }

    /// Remembers that `duid` is `mac`.
    pub fn record(&mut self, duid: &[u8], mac: MacAddr, now: Instant) {
        if let Some(e) = self.macs.get_mut(duid) {
            *e = (mac, now);
            return;
        }
        if self.macs.len() >= Self::MAX {
            self.macs
                .retain(|_, (_, t)| now.saturating_duration_since(*t) <= Self::TTL);
            if self.macs.len() >= Self::MAX {
                // A flood of invented DUIDs: start over rather than grow.
                self.macs.clear();
            }
        }
        self.macs.insert(duid.to_vec(), (mac, now));
    }

    /// Number of remembered DUIDs.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }
}

/// Builds the reply to a classified request, given the booter's decision.
///
/// `leases` is the stateful mode's table (`None` without it); `now_unix` is the
/// time in seconds since the Unix epoch, for lease lifetimes.
#[allow(clippy::too_many_arguments)]
#[must_use = "the reply must be sent, or the reason for none logged"]
pub fn answer6(
    cfg: &Config6,
    req: Request6,
    answer: Answer6,
    decision: &BootDecision,
    meta: &RecvMeta6,
    server_id: &[u8],
    leases: Option<&mut Leases>,
    now_unix: u64,
) -> Result<Reply6, Ignored6> {
    let releasing = matches!(req.msg_type, msg::RELEASE | msg::DECLINE);
    if !releasing {
        match decision {
            BootDecision::Ignore(reason) => return Err(Ignored6::Booter(reason.clone())),
            BootDecision::Pending => return Err(Ignored6::Pending),
            BootDecision::Netboot(_) | BootDecision::Local | BootDecision::Script(_) => {}
        }
    }
    if meta.local_ip.is_unspecified() {
        return Err(Ignored6::NoLocalAddress(meta.ifindex));
    }
    let reply_type = match answer {
        Answer6::Advertise => MessageType::Advertise,
        Answer6::Reply | Answer6::PxeReply => MessageType::Reply,
    };
    let mut m = Message::new_with_id(reply_type, req.xid);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(req.client_id.clone()));
    o.insert(DhcpOption::ServerId(server_id.to_vec()));

    let mut address = None;
    let mut leases_changed = false;
    let stateful = cfg
        .stateful
        .filter(|s| answer != Answer6::PxeReply && (s.for_whom == StatefulFor::All || req.ipxe));
    if let (Some(s), Some(leases), Some(ia)) = (stateful, leases, &req.ia_na) {
        let key = LeaseKey {
            duid: req.client_id.clone(),
            iaid: ia.iaid,
        };
        let valid = u64::from(s.valid);
        let status = match req.msg_type {
            msg::SOLICIT | msg::REQUEST => match leases.bind(&key, req.mac, now_unix, valid) {
                Some(a) => {
                    leases_changed = true;
                    address = Some(a);
                    None
                }
                None => Some((Status::NoAddrsAvail, "no free address in ipv6_range")),
            },
            msg::RENEW | msg::REBIND => {
                let held = ia
                    .addrs
                    .iter()
                    .copied()
                    .find(|a| leases.renew(&key, *a, now_unix, valid));
                match held {
                    Some(a) => {
                        leases_changed = true;
                        address = Some(a);
                        None
                    }
                    None => Some((Status::NoBinding, "no lease for this IA")),
                }
            }
            _ => {
                for a in &ia.addrs {
                    leases_changed |= leases.release(&key, *a);
                }
                None
            }
        };
        if !releasing {
            let mut ia_opts = DhcpOptions::new();
            match (address, status) {
                (Some(addr), _) => ia_opts.insert(DhcpOption::IAAddr(IAAddr {
                    addr,
                    preferred_life: s.preferred,
                    valid_life: s.valid,
                    opts: DhcpOptions::new(),
                })),
                (None, Some((status, text))) => {
                    ia_opts.insert(DhcpOption::StatusCode(StatusCode {
                        status,
                        msg: text.to_string(),
                    }))
                }
                (None, None) => {}
            }
            o.insert(DhcpOption::IANA(IANA {
                id: ia.iaid,
                t1: s.preferred / 2,
                t2: s.preferred / 5 * 4,
                opts: ia_opts,
            }));
        }
    }
    if answer == Answer6::Advertise {
        // Ours is a complete answer (address and boot file): a client may take it
        // without waiting for others. A ProxyDHCP-style ADVERTISE says nothing, or
        // EDK2 would select before the site server's address arrived.
        match (address, cfg.proxy_preference) {
            (Some(_), _) => o.insert(DhcpOption::Preference(255)),
            (None, Some(p)) => o.insert(DhcpOption::Preference(p)),
            (None, None) => {}
        }
    }

    let path = if releasing {
        o.insert(DhcpOption::StatusCode(StatusCode {
            status: Status::Success,
            msg: String::new(),
        }));
        None
    } else {
        let path = boot_path(cfg, &req, meta)?;
        let class = if is_http_boot(&req) {
            VendorClass::HttpClient
        } else {
            VendorClass::PxeClient
        };
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::VendorClass,
            vendor_class_data(class),
        )));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::OptBootfileUrl,
            path.target().as_bytes().to_vec(),
        )));
        Some(path)
    };

    let inner = m
        .to_vec()
        .map_err(|e| Ignored6::Booter(format!("cannot encode the DHCPv6 reply: {e}")))?;
    let (bytes, dest) = if req.relays.is_empty() {
        (inner, meta.src)
    } else {
        let relay_to = SocketAddrV6::new(*meta.src.ip(), 547, 0, meta.src.scope_id());
        (relay_reply(&req.relays, inner), relay_to)
    };
    let resend = match answer {
        Answer6::PxeReply => cfg.pxe_resend.clone(),
        _ => Vec::new(),
    };
    Ok(Reply6 {
        bytes,
        dest,
        resend,
        answer,
        path,
        address,
        leases_changed,
        request: req,
    })
}

/// Option 16's data: enterprise 343 and one class string, as EDK2 checks it
/// (`dhcproto` encodes the string count where the byte length belongs).
pub fn vendor_class_data(class: VendorClass) -> Vec<u8> {
    let s = class.as_str().as_bytes();
    let mut d = Vec::with_capacity(6 + s.len());
    d.extend_from_slice(&PXE_ENTERPRISE.to_be_bytes());
    d.extend_from_slice(&(s.len() as u16).to_be_bytes());
    d.extend_from_slice(s);
    d
}

/// Wraps `inner` in a RELAY-REPL per relay hop, innermost first, echoing each
/// hop's interface-id (`dhcproto` cannot build a RELAY-REPL).
fn relay_reply(relays: &[RelayHop], inner: Vec<u8>) -> Vec<u8> {
    let mut msg = inner;
    for hop in relays.iter().rev() {
        let mut out = Vec::with_capacity(34 + msg.len() + 16);
        out.push(msg::RELAY_REPL);
        out.push(hop.hop_count);
        out.extend_from_slice(&hop.link_addr.octets());
        out.extend_from_slice(&hop.peer_addr.octets());
        if let Some(id) = &hop.interface_id {
            out.extend_from_slice(&opt::INTERFACE_ID.to_be_bytes());
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id);
        }
        out.extend_from_slice(&opt::RELAY_MSG.to_be_bytes());
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(&msg);
        msg = out;
    }
    msg
}

fn boot_path(cfg: &Config6, req: &Request6, meta: &RecvMeta6) -> Result<BootPath, Ignored6> {
    let urls = BootUrls::http(meta.local_ip, cfg.http_port);
    if req.ipxe {
        // iPXE over IPv6 announces no feature list; every iPXE build ironpxe ships
        // or finds has HTTP, and the binary it was chainloaded from came from us.
        return Ok(BootPath::Script {
            url: urls.script(req.mac, req.arch),
        });
    }
    if is_http_boot(req) {
        let file = cfg
            .binaries
            .for_http_boot(req.arch)
            .ok_or(Ignored6::NoHttpBinary(req.arch))?;
        return Ok(BootPath::HttpBoot {
            url: urls.binary(file),
        });
    }
    let file = cfg
        .binaries
        .for_arch(req.arch, false)
        .ok_or(Ignored6::NoBinary(req.arch))?;
    Ok(BootPath::Chainload {
        file: tftp_url(meta.local_ip, file),
    })
}
