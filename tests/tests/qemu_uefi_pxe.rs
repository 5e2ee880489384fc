//! Root + QEMU: OVMF with EDK2's own PXE client (virtio-net without the iPXE ROM)
//! boots through ironpxe: ProxyDHCP (and the UDP 4011 exchange if EDK2 uses it),
//! TFTP of ipxe.efi, then iPXE asks again and gets the HTTP script, kernel, marker.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::time::Duration;

use ironpxe_lab::preflight::IPXE_EFI;
use ironpxe_lab::{boot_once, save_dhcp_requests, GuestConfig, Lab};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=uefi-pxe";

#[test]
fn qemu_ovmf_native_pxe_chainloads_ipxe_efi_and_boots() {
    let lab = Lab::new("qemu_uefi_pxe").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let capture = lab
        .capture(
            "dhcp",
            &lab.pxe_ns(),
            &lab.pxe_ifname(),
            "udp port 67 or udp port 68 or udp port 4011",
        )
        .expect("tcpdump");

    let outcome = boot_once(
        &lab,
        GuestConfig::uefi_native_pxe(),
        Duration::from_secs(240),
    )
    .expect("guest");
    let packets = capture.finish().expect("capture");
    let saved = save_dhcp_requests(&packets, lab.out_dir(), "ovmf-pxe").expect("save");
    println!("saved {} DHCP requests: {saved:?}", saved.len());

    let marker = outcome.expect_marker(&lab, "the OVMF native-PXE guest");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(marker.user_cmdline_for_image(&image), CMDLINE);

    let events = lab.ironpxe_events();
    let mac = outcome.guest.mac().to_string();
    let summaries: Vec<String> = events.iter().map(|e| e.summary()).collect();
    // 1. EDK2 (not iPXE) is told to fetch ipxe.efi over TFTP, by OFFER or 4011 ACK.
    let firmware_answer = events
        .iter()
        .find(|e| {
            matches!(e.name.as_str(), "dhcp.offer" | "dhcp.ack")
                && e.field("mac") == Some(mac.as_str())
                && e.field("ipxe") == Some("false")
        })
        .unwrap_or_else(|| panic!("no answer to the firmware; events: {summaries:#?}"));
    assert_eq!(
        firmware_answer.field("path"),
        Some("tftp"),
        "{}",
        firmware_answer.summary()
    );
    assert_eq!(firmware_answer.field("boot"), Some("ipxe.efi"));
    assert!(
        matches!(firmware_answer.field("arch"), Some("efi-x64" | "efi-bc")),
        "{}",
        firmware_answer.summary()
    );
    // 2. The whole ipxe.efi went over TFTP.
    let size = std::fs::metadata(IPXE_EFI).unwrap().len().to_string();
    assert!(
        events.iter().any(|e| e.name == "tftp.done"
            && e.field("file").is_some_and(|f| f.ends_with("ipxe.efi"))
            && e.field("bytes") == Some(size.as_str())),
        "no complete TFTP transfer of ipxe.efi ({size} bytes); events: {summaries:#?}"
    );
    // 3. The chainloaded iPXE gets the script URL, then fetches it.
    assert!(
        events.iter().any(|e| e.name == "dhcp.offer"
            && e.field("ipxe") == Some("true")
            && e.field("path") == Some("http")),
        "the chainloaded iPXE got no script offer; events: {summaries:#?}"
    );
    for name in ["http.script", "http.booting"] {
        assert!(
            events.iter().any(|e| e.name == name),
            "no {name}; events: {summaries:#?}"
        );
    }
    let acks = events.iter().filter(|e| e.name == "dhcp.ack").count();
    println!(
        "OVMF native PXE: marker {:.1} s after power-on; {acks} UDP 4011 ACK(s)",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}
