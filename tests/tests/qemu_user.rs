//! Root + QEMU: ironpxe started as root with `--user nobody` and `--dhcp-no-bind`
//! (next to the site's dnsmasq, which holds UDP 67) opens its packet sockets and
//! HTTP on port 80, becomes nobody with no capabilities, and a BIOS guest still
//! boots through it: ProxyDHCP through the packet sockets opened before the switch,
//! the script and the kernel read as nobody.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=user-nobody";

/// A directory everyone may read, with copies of `files`: the lab's cache may be
/// under root's home, which nobody cannot enter.
fn world_readable(files: &[&Path]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix("ironpxe-user")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copies = files
        .iter()
        .map(|f| {
            let to = dir.path().join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
            to
        })
        .collect();
    (dir, copies)
}

#[test]
fn qemu_user_nobody_with_dhcp_no_bind_boots_a_guest() {
    let lab = Lab::new("qemu_user").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let (_dir, files) = world_readable(&[&kernel, &initrd]);
    let mut args = lab.ironpxe_boot_args(&files[0], &[&files[1]], CMDLINE);
    let i = args.iter().position(|a| a == "--interface").unwrap();
    args[i + 1] = OsString::from(lab.site_ifname());
    let p = args.iter().position(|a| a == "-p").unwrap();
    args[p + 1] = OsString::from("80");
    args.extend(["--dhcp-no-bind".into(), "--user".into(), "nobody".into()]);
    let server = lab
        .start_ironpxe_in(&lab.site_ns(), &args)
        .expect("start ironpxe as root with --user nobody");

    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
    for caps in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}\n{status}");
    }

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest of ironpxe running as nobody");
    assert_eq!(marker.cmdline, CMDLINE);
    let t = &outcome.timeline;
    for event in [
        "dhcp.offer",
        "http.script",
        "http.file.done",
        "http.booting",
    ] {
        assert!(t.has_event(event), "no {event}: {:?}", t.event_names());
    }
    println!(
        "--user nobody --dhcp-no-bind: marker {:.1} s after power-on",
        t.marker_at().unwrap_or_default()
    );
}
