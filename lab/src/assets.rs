//! What the guests boot: a Debian cloud kernel from the cache and a busybox initrd
//! built at run time.
//!
//! The kernel is fetched once with apt (`apt-cache depends` names the current
//! package, `apt-get download` fetches it, `dpkg-deb -x` unpacks it) into the cache
//! directory ([`cache_dir`]: `$IRONPXE_LAB_CACHE`, else `$XDG_CACHE_HOME/ironpxe`,
//! else `~/.cache/ironpxe`). The initrd is a cpio (newc) archive written here in
//! Rust: `/bin/busybox` from busybox-static, a `/dev/console` node and an `/init`
//! that prints the kernel's Secure Boot state ([`SECURE_BOOT_PREFIX`]) and
//! [`MARKER_PREFIX`] with `/proc/cmdline` on the serial console and powers off.
//! Nothing binary is kept in the source tree.
//!
//! ARM64 guests boot the same from ARM64 files: Debian's arm64 cloud kernel,
//! busybox-static, shim and GRUB, downloaded once with `apt-get download` (the arm64
//! architecture must be known to apt; `scripts/setup-debian` adds it) and unpacked
//! with `dpkg-deb -x` into the cache ([`arm64_root_in`]); nothing arm64 is installed
//! on the host. [`grub_http_arm64`] builds a GRUB with the http module from those
//! modules for UEFI HTTP Boot.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, Error, Result};

/// The start of the line the initrd prints: `IRONPXE-MARKER cmdline=[...]`.
pub const MARKER_PREFIX: &str = "IRONPXE-MARKER cmdline=[";

/// The start of the line with the kernel's own word on Secure Boot, printed before
/// the marker: `IRONPXE-SECUREBOOT [secureboot: Secure boot enabled]` (the
/// kernel's `secureboot:` log line, empty when it printed none, as on BIOS).
pub const SECURE_BOOT_PREFIX: &str = "IRONPXE-SECUREBOOT [";

/// The CPU a guest's initrd is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    /// x86-64: the host's busybox-static, serial console ttyS0.
    X86_64,
    /// ARM64: busybox-static:arm64 from the cache, serial console ttyAMA0 (PL011).
    Arm64,
}

impl GuestArch {
    /// The serial console device of QEMU's machine for this CPU.
    pub fn console(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "ttyS0",
            GuestArch::Arm64 => "ttyAMA0",
        }
    }
}

/// The arm64 packages the lab unpacks into its cache, by name or (for the kernel) by
/// the meta-package that names it.
pub const ARM64_PACKAGES: [&str; 5] = [
    "linux-image-cloud-arm64",
    "busybox-static",
    "shim-signed",
    "grub-efi-arm64-signed",
    "grub-efi-arm64-bin",
];

/// The meta-package whose first dependency names the arm64 kernel package.
const ARM64_KERNEL_META: &str = "linux-image-cloud-arm64:arm64";

/// The directory in the cache the arm64 packages are unpacked into.
const ARM64_DIR: &str = "arm64-debian";

/// Written last into [`ARM64_DIR`]: the unpacked tree is complete.
const ARM64_DONE: &str = ".ironpxe-complete";

/// The meta-package whose first dependency names the kernel package to fetch.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The `/init` of the lab initrd, for serial console `@CONSOLE@`. Applets are called
/// through `/bin/busybox` so the archive needs no symlink farm. The kernel logs
/// `secureboot: Secure boot enabled` (or `disabled`) early on EFI; the line is
/// passed on as it is.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
sb="$(/bin/busybox dmesg | /bin/busybox grep -m1 'secureboot:' | /bin/busybox sed 's/^\[[^]]*\] *//')"
echo "IRONPXE-SECUREBOOT [$sb]" > /dev/@CONSOLE@
cmdline="$(/bin/busybox cat /proc/cmdline)"
echo "IRONPXE-MARKER cmdline=[$cmdline]" > /dev/@CONSOLE@
/bin/busybox poweroff -f
/bin/busybox sleep 5
echo "IRONPXE-LAB poweroff failed" > /dev/@CONSOLE@
"#;

