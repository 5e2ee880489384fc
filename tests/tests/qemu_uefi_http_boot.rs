//! Root + QEMU: OVMF's UEFI HTTP Boot client (PXE turned off, no iPXE ROM) boots
//! through ironpxe with no TFTP at all: ProxyDHCP answers the `HTTPClient` with the
//! URL of snponly.efi on ironpxe's HTTP server, that iPXE asks again and gets the
//! script, kernel, marker.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::time::Duration;

use ironpxe_core::BootUrls;
use ironpxe_lab::preflight::SNPONLY_EFI;
use ironpxe_lab::{boot_once, save_dhcp_requests, GuestConfig, Lab, DEFAULT_HTTP_PORT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=uefi-http-boot";

#[test]
fn qemu_ovmf_http_boot_gets_snponly_over_http_and_boots() {
    let lab = Lab::new("qemu_uefi_http_boot").expect("build lab");
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
        GuestConfig::uefi_http_boot(),
        Duration::from_secs(240),
    )
    .expect("guest");
    let packets = capture.finish().expect("capture");
    let saved = save_dhcp_requests(&packets, lab.out_dir(), "ovmf-http").expect("save");
    println!("saved {} DHCP requests: {saved:?}", saved.len());

    let marker = outcome.expect_marker(&lab, "the OVMF HTTP Boot guest");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(marker.user_cmdline_for_image(&image), CMDLINE);

    let events = lab.ironpxe_events();
    let summaries: Vec<String> = events.iter().map(|e| e.summary()).collect();
    let url = BootUrls::http(lab.pxe_addr(), DEFAULT_HTTP_PORT).binary("snponly.efi");
    let offer = events
        .iter()
        .find(|e| e.name == "dhcp.offer" && e.field("path") == Some("httpboot"))
        .unwrap_or_else(|| panic!("no HTTP Boot offer; events: {summaries:#?}"));
    assert_eq!(offer.field("arch"), Some("http-x64"), "{}", offer.summary());
    assert_eq!(
        offer.field("boot"),
        Some(url.as_str()),
        "{}",
        offer.summary()
    );
    let size = std::fs::metadata(SNPONLY_EFI).unwrap().len().to_string();
    assert!(
        events.iter().any(|e| e.name == "http.bin"
            && e.field("file") == Some("snponly.efi")
            && e.field("bytes") == Some(size.as_str())
            && e.field("head") == Some("false")),
        "snponly.efi ({size} bytes) was never downloaded; events: {summaries:#?}"
    );
    assert!(
        events.iter().any(|e| e.name == "dhcp.offer"
            && e.field("ipxe") == Some("true")
            && e.field("path") == Some("http")),
        "the downloaded iPXE got no script offer; events: {summaries:#?}"
    );
    assert!(
        !events.iter().any(|e| e.name.starts_with("tftp.")),
        "HTTP Boot must not use TFTP; events: {summaries:#?}"
    );
    println!(
        "OVMF HTTP Boot: marker {:.1} s after power-on",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}
