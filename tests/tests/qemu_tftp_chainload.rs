//! Root + QEMU: with `--force-chainload`, ironpxe sends even an iPXE client through
//! TFTP: the guest fetches undionly.kpxe, which then boots the kernel over HTTP.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use ironpxe_lab::preflight::UNDIONLY_KPXE;
use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=a=b quiet note=hello world";

#[test]
fn qemu_bios_guest_chainloads_undionly_over_tftp() {
    let lab = Lab::new("qemu_tftp_chainload").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    args.push("--force-chainload".into());
    args.push("--ipxe-bios".into());
    args.push(UNDIONLY_KPXE.into());
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let expected_bytes = std::fs::metadata(UNDIONLY_KPXE)
        .expect("undionly.kpxe size")
        .len()
        .to_string();
    let events = lab.ironpxe_events();
    let done = events.iter().find(|e| {
        e.name == "tftp.done"
            && e.field("file")
                .is_some_and(|f| f.ends_with("undionly.kpxe"))
    });
    let done = done.unwrap_or_else(|| {
        panic!(
            "no tftp.done event for undionly.kpxe; events: {:#?}",
            events.iter().map(|e| e.summary()).collect::<Vec<_>>()
        )
    });
    assert_eq!(
        done.field("bytes"),
        Some(expected_bytes.as_str()),
        "tftp.done bytes differ from the size of {UNDIONLY_KPXE}: {}",
        done.summary()
    );

    let marker = outcome.expect_marker(&lab, "the chainloaded guest");
    // Exactly, byte for byte: BIOS iPXE passes the command line as ironpxe wrote it.
    assert_eq!(
        marker.cmdline, CMDLINE,
        "the kernel's /proc/cmdline differs from --cmdline"
    );
    let t = &outcome.timeline;
    let tftp = t.event("tftp.done").map(|e| e.at).unwrap_or_default();
    assert!(
        t.marker_at().unwrap_or_default() > tftp,
        "the marker must come after the TFTP chainload"
    );
}
