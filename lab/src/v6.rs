//! IPv6 in the lab: what the site server does on IPv6, OVMF guests steered to its
//! IPv6 boot clients with `fw_cfg`, and reading IPv6 out of captures.
//!
//! - [`SiteV6`]: router advertisements only (the default), or a stateful DHCPv6
//!   range with RAs carrying the M and O flags, optionally leaving iPXE to ironpxe.
//! - [`GuestConfig::uefi_pxe6`] and [`GuestConfig::uefi_http6`]: OVMF guests whose
//!   first network boot option is PXEv6, or whose only one is HTTPv6.
//! - [`frames_in_pcap`], [`udp6_in_frames`], [`save_dhcp6_requests`]: every frame of
//!   a pcap file with its EtherType, the IPv6/UDP datagrams among them, and the
//!   DHCPv6 requests saved as `testdata/dhcp6/` material.

use std::fs;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironpxe_core::BootUrls;

use crate::error::{io_err, Error, Result};
use crate::guest::GuestConfig;
use crate::lab::Lab;

/// What the site server does on IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteV6 {
    /// Router advertisements without M or O flags (SLAAC); no DHCPv6. iPXE then
    /// does no DHCPv6 at all, and waits for no RA.
    RaOnly,
    /// A stateful DHCPv6 range (`fd77:N::100`-`fd77:N::1ff`) and RAs with the M and
    /// O flags: firmware takes its address from the site, as on a managed network.
    Stateful,
    /// [`SiteV6::Stateful`], but iPXE (user class `iPXE`) is left to ironpxe's
    /// stateful mode. iPXE takes the first ADVERTISE with an address, so on an
    /// IPv6-only segment two servers answering it would race.
    StatefulNotIpxe,
}

impl Lab {
    /// ironpxe's IPv6 address, `fd77:N::2`.
    pub fn pxe_addr6(&self) -> Ipv6Addr {
        format!("fd77:{:x}::2", self.subnet())
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// The site server's IPv6 address, `fd77:N::1`.
    pub fn site_addr6(&self) -> Ipv6Addr {
        format!("fd77:{:x}::1", self.subnet())
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// The addresses the site's stateful DHCPv6 hands out, `fd77:N::100`-`::1ff`.
    pub fn dhcp6_range(&self) -> (Ipv6Addr, Ipv6Addr) {
        let at = |h: u16| {
            let mut s = self.pxe_addr6().segments();
            s[7] = h;
            Ipv6Addr::from(s)
        };
        (at(0x100), at(0x1ff))
    }

    /// A range for ironpxe's stateful mode that the site's does not use,
    /// `fd77:N::1000`-`::10ff`, as `--ipv6-range` takes it.
    pub fn ironpxe_range6(&self) -> String {
        let at = |h: u16| {
            let mut s = self.pxe_addr6().segments();
            s[7] = h;
            Ipv6Addr::from(s)
        };
        format!("{}-{}", at(0x1000), at(0x10ff))
    }

    /// ironpxe's boot HTTP server as IPv6 guests reach it: `http://[fd77:N::2]:8080`.
    pub fn guest_boot_urls6(&self) -> BootUrls {
        BootUrls::http(self.pxe_addr6(), crate::ironpxe::DEFAULT_HTTP_PORT)
    }

    /// The arguments that turn on ironpxe's IPv6 side on this lab:
    /// `--ipv6 --listen-addr6 fd77:N::2`.
    pub fn ironpxe_ipv6_args(&self) -> Vec<String> {
        vec![
            "--ipv6".into(),
            "--listen-addr6".into(),
            self.pxe_addr6().to_string(),
        ]
    }
}

impl GuestConfig {
    /// OVMF without the iPXE ROM and without PXEv4 (`IPv4PXESupport=no`): its first
    /// network boot option is EDK2's PXE over IPv6.
    pub fn uefi_pxe6() -> Self {
        let mut c = GuestConfig::uefi_native_pxe();
        c.extra_args.extend(
            ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"].map(String::from),
        );
        c
    }

    /// OVMF whose only network boot option is UEFI HTTP Boot over IPv6: no IPv4
    /// stack (`IPv4Support=no`), no PXEv6 (`IPv6PXESupport=no`).
    ///
    /// HTTPv6 tried as the very first network option fails at once ("Unexpected
    /// network error"), before the link and IPv6 configuration are up; tried after
    /// another option it works. With it the only option, the boot menu's 5 s wait
    /// (`-boot menu=on,splash-time=5000`) gives the link that time.
    pub fn uefi_http6() -> Self {
        let mut c = GuestConfig::uefi_native_pxe();
        c.extra_args.extend(
            [
                "-fw_cfg",
                "name=opt/org.tianocore/IPv4Support,string=no",
                "-fw_cfg",
                "name=opt/org.tianocore/IPv6PXESupport,string=no",
                "-boot",
                "menu=on,splash-time=5000",
            ]
            .map(String::from),
        );
        c
    }
}

/// One Ethernet frame of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The pcap record's time since the Unix epoch.
    pub at: Duration,
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// EtherType (0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP).
    pub ethertype: u16,
    /// What follows the Ethernet header.
    pub payload: Vec<u8>,
}

/// Every Ethernet frame of a pcap file (either byte order, micro- or nanosecond
/// timestamps). Truncated records end the list.
pub fn frames_in_pcap(bytes: &[u8]) -> Result<Vec<Frame>> {
    let magic = bytes
        .get(..4)
        .ok_or_else(|| Error::Invalid(format!("pcap file too short ({} bytes)", bytes.len())))?;
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => {
            return Err(Error::Invalid(format!(
                "not a pcap file (magic {magic:02x?})"
            )))
        }
    };
    let u32_at = |i: usize| -> Option<u32> {
        let w: [u8; 4] = bytes.get(i..i + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        })
    };
    match u32_at(20) {
        Some(1) => {}
        other => {
            return Err(Error::Invalid(format!(
                "pcap link type {other:?}, expected Ethernet (1)"
            )))
        }
    }
    let mut out = Vec::new();
    let mut i = 24;
    while let (Some(secs), Some(frac), Some(incl)) = (u32_at(i), u32_at(i + 4), u32_at(i + 8)) {
        let start = i + 16;
        let Some(f) = bytes.get(start..start + incl as usize) else {
            break;
        };
        i = start + incl as usize;
        if f.len() < 14 {
            continue;
        }
        let sub = if nanos {
            Duration::from_nanos(u64::from(frac))
        } else {
            Duration::from_micros(u64::from(frac))
        };
        let mac = |at: usize| -> [u8; 6] { f[at..at + 6].try_into().unwrap_or([0; 6]) };
        out.push(Frame {
            at: Duration::from_secs(u64::from(secs)) + sub,
            dst_mac: mac(0),
            src_mac: mac(6),
            ethertype: u16::from_be_bytes([f[12], f[13]]),
            payload: f[14..].to_vec(),
        });
    }
    Ok(out)
}

