//! The site DHCP server's answers to machines that boot through GRUB.
//!
//! Debian's signed GRUB (2.06) ignores the ProxyDHCP offer: it takes its TFTP server
//! from the site server's DHCPACK (`siaddr`, "next-server"). When that names another
//! server (dnsmasq puts its own address there), GRUB asks it for `grub/grub.cfg` and
//! never reaches ironpxe. The site server must name ironpxe as next-server (dnsmasq
//! `--dhcp-boot=,,<ironpxe>`, ISC dhcpd `next-server`).
//!
//! ironpxe cannot fix that answer, but it can see it when the site server
//! broadcasts it (PXE firmware asks for broadcast answers): a socket bound to
//! `255.255.255.255:68` receives exactly the broadcast answers to clients, and
//! never the unicast answers a DHCP client on this host expects. [`SiteAckCheck`]
//! decides, per ACK, whether to warn: the ACK went to a machine ProxyDHCP handed
//! shim or GRUB ([`LoaderOffers`]), assigns an address, came from another server,
//! and names a next-server that is not ours. It warns once per machine
//! ([`BootEvent::DhcpSiteNextServer`]). [`watch`] is its driver.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::MacAddr;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::decide::LoaderOffers;
use crate::request::PxeRequest;

/// What a site server's DHCPACK says about a machine's next-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteAck {
    /// The machine.
    pub mac: MacAddr,
    /// The address it assigns.
    pub yiaddr: Ipv4Addr,
    /// The next-server it names (`siaddr`).
    pub next_server: Ipv4Addr,
    /// The server that sent it (option 54).
    pub server: Ipv4Addr,
}

impl SiteAck {
    /// Reads a DHCPACK that assigns an address, or `None` for anything else.
    pub fn parse(msg: &Message) -> Option<SiteAck> {
        if msg.opcode() != Opcode::BootReply || msg.opts().msg_type() != Some(MessageType::Ack) {
            return None;
        }
        let htype: u8 = msg.htype().into();
        let hlen = msg.hlen();
        // Message::chaddr slices by the untrusted hlen; only call it once it fits.
        let mac = (htype == 1 && hlen == 6)
            .then(|| MacAddr::from_chaddr(htype, hlen, msg.chaddr()))
            .flatten()?;
        let server = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => return None,
        };
        let yiaddr = msg.yiaddr();
        // A ProxyDHCP ACK assigns nothing; only the site server's ACK counts.
        if yiaddr.is_unspecified() {
            return None;
        }
        Some(SiteAck {
            mac,
            yiaddr,
            next_server: msg.siaddr(),
            server,
        })
    }
}

/// Decides which site ACKs are warned about.
#[derive(Debug)]
pub struct SiteAckCheck {
    offers: LoaderOffers,
    warned: HashMap<MacAddr, Instant>,
}

impl SiteAckCheck {
    /// How long after ProxyDHCP handed a machine shim or GRUB its site ACK is checked.
    pub const OFFER_WINDOW: Duration = Duration::from_secs(120);
    /// A machine is warned about once in this long.
    pub const WARN_AGAIN: Duration = Duration::from_secs(3600);
    const MAX_WARNED: usize = 4096;

    /// Checks the machines recorded in `offers`.
    pub fn new(offers: LoaderOffers) -> Self {
        SiteAckCheck {
            offers,
            warned: HashMap::new(),
        }
    }

    /// The warning `ack` calls for, if any. `ours` says whether an address is this
    /// server's.
    pub fn check(
        &mut self,
        ack: &SiteAck,
        ours: &dyn Fn(Ipv4Addr) -> bool,
        now: Instant,
    ) -> Option<BootEvent> {
        if ours(ack.server) || ours(ack.next_server) {
            return None;
        }
        if !self.offers.recent(ack.mac, now, Self::OFFER_WINDOW) {
            return None;
        }
        if let Some(t) = self.warned.get(&ack.mac) {
            if now.saturating_duration_since(*t) < Self::WARN_AGAIN {
                return None;
            }
        }
        if self.warned.len() >= Self::MAX_WARNED {
            self.warned.clear();
        }
        self.warned.insert(ack.mac, now);
        Some(BootEvent::DhcpSiteNextServer {
            mac: ack.mac,
            next_server: IpAddr::V4(ack.next_server),
            site_server: IpAddr::V4(ack.server),
        })
    }
}

