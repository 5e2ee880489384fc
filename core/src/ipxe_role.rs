//! The iPXE binaries ironpxe chainloads: one table of roles.
//!
//! Each [`IpxeRole`] is one binary slot. [`IpxeRole::ALL`] lists them, and
//! [`IpxeRole::spec`] gives everything the crates must agree on about a slot: the
//! command-line flag and `[ipxe]` key that set its path, the file names binary
//! discovery looks for, and the option 93 firmware it serves. The DHCP core picks a
//! binary with [`IpxeBinaries::for_arch`] and [`IpxeBinaries::for_http_boot`]; the
//! binary's flags, config merge and discovery all iterate the same table.
//!
//! A [`RoleMap`] holds one value per role: a path ([`RoleMap<PathBuf>`] for flags and
//! the config file) or a TFTP/HTTP file name ([`IpxeBinaries`]).
//!
//! [`RoleMap<PathBuf>`]: RoleMap

use std::collections::BTreeMap;
use std::fmt;

use crate::ClientArch;

/// One iPXE binary slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpxeRole {
    /// x86 BIOS PXE, e.g. `undionly.kpxe`.
    Bios,
    /// 32-bit EFI.
    Efi32,
    /// 64-bit EFI, e.g. `ipxe.efi`.
    Efi64,
    /// Chainloaded into BIOS clients that already run an iPXE without HTTP
    /// (pixiecore's `--ipxe-ipxe`), e.g. `ipxe.pxe`.
    Ipxe,
    /// ARM64 EFI, e.g. `snp.efi` of an arm64 iPXE build.
    Arm64,
    /// The x64 iPXE that drives the NIC through the firmware's own driver
    /// (`snponly.efi`), given to UEFI HTTP Boot x64 clients. An HTTP Boot client has
    /// just used that driver, so it is safe there, and it starts about 4 s faster
    /// than `ipxe.efi`.
    Snponly,
}

/// What the crates agree on about one [`IpxeRole`].
#[derive(Debug, PartialEq, Eq)]
pub struct RoleSpec {
    /// Short name, for logs: `bios`, `efi64`...
    pub name: &'static str,
    /// The long command-line flag taking the binary's path, without `--`
    /// (`ipxe-bios`). `None`: the role has no path flag.
    pub flag: Option<&'static str>,
    /// The key of the binary's path in the config file's `[ipxe]` table.
    pub config_key: Option<&'static str>,
    /// Help text of the flag (one line, no final period, like the other flags).
    pub help: &'static str,
    /// File names looked for in the iPXE directories when no path is given, in order
    /// of preference. Empty: the binary is only used when given.
    pub default_names: &'static [&'static str],
    /// Firmware (option 93) chainloaded with this binary over TFTP.
    pub chainload: &'static [ClientArch],
    /// Only for clients that already run iPXE: they get this binary instead of the
    /// one for their firmware.
    pub already_ipxe: bool,
    /// Firmware whose UEFI HTTP Boot downloads this binary.
    pub http_boot: &'static [ClientArch],
    /// The role whose binary is used when this one has none.
    pub fallback: Option<IpxeRole>,
}

impl IpxeRole {
    /// Every role, in the order binaries are discovered and reported.
    pub const ALL: [IpxeRole; 6] = [
        IpxeRole::Bios,
        IpxeRole::Efi32,
        IpxeRole::Efi64,
        IpxeRole::Ipxe,
        IpxeRole::Arm64,
        IpxeRole::Snponly,
    ];

