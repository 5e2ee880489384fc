//! Is there another DHCP server on the data NIC? Asked once at start-up, before
//! ironpxe answers on UDP 67 itself: a DISCOVER from UDP 68 out of the NIC, and
//! every OFFER that comes back within the wait names a server.
//!
//! The DISCOVER carries the NIC's own MAC and no PXE vendor class, so ProxyDHCP
//! servers (another ironpxe in proxy mode, dnsmasq `--dhcp-range=...,proxy`) stay
//! silent: only address-handing servers answer, which are the ones two DHCP servers
//! on one segment would fight with.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use ironpxe_core::MacAddr;
use socket2::{Domain, Protocol, Socket, Type};

/// Another DHCP server that answered the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherServer {
    /// Its server identifier (option 54), or the address its OFFER came from.
    pub server: Ipv4Addr,
    /// The address it offered.
    pub offered: Ipv4Addr,
}

/// How long the probe listens by default.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Sends a DISCOVER out of `device` (twice, `wait / 2` apart) and returns every
/// server whose OFFER arrives within `wait`. Needs to bind UDP 68 on the device.
pub fn probe(device: &str, wait: Duration) -> io::Result<Vec<OtherServer>> {
    let mac = nic_mac(device)?;
    let xid = probe_xid();
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.bind_device(Some(device.as_bytes()))?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    let sock: UdpSocket = sock.into();
    // Short reads, so the resend and the end of the wait come on time.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let discover = discover(mac, xid).to_vec().map_err(io::Error::other)?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    sock.send_to(&discover, to)?;
    let start = Instant::now();
    let mut resent = false;
    let mut found: Vec<OtherServer> = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let elapsed = start.elapsed();
        if elapsed >= wait {
            return Ok(found);
        }
        if !resent && elapsed >= wait / 2 {
            sock.send_to(&discover, to)?;
            resent = true;
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if let Some(s) = read_offer(&buf[..n], xid, from) {
            if !found.iter().any(|f| f.server == s.server) {
                found.push(s);
            }
        }
    }
}

/// The DISCOVER the probe sends.
fn discover(mac: MacAddr, xid: u32) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_chaddr(&mac.octets())
        .set_flags(Flags::default().set_broadcast());
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
    ]));
    m
}

/// An OFFER answering the probe `xid`, and who sent it.
fn read_offer(bytes: &[u8], xid: u32, from: std::net::SocketAddr) -> Option<OtherServer> {
    let m = crate::request::PxeRequest::decode(bytes).ok()?;
    if m.opcode() != Opcode::BootReply
        || m.xid() != xid
        || m.opts().msg_type() != Some(MessageType::Offer)
    {
        return None;
    }
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => *id,
        _ => match from.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => return None,
        },
    };
    Some(OtherServer {
        server,
        offered: m.yiaddr(),
    })
}

/// The NIC's MAC, from sysfs.
fn nic_mac(device: &str) -> io::Result<MacAddr> {
    let path = format!("/sys/class/net/{device}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
}

fn probe_xid() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_to_our_probe_name_their_server() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut offer = discover(mac, 7);
        offer
            .set_opcode(Opcode::BootReply)
            .set_yiaddr(Ipv4Addr::new(10, 0, 0, 50));
        offer
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        let from = "10.0.0.9:67".parse().unwrap();
        let bytes = offer.to_vec().unwrap();
        assert_eq!(
            read_offer(&bytes, 7, from).unwrap().server,
            Ipv4Addr::new(10, 0, 0, 9)
        );
        offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        let bytes = offer.to_vec().unwrap();
        assert_eq!(
            read_offer(&bytes, 7, from),
            Some(OtherServer {
                server: Ipv4Addr::new(10, 0, 0, 1),
                offered: Ipv4Addr::new(10, 0, 0, 50)
            })
        );
        // Another exchange, our own DISCOVER, and junk are not offers to us.
        assert_eq!(read_offer(&bytes, 8, from), None);
        assert_eq!(
            read_offer(&discover(mac, 7).to_vec().unwrap(), 7, from),
            None
        );
        assert_eq!(read_offer(b"junk", 7, from), None);
    }
}
