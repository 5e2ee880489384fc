//! Root + QEMU: a BIOS guest (SeaBIOS + iPXE ROM) network-boots through ironpxe,
//! next to the site's own DHCP server, and its kernel gets exactly our command line.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::time::Duration;

use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

/// Several words, a value that itself contains `=`, and a flag without a value.
const CMDLINE: &str = "console=ttyS0 ironpxe.test=a=b quiet note=hello world";

#[test]
fn qemu_bios_guest_boots_through_ironpxe_with_exact_cmdline() {
    let lab = Lab::new("qemu_bios_boot").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    // The IPv4 boot with the IPv6 side (DHCPv6, TFTP and HTTP on IPv6) running too.
    args.extend(lab.ironpxe_ipv6_args().into_iter().map(Into::into));
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest");
    // Exactly, byte for byte: BIOS iPXE passes the command line as ironpxe wrote it.
    assert_eq!(
        marker.cmdline, CMDLINE,
        "the kernel's /proc/cmdline differs from --cmdline"
    );

    let t = &outcome.timeline;
    for event in [
        "dhcp.offer",
        "http.script",
        "http.file.done",
        "http.booting",
    ] {
        assert!(
            t.has_event(event),
            "no {event} event from ironpxe; events seen: {:?}",
            t.event_names()
        );
    }
    println!(
        "BIOS boot: marker {:.1} s after power-on",
        t.marker_at().unwrap_or_default()
    );
    // The guest powers itself off after the marker.
    let _ = outcome
        .guest
        .wait_for_serial("reboot: Power down", Duration::from_secs(10));
}

/// Characters iPXE would otherwise interpret (`${...}`, `#`, `||`, `&&`, runs of
/// spaces, quotes) reach the kernel unchanged, and the boot message, with its own
/// `${...}`, is printed on the client console.
#[test]
fn qemu_bios_guest_gets_special_characters_and_the_boot_message_verbatim() {
    const TRICKY: &str = "console=ttyS0 a  b \"q\" #c x=${ y} $z || && tab\tend";
    const MESSAGE: &str = "Installing ${hostname} #1: \"node-07\" || nothing";
    let lab = Lab::new("qemu_bios_verbatim").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], TRICKY);
    args.push("--bootmsg".into());
    args.push(MESSAGE.into());
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest");
    assert_eq!(
        marker.cmdline, TRICKY,
        "the kernel's /proc/cmdline differs from --cmdline"
    );
    outcome
        .guest
        .wait_for_serial(MESSAGE, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the boot message never reached the console: {e:#}"));
}
