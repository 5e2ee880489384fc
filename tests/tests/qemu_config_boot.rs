//! Root + QEMU: `ironpxe serve --config FILE` answers each machine by MAC.
//!
//! - a BIOS and a UEFI guest, with different MACs, boot their own command lines from
//!   one config file;
//! - a `boot = "local"` machine gets a script that leaves iPXE, and SeaBIOS falls
//!   through to its next boot device;
//! - a MAC the config does not list (no `default_profile`) gets no answer at all.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test). Run
//! one test at a time on small machines: `-- --test-threads=1`.

use std::path::Path;
use std::time::Duration;

use ironpxe_core::{FileRef, MacAddr};
use ironpxe_lab::{GuestConfig, Lab, DEFAULT_HTTP_PORT, DEFAULT_MARKER_TIMEOUT};

const BIOS_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xc0, 0x01, 0x01]);
const UEFI_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xc0, 0x01, 0x02]);
const LOCAL_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xc0, 0x01, 0x03]);
const UNKNOWN_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xc0, 0x01, 0x99]);

const BIOS_CMDLINE: &str = "console=ttyS0 role=storage init=/nix/store/aaa-nixos-system-storage-1/init nixos.install=/nix/store/bbb-install-storage-1";
const UEFI_CMDLINE: &str = "console=ttyS0 role=compute init=/nix/store/ccc-nixos-system-node-01/init nixos.install=/nix/store/ddd-install-node-01";

/// Writes the config into the lab's directory and starts `ironpxe serve` on it.
fn serve(lab: &Lab, config: &str) -> (ironpxe_lab::Ironpxe, std::path::PathBuf) {
    let path = lab.tmp_dir().join("ironpxe.toml");
    std::fs::write(&path, config).expect("write config");
    let _ = std::fs::write(lab.out_dir().join("ironpxe.toml"), config);
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        path.display().to_string(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        lab.pxe_ifname(),
    ];
    (lab.start_ironpxe(&args).expect("start ironpxe"), path)
}

fn profile(kernel: &Path, initrd: &Path) -> String {
    format!(
        "[profiles.installer]\nkernel = {:?}\ninitrd = [{:?}]\ncmdline = \"console=ttyS0\"\nmessage = \"NixOS Automatic Installer\"\n",
        kernel.display().to_string(),
        initrd.display().to_string()
    )
}

#[test]
fn qemu_config_bios_and_uefi_guests_boot_their_own_cmdlines() {
    let lab = Lab::new("qemu_config_two_guests").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let config = format!(
        "{}\n[[machines]]\nmac = \"{BIOS_MAC}\"\nname = \"storage-1\"\nprofile = \"installer\"\ncmdline = \"{BIOS_CMDLINE}\"\n\n\
         [[machines]]\nmac = \"{UEFI_MAC}\"\nname = \"node-01\"\nprofile = \"installer\"\ncmdline = \"{UEFI_CMDLINE}\"\nmessage = \"Installing node-01\"\n",
        profile(&kernel, &initrd)
    );
    let (_ironpxe, _) = serve(&lab, &config);

    let bios = lab
        .start_guest(GuestConfig {
            mac: Some(BIOS_MAC),
            name: Some("bios".into()),
            ..GuestConfig::bios()
        })
        .expect("start BIOS guest");
    let uefi = lab
        .start_guest(GuestConfig {
            mac: Some(UEFI_MAC),
            name: Some("uefi".into()),
            ..GuestConfig::uefi()
        })
        .expect("start UEFI guest");

    let logs = lab.out_dir().display().to_string();
    let m_bios = bios
        .wait_for_marker(DEFAULT_MARKER_TIMEOUT)
        .unwrap_or_else(|e| panic!("BIOS guest did not boot: {e:#} (logs in {logs})"));
    let m_uefi = uefi
        .wait_for_marker(DEFAULT_MARKER_TIMEOUT)
        .unwrap_or_else(|e| panic!("UEFI guest did not boot: {e:#} (logs in {logs})"));
    println!("{}", lab.write_timeline(&bios));
    println!("{}", lab.write_timeline(&uefi));

    assert_eq!(m_bios.cmdline, BIOS_CMDLINE, "BIOS guest's /proc/cmdline");
    let image = FileRef::Local(kernel.clone()).file_name("kernel");
    assert_eq!(
        m_uefi.user_cmdline_for_image(&image),
        UEFI_CMDLINE,
        "UEFI guest's /proc/cmdline (raw: {:?})",
        m_uefi.cmdline
    );
    // Each machine's own message, or its profile's, on its console.
    bios.wait_for_serial("NixOS Automatic Installer", Duration::from_secs(5))
        .expect("profile message on the BIOS console");
    uefi.wait_for_serial("Installing node-01", Duration::from_secs(5))
        .expect("machine message on the UEFI console");

    let scripts: Vec<String> = lab
        .ironpxe_events()
        .iter()
        .filter(|e| e.name == "http.script")
        .filter_map(|e| e.field("mac").map(str::to_string))
        .collect();
    assert!(scripts.contains(&BIOS_MAC.to_string()), "{scripts:?}");
    assert!(scripts.contains(&UEFI_MAC.to_string()), "{scripts:?}");
}

