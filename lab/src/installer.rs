//! A stand-in installer for the install-once tests: an initrd that brings up the
//! guest's network, reports success to the URL on its command line
//! (`ironpxe.done=URL`, what `{{ DONE_URL }}` expands to), and reboots.
//!
//! The lab kernel has its virtio network driver as modules, so the initrd carries
//! them: [`net_modules`] takes `virtio_net` and `virtio_pci` and everything they
//! depend on (read from each module's `.modinfo` section) out of the kernel package
//! once, into the cache next to the kernel, in load order.
//!
//! The installer prints, on ttyS0:
//! - `IRONPXE-INSTALLER cmdline=[...]` when it starts;
//! - [`INSTALLED_MARKER`] and the server's answer once its POST was acknowledged
//!   (`IRONPXE-INSTALL-REPORT-FAILED` otherwise).
//!
//! Then it reboots (`reboot -f`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::assets::{busybox_path, is_static_elf, NewcWriter};
use crate::error::{io_err, Error, Result};

/// What the installer prints once the server acknowledged its report.
pub const INSTALLED_MARKER: &str = "IRONPXE-INSTALLED";

/// What the installer prints when it starts.
pub const INSTALLER_MARKER: &str = "IRONPXE-INSTALLER cmdline=[";

/// The modules the installer needs; their dependencies come along.
const WANTED: [&str; 2] = ["virtio_pci", "virtio_net"];

/// The installer's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /tmp
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
cmdline="$($bb cat /proc/cmdline)"
echo "IRONPXE-INSTALLER cmdline=[$cmdline]" > /dev/ttyS0
for m in $($bb cat /lib/modules/order); do
    $bb insmod /lib/modules/$m.ko || echo "IRONPXE-INSTALLER insmod $m failed" > /dev/ttyS0
done
done_url=""
for w in $cmdline; do
    case "$w" in ironpxe.done=*) done_url="${w#ironpxe.done=}" ;; esac
done
iface=""
for i in 1 2 3 4 5 6 7 8 9 10; do
    for n in $($bb ls /sys/class/net); do
        [ "$n" != lo ] && iface="$n"
    done
    [ -n "$iface" ] && break
    $bb sleep 0.5
done
$bb ip link set lo up
$bb ip link set "$iface" up
if $bb udhcpc -i "$iface" -n -q -t 10 -T 1 -s /udhcpc.script > /dev/ttyS0 2>&1 \
    && $bb wget -q -O /tmp/answer --post-data '' "$done_url" 2> /tmp/err; then
    echo "IRONPXE-INSTALLED $($bb cat /tmp/answer)" > /dev/ttyS0
else
    echo "IRONPXE-INSTALL-REPORT-FAILED $done_url $($bb cat /tmp/err)" > /dev/ttyS0
fi
$bb sync
$bb reboot -f
$bb sleep 5
echo "IRONPXE-LAB reboot failed" > /dev/ttyS0
"#;

/// udhcpc's event script: configure the leased address.
const UDHCPC_SCRIPT: &str = r#"#!/bin/busybox sh
case "$1" in
    bound|renew)
        /bin/busybox ifconfig "$interface" "$ip" netmask "$subnet" up
        [ -n "$router" ] && /bin/busybox route add default gw "${router%% *}" dev "$interface"
        ;;
esac
exit 0
"#;

/// Builds the installer initrd in `dir` (`dir/ironpxe-lab-installer.cpio`), with the
/// network modules of the lab kernel ([`net_modules`]).
pub fn installer_initrd(dir: &Path) -> Result<PathBuf> {
    let modules = net_modules()?;
    let busybox = busybox_path().ok_or_else(|| {
        Error::Invalid("busybox not found: install the Debian package busybox-static".into())
    })?;
    if !is_static_elf(&busybox)? {
        return Err(Error::Invalid(format!(
            "{} is dynamically linked: install the Debian package busybox-static",
            busybox.display()
        )));
    }
    let bb = fs::read(&busybox).map_err(io_err("read", &busybox))?;
    let mut w = NewcWriter::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        w.dir(d);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, &bb);
    w.symlink("bin/sh", "busybox");
    let mut order = String::new();
    for m in &modules {
        let name = module_name(m);
        let data = fs::read(m).map_err(io_err("read", m))?;
        w.file(&format!("lib/modules/{name}.ko"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    w.file("lib/modules/order", 0o644, order.as_bytes());
    w.file("udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes());
    w.file("init", 0o755, INIT.as_bytes());
    let bytes = w.finish();
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join("ironpxe-lab-installer.cpio");
    fs::write(&path, bytes).map_err(io_err("write", &path))?;
    Ok(path)
}

/// The kernel modules the installer loads, in load order, from the cache (fetched
/// from the lab kernel's package the first time).
pub fn net_modules() -> Result<Vec<PathBuf>> {
    net_modules_in(&crate::assets::cache_dir())
}

/// [`net_modules`] with an explicit cache directory.
pub fn net_modules_in(cache: &Path) -> Result<Vec<PathBuf>> {
    let kernel = crate::assets::kernel_in(cache)?;
    let package = kernel
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("kernel-"))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Kernel(format!(
                "{} is not a kernel of the lab cache (kernel-<package>/boot/vmlinuz-*); \
                 the installer needs its modules",
                kernel.display()
            ))
        })?;
    let dir = cache.join(format!("modules-{package}"));
    if let Some(found) = read_order(&dir) {
        return Ok(found);
    }
    let work = tempfile::Builder::new()
        .prefix(".modules-")
        .tempdir_in(cache)
        .map_err(io_err("create a temporary directory in", cache))?;
    let root = crate::assets::download_and_unpack(&package, work.path())?;
    keep_net_modules(&root, cache, &package)?;
    read_order(&dir).ok_or_else(|| Error::Kernel(format!("{}: no module list", dir.display())))
}

