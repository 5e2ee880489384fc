//! The loaders a machine boots through, and the names the crates agree on for them.
//!
//! A [`BootSpec`](crate::BootSpec) is booted through one [`Loader`]:
//!
//! - [`Loader::Ipxe`] (the default): the firmware is chainloaded into iPXE, which
//!   fetches a script, kernel and initrds over HTTP.
//! - [`Loader::Shim`]: the firmware loads a signed shim, shim loads a signed GRUB, and
//!   GRUB loads the machine's kernel and initrds. This is the chain Secure Boot
//!   firmware accepts (shim is signed by Microsoft's UEFI CA, GRUB and the kernel by
//!   the distribution, whose key shim carries).
//! - [`Loader::Grub`]: GRUB without shim, for firmware without Secure Boot, or a GRUB
//!   built with the http module for UEFI HTTP Boot.
//!
//! The binaries of the shim and GRUB chains form one table, like the iPXE roles of
//! [`crate::ipxe_role`]: each [`LoaderBinary`] has its command-line flag, its key in
//! the config file's `[loaders]` table, the places distributions install it, and the
//! one name under which ironpxe serves it over TFTP and at `/_/bin/NAME` over HTTP.
//! [`LoaderSet`] says which of them a running server has, and which GRUB builds can
//! fetch over HTTP; ProxyDHCP picks a client's first file with
//! [`LoaderSet::first_file`].
//!
//! What GRUB fetches from ironpxe is named by [`GrubPath`], built and parsed here
//! only: the dispatcher `grub/grub.cfg` (the file Debian's signed netboot GRUB reads,
//! its prefix being `/grub`), one configuration per MAC, and the machine's kernel and
//! initrds under names derived from their file ids. A kernel or initrd path also says
//! where it stands in the boot, so the transfer of the last file can mark the boot
//! ([`GrubPath::is_last`]), which is how a boot through signed GRUB is seen to end:
//! such a GRUB cannot call ironpxe's `/_/booting`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::{ClientArch, FileId, MacAddr};

/// How a machine's boot spec is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Loader {
    /// iPXE: chainloaded over TFTP (or directly, for iPXE NIC ROMs), then HTTP.
    #[default]
    Ipxe,
    /// GRUB without shim.
    Grub,
    /// A signed shim, then a signed GRUB: the Secure Boot chain.
    Shim,
}

impl Loader {
    /// Every loader, in the order messages list them.
    pub const ALL: [Loader; 3] = [Loader::Ipxe, Loader::Grub, Loader::Shim];

    /// The name in the config file, the API answer and `--loader`.
    pub const fn name(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe",
            Loader::Grub => "grub",
            Loader::Shim => "shim",
        }
    }

    /// Whether the machine ends up in GRUB (shim or GRUB alone).
    pub const fn uses_grub(self) -> bool {
        matches!(self, Loader::Grub | Loader::Shim)
    }
}

impl fmt::Display for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A loader name that is none of `ipxe`, `grub`, `shim`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown loader {given:?}: expected \"ipxe\", \"grub\" or \"shim\"")]
pub struct UnknownLoader {
    /// What was given.
    pub given: String,
}

impl FromStr for Loader {
    type Err = UnknownLoader;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Loader::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| UnknownLoader {
                given: s.to_string(),
            })
    }
}

/// The two CPU families shim and GRUB are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EfiCpu {
    /// x86-64 UEFI.
    X64,
    /// 64-bit ARM UEFI.
    Arm64,
}

impl EfiCpu {
    /// Both, in table order.
    pub const ALL: [EfiCpu; 2] = [EfiCpu::X64, EfiCpu::Arm64];

    /// The CPU of a firmware that can run shim or GRUB: EFI x64 PXE (7, 9) and HTTP
    /// Boot (16), ARM64 PXE (11) and HTTP Boot (19). `None` for BIOS, 32-bit EFI and
    /// anything else, which have no shim or GRUB netboot image.
    pub fn of(arch: ClientArch) -> Option<EfiCpu> {
        match arch {
            ClientArch::EfiX64 | ClientArch::EfiBc | ClientArch::HttpX64 => Some(EfiCpu::X64),
            ClientArch::EfiArm64 | ClientArch::HttpArm64 => Some(EfiCpu::Arm64),
            _ => None,
        }
    }

