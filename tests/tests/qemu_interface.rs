//! Root + QEMU: ironpxe's namespace has NICs on two bridges and runs with
//! `--interface` = the first. A guest on the first bridge boots; a guest on the
//! second (which has its own DHCP server) gets nothing from ironpxe.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::time::Duration;

use ironpxe_lab::{boot_once, save_dhcp_requests, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=interface";

#[test]
fn qemu_only_the_chosen_interface_is_answered() {
    let lab = Lab::new("qemu_interface").expect("build lab");
    let seg = lab.add_segment(1).expect("segment");
    let seg_dhcp = lab.segment_dhcp(&seg).expect("second DHCP server");
    let other_if = lab.attach_pxe(&seg).expect("second ironpxe NIC");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let capture = lab
        .capture(
            "dhcp",
            &lab.pxe_ns(),
            &lab.pxe_ifname(),
            "udp port 67 or udp port 4011",
        )
        .expect("tcpdump");
    let far = lab
        .start_guest_on(&seg.bridge, GuestConfig::bios())
        .expect("guest on the other bridge");
    let near = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = near.expect_marker(&lab, "the guest on --interface");
    assert_eq!(marker.cmdline, CMDLINE);
    let packets = capture.finish().expect("capture");
    save_dhcp_requests(&packets, lab.out_dir(), "bios-rom").expect("save requests");

    // The far guest did DHCP on its own segment (so it was asking), and then had
    // nothing to boot: iPXE gives up on the NIC without a boot file.
    let far_mac = far.mac().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline
        && !seg_dhcp
            .lines()
            .iter()
            .any(|l| l.text.contains("DHCPACK") && l.text.contains(&far_mac))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        seg_dhcp
            .lines()
            .iter()
            .any(|l| l.text.contains("DHCPACK") && l.text.contains(&far_mac)),
        "the far guest never got an address from its own DHCP server:\n{}",
        seg_dhcp.tail(20)
    );
    let gave_up = far.wait_for_serial("No more network devices", Duration::from_secs(40));
    let far_timeline = lab.write_timeline(&far);
    println!("{far_timeline}");
    assert!(
        gave_up.is_ok(),
        "the far guest did not give up on network boot: {:?}",
        gave_up.err()
    );
    assert!(far_timeline.marker_at().is_none(), "the far guest booted");
    let events = lab.ironpxe_events();
    let answered: Vec<String> = events
        .iter()
        .filter(|e| e.field("mac") == Some(far_mac.as_str()))
        .map(|e| e.summary())
        .collect();
    assert!(
        answered.is_empty(),
        "ironpxe reacted to the guest on {other_if}: {answered:#?}"
    );
}
