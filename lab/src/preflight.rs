//! Checks that the machine can run the lab, naming the Debian package for each gap.
//!
//! A lab test that cannot run must fail loudly, never pass or skip silently, so
//! [`preflight`] panics with the full list of what is missing.

use std::path::Path;

use crate::assets::{busybox_path, is_static_elf};

/// NIC option ROM for BIOS guests (iPXE for virtio-net).
pub const PXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
/// NIC option ROM for UEFI guests (iPXE EFI driver for virtio-net).
pub const EFI_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// The BIOS iPXE binary a PXE client chainloads over TFTP.
pub const UNDIONLY_KPXE: &str = "/usr/lib/ipxe/undionly.kpxe";
/// The x86_64 UEFI iPXE binary.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// The UEFI iPXE binary that uses the firmware's network driver.
pub const SNPONLY_EFI: &str = "/usr/lib/ipxe/snponly.efi";
/// OVMF firmware code (read-only pflash).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; each UEFI guest gets its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One missing requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing, e.g. `qemu-system-x86_64`.
    pub what: String,
    /// The Debian package (or action) that provides it.
    pub fix: String,
}

/// Everything the lab needs that this machine lacks. Empty when all is well.
pub fn check() -> Vec<Missing> {
    let mut missing = Vec::new();
    let mut need = |ok: bool, what: &str, fix: &str| {
        if !ok {
            missing.push(Missing {
                what: what.to_string(),
                fix: fix.to_string(),
            });
        }
    };

    need(
        is_root(),
        "root privileges (network namespaces, tap devices)",
        "run the tests as root (e.g. sudo -E scripts/test)",
    );
    need(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun",
        "load the tun module (modprobe tun) or give the container /dev/net/tun",
    );
    need(in_path("ip"), "ip", "apt-get install iproute2");
    need(
        in_path("qemu-system-x86_64"),
        "qemu-system-x86_64",
        "apt-get install qemu-system-x86",
    );
    need(
        in_path("dnsmasq"),
        "dnsmasq",
        "apt-get install dnsmasq-base",
    );
    match busybox_path() {
        None => need(false, "busybox", "apt-get install busybox-static"),
        Some(bb) => need(
            is_static_elf(&bb).unwrap_or(false),
            &format!("a static busybox ({} is dynamic)", bb.display()),
            "apt-get install busybox-static",
        ),
    }
    for rom in [PXE_VIRTIO_ROM, EFI_VIRTIO_ROM] {
        need(Path::new(rom).is_file(), rom, "apt-get install ipxe-qemu");
    }
    for bin in [UNDIONLY_KPXE, IPXE_EFI, SNPONLY_EFI] {
        need(Path::new(bin).is_file(), bin, "apt-get install ipxe");
    }
    for fd in [OVMF_CODE, OVMF_VARS] {
        need(Path::new(fd).is_file(), fd, "apt-get install ovmf");
    }
    // The kernel comes from the cache or is downloaded with apt.
    if !crate::assets::kernel_is_cached() {
        need(
            in_path("apt-get") && in_path("apt-cache") && in_path("dpkg-deb"),
            "apt-get, apt-cache and dpkg-deb (to fetch the test kernel)",
            "run on Debian, or set IRONPXE_LAB_KERNEL to a bzImage",
        );
    }
    missing
}

/// Panics with a list of everything missing, each with the package that provides it.
pub fn preflight() {
    let missing = check();
    if missing.is_empty() {
        return;
    }
    let list = missing
        .iter()
        .map(|m| format!("  - {}: {}", m.what, m.fix))
        .collect::<Vec<_>>()
        .join("\n");
    panic!(
        "the ironpxe QEMU lab cannot run on this machine; missing:\n{list}\n\
         (scripts/setup-debian installs all of it)"
    );
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

/// Whether `prog` is an executable in `$PATH` (or the sbin directories, which a
/// non-login root shell may lack).
pub fn in_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .any(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
}
