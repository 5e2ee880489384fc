//! Root + QEMU: a guest on a far segment behind a real DHCP relay (dnsmasq
//! `--dhcp-relay`, forwarding to both the site server and ironpxe) netboots. ironpxe
//! answers the relayed request by unicast to the relay's giaddr:67; the guest's HTTP
//! traffic is routed through the relay namespace.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use ironpxe_lab::{save_dhcp_requests, GuestConfig, Lab, DEFAULT_MARKER_TIMEOUT};

const CMDLINE: &str = "console=ttyS0 ironpxe.test=relayed";

#[test]
fn qemu_guest_behind_a_dhcp_relay_boots() {
    let lab = Lab::builder("qemu_relay")
        .relayed_segment(true)
        .build()
        .expect("build lab");
    let seg = lab.add_segment(1).expect("segment");
    let relay = lab
        .add_relay(&seg, &[lab.site_addr(), lab.pxe_addr()])
        .expect("relay");
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
    let guest = lab
        .start_guest_on(&seg.bridge, GuestConfig::bios())
        .expect("guest");
    let marker = guest.wait_for_marker(DEFAULT_MARKER_TIMEOUT);
    let timeline = lab.write_timeline(&guest);
    println!("{timeline}");
    let marker = marker.unwrap_or_else(|e| {
        panic!(
            "the relayed guest did not boot: {e:#}\nrelay log:\n{}\n(logs in {})",
            relay.tail(30),
            lab.out_dir().display()
        )
    });
    assert_eq!(marker.cmdline, CMDLINE);
    let packets = capture.finish().expect("capture");
    save_dhcp_requests(&packets, lab.out_dir(), "relayed-bios").expect("save requests");

    let events = lab.ironpxe_events();
    let mac = guest.mac().to_string();
    let giaddr = format!("{}:67", seg.addr(1));
    let relayed = events
        .iter()
        .find(|e| e.name == "dhcp.offer" && e.field("mac") == Some(mac.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "no offer for {mac}; events: {:#?}",
                events.iter().map(|e| e.summary()).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        relayed.field("via"),
        Some(giaddr.as_str()),
        "{}",
        relayed.summary()
    );
    assert_eq!(
        relayed.field("server"),
        Some(lab.pxe_addr().to_string().as_str()),
        "{}",
        relayed.summary()
    );
    // The guest's address came from the far segment's range, through the relay.
    let lease = lab
        .site_leases()
        .into_iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(&mac))
        .map(|(_, ip)| ip);
    assert!(
        lease.is_some_and(|ip| ip.to_string().starts_with(&format!("{}.", seg.prefix))),
        "lease {lease:?} is not on {}.0/24",
        seg.prefix
    );
    println!(
        "relayed BIOS boot: marker {:.1} s after power-on",
        timeline.marker_at().unwrap_or_default()
    );
}