/// The source tree's root (the parent of this crate's directory), as it was when
/// the lab was compiled. Only the tests use it, for their `lab-out/`.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The download cache: `$IRONPXE_LAB_CACHE`, else `$XDG_CACHE_HOME/ironpxe`, else
/// `$HOME/.cache/ironpxe`, else a directory under the system's temporary directory.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("IRONPXE_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").map(PathBuf::from) {
        // The XDG spec ignores relative paths.
        if xdg.is_absolute() {
            return xdg.join("ironpxe");
        }
    }
    match var("HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => home.join(".cache").join("ironpxe"),
        _ => std::env::temp_dir().join("ironpxe-cache"),
    }
}

/// Returns the path of a cloud kernel in [`cache_dir`], downloading it first when
/// none is cached. `$IRONPXE_LAB_KERNEL` names a kernel file to use instead.
pub fn kernel() -> Result<PathBuf> {
    kernel_in(&cache_dir())
}

/// [`kernel`] with an explicit cache directory.
pub fn kernel_in(cache: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("IRONPXE_LAB_KERNEL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Kernel(format!(
                "IRONPXE_LAB_KERNEL={} is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    if let Some(found) = cached_kernel(cache) {
        return Ok(found);
    }
    fs::create_dir_all(cache).map_err(io_err("create the cache directory", cache))?;
    // The cache holds downloads only; keep it out of version control and backups.
    let _ = fs::write(cache.join(".gitignore"), "*\n");
    let _ = fs::write(
        cache.join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# ironpxe lab download cache\n",
    );

    let package = resolve_kernel_package()?;
    // Download and unpack in a private directory, then rename: two processes racing
    // here both succeed, and one of the renames wins.
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .map_err(io_err("create a temporary directory in", cache))?;
    let root = download_and_unpack(&package, work.path())?;
    // Only boot/ is used, and the few network modules of the lab's installer
    // initrd (kept next to the kernel); the modules are most of the package's size.
    let _ = crate::installer::keep_net_modules(&root, cache, &package);
    for unused in ["lib", "usr"] {
        let _ = fs::remove_dir_all(root.join(unused));
    }
    let dest = cache.join(format!("kernel-{package}"));
    if !dest.exists() {
        if let Err(e) = fs::rename(&root, &dest) {
            if !dest.exists() {
                return Err(io_err("move the kernel to", &dest)(e));
            }
        }
    }
    cached_kernel(cache).ok_or_else(|| {
        Error::Kernel(format!(
            "package {package} unpacked into {} has no boot/vmlinuz-*",
            dest.display()
        ))
    })
}

/// Downloads the Debian package `package` (`apt-get download`) into `work` and
/// unpacks it (`dpkg-deb -x`) into `work/root`, which it returns.
pub(crate) fn download_and_unpack(package: &str, work: &Path) -> Result<PathBuf> {
    run(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(work),
        "run `apt-get update` first, and check that Debian's package mirror is reachable",
    )?;
    let deb = fs::read_dir(work)
        .map_err(io_err("read", work))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            Error::Kernel(format!(
                "`apt-get download {package}` produced no .deb in {}",
                work.display()
            ))
        })?;
    let root = work.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb comes with the dpkg package",
    )?;
    Ok(root)
}

/// Whether [`kernel`] can answer without downloading.
pub fn kernel_is_cached() -> bool {
    kernel_is_cached_in(&cache_dir())
}

/// Whether [`kernel_in`] can answer for `cache` without downloading.
pub fn kernel_is_cached_in(cache: &Path) -> bool {
    std::env::var_os("IRONPXE_LAB_KERNEL").is_some_and(|p| !p.is_empty())
        || cached_kernel(cache).is_some()
}

