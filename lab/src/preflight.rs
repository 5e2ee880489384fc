//! Checks that the machine can run the lab, naming the Debian package for each gap.
//!
//! [`check`] returns a [`Report`] of everything that is missing for what the caller
//! [`Needs`]; it never panics. [`crate::LabBuilder::build`] turns a report with gaps
//! into [`crate::Error::Preflight`], so a lab test that cannot run fails with the
//! report as its message, and `ironpxe lab` exits 2 printing it as one line.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::assets::{busybox_path, is_static_elf};

/// NIC option ROM for BIOS guests (iPXE for virtio-net).
pub const PXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
/// NIC option ROM for UEFI guests (iPXE EFI driver for virtio-net); also QEMU's
/// default virtio-net ROM on Debian.
pub const EFI_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// The BIOS iPXE binary a PXE client chainloads over TFTP.
pub const UNDIONLY_KPXE: &str = "/usr/lib/ipxe/undionly.kpxe";
/// The x86_64 UEFI iPXE binary.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// The UEFI iPXE binary that uses the firmware's network driver.
pub const SNPONLY_EFI: &str = "/usr/lib/ipxe/snponly.efi";
/// OVMF firmware code (read-only pflash); `$IRONPXE_LAB_OVMF_CODE` overrides it.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template, copied for each UEFI guest;
/// `$IRONPXE_LAB_OVMF_VARS` overrides it.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The QEMU binary for x86_64 guests.
pub const QEMU_X86_64: &str = "qemu-system-x86_64";

/// OVMF with Secure Boot and Microsoft's keys enrolled (code; needs SMM).
pub const OVMF_CODE_MS: &str = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
/// The variable store of [`OVMF_CODE_MS`], with Microsoft's keys and Secure Boot on.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// The QEMU binary for ARM64 guests.
pub const QEMU_AARCH64: &str = "qemu-system-aarch64";
/// AAVMF, the ARM64 build of EDK2 (code).
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// AAVMF's variable store, Secure Boot off.
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// AAVMF's variable store with Microsoft's keys and Secure Boot on.
pub const AAVMF_VARS_MS: &str = "/usr/share/AAVMF/AAVMF_VARS.ms.fd";

/// Debian's signed shim for x86-64.
pub const SHIM_X64: &str = "/usr/lib/shim/shimx64.efi.signed";
/// Debian's signed netboot GRUB for x86-64.
pub const GRUB_NET_X64: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
/// The program that builds a GRUB image from modules (the lab's GRUB with http).
pub const GRUB_MKIMAGE: &str = "grub-mkimage";

/// The OVMF code file in use: `$IRONPXE_LAB_OVMF_CODE`, else [`OVMF_CODE`].
pub fn ovmf_code() -> PathBuf {
    env_path("IRONPXE_LAB_OVMF_CODE").unwrap_or_else(|| PathBuf::from(OVMF_CODE))
}

/// The OVMF variable template in use: `$IRONPXE_LAB_OVMF_VARS`, else [`OVMF_VARS`].
pub fn ovmf_vars() -> PathBuf {
    env_path("IRONPXE_LAB_OVMF_VARS").unwrap_or_else(|| PathBuf::from(OVMF_VARS))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What a caller is about to do, and so what the machine must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Network namespaces, bridges and tap devices: root, `/dev/net/tun`, `ip`, and
    /// dnsmasq as the site DHCP server. Off for QEMU user networking.
    pub namespaces: bool,
    /// BIOS guests (SeaBIOS with the iPXE NIC ROM).
    pub bios: bool,
    /// UEFI guests (OVMF).
    pub uefi: bool,
    /// The lab's own busybox initrd (needs busybox-static).
    pub lab_initrd: bool,
    /// The lab's test kernel (cached, or fetched with apt).
    pub test_kernel: bool,
    /// The iPXE binaries ironpxe chainloads (the ipxe package).
    pub ipxe_binaries: bool,
    /// The directory the test kernel is cached in.
    pub cache_dir: Option<PathBuf>,
    /// x86-64 Secure Boot guests: OVMF with Microsoft's keys, Debian's signed shim
    /// and netboot GRUB.
    pub secure_boot: bool,
    /// ARM64 guests: qemu-system-aarch64, AAVMF, and the lab's ARM64 files (kernel,
    /// busybox, shim, GRUB) in the cache, or apt able to fetch them.
    pub arm64: bool,
    /// A GRUB built with the http module for ARM64 UEFI HTTP Boot guests
    /// (grub-mkimage, and the ARM64 GRUB modules).
    pub grub_http: bool,
}

impl Needs {
    /// Everything the QEMU tests of ironpxe use: namespaces, both firmwares, the lab's
    /// kernel and initrd, and the iPXE binaries.
    pub fn everything() -> Self {
        Needs {
            namespaces: true,
            bios: true,
            uefi: true,
            lab_initrd: true,
            test_kernel: true,
            ipxe_binaries: true,
            cache_dir: None,
            secure_boot: false,
            arm64: false,
            grub_http: false,
        }
    }

