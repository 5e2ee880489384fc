//! Root + QEMU: two ironpxe instances with the same configuration answer the same
//! segment (one in the ironpxe namespace, one next to the site's dnsmasq with
//! `--dhcp-no-bind`). The guest gets two ProxyDHCP offers, follows one, and boots.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::ffi::OsString;

use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=two-servers";

#[test]
fn qemu_two_instances_on_one_segment_boot_a_guest() {
    let lab = Lab::new("qemu_two_servers").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    let first = lab.start_ironpxe(&args).expect("start the first ironpxe");
    let mut second_args = args.clone();
    let i = second_args.iter().position(|a| a == "--interface").unwrap();
    second_args[i + 1] = OsString::from(lab.site_ifname());
    second_args.push("--dhcp-no-bind".into());
    let second = lab
        .start_ironpxe_in(&lab.site_ns(), &second_args)
        .expect("start the second ironpxe next to dnsmasq");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest with two boot servers");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(marker.user_cmdline_for_image(&image), CMDLINE);

    // Both answered the guest; its downloads went to one of them, whole.
    let mac = outcome.guest.mac().to_string();
    let (a, b) = (first.events(), second.events());
    for (name, events) in [("first", &a), ("second", &b)] {
        assert!(
            events
                .iter()
                .any(|e| e.name == "dhcp.offer" && e.field("mac") == Some(mac.as_str())),
            "the {name} instance did not offer: {:?}",
            events.iter().map(|e| e.summary()).collect::<Vec<_>>()
        );
    }
    let done = |events: &[ironpxe_lab::Event]| {
        events.iter().filter(|e| e.name == "http.file.done").count()
    };
    assert!(
        done(&a) + done(&b) >= 2,
        "kernel and initrd were not both downloaded: {} + {}",
        done(&a),
        done(&b)
    );
    assert!(
        !a.iter().chain(&b).any(|e| e.name == "http.file.failed"),
        "a download failed"
    );
}