/// The newest `kernel-*/boot/vmlinuz-*` in the cache, if any.
fn cached_kernel(cache: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("kernel-"))
        .filter_map(|e| fs::read_dir(e.path().join("boot")).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// `apt-cache depends linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64`.
fn resolve_kernel_package() -> Result<String> {
    let out = run(
        Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]),
        "run `apt-get update` first",
    )?;
    parse_kernel_depends(&out).ok_or_else(|| {
        Error::Kernel(format!(
            "`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image package \
             (the package lists are probably missing): run `apt-get update` first"
        ))
    })
}

/// The first `Depends: linux-image-...` of `apt-cache depends` output.
pub(crate) fn parse_kernel_depends(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Depends:")?.trim();
        let name = rest.trim_start_matches('<').trim_end_matches('>');
        name.starts_with("linux-image-").then(|| name.to_string())
    })
}

/// Runs a command and returns its stdout; the error names the command and a hint.
pub(crate) fn run(cmd: &mut Command, hint: &str) -> Result<String> {
    let shown = crate::proc::show_command(cmd);
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: shown.clone(),
        hint: Some(hint.to_string()),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint: Some(hint.to_string()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where busybox-static installs busybox.
pub fn busybox_path() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    static_elf(&data)
        .ok_or_else(|| Error::Invalid(format!("{} is not a 64-bit ELF file", path.display())))
}

fn static_elf(d: &[u8]) -> Option<bool> {
    if d.len() < 64 || &d[..4] != b"\x7fELF" || d[4] != 2 || d[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(d.get(0x20..0x28)?.try_into().ok()?) as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?);
        if p_type == 3 {
            // PT_INTERP: dynamically linked.
            return Some(false);
        }
    }
    Some(true)
}

/// Builds the lab initrd in `dir` and returns its path (`dir/ironpxe-lab-initrd.cpio`).
pub fn initrd(dir: &Path) -> Result<PathBuf> {
    initrd_for(dir, GuestArch::X86_64)
}

/// Builds the lab initrd for `arch` in `dir` and returns its path
/// (`dir/ironpxe-lab-initrd.cpio`, or `…-arm64.cpio`). The ARM64 one takes busybox
/// from the cache ([`arm64_root`]).
pub fn initrd_for(dir: &Path, arch: GuestArch) -> Result<PathBuf> {
    initrd_in(dir, arch, &cache_dir())
}

/// [`initrd_for`] with an explicit cache directory.
pub fn initrd_in(dir: &Path, arch: GuestArch, cache: &Path) -> Result<PathBuf> {
    let busybox = match arch {
        GuestArch::X86_64 => busybox_path().ok_or_else(|| {
            Error::Invalid("busybox not found: install the Debian package busybox-static".into())
        })?,
        GuestArch::Arm64 => arm64_root_in(cache)?.join("bin/busybox"),
    };
    if !is_static_elf(&busybox)? {
        return Err(Error::Invalid(format!(
            "{} is dynamically linked: install the Debian package busybox-static",
            busybox.display()
        )));
    }
    let bb = fs::read(&busybox).map_err(io_err("read", &busybox))?;
    let init = INIT_SCRIPT.replace("@CONSOLE@", arch.console());
    let mut w = NewcWriter::default();
    for d in ["bin", "dev", "proc", "sys", "sbin", "usr", "usr/bin", "tmp"] {
        w.dir(d);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, &bb);
    w.symlink("bin/sh", "busybox");
    w.file("init", 0o755, init.as_bytes());
    let bytes = w.finish();
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(match arch {
        GuestArch::X86_64 => "ironpxe-lab-initrd.cpio",
        GuestArch::Arm64 => "ironpxe-lab-initrd-arm64.cpio",
    });
    let mut f = fs::File::create(&path).map_err(io_err("create", &path))?;
    f.write_all(&bytes).map_err(io_err("write", &path))?;
    Ok(path)
}

/// Whether apt knows the arm64 architecture (`dpkg --print-foreign-architectures`),
/// so the lab's arm64 packages can be downloaded.
pub fn apt_has_arm64() -> bool {
    Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "arm64")
        })
}

/// Whether [`arm64_root_in`] can answer for `cache` without downloading.
pub fn arm64_is_cached_in(cache: &Path) -> bool {
    cache.join(ARM64_DIR).join(ARM64_DONE).is_file()
}