    /// [`Needs::everything`] and the shim and GRUB paths: x86-64 Secure Boot and
    /// ARM64 guests, and the GRUB with http.
    pub fn with_loaders() -> Self {
        Needs {
            secure_boot: true,
            arm64: true,
            grub_http: true,
            ..Self::everything()
        }
    }

    /// Only the network of a lab (namespaces and site DHCP), no guests.
    pub fn network_only() -> Self {
        Needs {
            namespaces: true,
            bios: false,
            uefi: false,
            lab_initrd: false,
            test_kernel: false,
            ipxe_binaries: false,
            cache_dir: None,
            secure_boot: false,
            arm64: false,
            grub_http: false,
        }
    }
}

/// One missing requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing, e.g. `qemu-system-x86_64 in PATH`.
    pub what: String,
    /// The Debian package that provides it, if a package does.
    pub package: Option<&'static str>,
    /// What to do otherwise (or in addition), e.g. `run as root`.
    pub fix: Option<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)?;
        match (&self.package, &self.fix) {
            (Some(p), Some(fix)) => write!(f, " (Debian package {p}; {fix})"),
            (Some(p), None) => write!(f, " (Debian package {p})"),
            (None, Some(fix)) => write!(f, " ({fix})"),
            (None, None) => Ok(()),
        }
    }
}

/// What [`check`] found missing. Displays as one line, and debug-prints as that
/// line too, so `lab.expect(..)` in a test shows it as it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each gap, in the order checked.
    pub missing: Vec<Missing>,
}

impl Report {
    /// Whether nothing is missing.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// The Debian packages that would fill the gaps, each once.
    pub fn packages(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for p in self.missing.iter().filter_map(|m| m.package) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.missing.is_empty() {
            return f.write_str("nothing missing");
        }
        f.write_str("missing ")?;
        for (i, m) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        let packages = self.packages();
        if !packages.is_empty() {
            write!(f, "; install with: apt-get install {}", packages.join(" "))?;
        }
        Ok(())
    }
}

/// Everything `needs` asks for that this machine lacks.
pub fn check(needs: &Needs) -> Report {
    let mut report = Report::default();
    let mut need = |ok: bool, what: &str, package: Option<&'static str>, fix: Option<&str>| {
        if !ok {
            report.missing.push(Missing {
                what: what.to_string(),
                package,
                fix: fix.map(str::to_string),
            });
        }
    };

    if needs.namespaces {
        need(
            is_root(),
            "root privileges (network namespaces and tap devices)",
            None,
            Some("run as root, or use QEMU user networking (ironpxe lab --user-net)"),
        );
        need(
            Path::new("/dev/net/tun").exists(),
            "/dev/net/tun",
            None,
            Some("modprobe tun, or give the container /dev/net/tun"),
        );
        need(
            find_program("ip").is_some(),
            "ip in PATH",
            Some("iproute2"),
            None,
        );
        need(
            find_program("dnsmasq").is_some(),
            "dnsmasq in PATH (the site DHCP server)",
            Some("dnsmasq-base"),
            None,
        );
    }
    let qemu = find_program(QEMU_X86_64);
    if needs.bios || needs.uefi {
        need(
            qemu.is_some(),
            &format!("{QEMU_X86_64} in PATH"),
            Some("qemu-system-x86"),
            None,
        );
    }
    // Debian's QEMU finds its NIC ROMs in ipxe-qemu; other builds carry their own.
    let debian_qemu = qemu.as_deref().is_some_and(|q| q.starts_with("/usr/bin"));
    if (needs.bios || needs.uefi) && (needs.namespaces || debian_qemu) {
        let roms: &[&str] = match (needs.namespaces, needs.bios, needs.uefi) {
            // Namespace guests name their ROM explicitly.
            (true, true, true) => &[PXE_VIRTIO_ROM, EFI_VIRTIO_ROM],
            (true, true, false) => &[PXE_VIRTIO_ROM],
            _ => &[EFI_VIRTIO_ROM],
        };
        for rom in roms {
            need(Path::new(rom).is_file(), rom, Some("ipxe-qemu"), None);
        }
    }
    if needs.uefi {
        let (code, vars) = (ovmf_code(), ovmf_vars());
        for fd in [code, vars] {
            need(fd.is_file(), &fd.display().to_string(), Some("ovmf"), None);
        }
    }
    if needs.secure_boot {
        need(
            qemu.is_some(),
            &format!("{QEMU_X86_64} in PATH"),
            Some("qemu-system-x86"),
            None,
        );
        for fd in [OVMF_CODE_MS, OVMF_VARS_MS] {
            need(Path::new(fd).is_file(), fd, Some("ovmf"), None);
        }
        need(
            Path::new(SHIM_X64).is_file(),
            SHIM_X64,
            Some("shim-signed"),
            None,
        );
        need(
            Path::new(GRUB_NET_X64).is_file(),
            GRUB_NET_X64,
            Some("grub-efi-amd64-signed"),
            None,
        );
    }
    if needs.arm64 {
        need(
            find_program(QEMU_AARCH64).is_some(),
            &format!("{QEMU_AARCH64} in PATH"),
            Some("qemu-system-arm"),
            None,
        );
        for fd in [AAVMF_CODE, AAVMF_VARS, AAVMF_VARS_MS] {
            need(Path::new(fd).is_file(), fd, Some("qemu-efi-aarch64"), None);
        }
        let cache = needs
            .cache_dir
            .clone()
            .unwrap_or_else(crate::assets::cache_dir);
        if !crate::assets::arm64_is_cached_in(&cache) {
            need(
                crate::assets::apt_has_arm64(),
                &format!(
                    "the lab's ARM64 packages in {} ({})",
                    cache.display(),
                    crate::assets::ARM64_PACKAGES.join(", ")
                ),
                None,
                Some(
                    "run scripts/setup-debian, which adds the arm64 architecture to apt \
                     (dpkg --add-architecture arm64 && apt-get update) and unpacks them \
                     into the cache; nothing arm64 is installed on the host",
                ),
            );
        }
    }
    if needs.grub_http {
        need(
            find_program(GRUB_MKIMAGE).is_some(),
            &format!("{GRUB_MKIMAGE} in PATH"),
            Some("grub-common"),
            None,
        );
    }
    if needs.ipxe_binaries {
        let dir = std::env::var_os("IRONPXE_IPXE_DIR").filter(|d| !d.is_empty());
        let found = match &dir {
            Some(d) => Path::new(d).is_dir(),
            None => [UNDIONLY_KPXE, IPXE_EFI, SNPONLY_EFI]
                .iter()
                .all(|b| Path::new(b).is_file()),
        };
        need(
            found,
            "the iPXE binaries (undionly.kpxe, ipxe.efi, snponly.efi in /usr/lib/ipxe)",
            Some("ipxe"),
            None,
        );
    }
    if needs.lab_initrd {
        match busybox_path() {
            None => need(false, "busybox", Some("busybox-static"), None),
            Some(bb) => need(
                is_static_elf(&bb).unwrap_or(false),
                &format!("a static busybox ({} is dynamic)", bb.display()),
                Some("busybox-static"),
                None,
            ),
        }
    }
    if needs.test_kernel {
        let cache = needs
            .cache_dir
            .clone()
            .unwrap_or_else(crate::assets::cache_dir);
        if !crate::assets::kernel_is_cached_in(&cache) {
            need(
                ["apt-get", "apt-cache", "dpkg-deb"]
                    .iter()
                    .all(|p| find_program(p).is_some()),
                "apt-get, apt-cache and dpkg-deb (to fetch the test kernel)",
                None,
                Some("run on Debian, or boot your own kernel"),
            );
        }
    }
    report
}

