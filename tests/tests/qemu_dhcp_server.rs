//! Root + QEMU: `[dhcp] mode = "server"`, ironpxe as the data network's DHCP server.
//!
//! In a lab whose site server only sends router advertisements (no DHCPv4):
//! - a BIOS guest with a reservation gets its address in the same OFFER as its boot
//!   information, and boots;
//! - busybox udhcpc with a reservation gets its reserved address, and a client
//!   without one gets a pool address;
//! - after `kill -9` and a restart, the pool client renews into the same address and
//!   the lease list still has every lease.
//!
//! In a lab whose site dnsmasq hands out addresses, `mode = "server"` refuses to
//! start, naming the other server's address.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`), root and the lab
//! packages.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironpxe_core::MacAddr;
use ironpxe_lab::{boot_once, GuestConfig, Ironpxe, Lab, DEFAULT_STATUS_PORT};

const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xd4, 0x00, 0x01]);

fn dhcp_config(lab: &Lab, kernel: &Path, initrd: &Path, reserved_client: MacAddr) -> PathBuf {
    let n = lab.subnet();
    let cfg = lab.tmp_dir().join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[dhcp]
mode = "server"
subnet = "10.77.{n}.0/24"
pool = "10.77.{n}.150-10.77.{n}.159"
lease_time = "1h"
router = "10.77.{n}.1"
dns = ["10.77.{n}.1"]

[profiles.marker]
kernel = "{kernel}"
initrd = ["{initrd}"]
cmdline = "console=ttyS0 role=reserved"

[[machines]]
mac = "{GUEST_MAC}"
name = "node-60"
profile = "marker"
ip = "10.77.{n}.60"

[[machines]]
mac = "{reserved_client}"
name = "node-61"
boot = "ignore"
ip = "10.77.{n}.61"
"#,
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();
    cfg
}

fn start(lab: &Lab, cfg: &Path, state: &Path) -> ironpxe_lab::Result<Ironpxe> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--config".into(),
        cfg.into(),
        "--state-dir".into(),
        state.into(),
    ];
    args.extend(lab.ironpxe_server_args());
    lab.start_ironpxe(&args)
}

/// The leases ironpxe lists, as (mac, ip).
fn leases(lab: &Lab) -> Vec<(String, String)> {
    let url = format!(
        "http://{}:{DEFAULT_STATUS_PORT}/api/v1/leases",
        lab.pxe_addr()
    );
    let out = lab
        .run_in(&lab.pxe_ns(), "curl", &["-sf", &url])
        .expect("curl (apt-get install curl)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("GET {url}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let mut l: Vec<(String, String)> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mac"].as_str().unwrap().to_string(),
                l["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    l.sort();
    l
}

#[test]
fn qemu_dhcp_server_reservations_pool_and_restart() {
    let lab = Lab::builder("qemu_dhcp_server")
        .site_addresses(false)
        .build()
        .expect("build lab");
    let n = lab.subnet();
    let kernel = ironpxe_lab::kernel().expect("lab kernel");
    let initrd = lab.initrd().expect("lab initrd");
    let reserved = lab.add_client().expect("client namespace");
    let pool = lab.add_client().expect("client namespace");
    let reserved_mac = lab.client_mac(&reserved).expect("client MAC");
    let pool_mac = lab.client_mac(&pool).expect("client MAC");
    let cfg = dhcp_config(&lab, &kernel, &initrd, reserved_mac);
    let state = lab.tmp_dir().join("state");
    let ironpxe = start(&lab, &cfg, &state).expect("start ironpxe in mode = server");

    // The BIOS guest: its reserved address and its boot in one exchange.
    let outcome = boot_once(
        &lab,
        GuestConfig {
            mac: Some(GUEST_MAC),
            ..GuestConfig::bios()
        },
        Duration::from_secs(180),
    )
    .expect("guest");
    let marker = outcome.expect_marker(&lab, "the reserved BIOS guest");
    assert_eq!(marker.cmdline, "console=ttyS0 role=reserved");
    let serial = outcome.guest.serial_lines();
    assert!(
        serial.iter().any(|l| l
            .text
            .contains(&format!("net0: 10.77.{n}.60/255.255.255.0 gw 10.77.{n}.1"))),
        "iPXE did not configure the reserved address"
    );
    ironpxe
        .wait_event(Duration::from_secs(5), |e| {
            e.name == "dhcp.lease"
                && e.field("mac") == Some(&GUEST_MAC.to_string())
                && e.field("ip") == Some(&format!("10.77.{n}.60"))
                && e.field("kind") == Some("reserved")
        })
        .expect("a dhcp.lease event for the guest's reservation");

    // busybox udhcpc: the reservation, and the pool.
    let got = lab
        .client_dhcp(&reserved, Duration::from_secs(20))
        .expect("udhcpc with a reservation");
    assert_eq!(got, Ipv4Addr::new(10, 77, n, 61));
    let pooled = lab
        .client_dhcp(&pool, Duration::from_secs(20))
        .expect("udhcpc from the pool");
    assert!(
        (150..=159).contains(&pooled.octets()[3]) && pooled.octets()[..3] == [10, 77, n],
        "{pooled} is not a pool address"
    );
    let before = leases(&lab);
    assert!(
        before.contains(&(pool_mac.to_string(), pooled.to_string())),
        "{before:?}"
    );

    // kill -9, restart: the leases are still there, and the pool client keeps its
    // address.
    ironpxe.stop();
    let _ironpxe = start(&lab, &cfg, &state).expect("restart ironpxe");
    assert_eq!(leases(&lab), before);
    let again = lab
        .client_dhcp(&pool, Duration::from_secs(20))
        .expect("udhcpc after the restart");
    assert_eq!(
        again, pooled,
        "the pool client lost its address over the restart"
    );
}

#[test]
fn qemu_dhcp_server_refuses_to_start_next_to_another_dhcp_server() {
    // The default lab: the site dnsmasq hands out addresses on the same segment.
    let lab = Lab::new("qemu_dhcp_server_refuses").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("lab kernel");
    let initrd = lab.initrd().expect("lab initrd");
    let cfg = dhcp_config(&lab, &kernel, &initrd, MacAddr([2, 0, 0, 0, 0, 1]));
    let state = lab.tmp_dir().join("state");
    let err = match start(&lab, &cfg, &state) {
        Ok(_) => panic!("ironpxe started in mode = server next to the site dnsmasq"),
        Err(e) => format!("{e:#}"),
    };
    println!("{err}");
    assert!(
        err.contains(&format!(
            "another DHCP server answers on {}: {} (it offered",
            lab.pxe_ifname(),
            lab.site_addr()
        )),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
}
