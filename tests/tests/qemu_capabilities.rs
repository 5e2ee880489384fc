//! Root + QEMU: ironpxe runs as an unprivileged user holding only
//! CAP_NET_BIND_SERVICE — the set the systemd unit and the NixOS module grant — and a
//! BIOS guest still boots through it on the privileged ports (DHCP 67, 4011, TFTP
//! 69, HTTP 80). Without the capability it refuses to start with one clear line.
//! Needs `setpriv` and `unshare` (util-linux).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.caps=net_bind_service";
const NOBODY: &str = "65534";

fn setpriv_args(caps: &str) -> Vec<String> {
    vec![
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        format!("--inh-caps=-all{caps}"),
        format!("--ambient-caps=-all{caps}"),
        format!("--bounding-set=-all{caps}"),
        "--".into(),
    ]
}

/// The real ironpxe binary, looked up once before any test points IRONPXE_BIN at
/// its wrapper.
fn real_ironpxe() -> PathBuf {
    static REAL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    REAL.get_or_init(|| ironpxe_lab::ironpxe_bin().expect("ironpxe binary"))
        .clone()
}

fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is missing: install Debian's util-linux");
}

/// A directory every user can read, holding copies of `files`.
fn world_readable(files: &[&Path]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix("ironpxe-caps")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copies = files
        .iter()
        .map(|f| {
            let to = dir.path().join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            // 0755: the ironpxe binary is among the copies.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            to
        })
        .collect();
    (dir, copies)
}

#[test]
fn qemu_guest_boots_through_ironpxe_with_only_cap_net_bind_service() {
    require("setpriv");
    let lab = Lab::new("qemu_capabilities").expect("build lab");
    let ironpxe = real_ironpxe();
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let (dir, copies) = world_readable(&[&kernel, &initrd, &ironpxe]);

    // The lab runs $IRONPXE_BIN inside its namespace; this wrapper drops to nobody
    // with exactly one capability before exec'ing ironpxe.
    let wrapper = dir.path().join("ironpxe-as-nobody");
    let script = format!(
        "#!/bin/sh\nexec setpriv {} {} \"$@\"\n",
        setpriv_args(",+net_bind_service").join(" "),
        copies[2].display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("IRONPXE_BIN", &wrapper);

    let args: Vec<String> = vec![
        "boot".into(),
        copies[0].display().to_string(),
        copies[1].display().to_string(),
        "--cmdline".into(),
        CMDLINE.into(),
        "-p".into(),
        "80".into(),
        "--interface".into(),
        lab.pxe_ifname(),
    ];
    let server = lab.start_ironpxe(&args).expect("start ironpxe as nobody");

    // The process really is unprivileged: uid nobody, effective capabilities = bit 10.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        NOBODY,
        "ironpxe is not running as nobody:\n{status}"
    );
    assert_eq!(
        field("CapEff:"),
        "0000000000000400",
        "effective capabilities:\n{status}"
    );
    assert_eq!(
        field("CapBnd:"),
        "0000000000000400",
        "bounding set:\n{status}"
    );

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest of unprivileged ironpxe");
    assert_eq!(marker.cmdline, CMDLINE);
    println!(
        "unprivileged boot: marker {:.1} s after power-on",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}

#[test]
fn without_cap_net_bind_service_startup_fails_with_a_clear_reason() {
    require("setpriv");
    require("unshare");
    let ironpxe = real_ironpxe();
    let k = tempfile::NamedTempFile::new().unwrap();
    let b = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(b.path(), b"x").unwrap();
    let (_dir, copies) = world_readable(&[k.path(), b.path(), &ironpxe]);
    // A private, empty network namespace: nothing is bound on the host.
    let out = Command::new("unshare")
        .arg("--net")
        .arg("setpriv")
        .args(setpriv_args(""))
        .arg(&copies[2])
        .arg("boot")
        .arg(&copies[0])
        .arg("--ipxe-bios")
        .arg(&copies[1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("udp 0.0.0.0:67"), "{text}");
    assert!(text.contains("CAP_NET_BIND_SERVICE"), "{text}");
}
