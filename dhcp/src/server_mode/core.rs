//! The DHCPv4 server core: one message in, a [`Decision`] out. Pure: the time is
//! passed in, the lease store is not touched (a [`Decision::Commit`] tells the
//! driver to store the lease, and only then to send the ACK), no sockets.
//!
//! Who gets what:
//! - a MAC with a reservation (`[[machines]] ip`) gets its address and host name;
//! - any other MAC gets an address of the pool, if there is one: its previous
//!   address when still free, else the address it asks for when free, else the
//!   first free one, else the longest-expired one;
//! - everyone else gets nothing (and the reason is logged once).
//!
//! RFC 2131 states, as the server sees them: a REQUEST naming another server's id
//! means the client chose that server (its offer from us is dropped, no answer); a
//! REQUEST with our id, or without one (INIT-REBOOT, RENEWING, REBINDING), is ACKed
//! when the address is the client's, and NAKed when it is not. RELEASE forgets the
//! lease; DECLINE also keeps the address from everyone for a while; INFORM gets the
//! options without an address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use ironpxe_core::config::{DhcpServerSettings, Reservation};
use ironpxe_core::MacAddr;

use super::leases::{Lease, LeaseTable};
use crate::decide::{Destination, RecvMeta};

/// What to do with one message.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Send this reply (an OFFER, an INFORM's ACK, a NAK); nothing to store.
    Reply(ServerReply),
    /// Store `lease`, then send `reply` (its ACK), never before the store returned;
    /// then tell the core with [`ServerCore::committed`].
    Commit {
        /// The lease to store.
        lease: Lease,
        /// The ACK.
        reply: ServerReply,
    },
    /// Remove `mac`'s lease from the store, then tell the core with
    /// [`ServerCore::forgotten`] (RELEASE, DECLINE). No reply.
    Forget {
        /// The client.
        mac: MacAddr,
    },
    /// No answer, and why.
    Silent(Silence),
}

/// Why a message gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Silence {
    /// Not a client's DHCP message, or no Ethernet MAC.
    #[error("not a DHCP client message: {0}")]
    NotForUs(&'static str),
    /// The client has no reservation and there is no pool.
    #[error("no reservation for this MAC and no pool")]
    Unknown,
    /// Every pool address is taken.
    #[error("the pool {0}-{1} has no free address")]
    PoolFull(Ipv4Addr, Ipv4Addr),
    /// The client chose another server's offer.
    #[error("the client chose server {0}")]
    OtherServer(Ipv4Addr),
    /// A relayed request from outside the subnet.
    #[error("relayed from {0}, outside the subnet")]
    ForeignRelay(Ipv4Addr),
    /// A message type the server does not answer.
    #[error("message type {0:?} is not answered")]
    MessageType(MessageType),
}

/// A reply and what it says.
#[derive(Debug, Clone)]
pub struct ServerReply {
    /// The message.
    pub message: Message,
    /// Where it goes.
    pub dest: Destination,
    /// OFFER, ACK or NAK.
    pub kind: MessageType,
    /// The address it hands out (unspecified for a NAK or an INFORM's ACK).
    pub yiaddr: Ipv4Addr,
    /// Why a NAK was sent.
    pub nak_reason: Option<String>,
}

/// The server: its settings, reservations and lease table.
#[derive(Debug, Clone)]
pub struct ServerCore {
    settings: DhcpServerSettings,
    reservations: HashMap<MacAddr, Reservation>,
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
    table: LeaseTable,
}

impl ServerCore {
    /// A server with `settings` and the leases loaded from the store.
    pub fn new(settings: DhcpServerSettings, leases: Vec<Lease>) -> Self {
        let reservations: HashMap<MacAddr, Reservation> = settings
            .reservations
            .iter()
            .map(|r| (r.mac, r.clone()))
            .collect();
        let reserved_ips = settings
            .reservations
            .iter()
            .map(|r| (r.ip, r.mac))
            .collect();
        ServerCore {
            settings,
            reservations,
            reserved_ips,
            table: LeaseTable::new(leases),
        }
    }

    /// The lease table.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// A lease was stored: it is the client's now.
    pub fn committed(&mut self, lease: Lease) {
        self.table.insert(lease);
    }

    /// A lease was removed from the store.
    pub fn forgotten(&mut self, mac: &MacAddr) {
        self.table.remove(mac);
    }