/// Opens the receive side of the watch: UDP, bound to `255.255.255.255:68`, so only
/// broadcast answers to DHCP clients arrive, on `device` if given.
pub fn bind_watch(device: Option<&str>) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Next to a DHCP client of this host that holds UDP 68 (with SO_REUSEADDR too).
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    if let Some(dev) = device {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::BROADCAST, 68).into())?;
    UdpSocket::from_std(sock.into())
}

/// Runs the watch on `socket` until `shutdown`: each broadcast DHCPACK is checked,
/// and a warning is emitted as [`BootEvent::DhcpSiteNextServer`]. `ours` says
/// whether an address is this server's (it is asked per ACK, so it may look at the
/// interfaces as they are now).
pub async fn watch(
    socket: UdpSocket,
    offers: LoaderOffers,
    ours: impl Fn(Ipv4Addr) -> bool + Send,
    shutdown: impl Future<Output = ()>,
) {
    let mut check = SiteAckCheck::new(offers);
    let mut buf = vec![0u8; 2048];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let Ok(msg) = PxeRequest::decode(&buf[..n]) else { continue };
                let Some(ack) = SiteAck::parse(&msg) else { continue };
                if let Some(ev) = check.check(&ack, &ours, Instant::now()) {
                    emit(ev);
                }
            }
        }
    }
}

/// Whether `ip` is an address of one of this host's interfaces.
pub fn is_local_address(ip: Ipv4Addr) -> bool {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs.into_iter().any(|a| {
                a.address
                    .and_then(|s| s.as_sockaddr_in().map(|s| s.ip()))
                    .is_some_and(|a| a == ip)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder, Encodable};

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const SITE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const US: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    fn ack(next_server: Ipv4Addr, yiaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            next_server,
            Ipv4Addr::UNSPECIFIED,
            &MAC.octets(),
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SITE));
        let bytes = m.to_vec().unwrap();
        Message::decode(&mut Decoder::new(&bytes)).unwrap()
    }

    fn ours(ip: Ipv4Addr) -> bool {
        ip == US
    }

    #[test]
    fn site_acks_are_read_and_others_are_not() {
        let lease = Ipv4Addr::new(10, 77, 0, 150);
        assert_eq!(
            SiteAck::parse(&ack(SITE, lease)),
            Some(SiteAck {
                mac: MAC,
                yiaddr: lease,
                next_server: SITE,
                server: SITE
            })
        );
        // A proxy-style ACK assigns no address.
        assert_eq!(SiteAck::parse(&ack(SITE, Ipv4Addr::UNSPECIFIED)), None);
        let mut offer = ack(SITE, lease);
        offer
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        assert_eq!(SiteAck::parse(&offer), None);
        let mut request = ack(SITE, lease);
        request.set_opcode(Opcode::BootRequest);
        assert_eq!(SiteAck::parse(&request), None);
    }

    #[test]
    fn warns_once_for_a_grub_machine_whose_ack_names_another_next_server() {
        let offers = LoaderOffers::default();
        let mut c = SiteAckCheck::new(offers.clone());
        let t0 = Instant::now();
        let bad = SiteAck::parse(&ack(SITE, Ipv4Addr::new(10, 77, 0, 150))).unwrap();
        // Not a machine we handed shim or GRUB: nothing to say.
        assert_eq!(c.check(&bad, &ours, t0), None);
        offers.record(MAC, t0);
        let ev = c.check(&bad, &ours, t0).expect("a warning");
        assert_eq!(ev.name(), "dhcp.next_server");
        assert_eq!(
            ev.render_fields(),
            "mac=52:54:00:00:00:01 next_server=10.77.0.1 site_server=10.77.0.1"
        );
        // Once per machine.
        assert_eq!(c.check(&bad, &ours, t0 + Duration::from_secs(30)), None);
        // A site server that names us is right.
        let mut c = SiteAckCheck::new(offers.clone());
        let good = SiteAck::parse(&ack(US, Ipv4Addr::new(10, 77, 0, 150))).unwrap();
        assert_eq!(c.check(&good, &ours, t0), None);
        // No next-server at all is as wrong as another one.
        let none =
            SiteAck::parse(&ack(Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 77, 0, 9))).unwrap();
        assert!(c.check(&none, &ours, t0).is_some());
        // An offer long ago does not count.
        let mut c = SiteAckCheck::new(offers);
        let late = t0 + SiteAckCheck::OFFER_WINDOW + Duration::from_secs(1);
        assert_eq!(c.check(&bad, &ours, late), None);
    }
}
