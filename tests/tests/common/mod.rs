//! Helpers shared by the TFTP lab tests: test data, checksums, and an ironpxe that
//! serves a `--tftp-root` to a client namespace with a configured lease.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ironpxe_lab::{Client, Ironpxe, Lab, DEFAULT_HTTP_PORT};

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The sha256 of a file, by `sha256sum`.
pub(crate) fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A command's status and output, for assertion messages.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// Starts ironpxe in the lab serving `root` over TFTP. It needs a kernel to start;
/// TFTP does not care what it is.
pub(crate) fn serve_tftp_root(lab: &Lab, root: &Path) -> Ironpxe {
    let kernel = lab.tmp_dir().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let args: Vec<String> = vec![
        "boot".into(),
        kernel.display().to_string(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        lab.pxe_ifname(),
        "--tftp-root".into(),
        root.display().to_string(),
    ];
    lab.start_ironpxe(&args).expect("start ironpxe")
}

/// A client namespace on the lab bridge with the address the site DHCP server
/// leased it (udhcpc only reports the lease; this configures it).
pub(crate) fn leased_client(lab: &Lab) -> (Client, Ipv4Addr) {
    let client = lab.add_client().expect("client namespace");
    let addr = lab
        .client_dhcp(&client, Duration::from_secs(20))
        .expect("client lease");
    let ip = lab
        .run_in(
            &client.ns,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", &client.ifname],
        )
        .unwrap();
    assert!(ip.status.success(), "{}", text(&ip));
    (client, addr)
}
