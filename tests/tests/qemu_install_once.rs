//! Root + QEMU: `once = true`, the install-then-boot-from-disk cycle.
//!
//! A BIOS guest with a local disk (whose boot sector prints a marker) and the
//! network first in its boot order:
//!
//! 1. netboots its installer (the lab's stand-in: an initrd that brings up the
//!    network, POSTs to `ironpxe.done={{ DONE_URL }}` and reboots);
//! 2. after the reboot gets the `local` answer, and falls through to its disk;
//! 3. `ironpxe reinstall` (through the status API, with the admin token) sets it back
//!    to install, and its next boot (a power cycle) netboots the installer again.
//!
//! `ironpxe machines` shows the state at each step. Needs the `ironpxe` binary built
//! (`cargo build -p ironpxe`), root, and the lab packages.

use std::path::Path;
use std::time::Duration;

use ironpxe_core::MacAddr;
use ironpxe_lab::{
    bios_disk, Guest, GuestConfig, GuestDisk, Lab, DEFAULT_STATUS_PORT, DISK_MARKER,
    INSTALLED_MARKER, INSTALLER_MARKER,
};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x1e, 0x00, 0x01]);
const TOKEN: &str = "lab-admin-token";
const BOOT: Duration = Duration::from_secs(150);

fn wait(guest: &Guest, lab: &Lab, needle: &str, what: &str) {
    guest
        .wait_for_serial(needle, BOOT)
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n(logs in {})", lab.out_dir().display()));
}

