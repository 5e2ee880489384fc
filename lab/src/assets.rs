//! What the guests boot: a Debian cloud kernel from the cache and a busybox initrd
//! built at test time.
//!
//! The kernel is fetched once with apt (`apt-cache depends` names the current
//! package, `apt-get download` fetches it, `dpkg-deb -x` unpacks it) into the cache
//! directory, `<workspace>/.lab-cache/` or `$IRONPXE_LAB_CACHE`. The initrd is a cpio
//! (newc) archive written here in Rust: `/bin/busybox` from busybox-static, a
//! `/dev/console` node and an `/init` that prints [`MARKER_PREFIX`] with
//! `/proc/cmdline` on ttyS0 and powers off. Nothing binary is kept in the source tree.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// The start of the line the initrd prints: `IRONPXE-MARKER cmdline=[...]`.
pub const MARKER_PREFIX: &str = "IRONPXE-MARKER cmdline=[";

/// The meta-package whose first dependency names the kernel package to fetch.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The `/init` of the lab initrd. Applets are called through `/bin/busybox` so the
/// archive needs no symlink farm.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
cmdline="$(/bin/busybox cat /proc/cmdline)"
echo "IRONPXE-MARKER cmdline=[$cmdline]" > /dev/ttyS0
/bin/busybox poweroff -f
/bin/busybox sleep 5
echo "IRONPXE-LAB poweroff failed" > /dev/ttyS0
"#;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The download cache: `$IRONPXE_LAB_CACHE`, else `<workspace>/.lab-cache/`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("IRONPXE_LAB_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join(".lab-cache"),
    }
}

/// Returns the path of a cloud kernel, downloading it into [`cache_dir`] when no
/// kernel is cached yet. `$IRONPXE_LAB_KERNEL` names a kernel file to use instead.
pub fn kernel() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("IRONPXE_LAB_KERNEL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("IRONPXE_LAB_KERNEL={} is not a file", path.display());
        }
        return Ok(path);
    }
    let cache = cache_dir();
    if let Some(found) = cached_kernel(&cache) {
        return Ok(found);
    }
    fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create cache dir {}", cache.display()))?;
    // The cache holds downloads only; keep it out of version control and backups
    // even where the workspace's .gitignore does not mention it.
    let _ = fs::write(cache.join(".gitignore"), "*\n");
    let _ = fs::write(
        cache.join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# ironpxe lab download cache\n",
    );

    let package = resolve_kernel_package()?;
    // Download and unpack in a private directory, then rename: two test processes
    // racing here both succeed, and one of the renames wins.
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&cache)
        .with_context(|| format!("cannot create a temporary dir in {}", cache.display()))?;
    run(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(work.path()),
        "run `apt-get update` first, and check that Debian's package mirror is reachable",
    )?;
    let deb = fs::read_dir(work.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            anyhow!(
                "`apt-get download {package}` produced no .deb in {}",
                work.path().display()
            )
        })?;
    let root = work.path().join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb comes with the dpkg package",
    )?;
    // Only boot/ is used; the modules are most of the package's size.
    for unused in ["lib", "usr"] {
        let _ = fs::remove_dir_all(root.join(unused));
    }
    let dest = cache.join(format!("kernel-{package}"));
    if !dest.exists() {
        if let Err(e) = fs::rename(&root, &dest) {
            if !dest.exists() {
                return Err(e).with_context(|| format!("cannot move kernel to {}", dest.display()));
            }
        }
    }
    cached_kernel(&cache).ok_or_else(|| {
        anyhow!(
            "package {package} unpacked into {} has no boot/vmlinuz-*",
            dest.display()
        )
    })
}

/// Whether [`kernel`] can answer without downloading.
pub fn kernel_is_cached() -> bool {
    std::env::var_os("IRONPXE_LAB_KERNEL").is_some_and(|p| !p.is_empty())
        || cached_kernel(&cache_dir()).is_some()
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
        anyhow!(
            "`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image package \
             (the package lists are probably missing): run `apt-get update` first"
        )
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
fn run(cmd: &mut Command, hint: &str) -> Result<String> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{shown}`: {hint}"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}\n{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
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
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    static_elf(&data).ok_or_else(|| anyhow!("{} is not a 64-bit ELF file", path.display()))
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
    let busybox = busybox_path()
        .ok_or_else(|| anyhow!("busybox not found: install the Debian package busybox-static"))?;
    if !is_static_elf(&busybox)? {
        bail!(
            "{} is dynamically linked: install the Debian package busybox-static",
            busybox.display()
        );
    }
    let bb = fs::read(&busybox)?;
    let mut w = NewcWriter::default();
    for d in ["bin", "dev", "proc", "sys", "sbin", "usr", "usr/bin", "tmp"] {
        w.dir(d);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, &bb);
    w.symlink("bin/sh", "busybox");
    w.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let bytes = w.finish();
    fs::create_dir_all(dir)?;
    let path = dir.join("ironpxe-lab-initrd.cpio");
    let mut f =
        fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&bytes)?;
    Ok(path)
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