    /// The table row of this role.
    pub const fn spec(self) -> &'static RoleSpec {
        use ClientArch::*;
        match self {
            IpxeRole::Bios => &RoleSpec {
                name: "bios",
                flag: Some("ipxe-bios"),
                config_key: Some("bios"),
                help: "iPXE binary for x86 BIOS clients \
                       [default: undionly.kpxe from /usr/lib/ipxe or /usr/share/ipxe]",
                default_names: &["undionly.kpxe"],
                chainload: &[Bios],
                already_ipxe: false,
                http_boot: &[],
                fallback: None,
            },
            IpxeRole::Efi32 => &RoleSpec {
                name: "efi32",
                flag: Some("ipxe-efi32"),
                config_key: Some("efi32"),
                help: "iPXE binary for 32-bit EFI clients",
                default_names: &["ipxe-i386.efi"],
                chainload: &[EfiIa32],
                already_ipxe: false,
                http_boot: &[HttpIa32, EfiIa32],
                fallback: None,
            },
            IpxeRole::Efi64 => &RoleSpec {
                name: "efi64",
                flag: Some("ipxe-efi64"),
                config_key: Some("efi64"),
                help: "iPXE binary for 64-bit EFI clients \
                       [default: ipxe.efi from the same places]",
                default_names: &["ipxe.efi", "ipxe-x86_64.efi"],
                chainload: &[EfiX64, EfiBc],
                already_ipxe: false,
                // Through Snponly's fallback.
                http_boot: &[],
                fallback: None,
            },
            IpxeRole::Ipxe => &RoleSpec {
                name: "ipxe",
                flag: Some("ipxe-ipxe"),
                config_key: Some("ipxe"),
                help: "iPXE binary chainloaded into BIOS clients that already run an \
                       iPXE without HTTP support [default: ipxe.pxe]",
                default_names: &["ipxe.pxe"],
                chainload: &[Bios],
                already_ipxe: true,
                http_boot: &[],
                fallback: Some(IpxeRole::Bios),
            },
            IpxeRole::Arm64 => &RoleSpec {
                name: "arm64",
                flag: Some("ipxe-arm64"),
                config_key: Some("arm64"),
                help: "iPXE binary for ARM64 UEFI clients (option 93 = 11 over TFTP, \
                       19 over UEFI HTTP Boot), e.g. snp.efi of an arm64 iPXE build. \
                       Does not turn off the search for the x86 binaries",
                // Distributions ship no arm64 iPXE next to the x86 ones.
                default_names: &[],
                chainload: &[EfiArm64],
                already_ipxe: false,
                http_boot: &[HttpArm64, EfiArm64],
                fallback: None,
            },
            IpxeRole::Snponly => &RoleSpec {
                name: "snponly",
                // Found next to the other binaries; `--ipxe-snponly` (a switch) also
                // makes it the Efi64 binary.
                flag: None,
                config_key: None,
                help: "Chainload snponly.efi (found next to ipxe.efi) into EFI x64 PXE \
                       clients instead of ipxe.efi: it drives the NIC through the \
                       firmware's own driver. UEFI HTTP Boot clients get snponly.efi \
                       whenever it is found",
                default_names: &["snponly.efi", "ipxe-snponly-x86_64.efi"],
                chainload: &[],
                already_ipxe: false,
                http_boot: &[HttpX64, EfiX64, EfiBc],
                fallback: Some(IpxeRole::Efi64),
            },
        }
    }

    /// Short name, for logs.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The long flag taking this role's path, without `--`.
    pub const fn flag(self) -> Option<&'static str> {
        self.spec().flag
    }

    /// The key of this role's path in `[ipxe]`.
    pub const fn config_key(self) -> Option<&'static str> {
        self.spec().config_key
    }

    /// The role whose `[ipxe]` key is `key`.
    pub fn from_config_key(key: &str) -> Option<IpxeRole> {
        Self::ALL.into_iter().find(|r| r.config_key() == Some(key))
    }

    /// The role a client of `arch` is chainloaded with over TFTP. `already_ipxe`:
    /// the client runs iPXE already (without HTTP, or chainloaded on purpose).
    pub fn for_chainload(arch: ClientArch, already_ipxe: bool) -> Option<IpxeRole> {
        let serving = |ipxe_only: bool| {
            Self::ALL.into_iter().find(|r| {
                let s = r.spec();
                s.already_ipxe == ipxe_only && s.chainload.contains(&arch)
            })
        };
        already_ipxe
            .then(|| serving(true))
            .flatten()
            .or_else(|| serving(false))
    }

    /// The role a UEFI HTTP Boot client of `arch` downloads.
    pub fn for_http_boot(arch: ClientArch) -> Option<IpxeRole> {
        Self::ALL
            .into_iter()
            .find(|r| r.spec().http_boot.contains(&arch))
    }
}

impl fmt::Display for IpxeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per [`IpxeRole`], for the roles that have one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMap<T>(BTreeMap<IpxeRole, T>);

impl<T> Default for RoleMap<T> {
    fn default() -> Self {
        RoleMap(BTreeMap::new())
    }
}

impl<T> RoleMap<T> {
    /// The value of `role`.
    pub fn get(&self, role: IpxeRole) -> Option<&T> {
        self.0.get(&role)
    }

    /// Sets the value of `role`, returning the previous one.
    pub fn insert(&mut self, role: IpxeRole, value: T) -> Option<T> {
        self.0.insert(role, value)
    }

    /// Clears `role`, returning its value.
    pub fn remove(&mut self, role: IpxeRole) -> Option<T> {
        self.0.remove(&role)
    }

    /// With `role` set to `value`.
    pub fn with(mut self, role: IpxeRole, value: impl Into<T>) -> Self {
        self.0.insert(role, value.into());
        self
    }

    /// With `role` cleared.
    pub fn without(mut self, role: IpxeRole) -> Self {
        self.0.remove(&role);
        self
    }

    /// The roles that have a value, in [`IpxeRole::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (IpxeRole, &T)> {
        self.0.iter().map(|(r, v)| (*r, v))
    }

    /// True when no role has a value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `role`, or of its fallback.
    fn or_fallback(&self, role: IpxeRole) -> Option<&T> {
        self.get(role)
            .or_else(|| role.spec().fallback.and_then(|f| self.get(f)))
    }
}

impl<T> FromIterator<(IpxeRole, T)> for RoleMap<T> {
    fn from_iter<I: IntoIterator<Item = (IpxeRole, T)>>(iter: I) -> Self {
        RoleMap(iter.into_iter().collect())
    }
}