/// Everything the QEMU tests use ([`Needs::everything`]): `Ok`, or
/// [`crate::Error::Preflight`] with the report of what is missing.
pub fn preflight() -> crate::Result<()> {
    let report = check(&Needs::everything());
    if report.is_ok() {
        Ok(())
    } else {
        Err(crate::Error::Preflight(report))
    }
}

/// Whether the effective user is root, read from /proc so no unsafe call is needed.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The sbin directories a non-login root shell may lack in `$PATH`; system tools
/// (`ip`, `dnsmasq`) are looked up there too.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Where `prog` is: the first executable of that name in `$PATH`, then in the sbin
/// directories. `None` if there is none.
pub fn find_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').chain(SBIN_DIRS.iter().copied()).collect();
    dirs.into_iter()
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether `prog` is an executable in `$PATH` or the sbin directories.
pub fn in_path(prog: &str) -> bool {
    find_program(prog).is_some()
}

/// The path to run `prog` by: where [`find_program`] found it, else the bare name
/// (so the error names it).
pub(crate) fn program(prog: &str) -> PathBuf {
    find_program(prog).unwrap_or_else(|| PathBuf::from(prog))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_one_line_with_each_package_once() {
        let r = Report {
            missing: vec![
                Missing {
                    what: "qemu-system-x86_64 in PATH".into(),
                    package: Some("qemu-system-x86"),
                    fix: None,
                },
                Missing {
                    what: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    package: Some("ovmf"),
                    fix: None,
                },
                Missing {
                    what: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
                    package: Some("ovmf"),
                    fix: None,
                },
                Missing {
                    what: "root privileges".into(),
                    package: None,
                    fix: Some("run as root".into()),
                },
            ],
        };
        let line = r.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line
            .starts_with("missing qemu-system-x86_64 in PATH (Debian package qemu-system-x86); "));
        assert!(line.contains("root privileges (run as root)"), "{line}");
        assert!(
            line.ends_with("install with: apt-get install qemu-system-x86 ovmf"),
            "{line}"
        );
        assert!(Report::default().is_ok());
        let e = crate::Error::Preflight(r);
        assert!(format!("{e:?}").contains("(Debian package qemu-system-x86)"));
    }

    #[test]
    fn a_program_outside_path_and_sbin_is_not_found() {
        assert!(find_program("ironpxe-no-such-program").is_none());
        assert_eq!(
            program("ironpxe-no-such-program"),
            PathBuf::from("ironpxe-no-such-program")
        );
    }
}
