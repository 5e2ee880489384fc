//! Self-tests of the lab itself; they need root and QEMU but not ironpxe.
//!
//! They prove that the lab network is private (no link or route to the host's
//! namespace), that the site DHCP server hands out addresses on the bridge, that
//! the kernel and initrd print the marker, that a guest does not boot when no
//! ironpxe runs, and that nothing is left behind after a lab is dropped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ironpxe_lab::lab::list_namespaces;
use ironpxe_lab::{boot_once, GuestConfig, Lab};

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_lab_is_isolated_hands_out_addresses_and_cleans_up() {
    let lab = Lab::new("lab_selftest-isolation").expect("build lab");
    let id = lab.id().to_string();
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 3, "switch, site and ironpxe namespaces");
    let listed = list_namespaces();
    for ns in &namespaces {
        assert!(
            listed.contains(ns),
            "namespace {ns} missing from `ip netns list`"
        );
        assert!(ns.starts_with(&id));
    }

    // Nothing of the lab in the host's namespace, and no way out of the lab.
    let host_links = sh("ip", &["-o", "link", "show"]);
    assert!(
        !host_links.contains(&id),
        "a lab interface is visible in the host namespace:\n{host_links}"
    );
    let client = lab.add_client().expect("client namespace");
    for ns in lab.namespaces() {
        for family in ["-4", "-6"] {
            let routes = sh("ip", &["-n", &ns, family, "route", "show", "default"]);
            assert!(
                routes.trim().is_empty(),
                "namespace {ns} has a default route: {routes}"
            );
        }
        let links = sh("ip", &["-n", &ns, "-o", "link", "show"]);
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or(name);
            assert!(
                name == "lo" || name.starts_with(&id),
                "namespace {ns} has a foreign interface {name}"
            );
        }
    }

    // The site server answers an ordinary DHCP client on the bridge.
    let started = Instant::now();
    let addr = lab
        .client_dhcp(&client, Duration::from_secs(20))
        .expect("udhcpc lease from the site dnsmasq");
    println!(
        "udhcpc got {addr} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let (lo, hi) = lab.dhcp_range();
    assert!(lo <= addr && addr <= hi, "{addr} outside {lo}-{hi}");
    assert!(
        lab.site_leases().iter().any(|(_, ip)| *ip == addr),
        "lease for {addr} missing from the site lease file: {:?}",
        lab.site_leases()
    );

    let pids = lab.processes();
    assert!(pids.iter().any(|(n, _)| n == "site-dnsmasq"), "{pids:?}");
    let namespaces = lab.namespaces();
    drop(lab);

    let listed = list_namespaces();
    for ns in &namespaces {
        assert!(
            !listed.contains(ns),
            "namespace {ns} left behind after drop"
        );
    }
    for (name, pid) in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "{name} (pid {pid}) still runs after drop"
        );
    }
}

#[test]
fn qemu_direct_kernel_boot_prints_the_marker() {
    // Checks the assets alone: QEMU loads kernel and initrd itself, no network boot.
    let lab = Lab::builder("lab_selftest-direct-kernel")
        .site_dhcp(false)
        .build()
        .expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let cmdline = "console=ttyS0 ironpxe.test=a=b quiet note=hello world";
    let mut config = GuestConfig::bios();
    config.extra_args = vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline.into(),
    ];
    let outcome = boot_once(&lab, config, Duration::from_secs(120)).expect("start guest");
    let marker = outcome
        .marker
        .expect("marker from a directly booted kernel");
    assert_eq!(marker.cmdline, cmdline);
}

#[test]
fn qemu_bios_guest_without_ironpxe_gets_an_address_but_never_boots() {
    let lab = Lab::new("lab_selftest-no-ironpxe").expect("build lab");
    let guest = lab.start_guest(GuestConfig::bios()).expect("start guest");
    let mac = guest.mac().to_string();

    // iPXE's DHCP, answered by the site server alone.
    let (addr, acked) = lab
        .wait_site_ack(&mac, Duration::from_secs(60))
        .expect("the guest's iPXE got a lease from the site dnsmasq");
    let lease_secs = (acked - guest.powered_on()).as_secs_f64();
    println!("BIOS iPXE lease {addr} {lease_secs:.2} s after power-on");
    guest
        .wait_for_serial("Configuring (net0", Duration::from_secs(30))
        .expect("iPXE configures net0 (seen on the serial console)");

    // Without ironpxe there is nothing to boot: no marker within 60 s of power-on.
    let left = Duration::from_secs(60).saturating_sub(guest.powered_on().elapsed());
    let marker = guest.wait_for_marker(left);
    let timeline = lab.write_timeline(&guest);
    println!("{timeline}");
    assert!(
        marker.is_err(),
        "the guest booted with no ironpxe running: {:?}",
        marker.map(|m| m.line)
    );
    assert!(timeline.event_names().is_empty());
}