    /// Short name for logs: `x64`, `arm64`.
    pub const fn name(self) -> &'static str {
        match self {
            EfiCpu::X64 => "x64",
            EfiCpu::Arm64 => "arm64",
        }
    }

    /// GRUB's `$grub_cpu` on this CPU.
    pub const fn grub_cpu(self) -> &'static str {
        match self {
            EfiCpu::X64 => "x86_64",
            EfiCpu::Arm64 => "arm64",
        }
    }

    /// GRUB's platform directory name (`x86_64-efi`, `arm64-efi`).
    pub const fn grub_platform(self) -> &'static str {
        match self {
            EfiCpu::X64 => "x86_64-efi",
            EfiCpu::Arm64 => "arm64-efi",
        }
    }
}

impl fmt::Display for EfiCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shim or GRUB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoaderKind {
    /// The signed first stage.
    Shim,
    /// GRUB, the second stage under shim or the only one.
    Grub,
}

/// One shim or GRUB binary slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoaderBinary {
    /// shim for x86-64.
    ShimX64,
    /// GRUB for x86-64.
    GrubX64,
    /// shim for ARM64.
    ShimArm64,
    /// GRUB for ARM64.
    GrubArm64,
}

/// What the crates agree on about one [`LoaderBinary`].
#[derive(Debug, PartialEq, Eq)]
pub struct LoaderBinarySpec {
    /// Shim or GRUB.
    pub kind: LoaderKind,
    /// Its CPU.
    pub cpu: EfiCpu,
    /// The long flag taking its path, without `--`.
    pub flag: &'static str,
    /// Its key in the config file's `[loaders]` table.
    pub config_key: &'static str,
    /// Help of the flag (one line, no final period).
    pub help: &'static str,
    /// Where distributions install it, in order of preference: Debian and Ubuntu,
    /// then Fedora.
    pub default_paths: &'static [&'static str],
    /// The Debian package that installs it (for messages).
    pub package: &'static str,
    /// The name ironpxe serves it under, over TFTP and at `/_/bin/NAME`. shim loads
    /// GRUB by its fixed name (`grubx64.efi`, `grubaa64.efi`) from the directory of
    /// the BOOTP file field, so these names are shim's own.
    pub served_as: &'static str,
}

impl LoaderBinary {
    /// Every slot, in the order binaries are discovered and reported.
    pub const ALL: [LoaderBinary; 4] = [
        LoaderBinary::ShimX64,
        LoaderBinary::GrubX64,
        LoaderBinary::ShimArm64,
        LoaderBinary::GrubArm64,
    ];

    /// The table row of this slot.
    pub const fn spec(self) -> &'static LoaderBinarySpec {
        match self {
            LoaderBinary::ShimX64 => &LoaderBinarySpec {
                kind: LoaderKind::Shim,
                cpu: EfiCpu::X64,
                flag: "shim-x64",
                config_key: "shim_x64",
                help: "Signed shim for x86-64 UEFI clients of loader \"shim\" \
                       [default: /usr/lib/shim/shimx64.efi.signed, or Fedora's \
                       /boot/efi/EFI/fedora/shimx64.efi]",
                default_paths: &[
                    "/usr/lib/shim/shimx64.efi.signed.latest",
                    "/usr/lib/shim/shimx64.efi.signed",
                    "/boot/efi/EFI/fedora/shimx64.efi",
                ],
                package: "shim-signed",
                served_as: "shimx64.efi",
            },
            LoaderBinary::GrubX64 => &LoaderBinarySpec {
                kind: LoaderKind::Grub,
                cpu: EfiCpu::X64,
                flag: "grub-x64",
                config_key: "grub_x64",
                help: "GRUB for x86-64 UEFI clients of loader \"grub\" or \"shim\" \
                       [default: Debian's signed netboot GRUB \
                       /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed, or \
                       Fedora's /boot/efi/EFI/fedora/grubx64.efi]",
                default_paths: &[
                    "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
                    "/boot/efi/EFI/fedora/grubx64.efi",
                ],
                package: "grub-efi-amd64-signed",
                served_as: "grubx64.efi",
            },
            LoaderBinary::ShimArm64 => &LoaderBinarySpec {
                kind: LoaderKind::Shim,
                cpu: EfiCpu::Arm64,
                flag: "shim-arm64",
                config_key: "shim_arm64",
                help: "Signed shim for ARM64 UEFI clients of loader \"shim\" \
                       [default: /usr/lib/shim/shimaa64.efi.signed, or Fedora's \
                       /boot/efi/EFI/fedora/shimaa64.efi]",
                default_paths: &[
                    "/usr/lib/shim/shimaa64.efi.signed.latest",
                    "/usr/lib/shim/shimaa64.efi.signed",
                    "/boot/efi/EFI/fedora/shimaa64.efi",
                ],
                package: "shim-signed:arm64",
                served_as: "shimaa64.efi",
            },
            LoaderBinary::GrubArm64 => &LoaderBinarySpec {
                kind: LoaderKind::Grub,
                cpu: EfiCpu::Arm64,
                flag: "grub-arm64",
                config_key: "grub_arm64",
                help: "GRUB for ARM64 UEFI clients of loader \"grub\" or \"shim\" \
                       [default: Debian's signed netboot GRUB \
                       /usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed, or \
                       Fedora's /boot/efi/EFI/fedora/grubaa64.efi]",
                default_paths: &[
                    "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
                    "/boot/efi/EFI/fedora/grubaa64.efi",
                ],
                package: "grub-efi-arm64-signed:arm64",
                served_as: "grubaa64.efi",
            },
        }
    }

    /// The slot of `kind` for `cpu`.
    pub fn of(kind: LoaderKind, cpu: EfiCpu) -> LoaderBinary {
        match (kind, cpu) {
            (LoaderKind::Shim, EfiCpu::X64) => LoaderBinary::ShimX64,
            (LoaderKind::Grub, EfiCpu::X64) => LoaderBinary::GrubX64,
            (LoaderKind::Shim, EfiCpu::Arm64) => LoaderBinary::ShimArm64,
            (LoaderKind::Grub, EfiCpu::Arm64) => LoaderBinary::GrubArm64,
        }
    }

    /// The slot whose `[loaders]` key is `key`.
    pub fn from_config_key(key: &str) -> Option<LoaderBinary> {
        Self::ALL.into_iter().find(|b| b.spec().config_key == key)
    }

    /// The slot served under `name` (`shimx64.efi`...).
    pub fn from_served_name(name: &str) -> Option<LoaderBinary> {
        let name = name.strip_prefix('/').unwrap_or(name);
        Self::ALL.into_iter().find(|b| b.spec().served_as == name)
    }

    /// Short name for logs: `shim-x64`.
    pub const fn name(self) -> &'static str {
        self.spec().flag
    }
}

