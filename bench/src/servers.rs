//! The TFTP servers compared: ironpxe, dnsmasq (dnsmasq-base) and tftp-hpa's
//! in.tftpd. All three serve the same directory from the lab's ironpxe namespace,
//! each on its own address, port 69.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ironpxe_lab::{Ironpxe, DEFAULT_HTTP_PORT};

use crate::env::Env;

/// in.tftpd and the libwrap it links against, unpacked from the Debian packages.
pub struct Tftpd {
    pub bin: PathBuf,
    pub lib_dir: PathBuf,
}

/// Unpacks tftpd-hpa and libwrap0 into `<lab cache>/tftpd-hpa/` with `apt-get
/// download` and `dpkg-deb -x`. Installing tftpd-hpa would start a daemon on the
/// host, so it is never installed.
pub fn tftpd_hpa() -> Result<Tftpd> {
    let dir = ironpxe_lab::cache_dir().join("tftpd-hpa");
    let root = dir.join("root");
    let t = Tftpd {
        bin: root.join("usr/sbin/in.tftpd"),
        lib_dir: root.join("usr/lib/x86_64-linux-gnu"),
    };
    if t.bin.is_file() && t.lib_dir.join("libwrap.so.0").exists() {
        return Ok(t);
    }
    let dl = dir.join("debs");
    std::fs::create_dir_all(&dl)?;
    let st = Command::new("apt-get")
        .args(["download", "tftpd-hpa", "libwrap0"])
        .current_dir(&dl)
        .status()
        .context("cannot run apt-get download (Debian only)")?;
    if !st.success() {
        bail!("apt-get download tftpd-hpa libwrap0 failed; run apt-get update first");
    }
    for deb in std::fs::read_dir(&dl)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let st = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .status()?;
            if !st.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
    }
    if !t.bin.is_file() {
        bail!("{} missing after unpacking tftpd-hpa", t.bin.display());
    }
    Ok(t)
}

/// ironpxe on `addr` (the lab's ironpxe address), serving `env.root`.
pub fn ironpxe(env: &Env) -> Result<Ironpxe> {
    let kernel = env.lab.tmp_dir().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel: TFTP only")?;
    let args: Vec<String> = vec![
        "boot".into(),
        kernel.display().to_string(),
        "-l".into(),
        env.lab.pxe_addr().to_string(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        env.lab.pxe_ifname(),
        "--tftp-root".into(),
        env.root.display().to_string(),
        // The benchmark clients stand for many machines but share one address.
        "--tftp-per-address".into(),
        "100000".into(),
    ];
    Ok(env.lab.start_ironpxe(&args)?)
}

/// dnsmasq's TFTP server only (`--port=0` disables DNS; no DHCP range).
pub fn dnsmasq(env: &mut Env, addr: Ipv4Addr) -> Result<u32> {
    let ns = env.lab.pxe_ns();
    let root = env.root.display().to_string();
    env.spawn(
        "dnsmasq-tftp",
        &ns,
        Path::new("dnsmasq"),
        &[
            "--port=0",
            "--enable-tftp",
            &format!("--tftp-root={root}"),
            "--user=root",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            &format!("--listen-address={addr}"),
            "--bind-interfaces",
            "--log-facility=-",
        ],
        &[],
    )
}

/// tftp-hpa's in.tftpd in the foreground (`-L`), chrooted to the root (`-s`).
pub fn in_tftpd(env: &mut Env, t: &Tftpd, addr: Ipv4Addr) -> Result<u32> {
    let ns = env.lab.pxe_ns();
    let root = env.root.display().to_string();
    let lib = t.lib_dir.display().to_string();
    env.spawn(
        "in.tftpd",
        &ns,
        &t.bin,
        &["-L", "-u", "root", "-s", &root, "-a", &format!("{addr}:69")],
        &[("LD_LIBRARY_PATH", &lib)],
    )
}