/// Runs `ironpxe ARGS` in the ironpxe namespace: exit status and stdout.
fn ironpxe_cmd(lab: &Lab, args: &[&str]) -> (bool, String) {
    let bin = ironpxe_lab::ironpxe_bin().expect("the ironpxe binary (cargo build -p ironpxe)");
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = lab
        .run_in(&lab.pxe_ns(), all[0], &all[1..])
        .expect("run ironpxe in the lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("$ ironpxe {}\n{stdout}{stderr}", args.join(" "));
    (out.status.success(), format!("{stdout}{stderr}"))
}

/// The `INSTALL` column of `ironpxe machines` for our machine.
fn install_column(lab: &Lab, server: &str) -> String {
    let (ok, out) = ironpxe_cmd(lab, &["machines", "--server", server]);
    assert!(ok, "ironpxe machines failed: {out}");
    let line = out
        .lines()
        .find(|l| l.contains(&MAC.to_string()))
        .unwrap_or_else(|| panic!("{MAC} not listed:\n{out}"));
    line.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

fn config(dir: &Path, kernel: &Path, initrd: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let cfg = dir.join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
admin_token_file = "admin-token"

[profiles.installer]
kernel = "{}"
initrd = ["{}"]
cmdline = "console=ttyS0 ironpxe.done={{{{ DONE_URL }}}}"
once = true

[[machines]]
mac = "{MAC}"
name = "node-00"
profile = "installer"
"#,
            kernel.display(),
            initrd.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn qemu_install_once_then_local_disk_then_reinstall() {
    let lab = Lab::new("qemu_install_once").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("lab kernel");
    let initrd = lab.installer_initrd().expect("installer initrd");
    let cfg = config(lab.tmp_dir(), &kernel, &initrd);
    let state = lab.tmp_dir().join("state");
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--config".into(),
        cfg.into(),
        "--state-dir".into(),
        state.into(),
    ];
    args.extend(lab.ironpxe_server_args());
    let ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let server = format!("http://{}:{DEFAULT_STATUS_PORT}", lab.pxe_addr());
    let disk = GuestDisk::Raw(bios_disk(lab.tmp_dir()).expect("disk image"));
    let guest = |name: &str| {
        lab.start_guest(GuestConfig {
            name: Some(name.into()),
            mac: Some(MAC),
            disk: Some(disk.clone()),
            reboot: true,
            ..GuestConfig::bios()
        })
        .expect("start guest")
    };
    let mac = MAC.to_string();
    let count = |name: &str| {
        lab.ironpxe_events()
            .iter()
            .filter(|e| e.name == name && e.field("mac") == Some(&mac))
            .count()
    };
    assert_eq!(install_column(&lab, &server), "install");

    // 1. The installer netboots, reports success and reboots.
    let node = guest("node-00");
    wait(&node, &lab, INSTALLER_MARKER, "the installer did not start");
    wait(
        &node,
        &lab,
        INSTALLED_MARKER,
        "the installer's report was not acknowledged",
    );
    // 2. The same machine, rebooted: the local answer, then its disk.
    wait(
        &node,
        &lab,
        DISK_MARKER,
        "the installed machine did not boot its disk",
    );
    println!("{}", lab.write_timeline(&node));
    ironpxe
        .wait_event(Duration::from_secs(5), |e| {
            e.name == "http.local" && e.field("mac") == Some(&mac)
        })
        .expect("an http.local event for the installed machine");
    assert_eq!(count("install.done"), 1);
    assert_eq!(
        count("http.script"),
        1,
        "the second boot fetched a netboot script"
    );
    let serial = node.serial_lines();
    let installer_runs = serial
        .iter()
        .filter(|l| l.text.contains(INSTALLER_MARKER))
        .count();
    assert_eq!(
        installer_runs, 1,
        "the installer ran again after the reboot"
    );
    assert!(
        serial
            .iter()
            .any(|l| l.text.contains("Booting from SAN device")),
        "the local script did not sanboot the disk"
    );
    assert!(install_column(&lab, &server).starts_with("installed"));

    // 3. Reinstall through the API; the next power-on netboots the installer again.
    let token = lab.tmp_dir().join("admin-token");
    let (ok, out) = ironpxe_cmd(
        &lab,
        &[
            "reinstall",
            "node-00",
            "--server",
            &server,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(
        ok && out.contains("node-00 (52:54:00:1e:00:01): set to install"),
        "{out}"
    );
    assert_eq!(install_column(&lab, &server), "install");
    // A wrong token is refused, with the server's reason.
    std::fs::write(lab.tmp_dir().join("wrong"), "nope\n").unwrap();
    let wrong = lab.tmp_dir().join("wrong");
    let (ok, out) = ironpxe_cmd(
        &lab,
        &[
            "reinstall",
            "node-00",
            "--server",
            &server,
            "--token-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("needs Authorization: Bearer"), "{out}");

    node.kill();
    let again = guest("node-00-again");
    wait(
        &again,
        &lab,
        INSTALLER_MARKER,
        "the reinstalled machine did not netboot",
    );
    wait(
        &again,
        &lab,
        INSTALLED_MARKER,
        "the second install was not acknowledged",
    );
    println!("{}", lab.write_timeline(&again));
    assert_eq!(count("http.script"), 2);
    assert_eq!(count("install.done"), 2);
    assert!(install_column(&lab, &server).starts_with("installed"));
}

/// The `local` answer under UEFI: OVMF with the iPXE NIC ROM gets the local script,
/// whose `exit 1` hands the machine back to OVMF's boot manager, which boots the
/// disk (an EFI application on a FAT disk that prints the marker). OVMF's own PXE
/// options are off, as they would only come between the two here.
#[test]
fn qemu_local_answer_boots_the_disk_under_uefi() {
    const UEFI_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x1e, 0x00, 0x02]);
    let lab = Lab::new("qemu_local_uefi").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("lab kernel");
    let cfg = lab.tmp_dir().join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.p]\nkernel = \"{}\"\n\n[[machines]]\nmac = \"{UEFI_MAC}\"\nprofile = \"p\"\nboot = \"local\"\n",
            kernel.display()
        ),
    )
    .unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--config".into(), cfg.into()];
    args.extend(lab.ironpxe_server_args());
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let disk = GuestDisk::FatDir(ironpxe_lab::uefi_disk(lab.tmp_dir()).expect("EFI disk"));
    let guest = lab
        .start_guest(GuestConfig {
            mac: Some(UEFI_MAC),
            disk: Some(disk),
            extra_args: [
                "-fw_cfg",
                "name=opt/org.tianocore/IPv4PXESupport,string=no",
                "-fw_cfg",
                "name=opt/org.tianocore/IPv6PXESupport,string=no",
            ]
            .map(String::from)
            .to_vec(),
            ..GuestConfig::uefi()
        })
        .expect("start guest");
    wait(
        &guest,
        &lab,
        "boots from its next boot device",
        "no local script ran",
    );
    wait(
        &guest,
        &lab,
        DISK_MARKER,
        "OVMF did not boot the disk after the local script",
    );
    println!("{}", lab.write_timeline(&guest));
    assert!(
        !guest
            .serial_lines()
            .iter()
            .any(|l| l.text.contains("sanboot") || l.text.contains("SAN device")),
        "the UEFI local script used sanboot"
    );
}