/// The unpacked arm64 packages in [`cache_dir`], downloaded first when not cached.
pub fn arm64_root() -> Result<PathBuf> {
    arm64_root_in(&cache_dir())
}

/// [`arm64_root`] with an explicit cache directory: `<cache>/arm64-debian`, holding
/// `boot/vmlinuz-*`, `bin/busybox`, `usr/lib/shim/shimaa64.efi.signed`,
/// `usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed` and the GRUB modules in
/// `usr/lib/grub/arm64-efi/`.
pub fn arm64_root_in(cache: &Path) -> Result<PathBuf> {
    let dest = cache.join(ARM64_DIR);
    if arm64_is_cached_in(cache) {
        return Ok(dest);
    }
    let hint = "run scripts/setup-debian: it adds the arm64 architecture to apt \
                (dpkg --add-architecture arm64 && apt-get update)";
    if !apt_has_arm64() {
        return Err(Error::Arm64(format!(
            "apt does not know the arm64 architecture, so the lab's arm64 packages ({}) \
             cannot be downloaded: {hint}",
            ARM64_PACKAGES.join(", ")
        )));
    }
    fs::create_dir_all(cache).map_err(io_err("create the cache directory", cache))?;
    let kernel = parse_kernel_depends(&run(
        Command::new("apt-cache").args(["depends", ARM64_KERNEL_META]),
        hint,
    )?)
    .ok_or_else(|| {
        Error::Arm64(format!(
            "`apt-cache depends {ARM64_KERNEL_META}` names no linux-image package: {hint}"
        ))
    })?;
    let kernel = kernel.trim_end_matches(":arm64").to_string();
    let mut packages = vec![format!("{kernel}:arm64")];
    packages.extend(ARM64_PACKAGES[1..].iter().map(|p| format!("{p}:arm64")));
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .map_err(io_err("create a temporary directory in", cache))?;
    run(
        Command::new("apt-get")
            .arg("download")
            .args(&packages)
            .current_dir(work.path()),
        hint,
    )?;
    let root = work.path().join("root");
    let mut debs: Vec<PathBuf> = fs::read_dir(work.path())
        .map_err(io_err("read", work.path()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    if debs.len() != packages.len() {
        return Err(Error::Arm64(format!(
            "`apt-get download {}` produced {} .deb files, not {}",
            packages.join(" "),
            debs.len(),
            packages.len()
        )));
    }
    for deb in &debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
            "dpkg-deb comes with the dpkg package",
        )?;
    }
    // The kernel's modules are most of its size; the lab boots without them.
    for unused in [
        "lib/modules",
        "usr/lib/modules",
        "usr/share/doc",
        "usr/share/man",
    ] {
        let _ = fs::remove_dir_all(root.join(unused));
    }
    fs::write(root.join(ARM64_DONE), packages.join("\n") + "\n")
        .map_err(io_err("write", root.join(ARM64_DONE)))?;
    if !dest.exists() {
        if let Err(e) = fs::rename(&root, &dest) {
            if !arm64_is_cached_in(cache) {
                return Err(io_err("move the arm64 files to", &dest)(e));
            }
        }
    }
    Ok(dest)
}

/// The arm64 test kernel in the cache (downloaded first when not cached).
pub fn arm64_kernel() -> Result<PathBuf> {
    arm64_kernel_in(&cache_dir())
}

/// [`arm64_kernel`] with an explicit cache directory.
pub fn arm64_kernel_in(cache: &Path) -> Result<PathBuf> {
    let root = arm64_root_in(cache)?;
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = fs::read_dir(&boot)
        .map_err(io_err("read", &boot))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| Error::Arm64(format!("{} has no vmlinuz-*", boot.display())))
}

/// Debian's signed shim and netboot GRUB for arm64, from the cache.
pub fn arm64_shim_and_grub() -> Result<(PathBuf, PathBuf)> {
    arm64_shim_and_grub_in(&cache_dir())
}