impl fmt::Display for LoaderBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per [`LoaderBinary`], for the slots that have one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderMap<T>(BTreeMap<LoaderBinary, T>);

impl<T> Default for LoaderMap<T> {
    fn default() -> Self {
        LoaderMap(BTreeMap::new())
    }
}

impl<T> LoaderMap<T> {
    /// The value of `bin`.
    pub fn get(&self, bin: LoaderBinary) -> Option<&T> {
        self.0.get(&bin)
    }

    /// Sets the value of `bin`, returning the previous one.
    pub fn insert(&mut self, bin: LoaderBinary, value: T) -> Option<T> {
        self.0.insert(bin, value)
    }

    /// With `bin` set to `value`.
    pub fn with(mut self, bin: LoaderBinary, value: impl Into<T>) -> Self {
        self.0.insert(bin, value.into());
        self
    }

    /// The slots that have a value, in [`LoaderBinary::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (LoaderBinary, &T)> {
        self.0.iter().map(|(b, v)| (*b, v))
    }

    /// True when no slot has a value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(LoaderBinary, T)> for LoaderMap<T> {
    fn from_iter<I: IntoIterator<Item = (LoaderBinary, T)>>(iter: I) -> Self {
        LoaderMap(iter.into_iter().collect())
    }
}

/// Why a client cannot be given the loader its spec asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoaderGap {
    /// The firmware has no shim or GRUB netboot image (BIOS, 32-bit EFI): it is
    /// booted with iPXE instead.
    #[error("{arch} firmware has no {loader} netboot image (and no Secure Boot); it boots with iPXE instead")]
    NoCpu {
        /// The firmware.
        arch: ClientArch,
        /// The loader the spec asked for.
        loader: Loader,
    },
    /// A binary the chain needs was not found or given.
    #[error("loader {loader:?} for {cpu} clients needs {missing} ({served}), which this server does not have: install {package} or pass --{flag} FILE ([loaders] {key})",
        served = .missing.spec().served_as,
        package = .missing.spec().package,
        flag = .missing.spec().flag,
        key = .missing.spec().config_key)]
    Missing {
        /// The loader asked for.
        loader: Loader,
        /// The client's CPU.
        cpu: EfiCpu,
        /// The slot with no binary.
        missing: LoaderBinary,
    },
    /// A UEFI HTTP Boot client would end in a GRUB that cannot fetch over HTTP.
    #[error("UEFI HTTP Boot {cpu} client: GRUB {cpu} ({served}) has no http module, so it could not fetch its configuration, kernel or initrds over HTTP (Debian's signed GRUB has none); boot it over PXE, with loader \"ipxe\", or give a GRUB built with http (--{flag})",
        served = LoaderBinary::of(LoaderKind::Grub, *.cpu).spec().served_as,
        flag = LoaderBinary::of(LoaderKind::Grub, *.cpu).spec().flag)]
    GrubWithoutHttp {
        /// The client's CPU.
        cpu: EfiCpu,
    },
}

