//! The firmwares `ironpxe lab --firmware` offers: a machine's firmware together with
//! the network boot client it starts with, i.e. the path a boot takes to ironpxe.
//!
//! Each variant is one boot path that works end to end in the lab today. A new path
//! (RISC-V, say) becomes a new variant once it boots: its name in
//! [`GuestFirmware::ALL`], its [`GuestConfig`], its needs, the loader its machines
//! need ([`Loader`]), and whether QEMU user networking can carry it.

use std::fmt;
use std::str::FromStr;

use ironpxe_core::Loader;

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
    /// OVMF with Secure Boot on (Microsoft's keys): EDK2's PXE client loads the signed
    /// shim, shim the signed GRUB, GRUB the signed kernel, all over TFTP. Namespaces
    /// only.
    UefiSb,
    /// AAVMF (ARM64): EDK2's PXE client (option 93 = 11) loads shim, then GRUB.
    /// Namespaces only.
    Arm64,
    /// AAVMF with Secure Boot on (Microsoft's keys), through shim and GRUB.
    /// Namespaces only.
    Arm64Sb,
    /// AAVMF's UEFI HTTP Boot client (option 93 = 19) loads a GRUB built with the
    /// http module, which fetches its configuration, kernel and initrds over HTTP.
    /// Namespaces only.
    Arm64Http,
}

impl GuestFirmware {
    /// Every variant, in the order `--help` lists them.
    pub const ALL: [GuestFirmware; 9] = [
        GuestFirmware::Bios,
        GuestFirmware::Uefi,
        GuestFirmware::UefiHttp,
        GuestFirmware::Uefi6,
        GuestFirmware::UefiHttp6,
        GuestFirmware::UefiSb,
        GuestFirmware::Arm64,
        GuestFirmware::Arm64Sb,
        GuestFirmware::Arm64Http,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GuestFirmware::Bios => "bios",
            GuestFirmware::Uefi => "uefi",
            GuestFirmware::UefiHttp => "uefi-http",
            GuestFirmware::Uefi6 => "uefi6",
            GuestFirmware::UefiHttp6 => "uefi-http6",
            GuestFirmware::UefiSb => "uefi-sb",
            GuestFirmware::Arm64 => "arm64",
            GuestFirmware::Arm64Sb => "arm64-sb",
            GuestFirmware::Arm64Http => "arm64-http",
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
            GuestFirmware::UefiSb => {
                "OVMF with Secure Boot: signed shim, signed GRUB and kernel over TFTP \
                 (not with --user-net)"
            }
            GuestFirmware::Arm64 => {
                "AAVMF (ARM64): EDK2's PXE client, shim, GRUB over TFTP (not with --user-net)"
            }
            GuestFirmware::Arm64Sb => {
                "AAVMF (ARM64) with Secure Boot: signed shim and GRUB over TFTP \
                 (not with --user-net)"
            }
            GuestFirmware::Arm64Http => {
                "AAVMF (ARM64) UEFI HTTP Boot: a GRUB with http, everything over HTTP \
                 (not with --user-net)"
            }
        }
    }

    /// The loader a machine booted on this path needs: iPXE, or shim (Secure Boot,
    /// and ARM64, for which distributions ship no iPXE), or GRUB with http for ARM64
    /// HTTP Boot.
    pub fn loader(self) -> Loader {
        match self {
            GuestFirmware::Bios
            | GuestFirmware::Uefi
            | GuestFirmware::UefiHttp
            | GuestFirmware::Uefi6
            | GuestFirmware::UefiHttp6 => Loader::Ipxe,
            GuestFirmware::UefiSb | GuestFirmware::Arm64 | GuestFirmware::Arm64Sb => Loader::Shim,
            GuestFirmware::Arm64Http => Loader::Grub,
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
            GuestFirmware::UefiSb => Firmware::UefiSecureBoot,
            GuestFirmware::Arm64 | GuestFirmware::Arm64Http => Firmware::Arm64,
            GuestFirmware::Arm64Sb => Firmware::Arm64SecureBoot,
        }
    }

    /// Why this boot path cannot run on `network`, if it cannot.
    pub fn unsupported_on(self, network: Network) -> Option<&'static str> {
        match (self, network) {
            (GuestFirmware::UefiHttp | GuestFirmware::Arm64Http, Network::User) => Some(
                "UEFI HTTP Boot needs a DHCP offer with option 60 HTTPClient and a URL, \
                 which only ProxyDHCP sends; QEMU's user networking cannot",
            ),
            (GuestFirmware::Uefi6 | GuestFirmware::UefiHttp6, Network::User) => Some(
                "IPv6 boots need ironpxe's DHCPv6 on the guest's segment; QEMU's user \
                 networking has no DHCPv6 server ironpxe can stand beside",
            ),
            (
                GuestFirmware::UefiSb | GuestFirmware::Arm64 | GuestFirmware::Arm64Sb,
                Network::User,
            ) => Some(
                "shim and GRUB come over TFTP from the server the DHCP answers name, \
                 which QEMU's user networking does not carry",
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
            (GuestFirmware::UefiSb, _) => GuestConfig::uefi_secure_boot(),
            (GuestFirmware::Arm64, _) => GuestConfig::arm64(),
            (GuestFirmware::Arm64Sb, _) => GuestConfig::arm64_secure_boot(),
            (GuestFirmware::Arm64Http, _) => GuestConfig::arm64_http_boot(),
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
            Firmware::UefiSecureBoot => needs.secure_boot = true,
            Firmware::Arm64 | Firmware::Arm64SecureBoot => needs.arm64 = true,
        }
        if self == GuestFirmware::Arm64Http {
            needs.grub_http = true;
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
        let e = "riscv64".parse::<GuestFirmware>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown firmware \"riscv64\": expected one of bios, uefi, uefi-http, uefi6, \
             uefi-http6, uefi-sb, arm64, arm64-sb, arm64-http"
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
        for f in [
            GuestFirmware::UefiHttp,
            GuestFirmware::UefiSb,
            GuestFirmware::Arm64,
            GuestFirmware::Arm64Sb,
            GuestFirmware::Arm64Http,
        ] {
            assert!(f.unsupported_on(Network::User).is_some(), "{f}");
        }
        let sb = GuestFirmware::UefiSb.guest_config(Network::Namespaces);
        assert_eq!(sb.firmware, Firmware::UefiSecureBoot);
        assert!(!sb.ipxe_rom);
        let http = GuestFirmware::Arm64Http.guest_config(Network::Namespaces);
        assert!(http.uefi_http_only && http.firmware.is_arm64());
        assert_eq!(GuestFirmware::Arm64Sb.loader(), Loader::Shim);
        assert_eq!(GuestFirmware::Arm64Http.loader(), Loader::Grub);
        assert_eq!(GuestFirmware::Uefi.loader(), Loader::Ipxe);
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