    /// Decides what to do with `msg`, received as `meta` says, at `now_ms`.
    pub fn handle(&mut self, msg: &Message, meta: &RecvMeta, now_ms: u64) -> Decision {
        if msg.opcode() != Opcode::BootRequest {
            return Decision::Silent(Silence::NotForUs("not a BOOTREQUEST"));
        }
        let htype: u8 = msg.htype().into();
        let Some(mac) = (htype == 1 && msg.hlen() == 6)
            .then(|| MacAddr::from_chaddr(htype, msg.hlen(), msg.chaddr()))
            .flatten()
        else {
            return Decision::Silent(Silence::NotForUs("not an Ethernet client"));
        };
        let Some(kind) = msg.opts().msg_type() else {
            return Decision::Silent(Silence::NotForUs("no message type"));
        };
        let giaddr = msg.giaddr();
        if !giaddr.is_unspecified() && !self.in_subnet(giaddr) {
            return Decision::Silent(Silence::ForeignRelay(giaddr));
        }
        self.table.prune(now_ms);
        let server = meta.local_ip;
        match kind {
            MessageType::Discover => self.discover(msg, mac, meta, now_ms),
            MessageType::Request => self.request(msg, mac, meta, now_ms),
            MessageType::Release => {
                if self.table.lease(&mac).is_some_and(|l| l.ip == msg.ciaddr()) {
                    Decision::Forget { mac }
                } else {
                    Decision::Silent(Silence::NotForUs(
                        "RELEASE of an address that is not the client's",
                    ))
                }
            }
            MessageType::Decline => {
                let ip = requested(msg).unwrap_or(Ipv4Addr::UNSPECIFIED);
                if self.table.lease(&mac).is_some_and(|l| l.ip == ip) {
                    // The address answers someone else's ARP: keep it from everyone.
                    self.table.decline(ip, now_ms);
                    Decision::Forget { mac }
                } else {
                    Decision::Silent(Silence::NotForUs(
                        "DECLINE of an address that is not the client's",
                    ))
                }
            }
            MessageType::Inform => {
                let ciaddr = msg.ciaddr();
                let dest = if !giaddr.is_unspecified() {
                    Destination::Unicast(SocketAddrV4::new(giaddr, 67))
                } else {
                    Destination::Unicast(SocketAddrV4::new(ciaddr, 68))
                };
                let mut m = self.base_reply(msg, MessageType::Ack, Ipv4Addr::UNSPECIFIED, server);
                m.set_ciaddr(ciaddr);
                self.add_options(&mut m, mac, None);
                Decision::Reply(ServerReply {
                    message: m,
                    dest,
                    kind: MessageType::Ack,
                    yiaddr: Ipv4Addr::UNSPECIFIED,
                    nak_reason: None,
                })
            }
            other => Decision::Silent(Silence::MessageType(other)),
        }
    }

    fn discover(&mut self, msg: &Message, mac: MacAddr, meta: &RecvMeta, now_ms: u64) -> Decision {
        let ip = match self.choose(mac, requested(msg), meta.local_ip, now_ms) {
            Ok(ip) => ip,
            Err(s) => return Decision::Silent(s),
        };
        self.table.offer(mac, ip, now_ms);
        let mut m = self.base_reply(msg, MessageType::Offer, ip, meta.local_ip);
        self.add_options(&mut m, mac, Some(self.lease_secs()));
        Decision::Reply(ServerReply {
            message: m,
            dest: self.dest(msg, meta),
            kind: MessageType::Offer,
            yiaddr: ip,
            nak_reason: None,
        })
    }