/// The shim and GRUB binaries a server has, by the names it serves them under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoaderSet {
    names: LoaderMap<String>,
    grub_http: BTreeSet<EfiCpu>,
}

impl LoaderSet {
    /// With `bin` served (under its [`LoaderBinarySpec::served_as`] name).
    pub fn with(mut self, bin: LoaderBinary) -> Self {
        self.insert(bin);
        self
    }

    /// Serves `bin`.
    pub fn insert(&mut self, bin: LoaderBinary) {
        self.names.insert(bin, bin.spec().served_as.to_string());
    }

    /// Records that the GRUB of `cpu` has the http module.
    pub fn with_grub_http(mut self, cpu: EfiCpu) -> Self {
        self.grub_http.insert(cpu);
        self
    }

    /// Records whether the GRUB of `cpu` has the http module.
    pub fn set_grub_http(&mut self, cpu: EfiCpu, http: bool) {
        if http {
            self.grub_http.insert(cpu);
        } else {
            self.grub_http.remove(&cpu);
        }
    }

    /// Whether `bin` is served.
    pub fn has(&self, bin: LoaderBinary) -> bool {
        self.names.get(bin).is_some()
    }

    /// Whether the GRUB of `cpu` can fetch over HTTP.
    pub fn grub_has_http(&self, cpu: EfiCpu) -> bool {
        self.grub_http.contains(&cpu)
    }

    /// True when no shim or GRUB is served.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The file a client of `arch` whose spec asks for `loader` fetches first (TFTP
    /// name, or `/_/bin/` name for UEFI HTTP Boot), or why it cannot have one.
    /// `loader` must not be [`Loader::Ipxe`], which has no shim or GRUB file: it
    /// answers [`LoaderGap::NoCpu`].
    pub fn first_file(&self, loader: Loader, arch: ClientArch) -> Result<&str, LoaderGap> {
        let cpu = EfiCpu::of(arch)
            .filter(|_| loader.uses_grub())
            .ok_or(LoaderGap::NoCpu { arch, loader })?;
        let grub = LoaderBinary::of(LoaderKind::Grub, cpu);
        let need = |bin: LoaderBinary| {
            self.names
                .get(bin)
                .map(String::as_str)
                .ok_or(LoaderGap::Missing {
                    loader,
                    cpu,
                    missing: bin,
                })
        };
        // The chain ends in GRUB either way; without it shim has nothing to load.
        let grub_name = need(grub)?;
        if arch.is_http_boot() && !self.grub_has_http(cpu) {
            return Err(LoaderGap::GrubWithoutHttp { cpu });
        }
        match loader {
            Loader::Shim => need(LoaderBinary::of(LoaderKind::Shim, cpu)),
            _ => Ok(grub_name),
        }
    }
}

/// The directory Debian's signed netboot GRUB has as its prefix (`/grub`): it reads
/// `grub/grub.cfg` from its TFTP or HTTP server, shared by x64 and arm64.
pub const GRUB_DIR: &str = "grub";

/// Where a kernel or initrd stands in a machine's boot, as its [`GrubPath`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrubStep {
    /// The kernel, followed by `initrds` initrds.
    Kernel {
        /// How many initrds follow.
        initrds: usize,
    },
    /// Initrd number `index` (from 1) of `of`.
    Initrd {
        /// Its position, from 1.
        index: usize,
        /// How many there are.
        of: usize,
    },
}

impl GrubStep {
    /// Whether this is the last file GRUB loads before it boots the kernel.
    pub fn is_last(self) -> bool {
        match self {
            GrubStep::Kernel { initrds } => initrds == 0,
            GrubStep::Initrd { index, of } => index == of,
        }
    }

    /// `kernel` or `initrd`.
    pub fn kind(self) -> &'static str {
        match self {
            GrubStep::Kernel { .. } => "kernel",
            GrubStep::Initrd { .. } => "initrd",
        }
    }

    fn write(self, out: &mut String) {
        use fmt::Write;
        let _ = match self {
            GrubStep::Kernel { initrds } => write!(out, "kernel+{initrds}"),
            GrubStep::Initrd { index, of } => write!(out, "initrd{index}of{of}"),
        };
    }

    fn parse(s: &str) -> Option<GrubStep> {
        let num = |t: &str| -> Option<usize> {
            // Digits only, no sign, no leading zero but "0", and a sane size: a path
            // names each step one way.
            if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            if t.len() > 1 && t.starts_with('0') {
                return None;
            }
            t.parse().ok()
        };
        if let Some(n) = s.strip_prefix("kernel+") {
            return Some(GrubStep::Kernel { initrds: num(n)? });
        }
        let rest = s.strip_prefix("initrd")?;
        let (index, of) = rest.split_once("of")?;
        let (index, of) = (num(index)?, num(of)?);
        (index >= 1 && index <= of).then_some(GrubStep::Initrd { index, of })
    }
}