/// The TFTP (and `/_/bin/`) file names of the iPXE binaries, by role.
pub type IpxeBinaries = RoleMap<String>;

impl RoleMap<String> {
    /// The file name of `role`'s binary.
    pub fn file(&self, role: IpxeRole) -> Option<&str> {
        self.get(role).map(String::as_str)
    }

    /// The binary a client of `arch` is chainloaded with, if one is configured.
    pub fn for_arch(&self, arch: ClientArch, already_ipxe: bool) -> Option<&str> {
        let role = IpxeRole::for_chainload(arch, already_ipxe)?;
        self.or_fallback(role).map(String::as_str)
    }

    /// The binary a UEFI HTTP Boot client of `arch` downloads, if one is configured.
    pub fn for_http_boot(&self, arch: ClientArch) -> Option<&str> {
        let role = IpxeRole::for_http_boot(arch)?;
        self.or_fallback(role).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_table_is_consistent() {
        let mut names = HashSet::new();
        let mut flags = HashSet::new();
        let mut keys = HashSet::new();
        // RoleMap iterates in enum order; ALL promises that order too.
        assert!(IpxeRole::ALL.windows(2).all(|w| w[0] < w[1]));
        for role in IpxeRole::ALL {
            let s = role.spec();
            assert!(names.insert(s.name), "{role:?}");
            if let Some(f) = s.flag {
                assert!(flags.insert(f), "{role:?}");
            }
            if let Some(k) = s.config_key {
                assert!(keys.insert(k), "{role:?}");
                assert_eq!(IpxeRole::from_config_key(k), Some(role));
            }
            if let Some(f) = s.fallback {
                assert!(f.spec().fallback.is_none(), "fallbacks do not chain");
            }
        }
        assert_eq!(IpxeRole::from_config_key("snponly"), None);
        // Each firmware has at most one role per boot path, so the order of ALL does
        // not decide which binary a client gets.
        for code in 0..=u16::MAX {
            let arch = ClientArch::from_code(code);
            let count = |f: &dyn Fn(&RoleSpec) -> bool| {
                IpxeRole::ALL.iter().filter(|r| f(r.spec())).count()
            };
            for ipxe_only in [false, true] {
                let n = count(&|s| s.already_ipxe == ipxe_only && s.chainload.contains(&arch));
                assert!(n <= 1, "{arch} has {n} chainload roles");
            }
            let n = count(&|s| s.http_boot.contains(&arch));
            assert!(n <= 1, "{arch} has {n} HTTP Boot roles");
        }
    }

    fn all() -> IpxeBinaries {
        IpxeBinaries::default()
            .with(IpxeRole::Bios, "undionly.kpxe")
            .with(IpxeRole::Efi32, "ipxe-i386.efi")
            .with(IpxeRole::Efi64, "ipxe.efi")
            .with(IpxeRole::Ipxe, "ipxe.pxe")
            .with(IpxeRole::Arm64, "snp-arm64.efi")
            .with(IpxeRole::Snponly, "snponly.efi")
    }

    #[test]
    fn binaries_by_firmware() {
        use ClientArch::*;
        let b = all();
        let pxe = |arch, ipxe| b.for_arch(arch, ipxe);
        assert_eq!(pxe(Bios, false), Some("undionly.kpxe"));
        assert_eq!(pxe(Bios, true), Some("ipxe.pxe"));
        assert_eq!(pxe(EfiIa32, false), Some("ipxe-i386.efi"));
        assert_eq!(pxe(EfiX64, false), Some("ipxe.efi"));
        assert_eq!(pxe(EfiBc, true), Some("ipxe.efi"));
        assert_eq!(pxe(EfiArm64, false), Some("snp-arm64.efi"));
        for arch in [EfiArm32, HttpX64, HttpArm64, Unknown(42)] {
            assert_eq!(pxe(arch, false), None, "{arch}");
        }
        assert_eq!(b.for_http_boot(HttpX64), Some("snponly.efi"));
        assert_eq!(b.for_http_boot(EfiBc), Some("snponly.efi"));
        assert_eq!(b.for_http_boot(HttpIa32), Some("ipxe-i386.efi"));
        assert_eq!(b.for_http_boot(HttpArm64), Some("snp-arm64.efi"));
        assert_eq!(b.for_http_boot(Bios), None);
        assert_eq!(b.for_http_boot(HttpArm32), None);
    }

    #[test]
    fn missing_roles_fall_back() {
        use ClientArch::*;
        let b = all().without(IpxeRole::Ipxe).without(IpxeRole::Snponly);
        assert_eq!(b.for_arch(Bios, true), Some("undionly.kpxe"));
        assert_eq!(b.for_http_boot(HttpX64), Some("ipxe.efi"));
        let b = b.without(IpxeRole::Efi64).without(IpxeRole::Arm64);
        assert_eq!(b.for_http_boot(HttpX64), None);
        assert_eq!(b.for_arch(EfiArm64, false), None);
        assert_eq!(b.for_http_boot(HttpArm64), None);
    }
}