    fn request(&mut self, msg: &Message, mac: MacAddr, meta: &RecvMeta, now_ms: u64) -> Decision {
        let server = meta.local_ip;
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
            _ => None,
        };
        if let Some(id) = server_id {
            if id != server {
                self.table.drop_offer(&mac);
                return Decision::Silent(Silence::OtherServer(id));
            }
        }
        // SELECTING and INIT-REBOOT name the address in option 50; RENEWING and
        // REBINDING in ciaddr.
        let wanted = requested(msg).or(Some(msg.ciaddr()).filter(|c| !c.is_unspecified()));
        let Some(wanted) = wanted else {
            return self.nak(msg, meta, "the REQUEST names no address".into());
        };
        let mine = match self.choose(mac, Some(wanted), server, now_ms) {
            Ok(ip) => ip,
            Err(Silence::Unknown) if server_id.is_none() => {
                // Not our client: another server may know it.
                return Decision::Silent(Silence::Unknown);
            }
            Err(s) => return self.nak(msg, meta, s.to_string()),
        };
        if mine != wanted {
            return self.nak(
                msg,
                meta,
                format!("{wanted} is not this client's address here ({mine} is)"),
            );
        }
        let hostname = self
            .reservations
            .get(&mac)
            .and_then(|r| r.hostname.clone())
            .or_else(|| client_hostname(msg));
        let lease = Lease {
            mac,
            ip: mine,
            expires_ms: now_ms + self.settings.lease_time.as_millis() as u64,
            hostname,
            reserved: self.reservations.contains_key(&mac),
        };
        let mut m = self.base_reply(msg, MessageType::Ack, mine, server);
        m.set_ciaddr(msg.ciaddr());
        self.add_options(&mut m, mac, Some(self.lease_secs()));
        Decision::Commit {
            lease,
            reply: ServerReply {
                message: m,
                dest: self.dest(msg, meta),
                kind: MessageType::Ack,
                yiaddr: mine,
                nak_reason: None,
            },
        }
    }

    /// The address `mac` gets, preferring `hint` among free pool addresses.
    fn choose(
        &self,
        mac: MacAddr,
        hint: Option<Ipv4Addr>,
        server: Ipv4Addr,
        now_ms: u64,
    ) -> Result<Ipv4Addr, Silence> {
        if let Some(r) = self.reservations.get(&mac) {
            return Ok(r.ip);
        }
        let Some((lo, hi)) = self.settings.pool else {
            return Err(Silence::Unknown);
        };
        let (lo_n, hi_n) = (u32::from(lo), u32::from(hi));
        let free = |ip: Ipv4Addr| {
            let n = u32::from(ip);
            n >= lo_n
                && n <= hi_n
                && ip != server
                && Some(ip) != self.settings.router
                && !self.reserved_ips.contains_key(&ip)
                && self.table.held_by_other(ip, &mac, now_ms).is_none()
        };
        if let Some(l) = self.table.lease(&mac) {
            if free(l.ip) {
                return Ok(l.ip);
            }
        }
        if let Some(ip) = self.table.offered(&mac, now_ms) {
            if free(ip) {
                return Ok(ip);
            }
        }
        if let Some(h) = hint.filter(|h| free(*h)) {
            return Ok(h);
        }
        let mut oldest: Option<(u64, Ipv4Addr)> = None;
        for n in lo_n..=hi_n {
            let ip = Ipv4Addr::from(n);
            if !free(ip) {
                continue;
            }
            match self.table.expired_at(ip, now_ms) {
                None => return Ok(ip),
                Some(at) => {
                    if oldest.is_none_or(|(o, _)| at < o) {
                        oldest = Some((at, ip));
                    }
                }
            }
        }
        oldest.map(|(_, ip)| ip).ok_or(Silence::PoolFull(lo, hi))
    }

    fn nak(&self, msg: &Message, meta: &RecvMeta, reason: String) -> Decision {
        let m = self.base_reply(msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED, meta.local_ip);
        // A NAK is always broadcast (or relayed): the client may have no address.
        let dest = if msg.giaddr().is_unspecified() {
            Destination::Broadcast {
                ifindex: meta.ifindex,
            }
        } else {
            Destination::Unicast(SocketAddrV4::new(msg.giaddr(), 67))
        };
        Decision::Reply(ServerReply {
            message: m,
            dest,
            kind: MessageType::Nak,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            nak_reason: Some(reason),
        })
    }

    /// Relay agent, a client that has its address (unicast), else broadcast.
    fn dest(&self, msg: &Message, meta: &RecvMeta) -> Destination {
        if !msg.giaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(msg.giaddr(), 67))
        } else if !msg.ciaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(msg.ciaddr(), 68))
        } else {
            Destination::Broadcast {
                ifindex: meta.ifindex,
            }
        }
    }

    fn lease_secs(&self) -> u32 {
        u32::try_from(self.settings.lease_time.as_secs()).unwrap_or(u32::MAX)
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        self.settings.is_host(ip)
    }

    fn base_reply(
        &self,
        req: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(req.xid())
            .set_chaddr(&req.chaddr()[..6])
            .set_giaddr(req.giaddr())
            .set_yiaddr(yiaddr)
            .set_ciaddr(Ipv4Addr::UNSPECIFIED)
            .set_siaddr(Ipv4Addr::UNSPECIFIED)
            .set_flags(if kind == MessageType::Nak {
                Flags::default().set_broadcast()
            } else {
                req.flags()
            });
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(server));
        m
    }

    /// Lease times, netmask, broadcast, router, DNS and, for a reservation, the host
    /// name.
    fn add_options(&self, m: &mut Message, mac: MacAddr, lease_secs: Option<u32>) {
        let s = &self.settings;
        let opts = m.opts_mut();
        if let Some(t) = lease_secs {
            opts.insert(DhcpOption::AddressLeaseTime(t));
            opts.insert(DhcpOption::Renewal(t / 2));
            opts.insert(DhcpOption::Rebinding((u64::from(t) * 7 / 8) as u32));
        }
        opts.insert(DhcpOption::SubnetMask(s.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(s.broadcast()));
        if let Some(r) = s.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !s.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(s.dns.clone()));
        }
        if let Some(h) = self.reservations.get(&mac).and_then(|r| r.hostname.clone()) {
            opts.insert(DhcpOption::Hostname(h));
        }
    }
}

/// Option 50.
fn requested(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) if !ip.is_unspecified() => Some(*ip),
        _ => None,
    }
}

/// Option 12 as the client sent it, if it is a plausible host name.
fn client_hostname(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h))
            if !h.is_empty()
                && h.len() <= 63
                && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Some(h.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
