//! Root + QEMU + OpenIPMI: `ironpxe reinstall --power-cycle` through a BMC.
//!
//! The guest's BMC is OpenIPMI's `ipmi_sim` on the lab's management link (IPMI over
//! LAN, with the guest's QEMU attached through `-device ipmi-bmc-extern`); it powers
//! the QEMU on and off. ironpxe runs `ipmitool` against it:
//!
//! 1. the machine is off: `reinstall --power-cycle` sets the next boot device to PXE
//!    and powers it on; it netboots the installer, reports success, reboots and boots
//!    its disk (`once = true`);
//! 2. the machine is on: `reinstall --power-cycle` power-cycles it, and it netboots
//!    the installer again;
//! 3. a machine whose BMC does not answer: one line naming the BMC's address.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`), root, the lab
//! packages, openipmi and ipmitool.

use std::path::Path;
use std::time::{Duration, Instant};

use ironpxe_core::MacAddr;
use ironpxe_lab::{
    bios_disk, GuestConfig, GuestDisk, Lab, BMC_USER, DEFAULT_STATUS_PORT, DISK_MARKER,
    INSTALLED_MARKER, INSTALLER_MARKER,
};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x1e, 0x01, 0x01]);
const DEAD_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x1e, 0x01, 0x02]);
const TOKEN: &str = "lab-admin-token";
const BOOT: Duration = Duration::from_secs(150);

/// Runs `ironpxe ARGS` in the ironpxe namespace: success, and stdout + stderr.
fn ironpxe_cmd(lab: &Lab, args: &[&str]) -> (bool, String) {
    let bin = ironpxe_lab::ironpxe_bin().expect("the ironpxe binary (cargo build -p ironpxe)");
    let out = lab
        .run_in(&lab.pxe_ns(), bin.to_str().unwrap(), args)
        .expect("run ironpxe in the lab");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ ironpxe {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

#[allow(clippy::too_many_arguments)]
fn config(
    dir: &Path,
    kernel: &Path,
    initrd: &Path,
    bmc: &str,
    dead_bmc: &str,
    password: &Path,
) -> std::path::PathBuf {
    std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let cfg = dir.join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
admin_token_file = "admin-token"

[profiles.installer]
kernel = "{kernel}"
initrd = ["{initrd}"]
cmdline = "console=ttyS0 ironpxe.done={{{{ DONE_URL }}}}"
once = true

[[machines]]
mac = "{MAC}"
name = "node-00"
profile = "installer"
bmc = {{ address = "{bmc}", user = "{BMC_USER}", password_file = "{password}", cipher_suite = 3 }}

[[machines]]
mac = "{DEAD_MAC}"
name = "node-01"
profile = "installer"
bmc = {{ address = "{dead_bmc}", user = "{BMC_USER}", password_file = "{password}", cipher_suite = 3 }}
"#,
            kernel = kernel.display(),
            initrd = initrd.display(),
            password = password.display(),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn qemu_ipmi_reinstall_power_cycles_through_the_bmc() {
    let lab = Lab::new("qemu_ipmi").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("lab kernel");
    let initrd = lab.installer_initrd().expect("installer initrd");
    let disk = GuestDisk::Raw(bios_disk(lab.tmp_dir()).expect("disk image"));
    let bmc = lab
        .start_bmc(
            GuestConfig {
                name: Some("node-00".into()),
                mac: Some(MAC),
                disk: Some(disk),
                reboot: true,
                ..GuestConfig::bios()
            },
            false,
        )
        .expect("start the BMC (ipmi_sim)");
    assert!(!bmc.is_on());
    // A BMC address on the management link where nothing answers.
    let dead = format!("10.79.{}.1:6299", lab.subnet());
    let cfg = config(
        lab.tmp_dir(),
        &kernel,
        &initrd,
        &bmc.address(),
        &dead,
        &bmc.password_file(),
    );
    let state = lab.tmp_dir().join("state");
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--config".into(),
        cfg.into(),
        "--state-dir".into(),
        state.into(),
    ];
    args.extend(lab.ironpxe_server_args());
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let server = format!("http://{}:{DEFAULT_STATUS_PORT}", lab.pxe_addr());
    let token = lab.tmp_dir().join("admin-token");
    let reinstall = |name: &str| {
        ironpxe_cmd(
            &lab,
            &[
                "reinstall",
                name,
                "--power-cycle",
                "--server",
                &server,
                "--token-file",
                token.to_str().unwrap(),
            ],
        )
    };
    let logs = lab.out_dir().display().to_string();
    let wait = |needle: &str, count: usize, what: &str| {
        bmc.wait_for_serial(needle, count, BOOT)
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n(logs in {logs})"))
    };

    // 1. Off: PXE next, power on; the machine installs and then boots its disk.
    let (ok, out) = reinstall("node-00");
    assert!(
        ok && out
            .contains("node-00 (52:54:00:1e:01:01): set to install; next boot PXE, powered on"),
        "{out}"
    );
    assert_eq!(bmc.boot_device().as_deref(), Some("pxe"));
    assert!(bmc.is_on());
    wait(
        INSTALLED_MARKER,
        1,
        "the installer's report was not acknowledged",
    );
    wait(
        DISK_MARKER,
        1,
        "the installed machine did not boot its disk",
    );

    // 2. On: a power cycle, and the machine netboots the installer again.
    std::fs::remove_file(lab.tmp_dir().join("bmc-node-00/bootdev")).unwrap();
    let (ok, out) = reinstall("node-00");
    assert!(
        ok && out.contains("set to install; next boot PXE, power cycled"),
        "{out}"
    );
    assert_eq!(bmc.boot_device().as_deref(), Some("pxe"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while bmc.power_ons() < 2 {
        assert!(
            Instant::now() < deadline,
            "the BMC did not power the guest on again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait(
        INSTALLER_MARKER,
        2,
        "the power-cycled machine did not netboot its installer",
    );
    wait(
        INSTALLED_MARKER,
        2,
        "the second install was not acknowledged",
    );

    // 3. A BMC that does not answer: one line naming it, and the state still flips.
    let t = Instant::now();
    let (ok, out) = reinstall("node-01");
    let took = t.elapsed();
    println!("the dead BMC was reported after {took:?}");
    assert!(!ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(&format!(
            "node-01 was set to install, but the power cycle failed: BMC {dead} does not answer"
        )),
        "{out}"
    );
}