#[test]
fn qemu_config_local_falls_through_and_unknown_mac_gets_no_answer() {
    let lab = Lab::new("qemu_config_local_unknown").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    // No default_profile: machines not listed are not answered.
    let config = format!(
        "{}\n[[machines]]\nmac = \"{LOCAL_MAC}\"\nname = \"node-02\"\nprofile = \"installer\"\nboot = \"local\"\n",
        profile(&kernel, &initrd)
    );
    let (ironpxe, _) = serve(&lab, &config);

    let local = lab
        .start_guest(GuestConfig {
            mac: Some(LOCAL_MAC),
            name: Some("local".into()),
            ..GuestConfig::bios()
        })
        .expect("start guest");
    let unknown = lab
        .start_guest(GuestConfig {
            mac: Some(UNKNOWN_MAC),
            name: Some("unknown".into()),
            ..GuestConfig::bios()
        })
        .expect("start guest");
    let logs = lab.out_dir().display().to_string();

    // The local machine: ProxyDHCP answers, iPXE runs our script, which leaves iPXE;
    // SeaBIOS then tries its next boot device (there is none in this guest).
    local
        .wait_for_serial("boots from its next boot device", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("no local-boot script ran: {e:#} (logs in {logs})"));
    local
        .wait_for_serial("No bootable device", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("SeaBIOS did not fall through: {e:#} (logs in {logs})"));
    println!("{}", lab.write_timeline(&local));
    ironpxe
        .wait_event(Duration::from_secs(1), |e| {
            e.name == "http.local" && e.field("mac") == Some(&LOCAL_MAC.to_string())
        })
        .expect("http.local event for the local machine");
    assert!(
        !lab.ironpxe_events()
            .iter()
            .any(|e| e.name.starts_with("http.file") || e.name == "http.booting"),
        "the local machine downloaded something"
    );

    // The unknown machine: the site DHCP server leases it an address, ironpxe stays
    // silent, and its firmware finds nothing to boot.
    lab.wait_site_ack(&UNKNOWN_MAC.to_string(), Duration::from_secs(60))
        .expect("the unknown guest did DHCP with the site server");
    unknown
        .wait_for_serial("No bootable device", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the unknown guest did not give up: {e:#} (logs in {logs})"));
    println!("{}", lab.write_timeline(&unknown));
    let events = lab.ironpxe_events();
    let unknown_s = UNKNOWN_MAC.to_string();
    let answered: Vec<String> = events
        .iter()
        .filter(|e| e.field("mac") == Some(unknown_s.as_str()))
        // Seeing the machine (its refused request, the address it asked the site
        // server for) is not answering it.
        .filter(|e| e.name != "dhcp.ignore" && e.name != "dhcp.address")
        .map(|e| e.summary())
        .collect();
    assert!(
        answered.is_empty(),
        "ironpxe answered the unknown MAC: {answered:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.name == "dhcp.ignore" && e.field("mac") == Some(unknown_s.as_str())),
        "ironpxe never saw the unknown MAC's DHCP request"
    );
    assert!(unknown
        .serial_lines()
        .iter()
        .all(|l| !l.text.contains(ironpxe_lab::MARKER_PREFIX)));
}