/// A file GRUB asks ironpxe for, by TFTP or HTTP path (without the leading `/`).
///
/// | path | what |
/// |---|---|
/// | `grub/grub.cfg` | [`GrubPath::Dispatch`]: sources the machine's own file |
/// | `grub.cfg` | the same dispatcher, where a GRUB whose prefix is the directory of its own image (the TFTP root) looks |
/// | `grub/m/<mac>/<cpu>.cfg` | [`GrubPath::Machine`]: boots the machine's spec |
/// | `grub/m/<mac>/<step>/<id>/<name>` | [`GrubPath::File`]: a kernel or initrd |
/// | `grub/<platform>/<list>.lst` | [`GrubPath::ModuleList`]: GRUB's module lists |
///
/// `<mac>` is `aa:bb:cc:dd:ee:ff`, as GRUB's `$net_default_mac` writes it; `<cpu>`
/// GRUB's `$grub_cpu` (`x86_64`, `arm64`), so the booter learns which firmware asks;
/// `<step>`
/// is `kernel+N` (the kernel, followed by N initrds) or `initrdIofN`; `<id>` the
/// file's [`FileId`]; `<name>` its [`crate::FileRef::file_name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrubPath {
    /// `grub/grub.cfg`.
    Dispatch,
    /// The configuration of one machine.
    Machine {
        /// The machine.
        mac: MacAddr,
        /// The CPU its GRUB runs on.
        cpu: EfiCpu,
    },
    /// A kernel or initrd of one machine.
    File {
        /// The machine.
        mac: MacAddr,
        /// Where the file stands in the boot.
        step: GrubStep,
        /// The file.
        id: FileId,
        /// Its name, for people reading logs (and GRUB's `BOOT_IMAGE=`).
        name: String,
    },
    /// One of the module lists GRUB's normal mode reads at start (`command.lst`,
    /// `fs.lst`, `crypto.lst`, `terminal.lst`). A GRUB with its modules built in
    /// needs none; ironpxe serves them empty, so asking costs no failed transfer.
    ModuleList {
        /// The GRUB platform directory's CPU.
        cpu: EfiCpu,
        /// The list's file name.
        list: &'static str,
    },
}

/// The module lists GRUB's normal mode asks for.
const MODULE_LISTS: [&str; 4] = ["command.lst", "fs.lst", "crypto.lst", "terminal.lst"];

impl GrubPath {
    /// The path (no leading `/`).
    pub fn to_path(&self) -> String {
        match self {
            GrubPath::Dispatch => format!("{GRUB_DIR}/grub.cfg"),
            GrubPath::Machine { mac, cpu } => {
                format!("{GRUB_DIR}/m/{mac}/{}.cfg", cpu.grub_cpu())
            }
            GrubPath::File {
                mac,
                step,
                id,
                name,
            } => {
                let mut s = format!("{GRUB_DIR}/m/{mac}/");
                step.write(&mut s);
                s.push('/');
                s.push_str(id.as_str());
                s.push('/');
                s.push_str(name);
                s
            }
            GrubPath::ModuleList { cpu, list } => {
                format!("{GRUB_DIR}/{}/{list}", cpu.grub_platform())
            }
        }
    }

    /// Reads a requested path (one leading `/` allowed). `None` for anything else,
    /// including every path that would not be written back the same way.
    pub fn parse(path: &str) -> Option<GrubPath> {
        let path = path.strip_prefix('/').unwrap_or(path);
        if path == "grub.cfg" {
            return Some(GrubPath::Dispatch);
        }
        let rest = path.strip_prefix(GRUB_DIR)?.strip_prefix('/')?;
        if rest == "grub.cfg" {
            return Some(GrubPath::Dispatch);
        }
        if let Some((platform, list)) = rest.split_once('/') {
            let cpu = EfiCpu::ALL
                .into_iter()
                .find(|c| c.grub_platform() == platform);
            let list = MODULE_LISTS.into_iter().find(|l| *l == list);
            if let (Some(cpu), Some(list)) = (cpu, list) {
                return Some(GrubPath::ModuleList { cpu, list });
            }
        }
        let m = rest.strip_prefix("m/")?;
        if let Some((mac, cfg)) = m.split_once('/') {
            if let Some(cpu) = cfg.strip_suffix(".cfg") {
                let cpu = EfiCpu::ALL.into_iter().find(|c| c.grub_cpu() == cpu)?;
                return Some(GrubPath::Machine {
                    mac: canonical_mac(mac)?,
                    cpu,
                });
            }
        }
        let mut parts = m.split('/');
        let (mac, step, id, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let mac = canonical_mac(mac)?;
        let step = GrubStep::parse(step)?;
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        if name.is_empty()
            || name == "."
            || name == ".."
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return None;
        }
        Some(GrubPath::File {
            mac,
            step,
            id: FileId::from_wire(id),
            name: name.to_string(),
        })
    }

