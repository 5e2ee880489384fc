//! The firmwares `ironpxe lab --firmware` offers: a machine's firmware together with
//! the network boot client it starts with, i.e. the path a boot takes to ironpxe.
//!
//! Each variant is one boot path that works end to end in the lab today. A new path
//! (arm64 guests, Secure Boot with shim) becomes a new variant once it boots:
//! its name in [`GuestFirmware::ALL`], its [`GuestConfig`], its needs, and whether
//! QEMU user networking can carry it.

use std::fmt;
use std::str::FromStr;

use crate::guest::{Firmware, GuestConfig};
use crate::lab::Network;
use crate::preflight::Needs;

/// A firmware and network boot client for a lab guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GuestFirmware {
    /// SeaBIOS with the iPXE NIC ROM. In namespaces: ProxyDHCP hands iPXE the
    /// script URL. With user networking: QEMU's DHCP does.
    Bios,
    /// OVMF. In namespaces, EDK2's own PXE client: ProxyDHCP, TFTP of ipxe.efi,
    /// then iPXE and the script. With user networking, QEMU's iPXE NIC ROM fetches
    /// the script.
    Uefi,
    /// OVMF's UEFI HTTP Boot client: ProxyDHCP with `HTTPClient`, snponly.efi over
    /// HTTP, no TFTP. Namespaces only.
    UefiHttp,
    /// OVMF's PXE client over IPv6 (PXEv4 off): ironpxe's DHCPv6 ADVERTISE and
    /// port 4011 REPLY, the iPXE binary over TFTP on IPv6; that iPXE then gets its
    /// script over IPv4 (the lab is dual-stack). Namespaces only.
    Uefi6,
    /// OVMF's UEFI HTTP Boot over IPv6 (its only boot option): ironpxe's DHCPv6
    /// ADVERTISE with `HTTPClient`, snponly.efi over HTTP on IPv6. Namespaces only.
    UefiHttp6,
}

impl GuestFirmware {
    /// Every variant, in the order `--help` lists them.
    pub const ALL: [GuestFirmware; 5] = [
        GuestFirmware::Bios,
        GuestFirmware::Uefi,
        GuestFirmware::UefiHttp,
        GuestFirmware::Uefi6,
        GuestFirmware::UefiHttp6,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GuestFirmware::Bios => "bios",
            GuestFirmware::Uefi => "uefi",
            GuestFirmware::UefiHttp => "uefi-http",
            GuestFirmware::Uefi6 => "uefi6",
            GuestFirmware::UefiHttp6 => "uefi-http6",
        }
    }

    /// One line on what the guest is and how it boots.
    pub fn describe(self) -> &'static str {
        match self {
            GuestFirmware::Bios => "SeaBIOS with the iPXE NIC ROM",
            GuestFirmware::Uefi => {
                "OVMF: EDK2's PXE client chainloads ipxe.efi over TFTP \
                 (with --user-net: QEMU's iPXE NIC ROM)"
            }
            GuestFirmware::UefiHttp => {
                "OVMF UEFI HTTP Boot: snponly.efi over HTTP, no TFTP (not with --user-net)"
            }
            GuestFirmware::Uefi6 => {
                "OVMF PXE over IPv6: DHCPv6, the iPXE binary over TFTP on IPv6 \
                 (not with --user-net)"
            }
            GuestFirmware::UefiHttp6 => {
                "OVMF UEFI HTTP Boot over IPv6: snponly.efi over HTTP on IPv6 \
                 (not with --user-net)"
            }
        }
    }

    /// The machine firmware QEMU runs.
    pub fn firmware(self) -> Firmware {
        match self {
            GuestFirmware::Bios => Firmware::Bios,
            GuestFirmware::Uefi
            | GuestFirmware::UefiHttp
            | GuestFirmware::Uefi6
            | GuestFirmware::UefiHttp6 => Firmware::Uefi,
        }
    }

    /// Why this boot path cannot run on `network`, if it cannot.
    pub fn unsupported_on(self, network: Network) -> Option<&'static str> {
        match (self, network) {
            (GuestFirmware::UefiHttp, Network::User) => Some(
                "UEFI HTTP Boot needs a DHCP offer with option 60 HTTPClient and a URL, \
                 which only ProxyDHCP sends; QEMU's user networking cannot",
            ),
            (GuestFirmware::Uefi6 | GuestFirmware::UefiHttp6, Network::User) => Some(
                "IPv6 boots need ironpxe's DHCPv6 on the guest's segment; QEMU's user \
                 networking has no DHCPv6 server ironpxe can stand beside",
            ),
            _ => None,
        }
    }

    /// The guest to start for this boot path on `network`.
    pub fn guest_config(self, network: Network) -> GuestConfig {
        match (self, network) {
            (GuestFirmware::Bios, _) => GuestConfig::bios(),
            (GuestFirmware::Uefi, Network::Namespaces) => GuestConfig::uefi_native_pxe(),
            (GuestFirmware::Uefi, Network::User) => GuestConfig::uefi(),
            (GuestFirmware::UefiHttp, _) => GuestConfig::uefi_http_boot(),
            (GuestFirmware::Uefi6, _) => GuestConfig::uefi_pxe6(),
            (GuestFirmware::UefiHttp6, _) => GuestConfig::uefi_http6(),
        }
    }

    /// Whether this boot path needs IPv6 in the lab: the site's stateful DHCPv6 and
    /// router advertisements, and ironpxe with `--ipv6`.
    pub fn needs_ipv6(self) -> bool {
        matches!(self, GuestFirmware::Uefi6 | GuestFirmware::UefiHttp6)
    }

    /// Adds what this boot path needs on the machine to `needs`.
    pub fn add_needs(self, needs: &mut Needs) {
        match self.firmware() {
            Firmware::Bios => needs.bios = true,
            Firmware::Uefi => needs.uefi = true,
        }
    }
}

impl fmt::Display for GuestFirmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--firmware` value that names no [`GuestFirmware`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown firmware {given:?}: expected one of {}", names())]
pub struct UnknownFirmware {
    /// What was given.
    pub given: String,
}

fn names() -> String {
    GuestFirmware::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for GuestFirmware {
    type Err = UnknownFirmware;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GuestFirmware::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownFirmware {
                given: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in GuestFirmware::ALL {
            assert_eq!(f.name().parse::<GuestFirmware>(), Ok(f));
        }
        let e = "arm64".parse::<GuestFirmware>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown firmware \"arm64\": expected one of bios, uefi, uefi-http, uefi6, uefi-http6"
        );
    }

    #[test]
    fn paths_per_network() {
        let ns = GuestFirmware::Uefi.guest_config(Network::Namespaces);
        assert!(
            !ns.ipxe_rom,
            "a namespace UEFI guest uses EDK2's own PXE client"
        );
        let user = GuestFirmware::Uefi.guest_config(Network::User);
        assert!(user.ipxe_rom);
        assert!(GuestFirmware::UefiHttp
            .unsupported_on(Network::User)
            .is_some());
        assert!(GuestFirmware::ALL
            .iter()
            .all(|f| f.unsupported_on(Network::Namespaces).is_none()));
        for f in [GuestFirmware::Uefi6, GuestFirmware::UefiHttp6] {
            assert!(f.needs_ipv6() && f.unsupported_on(Network::User).is_some());
            assert!(!f.guest_config(Network::Namespaces).ipxe_rom);
        }
        assert!(!GuestFirmware::Uefi.needs_ipv6());
    }
}
