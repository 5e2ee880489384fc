//! Root + QEMU: the shim → GRUB boot path beside iPXE, per machine, on real firmware.
//!
//! - One config file, one lab, four guests at once: a BIOS machine on iPXE, an x86-64
//!   Secure Boot machine through shim and Debian's signed GRUB (OVMF with Microsoft's
//!   keys), the same firmware with `loader = "ipxe"`, which the firmware refuses
//!   ("Access Denied": it does enforce Secure Boot), and an ARM64 Secure Boot machine
//!   through shim (AAVMF with Microsoft's keys, native PXE, option 93 = 11). Each boots
//!   its own kernel and command line; the Secure Boot ones report `Secure boot enabled`
//!   from their kernel.
//! - ARM64 without Secure Boot, through a GRUB built with the http module: one guest
//!   over UEFI HTTP Boot (option 93 = 19), its configuration, kernel and initrd over
//!   HTTP, and one over PXE (11), the same GRUB over TFTP.
//!
//! The lab's site DHCP server names ironpxe as next-server, as a site running Debian's
//! signed GRUB must (that GRUB takes its TFTP server from the site's DHCPACK).
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`) and the packages of
//! `scripts/setup-debian`, including the lab's arm64 files in the cache; a missing
//! one fails the test with its name and package.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ironpxe_core::loader::{GrubPath, GrubStep};
use ironpxe_core::MacAddr;
use ironpxe_lab::assets::{self, GuestArch};
use ironpxe_lab::{Guest, GuestConfig, Lab, Marker, Needs, DEFAULT_HTTP_PORT};

const BIOS_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x01]);
const X86_SB_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x02]);
const CONTROL_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x03]);
const ARM64_SB_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x04]);
const ARM64_HTTP_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x05]);
const ARM64_PXE_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x5b, 0x00, 0x06]);

const BIOS_CMDLINE: &str = "console=ttyS0 role=bios-ipxe";
/// The hostile characters GRUB's quoting must carry: `$`, `${...}`, `;`, `#`, `|`,
/// `&&`, a run of two spaces.
const X86_SB_CMDLINE: &str = "console=ttyS0 role=x86-secure-boot a=$b c=${d} e;f g#h  k=l x|y&&z";
const ARM64_SB_CMDLINE: &str = "console=ttyAMA0 role=arm64-secure-boot init=/nix/store/abc-init";
const ARM64_HTTP_CMDLINE: &str = "console=ttyAMA0 role=arm64-http-boot";
const ARM64_PXE_CMDLINE: &str = "console=ttyAMA0 role=arm64-pxe-grub";

/// How long a guest may take from power-on to its marker (TCG, several guests at once
/// on a shared 2-core machine; OVMF's Secure Boot build alone takes about a minute to
/// reach PXE there).
const MARKER_TIMEOUT: Duration = Duration::from_secs(900);

fn serve(lab: &Lab, config: &str, extra: &[String]) -> ironpxe_lab::Ironpxe {
    let path = lab.tmp_dir().join("ironpxe.toml");
    std::fs::write(&path, config).expect("write config");
    let _ = std::fs::write(lab.out_dir().join("ironpxe.toml"), config);
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        path.display().to_string(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        lab.pxe_ifname(),
    ];
    args.extend_from_slice(extra);
    lab.start_ironpxe(&args).expect("start ironpxe")
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn start(lab: &Lab, name: &str, mac: MacAddr, cfg: GuestConfig) -> Guest {
    lab.start_guest(GuestConfig {
        mac: Some(mac),
        name: Some(name.into()),
        ..cfg
    })
    .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

fn marker(lab: &Lab, g: &Guest) -> Marker {
    let m = g.wait_for_marker(MARKER_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "{} did not boot: {e:#} (logs in {})",
            g.name(),
            lab.out_dir().display()
        )
    });
    println!(
        "{}: {:.1} s from power-on to the marker",
        g.name(),
        m.at.duration_since(g.powered_on()).as_secs_f64()
    );
    println!("{}", lab.write_timeline(g));
    m
}

/// The command line after GRUB's `BOOT_IMAGE=` word, which must name the kernel
/// path ironpxe gave that machine.
fn grub_cmdline(m: &Marker, mac: MacAddr) -> String {
    let (image, args) = m
        .after_boot_image()
        .unwrap_or_else(|| panic!("no BOOT_IMAGE= first: {:?}", m.cmdline));
    match GrubPath::parse(image) {
        Some(GrubPath::File {
            mac: m2,
            step: GrubStep::Kernel { .. },
            ..
        }) if m2 == mac => {}
        other => panic!("BOOT_IMAGE={image} is not {mac}'s kernel path: {other:?}"),
    }
    args.to_string()
}

fn assert_secure_boot(g: &Guest) {
    let line = g.secure_boot_line().unwrap_or_default();
    assert_eq!(
        line,
        "secureboot: Secure boot enabled",
        "{}: the kernel's Secure Boot line",
        g.name()
    );
}

