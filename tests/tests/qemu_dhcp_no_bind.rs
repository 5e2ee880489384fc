//! Root + QEMU: with `--dhcp-no-bind`, ironpxe runs in the same namespace as the
//! site's dnsmasq, which holds UDP 67, and a guest still boots through it.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::ffi::OsString;
use std::time::Duration;

use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=no-bind";

#[test]
fn qemu_ironpxe_next_to_dnsmasq_on_one_host_boots_a_guest() {
    let lab = Lab::new("qemu_dhcp_no_bind").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    let i = args.iter().position(|a| a == "--interface").unwrap();
    args[i + 1] = OsString::from(lab.site_ifname());
    args.push("--dhcp-no-bind".into());

    let _ironpxe = lab
        .start_ironpxe_in(&lab.site_ns(), &args)
        .expect("start ironpxe with --dhcp-no-bind");
    // Exactly one UDP 67 socket in the namespace, and it is dnsmasq's.
    let udp = lab
        .run_in(&lab.site_ns(), "cat", &["/proc/net/udp"])
        .expect("read /proc/net/udp");
    let udp = String::from_utf8_lossy(&udp.stdout).into_owned();
    let port67: Vec<&str> = udp
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(":0043"))
        })
        .collect();
    assert_eq!(port67.len(), 1, "UDP 67 sockets:\n{udp}");
    let ss = lab
        .run_in(&lab.site_ns(), "ss", &["-ulpn", "sport = :67"])
        .expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    assert!(ss.contains("dnsmasq") && !ss.contains("ironpxe"), "{ss}");
    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest");
    assert_eq!(marker.cmdline, CMDLINE);
    let mac = outcome.guest.mac().to_string();
    let events = lab.ironpxe_events();
    let offer = events
        .iter()
        .find(|e| e.name == "dhcp.offer" && e.field("mac") == Some(mac.as_str()))
        .expect("dhcp.offer");
    assert_eq!(
        offer.field("server"),
        Some(lab.site_addr().to_string().as_str()),
        "{}",
        offer.summary()
    );
    // dnsmasq still served the address on the same host.
    lab.wait_site_ack(&mac, Duration::from_secs(1))
        .expect("dnsmasq kept answering");
    println!(
        "--dhcp-no-bind BIOS boot: marker {:.1} s after power-on",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}