    /// The machine the path belongs to.
    pub fn mac(&self) -> Option<MacAddr> {
        match self {
            GrubPath::Machine { mac, .. } | GrubPath::File { mac, .. } => Some(*mac),
            _ => None,
        }
    }

    /// Whether this is the last file GRUB loads before booting the kernel: once its
    /// last byte is sent, the machine boots.
    pub fn is_last(&self) -> bool {
        matches!(self, GrubPath::File { step, .. } if step.is_last())
    }
}

/// A MAC written exactly as `Display` writes it, so each machine has one path.
fn canonical_mac(s: &str) -> Option<MacAddr> {
    let mac: MacAddr = s.parse().ok()?;
    (mac.to_string() == s).then_some(mac)
}

/// Files shim asks for next to itself before it loads GRUB, which distributions do
/// not ship for network boot. Their absence is normal, so a failed transfer of one
/// is not a failed boot.
const SHIM_PROBES: [&str; 3] = [
    "revocations_sku.efi",
    "revocations_sbat.efi",
    "shim_certificate_0.efi",
];

/// Whether a TFTP request for `path` is a file a shim or GRUB asks for on every boot
/// and does without: not finding it is routine, not a failure.
pub fn is_optional_probe(path: &str) -> bool {
    let path = path.strip_prefix('/').unwrap_or(path);
    let base = path.rsplit('/').next().unwrap_or(path);
    if SHIM_PROBES.contains(&base) {
        return true;
    }
    // The memdisk configuration of Debian's netboot GRUB looks for a per-platform
    // grub.cfg before the shared one.
    EfiCpu::ALL
        .iter()
        .any(|c| path == format!("{GRUB_DIR}/{}/grub.cfg", c.grub_platform()))
}

/// What a served path is in a shim or GRUB boot, for timelines and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderStep {
    /// shim or GRUB itself.
    Binary(LoaderKind),
    /// The dispatcher or a machine's configuration.
    Config,
    /// A kernel or initrd.
    File(GrubStep),
}