/// One IPv6/UDP datagram of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedUdp6 {
    /// When it was captured.
    pub at: Duration,
    /// Source.
    pub src: SocketAddrV6,
    /// Destination.
    pub dst: SocketAddrV6,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The IPv6 datagrams among `frames` whose next header is UDP (no extension
/// headers: DHCPv6, TFTP and the lab's traffic carry none).
pub fn udp6_in_frames(frames: &[Frame]) -> Vec<CapturedUdp6> {
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f.ethertype == 0x86dd) {
        let p = &f.payload;
        if p.len() < 48 || p[6] != 17 {
            continue;
        }
        let addr = |at: usize| -> Ipv6Addr {
            let o: [u8; 16] = p[at..at + 16].try_into().unwrap_or([0; 16]);
            Ipv6Addr::from(o)
        };
        let udp = &p[40..];
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let Some(payload) = udp.get(8..len.max(8)) else {
            continue;
        };
        out.push(CapturedUdp6 {
            at: f.at,
            src: SocketAddrV6::new(addr(8), u16::from_be_bytes([udp[0], udp[1]]), 0, 0),
            dst: SocketAddrV6::new(addr(24), u16::from_be_bytes([udp[2], udp[3]]), 0, 0),
            payload: payload.to_vec(),
        });
    }
    out
}

/// Reads a pcap file's IPv6/UDP datagrams.
pub fn udp6_in_pcap_file(path: &Path) -> Result<Vec<CapturedUdp6>> {
    let bytes = fs::read(path).map_err(io_err("read the capture", path))?;
    Ok(udp6_in_frames(&frames_in_pcap(&bytes)?))
}

/// Writes the payload of every datagram sent to UDP 547 or 4011 to
/// `dir/<prefix>-<nn>-<port>.bin`, with the sender in `<...>.src.txt`; returns the
/// paths of the payloads. These are the raw material of `testdata/dhcp6/`.
pub fn save_dhcp6_requests(
    caps: &[CapturedUdp6],
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, c) in caps
        .iter()
        .filter(|c| matches!(c.dst.port(), 547 | 4011))
        .enumerate()
    {
        let path = dir.join(format!("{prefix}-{i:02}-{}.bin", c.dst.port()));
        fs::write(&path, &c.payload).map_err(io_err("write", &path))?;
        let src = path.with_extension("src.txt");
        fs::write(&src, format!("{} -> {}\n", c.src, c.dst)).map_err(io_err("write", &src))?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            b.extend_from_slice(&7u32.to_le_bytes());
            b.extend_from_slice(&500u32.to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn ipv6_udp_is_read_and_ipv4_counted_apart() {
        let src: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        let mut v6 = vec![
            0x33, 0x33, 0, 1, 0, 2, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x86, 0xdd,
        ];
        let payload = [1u8, 2, 3, 4];
        let mut ip = vec![0x60, 0, 0, 0, 0, 12, 17, 1];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&"ff02::1:2".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&[2, 0x22, 2, 0x23, 0, 12, 0, 0]);
        ip.extend_from_slice(&payload);
        v6.extend_from_slice(&ip);
        let mut v4 = vec![0xff; 12];
        v4.extend_from_slice(&[0x08, 0x00, 0x45]);
        let frames = frames_in_pcap(&pcap(&[v6, v4, vec![1, 2]])).unwrap();
        assert_eq!(frames.len(), 2, "a runt frame is skipped");
        assert_eq!(frames[1].ethertype, 0x0800);
        let udp = udp6_in_frames(&frames);
        assert_eq!(udp.len(), 1);
        assert_eq!(udp[0].src, SocketAddrV6::new(src, 546, 0, 0));
        assert_eq!(udp[0].dst.port(), 547);
        assert_eq!(udp[0].payload, payload);
        assert_eq!(
            udp[0].at,
            Duration::from_secs(7) + Duration::from_micros(500)
        );
        assert!(frames_in_pcap(&[0; 10]).is_err());
    }
}
