//! Root + QEMU: network boot over IPv6.
//!
//! - `qemu_ovmf_pxe6_boots_with_no_ipv4`: an IPv6-only segment. The site's dnsmasq
//!   hands out addresses by DHCPv6 and sends RAs with the M and O flags, and leaves
//!   iPXE to ironpxe. OVMF's PXEv6 client gets its address from the site and only
//!   the boot URL from ironpxe (ProxyDHCP-style: an ADVERTISE without IA_NA, then
//!   the REQUEST to UDP 4011), fetches snponly.efi over TFTP on IPv6; that iPXE gets
//!   an address and the script URL from ironpxe's stateful mode and fetches script
//!   and kernel over HTTP on IPv6. Exact command line, and no IPv4 used.
//! - `qemu_ovmf_http6_boots`: a dual-stack segment. OVMF's UEFI HTTP Boot over IPv6
//!   (its only boot option) takes ironpxe's address-less ADVERTISE with options 16
//!   and 59 and downloads snponly.efi over HTTP on IPv6; iPXE then boots over IPv4.
//!
//! Each prints its power-on-to-marker time and saves the DHCPv6 requests it saw in
//! `lab-out/<test>/` (the material of `testdata/dhcp6/`).
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::net::IpAddr;
use std::time::Duration;

use ironpxe_core::urls::tftp_url;
use ironpxe_lab::{
    boot_once, frames_in_pcap, save_dhcp6_requests, udp6_in_pcap_file, Event, GuestConfig, Lab,
    SiteV6,
};

fn peer_ip(e: &Event) -> Option<IpAddr> {
    let p = e.field("peer")?;
    p.parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| p.parse())
        .ok()
}

fn summaries(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.summary()).collect()
}

const CMDLINE6: &str = "console=ttyS0 ironpxe.test=pxe6 a=\"b c\"";