fn events_of(ironpxe: &ironpxe_lab::Ironpxe, name: &str, mac: MacAddr) -> Vec<ironpxe_lab::Event> {
    ironpxe
        .events()
        .into_iter()
        .filter(|e| e.name == name && e.field("mac") == Some(mac.to_string().as_str()))
        .collect()
}

#[test]
fn qemu_loaders_one_config_bios_ipxe_x86_secure_boot_and_arm64_secure_boot() {
    let lab = Lab::builder("qemu_loaders_one_config")
        .site_next_server(true)
        .needs(Needs::with_loaders())
        .build()
        .expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let arm64_kernel = assets::arm64_kernel().expect("arm64 test kernel");
    let arm64_initrd = assets::initrd_for(lab.tmp_dir(), GuestArch::Arm64).expect("arm64 initrd");
    let (shim_aa64, grub_aa64) = assets::arm64_shim_and_grub().expect("arm64 shim and GRUB");
    let config = format!(
        "[loaders]\nshim_arm64 = {}\ngrub_arm64 = {}\n\n\
         [profiles.x86]\nkernel = {}\ninitrd = [{}]\n\n\
         [profiles.arm64]\nkernel = {}\ninitrd = [{}]\nloader = \"shim\"\n\n\
         [[machines]]\nmac = \"{BIOS_MAC}\"\nname = \"bios\"\nprofile = \"x86\"\ncmdline = \"{BIOS_CMDLINE}\"\n\n\
         [[machines]]\nmac = \"{X86_SB_MAC}\"\nname = \"x86-sb\"\nprofile = \"x86\"\nloader = \"shim\"\n\
         cmdline = '{X86_SB_CMDLINE}'\nmessage = \"Secure Boot through shim\"\n\n\
         [[machines]]\nmac = \"{CONTROL_MAC}\"\nname = \"x86-sb-ipxe\"\nprofile = \"x86\"\nloader = \"ipxe\"\ncmdline = \"console=ttyS0\"\n\n\
         [[machines]]\nmac = \"{ARM64_SB_MAC}\"\nname = \"arm64-sb\"\nprofile = \"arm64\"\ncmdline = \"{ARM64_SB_CMDLINE}\"\n",
        quoted(&shim_aa64),
        quoted(&grub_aa64),
        quoted(&kernel),
        quoted(&initrd),
        quoted(&arm64_kernel),
        quoted(&arm64_initrd),
    );
    let ironpxe = serve(&lab, &config, &[]);

    let x86_sb = start(&lab, "x86-sb", X86_SB_MAC, GuestConfig::uefi_secure_boot());
    let arm64_sb = start(
        &lab,
        "arm64-sb",
        ARM64_SB_MAC,
        GuestConfig::arm64_secure_boot(),
    );
    let control = start(
        &lab,
        "x86-sb-ipxe",
        CONTROL_MAC,
        GuestConfig::uefi_secure_boot(),
    );
    let bios = start(&lab, "bios", BIOS_MAC, GuestConfig::bios());
    let logs = lab.out_dir().display().to_string();

    // BIOS, loader ipxe: the path of before, untouched by the others.
    let m = marker(&lab, &bios);
    assert_eq!(m.cmdline, BIOS_CMDLINE, "BIOS guest's /proc/cmdline");

    // The control: the same Secure Boot firmware refuses the unsigned ipxe.efi, at
    // once after it downloaded it.
    let tried = control
        .wait_for_serial("Start PXE over IPv4", MARKER_TIMEOUT)
        .unwrap_or_else(|e| panic!("the control guest never tried PXE: {e:#} (logs in {logs})"));
    let denied = control
        .wait_for_serial("Access Denied", Duration::from_secs(120))
        .unwrap_or_else(|e| {
            panic!("the Secure Boot firmware did not refuse ipxe.efi: {e:#} (logs in {logs})")
        });
    let after = denied.at.duration_since(tried.at);
    println!(
        "x86-sb-ipxe: the firmware refused ipxe.efi {:.1} s after it started PXE \
         ({:.1} s after power-on)",
        after.as_secs_f64(),
        denied.at.duration_since(control.powered_on()).as_secs_f64()
    );
    assert!(
        after < Duration::from_secs(60),
        "refused only {after:?} after PXE started"
    );
    let offered: Vec<_> = ironpxe
        .events()
        .into_iter()
        .filter(|e| {
            e.name == "dhcp.offer" && e.field("mac") == Some(CONTROL_MAC.to_string().as_str())
        })
        .collect();
    assert!(
        offered.iter().any(|e| e.field("boot") == Some("ipxe.efi")),
        "the control was offered ipxe.efi: {offered:?}"
    );
    control.kill();
    println!("{}", lab.write_timeline(&control));

    // x86-64 Secure Boot through shim and signed GRUB.
    let m = marker(&lab, &x86_sb);
    assert_eq!(
        grub_cmdline(&m, X86_SB_MAC),
        X86_SB_CMDLINE,
        "raw: {:?}",
        m.cmdline
    );
    assert_secure_boot(&x86_sb);
    x86_sb
        .wait_for_serial("Secure Boot through shim", Duration::from_secs(5))
        .expect("the machine's message on its console");
    let offers = events_of(&ironpxe, "dhcp.offer", X86_SB_MAC);
    assert!(
        offers
            .iter()
            .any(|e| e.field("path") == Some("shim") && e.field("boot") == Some("shimx64.efi")),
        "{offers:?}"
    );
    assert!(
        !events_of(&ironpxe, "grub.booting", X86_SB_MAC).is_empty(),
        "the last TFTP byte marks the boot"
    );

    // ARM64 Secure Boot through shim and signed GRUB, PXE (option 93 = 11).
    let m = marker(&lab, &arm64_sb);
    assert_eq!(
        grub_cmdline(&m, ARM64_SB_MAC),
        ARM64_SB_CMDLINE,
        "raw: {:?}",
        m.cmdline
    );
    assert_secure_boot(&arm64_sb);
    let offers = events_of(&ironpxe, "dhcp.offer", ARM64_SB_MAC);
    assert!(
        offers.iter().any(
            |e| e.field("arch") == Some("efi-arm64") && e.field("boot") == Some("shimaa64.efi")
        ),
        "{offers:?}"
    );
    assert!(!events_of(&ironpxe, "grub.booting", ARM64_SB_MAC).is_empty());

    // The site names ironpxe as next-server: nothing to warn about.
    let warned: Vec<_> = ironpxe
        .events()
        .into_iter()
        .filter(|e| e.name == "dhcp.next_server")
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
}

