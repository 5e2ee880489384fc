//! The firmwares `ironpxe lab --firmware` offers: a machine's firmware together with
//! the network boot client it starts with, i.e. the path a boot takes to ironpxe.
//!
//! Each variant is one boot path that works end to end in the lab today. A new path
//! (arm64 guests, Secure Boot with shim, IPv6) becomes a new variant once it boots:
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
}

impl GuestFirmware {
    /// Every variant, in the order `--help` lists them.
    pub const ALL: [GuestFirmware; 3] = [
        GuestFirmware::Bios,
        GuestFirmware::Uefi,
        GuestFirmware::UefiHttp,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GuestFirmware::Bios => "bios",
            GuestFirmware::Uefi => "uefi",
            GuestFirmware::UefiHttp => "uefi-http",
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
        }
    }

    /// The machine firmware QEMU runs.
    pub fn firmware(self) -> Firmware {
        match self {
            GuestFirmware::Bios => Firmware::Bios,
            GuestFirmware::Uefi | GuestFirmware::UefiHttp => Firmware::Uefi,
        }
    }

    /// Why this boot path cannot run on `network`, if it cannot.
    pub fn unsupported_on(self, network: Network) -> Option<&'static str> {
        match (self, network) {
            (GuestFirmware::UefiHttp, Network::User) => Some(
                "UEFI HTTP Boot needs a DHCP offer with option 60 HTTPClient and a URL, \
                 which only ProxyDHCP sends; QEMU's user networking cannot",
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
        }
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
            "unknown firmware \"arm64\": expected one of bios, uefi, uefi-http"
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
    }
}