#[test]
fn qemu_ovmf_pxe6_boots_with_no_ipv4() {
    let lab = Lab::builder("qemu_ipv6_pxe")
        .ipv4(false)
        .site_ipv6(SiteV6::StatefulNotIpxe)
        .build()
        .expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE6);
    args.extend(lab.ironpxe_ipv6_args().into_iter().map(Into::into));
    let state = lab.out_dir().join("state");
    for a in [
        "--ipv6-range".to_string(),
        lab.ironpxe_range6(),
        "--state-dir".into(),
        state.display().to_string(),
        "--ipxe-snponly".into(),
    ] {
        args.push(a.into());
    }
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let capture = lab
        .capture(
            "dhcp6",
            &lab.pxe_ns(),
            &lab.pxe_ifname(),
            "udp port 546 or udp port 547 or udp port 4011",
        )
        .expect("tcpdump");

    let guest = GuestConfig {
        pcap: true,
        ..GuestConfig::uefi_pxe6()
    };
    let outcome = boot_once(&lab, guest, Duration::from_secs(300)).expect("guest");
    let _ = capture.finish();
    let dhcp6 = udp6_in_pcap_file(&capture.file).expect("capture");
    let saved = save_dhcp6_requests(&dhcp6, lab.out_dir(), "pxe6").expect("save");
    println!("saved {} DHCPv6 requests: {saved:?}", saved.len());

    let marker = outcome.expect_marker(&lab, "the OVMF PXEv6 guest");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(marker.user_cmdline_for_image(&image), CMDLINE6);

    let mac = outcome.guest.mac().to_string();
    let events = lab.ironpxe_events();
    let all = summaries(&events);
    let mine: Vec<&Event> = events
        .iter()
        .filter(|e| !matches!(e.field("mac"), Some(m) if m != mac))
        .collect();
    // Firmware: the ProxyDHCP-style ADVERTISE, then the 4011 REPLY, both naming
    // snponly.efi on ironpxe's IPv6 address.
    let tftp = tftp_url(lab.pxe_addr6(), "snponly.efi");
    for name in ["dhcp.offer", "dhcp.ack"] {
        assert!(
            mine.iter().any(|e| e.name == name
                && e.field("ipxe") == Some("false")
                && e.field("boot") == Some(tftp.as_str())),
            "no {name} with {tftp}; events: {all:#?}"
        );
    }
    let size = std::fs::metadata(ironpxe_lab::preflight::SNPONLY_EFI)
        .unwrap()
        .len()
        .to_string();
    assert!(
        mine.iter().any(|e| e.name == "tftp.done"
            && e.field("file") == Some("snponly.efi")
            && e.field("bytes") == Some(size.as_str())),
        "snponly.efi ({size} bytes) never arrived over TFTP; events: {all:#?}"
    );
    // iPXE: the stateful mode's answer with the script URL on IPv6.
    let script = lab
        .guest_boot_urls6()
        .script(outcome.guest.mac(), ironpxe_core::ClientArch::EfiX64);
    assert!(
        mine.iter().any(|e| e.name == "dhcp.ack"
            && e.field("ipxe") == Some("true")
            && e.field("boot") == Some(script.as_str())),
        "iPXE got no REPLY with {script}; events: {all:#?}"
    );
    for name in ["http.script", "http.file.done", "http.booting"] {
        assert!(
            mine.iter().any(|e| e.name == name),
            "no {name}; events: {all:#?}"
        );
    }
    // No IPv4 anywhere in the boot: every event with a client address has an IPv6
    // one, and the guest received no IPv4 frame at all.
    let v4: Vec<String> = mine
        .iter()
        .filter(|e| peer_ip(e).is_some_and(|ip| ip.is_ipv4()))
        .map(|e| e.summary())
        .collect();
    assert!(v4.is_empty(), "boot events over IPv4: {v4:#?}");
    let pcap = lab.out_dir().join(format!("{}.pcap", outcome.guest.name()));
    let frames = frames_in_pcap(&std::fs::read(&pcap).expect("guest pcap")).expect("pcap");
    let guest_mac = outcome.guest.mac().octets();
    let v4_in = frames
        .iter()
        .filter(|f| f.ethertype == 0x0800 && f.src_mac != guest_mac)
        .count();
    let v4_out: Vec<&ironpxe_lab::Frame> = frames
        .iter()
        .filter(|f| f.ethertype == 0x0800 && f.src_mac == guest_mac)
        .collect();
    let v6_frames = frames.iter().filter(|f| f.ethertype == 0x86dd).count();
    println!(
        "guest frames: {} total, {v6_frames} IPv6, {v4_in} IPv4 received, {} IPv4 sent",
        frames.len(),
        v4_out.len()
    );
    assert_eq!(v4_in, 0, "the guest received IPv4 frames");
    // iPXE's network configuration also sends DHCPv4 DISCOVERs (UDP 68 -> 67); they
    // are the only IPv4 the guest sends, and nothing answers them.
    for f in &v4_out {
        let p = &f.payload;
        let ihl = usize::from(p.first().map_or(0, |b| b & 0x0f)) * 4;
        let dport = p
            .get(ihl + 2..ihl + 4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        assert_eq!(
            (p.get(9).copied(), dport),
            (Some(17), Some(67)),
            "IPv4 from the guest that is not a DHCPv4 DISCOVER"
        );
    }
    // The stateful mode's lease is on disk.
    let leases = std::fs::read_to_string(state.join("dhcp6-leases")).expect("lease file");
    assert!(leases.contains(&mac), "{leases}");
    println!(
        "OVMF PXEv6 -> snponly.efi over TFTP v6 -> iPXE -> HTTP v6: marker {:.1} s after power-on",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}

const CMDLINE_HTTP6: &str = "console=ttyS0 ironpxe.test=http6";

#[test]
fn qemu_ovmf_http6_boots() {
    let lab = Lab::builder("qemu_ipv6_http")
        .site_ipv6(SiteV6::Stateful)
        .build()
        .expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE_HTTP6);
    args.extend(lab.ironpxe_ipv6_args().into_iter().map(Into::into));
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let capture = lab
        .capture(
            "dhcp6",
            &lab.pxe_ns(),
            &lab.pxe_ifname(),
            "udp port 546 or udp port 547 or udp port 4011",
        )
        .expect("tcpdump");
    let outcome =
        boot_once(&lab, GuestConfig::uefi_http6(), Duration::from_secs(300)).expect("guest");
    let _ = capture.finish();
    let dhcp6 = udp6_in_pcap_file(&capture.file).expect("capture");
    let saved = save_dhcp6_requests(&dhcp6, lab.out_dir(), "http6").expect("save");
    println!("saved {} DHCPv6 requests: {saved:?}", saved.len());

    let marker = outcome.expect_marker(&lab, "the OVMF HTTPv6 guest");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(marker.user_cmdline_for_image(&image), CMDLINE_HTTP6);

    let events = lab.ironpxe_events();
    let all = summaries(&events);
    let url = lab.guest_boot_urls6().binary("snponly.efi");
    let offer = events
        .iter()
        .find(|e| e.name == "dhcp.offer" && e.field("path") == Some("httpboot"))
        .unwrap_or_else(|| panic!("no HTTP Boot ADVERTISE; events: {all:#?}"));
    assert_eq!(offer.field("arch"), Some("http-x64"), "{}", offer.summary());
    assert_eq!(
        offer.field("boot"),
        Some(url.as_str()),
        "{}",
        offer.summary()
    );
    assert!(
        events.iter().any(|e| e.name == "http.bin"
            && e.field("file") == Some("snponly.efi")
            && e.field("head") == Some("false")
            && peer_ip(e).is_some_and(|ip| ip.is_ipv6())),
        "snponly.efi was never downloaded over IPv6; events: {all:#?}"
    );
    println!(
        "OVMF UEFI HTTP Boot over IPv6: marker {:.1} s after power-on",
        outcome.timeline.marker_at().unwrap_or_default()
    );
}