/// The lab's GRUB with http, and ironpxe serving it as the ARM64 GRUB.
fn grub_http(lab: &Lab) -> PathBuf {
    assets::grub_http_arm64(lab.tmp_dir()).expect("build the arm64 GRUB with http")
}

#[test]
fn qemu_loaders_arm64_http_boot_and_pxe_through_grub_with_http() {
    let lab = Lab::builder("qemu_loaders_arm64_grub_http")
        .site_next_server(true)
        .needs(Needs {
            secure_boot: false,
            ..Needs::with_loaders()
        })
        .build()
        .expect("build lab");
    let arm64_kernel = assets::arm64_kernel().expect("arm64 test kernel");
    let arm64_initrd = assets::initrd_for(lab.tmp_dir(), GuestArch::Arm64).expect("arm64 initrd");
    let grub = grub_http(&lab);
    let config = format!(
        "[profiles.arm64]\nkernel = {}\ninitrd = [{}]\nloader = \"grub\"\n\n\
         [[machines]]\nmac = \"{ARM64_HTTP_MAC}\"\nname = \"arm64-http\"\nprofile = \"arm64\"\ncmdline = \"{ARM64_HTTP_CMDLINE}\"\n\n\
         [[machines]]\nmac = \"{ARM64_PXE_MAC}\"\nname = \"arm64-pxe\"\nprofile = \"arm64\"\ncmdline = \"{ARM64_PXE_CMDLINE}\"\n",
        quoted(&arm64_kernel),
        quoted(&arm64_initrd),
    );
    let ironpxe = serve(
        &lab,
        &config,
        &["--grub-arm64".into(), grub.display().to_string()],
    );
    let http = start(
        &lab,
        "arm64-http",
        ARM64_HTTP_MAC,
        GuestConfig::arm64_http_boot(),
    );
    let pxe = start(&lab, "arm64-pxe", ARM64_PXE_MAC, GuestConfig::arm64());

    // UEFI HTTP Boot: GRUB, its configuration, kernel and initrd over HTTP.
    let m = marker(&lab, &http);
    assert_eq!(
        grub_cmdline(&m, ARM64_HTTP_MAC),
        ARM64_HTTP_CMDLINE,
        "raw: {:?}",
        m.cmdline
    );
    let offers = events_of(&ironpxe, "dhcp.offer", ARM64_HTTP_MAC);
    assert!(
        offers.iter().any(|e| e.field("arch") == Some("http-arm64")
            && e.field("path") == Some("httpboot-grub")
            && e.field("boot")
                == Some(
                    format!(
                        "http://{}:{DEFAULT_HTTP_PORT}/_/bin/grubaa64.efi",
                        lab.pxe_addr()
                    )
                    .as_str()
                )),
        "{offers:?}"
    );
    let over_http = events_of(&ironpxe, "http.grub", ARM64_HTTP_MAC);
    assert!(
        over_http.len() >= 3,
        "configuration, kernel and initrd over HTTP: {over_http:?}"
    );
    assert!(!events_of(&ironpxe, "grub.booting", ARM64_HTTP_MAC).is_empty());

    // PXE into the same GRUB, over TFTP.
    let m = marker(&lab, &pxe);
    assert_eq!(
        grub_cmdline(&m, ARM64_PXE_MAC),
        ARM64_PXE_CMDLINE,
        "raw: {:?}",
        m.cmdline
    );
    let offers = events_of(&ironpxe, "dhcp.offer", ARM64_PXE_MAC);
    assert!(
        offers
            .iter()
            .any(|e| e.field("path") == Some("grub") && e.field("boot") == Some("grubaa64.efi")),
        "{offers:?}"
    );
    assert!(!events_of(&ironpxe, "grub.booting", ARM64_PXE_MAC).is_empty());
}