/// Classifies a TFTP or HTTP path of the loader chain; `None` for anything else.
pub fn loader_step(path: &str) -> Option<LoaderStep> {
    if let Some(bin) = LoaderBinary::from_served_name(path) {
        return Some(LoaderStep::Binary(bin.spec().kind));
    }
    match GrubPath::parse(path)? {
        GrubPath::Dispatch | GrubPath::Machine { .. } => Some(LoaderStep::Config),
        GrubPath::File { step, .. } => Some(LoaderStep::File(step)),
        GrubPath::ModuleList { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0x00, 0x01]);

    #[test]
    fn loader_names_round_trip() {
        for l in Loader::ALL {
            assert_eq!(l.name().parse::<Loader>(), Ok(l));
        }
        assert_eq!(Loader::default(), Loader::Ipxe);
        let e = "SHIM".parse::<Loader>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown loader \"SHIM\": expected \"ipxe\", \"grub\" or \"shim\""
        );
    }

    #[test]
    fn the_table_is_consistent() {
        let (mut flags, mut keys, mut names) = (HashSet::new(), HashSet::new(), HashSet::new());
        assert!(LoaderBinary::ALL.windows(2).all(|w| w[0] < w[1]));
        for b in LoaderBinary::ALL {
            let s = b.spec();
            assert!(flags.insert(s.flag));
            assert!(keys.insert(s.config_key));
            assert!(names.insert(s.served_as));
            assert_eq!(LoaderBinary::of(s.kind, s.cpu), b);
            assert_eq!(LoaderBinary::from_config_key(s.config_key), Some(b));
            assert_eq!(LoaderBinary::from_served_name(s.served_as), Some(b));
            assert!(!s.default_paths.is_empty());
            // Served names never collide with GRUB's own directory.
            assert!(GrubPath::parse(s.served_as).is_none());
        }
        // shim loads GRUB by these fixed names.
        assert_eq!(LoaderBinary::GrubX64.spec().served_as, "grubx64.efi");
        assert_eq!(LoaderBinary::GrubArm64.spec().served_as, "grubaa64.efi");
    }

    #[test]
    fn cpus_by_firmware() {
        use ClientArch::*;
        for (arch, cpu) in [
            (EfiX64, Some(EfiCpu::X64)),
            (EfiBc, Some(EfiCpu::X64)),
            (HttpX64, Some(EfiCpu::X64)),
            (EfiArm64, Some(EfiCpu::Arm64)),
            (HttpArm64, Some(EfiCpu::Arm64)),
            (Bios, None),
            (EfiIa32, None),
            (HttpIa32, None),
            (EfiArm32, None),
            (HttpArm32, None),
            (Unknown(42), None),
        ] {
            assert_eq!(EfiCpu::of(arch), cpu, "{arch}");
        }
    }

    fn all() -> LoaderSet {
        LoaderBinary::ALL
            .into_iter()
            .fold(LoaderSet::default(), LoaderSet::with)
    }

    #[test]
    fn first_files_by_loader_and_firmware() {
        use ClientArch::*;
        let s = all();
        assert_eq!(s.first_file(Loader::Shim, EfiX64), Ok("shimx64.efi"));
        assert_eq!(s.first_file(Loader::Shim, EfiBc), Ok("shimx64.efi"));
        assert_eq!(s.first_file(Loader::Grub, EfiBc), Ok("grubx64.efi"));
        assert_eq!(s.first_file(Loader::Shim, EfiArm64), Ok("shimaa64.efi"));
        assert_eq!(s.first_file(Loader::Grub, EfiArm64), Ok("grubaa64.efi"));
        for arch in [Bios, EfiIa32, HttpIa32] {
            assert_eq!(
                s.first_file(Loader::Shim, arch),
                Err(LoaderGap::NoCpu {
                    arch,
                    loader: Loader::Shim
                })
            );
        }
        assert!(matches!(
            s.first_file(Loader::Ipxe, EfiX64),
            Err(LoaderGap::NoCpu { .. })
        ));
        // HTTP Boot only with a GRUB that has http.
        assert_eq!(
            s.first_file(Loader::Grub, HttpArm64),
            Err(LoaderGap::GrubWithoutHttp { cpu: EfiCpu::Arm64 })
        );
        let h = all().with_grub_http(EfiCpu::Arm64);
        assert_eq!(h.first_file(Loader::Grub, HttpArm64), Ok("grubaa64.efi"));
        assert_eq!(h.first_file(Loader::Shim, HttpArm64), Ok("shimaa64.efi"));
        assert!(h.first_file(Loader::Shim, HttpX64).is_err());
        let msg = s.first_file(Loader::Shim, HttpX64).unwrap_err().to_string();
        assert!(msg.contains("has no http module"), "{msg}");
    }

    #[test]
    fn missing_binaries_are_named() {
        use ClientArch::*;
        let only_x64_shim = LoaderSet::default().with(LoaderBinary::ShimX64);
        let e = only_x64_shim.first_file(Loader::Shim, EfiX64).unwrap_err();
        assert_eq!(
            e,
            LoaderGap::Missing {
                loader: Loader::Shim,
                cpu: EfiCpu::X64,
                missing: LoaderBinary::GrubX64
            }
        );
        assert!(e.to_string().contains("grub-efi-amd64-signed"), "{e}");
        assert!(e.to_string().contains("--grub-x64"), "{e}");
        let grub_only = LoaderSet::default().with(LoaderBinary::GrubArm64);
        assert_eq!(
            grub_only.first_file(Loader::Grub, EfiArm64),
            Ok("grubaa64.efi")
        );
        assert!(matches!(
            grub_only.first_file(Loader::Shim, EfiArm64),
            Err(LoaderGap::Missing {
                missing: LoaderBinary::ShimArm64,
                ..
            })
        ));
    }

    #[test]
    fn grub_paths_round_trip() {
        let id = crate::FileRef::parse("/srv/vmlinuz").unwrap().id();
        for p in [
            GrubPath::Dispatch,
            GrubPath::Machine {
                mac: MAC,
                cpu: EfiCpu::X64,
            },
            GrubPath::Machine {
                mac: MAC,
                cpu: EfiCpu::Arm64,
            },
            GrubPath::File {
                mac: MAC,
                step: GrubStep::Kernel { initrds: 2 },
                id: id.clone(),
                name: "vmlinuz".into(),
            },
            GrubPath::File {
                mac: MAC,
                step: GrubStep::Initrd { index: 2, of: 2 },
                id: id.clone(),
                name: "initrd.img-6.1".into(),
            },
        ] {
            let s = p.to_path();
            assert_eq!(GrubPath::parse(&s), Some(p.clone()), "{s}");
            assert_eq!(GrubPath::parse(&format!("/{s}")), Some(p), "{s}");
        }
        assert_eq!(GrubPath::Dispatch.to_path(), "grub/grub.cfg");
        assert_eq!(
            GrubPath::Machine {
                mac: MAC,
                cpu: EfiCpu::Arm64
            }
            .to_path(),
            "grub/m/52:54:00:ab:00:01/arm64.cfg"
        );
        assert_eq!(GrubPath::parse("/grub.cfg"), Some(GrubPath::Dispatch));
        let k = GrubPath::File {
            mac: MAC,
            step: GrubStep::Kernel { initrds: 1 },
            id: id.clone(),
            name: "vmlinuz".into(),
        };
        assert_eq!(
            k.to_path(),
            format!("grub/m/52:54:00:ab:00:01/kernel+1/{id}/vmlinuz")
        );
        let list = GrubPath::parse("grub/arm64-efi/terminal.lst").unwrap();
        assert_eq!(
            list,
            GrubPath::ModuleList {
                cpu: EfiCpu::Arm64,
                list: "terminal.lst"
            }
        );
        assert_eq!(list.to_path(), "grub/arm64-efi/terminal.lst");
    }

    #[test]
    fn the_last_file_marks_the_boot() {
        let id = crate::FileRef::parse("/k").unwrap().id();
        let file = |step| GrubPath::File {
            mac: MAC,
            step,
            id: id.clone(),
            name: "k".into(),
        };
        assert!(file(GrubStep::Kernel { initrds: 0 }).is_last());
        assert!(!file(GrubStep::Kernel { initrds: 1 }).is_last());
        assert!(!file(GrubStep::Initrd { index: 1, of: 2 }).is_last());
        assert!(file(GrubStep::Initrd { index: 2, of: 2 }).is_last());
        assert!(!GrubPath::Machine {
            mac: MAC,
            cpu: EfiCpu::X64
        }
        .is_last());
        assert_eq!(file(GrubStep::Kernel { initrds: 1 }).mac(), Some(MAC));
    }

    #[test]
    fn odd_paths_are_not_grub_paths() {
        let id = "0123456789abcdef0123456789abcdef";
        for bad in [
            "",
            "grub",
            "grub/",
            "grub/other.cfg",
            "grub/m/52:54:00:ab:00:01.cfg",
            "grub/m/52:54:00:AB:00:01/x86_64.cfg",
            "grub/m/52-54-00-ab-00-01/x86_64.cfg",
            "grub/m/52:54:00:ab:00:01/i386.cfg",
            "grub/m/zz/arm64.cfg",
            "grub/m//arm64.cfg",
            "grubx/grub.cfg",
            "grub/x86_64-efi/grub.cfg",
            "grub/i386-pc/command.lst",
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{id}"),
            &format!("grub/m/52:54:00:ab:00:01/kernel+01/{id}/k"),
            &format!("grub/m/52:54:00:ab:00:01/kernel+-1/{id}/k"),
            &format!("grub/m/52:54:00:ab:00:01/initrd0of1/{id}/k"),
            &format!("grub/m/52:54:00:ab:00:01/initrd3of2/{id}/k"),
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{}/k", &id[1..]),
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{}/k", id.to_uppercase()),
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{id}/.."),
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{id}/a b"),
            &format!("grub/m/52:54:00:ab:00:01/kernel+1/{id}/k/x"),
            &format!("grub/m/52:54:00:ab:00:01/kernel+99999/{id}/k"),
        ] {
            assert_eq!(GrubPath::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn probes_and_steps() {
        assert!(is_optional_probe("revocations_sku.efi"));
        assert!(is_optional_probe("/efi/revocations_sbat.efi"));
        assert!(is_optional_probe("shim_certificate_0.efi"));
        assert!(is_optional_probe("grub/x86_64-efi/grub.cfg"));
        assert!(!is_optional_probe("grubx64.efi"));
        assert!(!is_optional_probe("grub/grub.cfg"));
        assert_eq!(
            loader_step("shimx64.efi"),
            Some(LoaderStep::Binary(LoaderKind::Shim))
        );
        assert_eq!(
            loader_step("/grubaa64.efi"),
            Some(LoaderStep::Binary(LoaderKind::Grub))
        );
        assert_eq!(loader_step("grub/grub.cfg"), Some(LoaderStep::Config));
        assert_eq!(loader_step("undionly.kpxe"), None);
        assert_eq!(loader_step("grub/arm64-efi/fs.lst"), None);
    }
}