/// [`arm64_shim_and_grub`] with an explicit cache directory.
pub fn arm64_shim_and_grub_in(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = arm64_root_in(cache)?;
    let shim = root.join("usr/lib/shim/shimaa64.efi.signed");
    let grub = root.join("usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed");
    for f in [&shim, &grub] {
        if !f.is_file() {
            return Err(Error::Arm64(format!(
                "{} is missing from the unpacked arm64 packages; remove {} to fetch them again",
                f.display(),
                root.display()
            )));
        }
    }
    Ok((shim, grub))
}

/// The modules of a GRUB that netboots an EFI machine and fetches over TFTP and HTTP.
pub const GRUB_HTTP_MODULES: &[&str] = &[
    "efinet",
    "net",
    "tftp",
    "http",
    "linux",
    "normal",
    "configfile",
    "echo",
    "test",
    "regexp",
    "sleep",
    "reboot",
    "halt",
    "boot",
    "minicmd",
    "gzio",
];

/// Builds an (unsigned) arm64 GRUB with the http module and the prefix `/grub` in
/// `dir` with `grub-mkimage`, from the arm64 GRUB modules in the cache. It boots from
/// UEFI HTTP Boot (its root is then ironpxe's HTTP server) and from PXE.
pub fn grub_http_arm64(dir: &Path) -> Result<PathBuf> {
    grub_http_arm64_in(dir, &cache_dir())
}

/// [`grub_http_arm64`] with an explicit cache directory.
pub fn grub_http_arm64_in(dir: &Path, cache: &Path) -> Result<PathBuf> {
    let modules = arm64_root_in(cache)?.join("usr/lib/grub/arm64-efi");
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let out = dir.join("grubaa64-http.efi");
    run(
        Command::new(crate::preflight::program(crate::preflight::GRUB_MKIMAGE))
            .args(["-O", "arm64-efi", "-p", "/grub", "-d"])
            .arg(&modules)
            .arg("-o")
            .arg(&out)
            .args(GRUB_HTTP_MODULES),
        "grub-mkimage comes with the Debian package grub-common",
    )?;
    Ok(out)
}

/// A minimal writer of the cpio "newc" format the kernel unpacks into its rootfs.
#[derive(Default)]
pub(crate) struct NewcWriter {
    out: Vec<u8>,
    ino: u32,
}

impl NewcWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    pub(crate) fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    pub(crate) fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, (major, minor), &[]);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_the_variables_then_xdg_then_home() {
        use std::collections::HashMap;
        use std::ffi::OsString;
        let with = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, OsString> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect();
            cache_dir_from(move |k| map.get(k).cloned())
        };
        let all = [
            ("IRONPXE_LAB_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(with(&all), Path::new("/c"));
        assert_eq!(with(&all[1..]), Path::new("/x/ironpxe"));
        assert_eq!(with(&all[2..]), Path::new("/h/.cache/ironpxe"));
        // Empty and relative values do not count.
        assert_eq!(
            with(&[
                ("IRONPXE_LAB_CACHE", ""),
                ("XDG_CACHE_HOME", "rel"),
                ("HOME", "/h")
            ]),
            Path::new("/h/.cache/ironpxe")
        );
        assert_eq!(with(&[]), std::env::temp_dir().join("ironpxe-cache"));
    }

    #[test]
    fn depends_line_is_parsed() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_kernel_depends("foo\n  Depends: bar\n"), None);
    }

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let mut w = NewcWriter::default();
        w.dir("bin");
        w.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = w.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        // The second header starts on the 4-byte boundary after "bin\0" (110 + 4 -> 116).
        let second = 116;
        assert_eq!(&bytes[second..second + 6], b"070701");
    }

    #[test]
    fn static_elf_detection() {
        assert_eq!(static_elf(b"not an elf"), None);
        if let Some(bb) = busybox_path() {
            // Whatever busybox is installed, the check must not fail on it.
            assert!(is_static_elf(&bb).is_ok());
        }
    }
}