/// Copies the installer's modules out of an unpacked kernel package (`root`) into
/// `cache/modules-<package>/`, with their load order in `order`.
pub(crate) fn keep_net_modules(root: &Path, cache: &Path, package: &str) -> Result<()> {
    let dir = cache.join(format!("modules-{package}"));
    if read_order(&dir).is_some() {
        return Ok(());
    }
    let all = index_modules(&root.join("lib/modules"))?;
    let order = load_order(&all, &WANTED).map_err(Error::Kernel)?;
    let work = tempfile::Builder::new()
        .prefix(".modules-")
        .tempdir_in(cache)
        .map_err(io_err("create a temporary directory in", cache))?;
    let out = work.path().join("out");
    fs::create_dir_all(&out).map_err(io_err("create", &out))?;
    let mut list = String::new();
    for name in &order {
        let src = &all[name].0;
        fs::copy(src, out.join(format!("{name}.ko"))).map_err(io_err("copy", src))?;
        list.push_str(name);
        list.push('\n');
    }
    fs::write(out.join("order"), list).map_err(io_err("write", out.join("order")))?;
    if !dir.exists() {
        if let Err(e) = fs::rename(&out, &dir) {
            if !dir.exists() {
                return Err(io_err("move the modules to", &dir)(e));
            }
        }
    }
    Ok(())
}

/// `dir/order` and the modules it names, if all are there.
fn read_order(dir: &Path) -> Option<Vec<PathBuf>> {
    let text = fs::read_to_string(dir.join("order")).ok()?;
    let paths: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|n| dir.join(format!("{n}.ko")))
        .collect();
    (!paths.is_empty() && paths.iter().all(|p| p.is_file())).then_some(paths)
}

/// A module's name from its file name (`-` and `_` are the same to the kernel).
fn module_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .trim_end_matches(".ko")
        .replace('-', "_")
}

/// Every `.ko` under `dir`: name → (path, its `depends=`).
fn index_modules(dir: &Path) -> Result<BTreeMap<String, (PathBuf, Vec<String>)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err("read", &d))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                let data = fs::read(&p).map_err(io_err("read", &p))?;
                let deps = modinfo_depends(&data).unwrap_or_default();
                out.insert(module_name(&p), (p, deps));
            }
        }
    }
    Ok(out)
}

/// The modules `wanted` need, dependencies first.
fn load_order(
    all: &BTreeMap<String, (PathBuf, Vec<String>)>,
    wanted: &[&str],
) -> std::result::Result<Vec<String>, String> {
    fn visit(
        name: &str,
        all: &BTreeMap<String, (PathBuf, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> std::result::Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = all
            .get(name)
            .ok_or_else(|| format!("the kernel package has no module {name}"))?;
        for d in deps {
            visit(d, all, seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(w, all, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// The `depends=` list of a module's `.modinfo` ELF section (64-bit little-endian
/// ELF, as x86-64 modules are). `None` for anything that is not such a file.
fn modinfo_depends(d: &[u8]) -> Option<Vec<String>> {
    if d.len() < 64 || &d[..4] != b"\x7fELF" || d[4] != 2 || d[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)?,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let names = d.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = names.get(name as usize..)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        if n != b".modinfo" {
            continue;
        }
        let info = d.get(off..off.checked_add(size)?)?;
        for entry in info.split(|&b| b == 0) {
            if let Some(v) = entry.strip_prefix(b"depends=") {
                let v = std::str::from_utf8(v).ok()?;
                return Some(
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.replace('-', "_"))
                        .collect(),
                );
            }
        }
        return Some(Vec::new());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let m = |deps: &[&str]| {
            (
                PathBuf::new(),
                deps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let all: BTreeMap<String, (PathBuf, Vec<String>)> = [
            (
                "virtio_net".to_string(),
                m(&["net_failover", "virtio", "virtio_ring"]),
            ),
            ("net_failover".to_string(), m(&["failover"])),
            ("failover".to_string(), m(&[])),
            ("virtio".to_string(), m(&[])),
            ("virtio_ring".to_string(), m(&["virtio"])),
            ("virtio_pci".to_string(), m(&["virtio_ring", "virtio"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            load_order(&all, &["virtio_pci", "virtio_net"]).unwrap(),
            [
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert!(load_order(&all, &["e1000"]).unwrap_err().contains("e1000"));
    }

    #[test]
    fn modinfo_of_non_elf_is_none() {
        assert_eq!(modinfo_depends(b"not an elf"), None);
        assert_eq!(modinfo_depends(&[0u8; 128]), None);
    }
}
