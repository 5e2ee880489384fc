//! Root: ironpxe sees the site DHCP server's broadcast DHCPACKs to the machines it
//! handed shim or GRUB, and warns once per machine when one names another
//! next-server (Debian's signed GRUB would ask that server for its configuration).
//!
//! A crafted PXE DISCOVER (EFI x64) gets ironpxe's `shimx64.efi` offer (`boot
//! --loader shim`); then crafted broadcast DHCPACKs as a site server sends them: one
//! naming the site server itself as next-server (warned, once, though sent twice),
//! one naming ironpxe (fine), and one to a machine ironpxe never offered shim
//! (not its business).
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`) and Debian's shim and
//! signed GRUB (shim-signed, grub-efi-amd64-signed; without them ironpxe refuses to
//! start and says which to install).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;
use ironpxe_lab::{Lab, Needs, DEFAULT_HTTP_PORT};

const WRONG: [u8; 6] = [0x52, 0x54, 0x00, 0x9a, 0x00, 0x01];
const RIGHT: [u8; 6] = [0x52, 0x54, 0x00, 0x9a, 0x00, 0x02];
const NEVER_OFFERED: [u8; 6] = [0x52, 0x54, 0x00, 0x9a, 0x00, 0x03];

fn discover(xid: u32, mac: &[u8; 6]) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    m.set_opcode(Opcode::BootRequest);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    m.to_vec().unwrap()
}

fn site_ack(xid: u32, mac: &[u8; 6], yiaddr: Ipv4Addr, next: Ipv4Addr, site: Ipv4Addr) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        next,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Ack));
    o.insert(DhcpOption::ServerIdentifier(site));
    m.to_vec().unwrap()
}

fn mac_text(m: &[u8; 6]) -> String {
    ironpxe_core::MacAddr(*m).to_string()
}

#[test]
fn root_a_site_ack_naming_another_next_server_is_warned_once_per_machine() {
    let lab = Lab::builder("dhcp_site_next_server")
        .needs(Needs::network_only())
        .build()
        .expect("build lab");
    let kernel = lab.tmp_dir().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let args: Vec<String> = vec![
        "boot".into(),
        kernel.display().to_string(),
        "--loader".into(),
        "shim".into(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        lab.pxe_ifname(),
    ];
    let ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let client = lab.add_client().expect("client namespace");
    lab.send_udp(
        &client.ns,
        &client.ifname,
        68,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &[discover(0x5e_0001, &WRONG), discover(0x5e_0002, &RIGHT)],
    )
    .expect("send DISCOVERs");
    for mac in [WRONG, RIGHT] {
        ironpxe
            .wait_event(Duration::from_secs(5), |e| {
                e.name == "dhcp.offer"
                    && e.field("mac") == Some(mac_text(&mac).as_str())
                    && e.field("boot") == Some("shimx64.efi")
            })
            .expect("ironpxe offers shim");
    }

    let (site, us) = (lab.site_addr(), lab.pxe_addr());
    let lease = |n| Ipv4Addr::new(10, 77, lab.subnet(), n);
    let acks = [
        site_ack(0x5e_0001, &WRONG, lease(150), site, site),
        site_ack(0x5e_0001, &WRONG, lease(150), site, site),
        site_ack(0x5e_0002, &RIGHT, lease(151), us, site),
        site_ack(0x5e_0003, &NEVER_OFFERED, lease(152), site, site),
    ];
    // From the site server's namespace, broadcast to the clients' port, as a site
    // server answers a PXE client (which asks for broadcast answers).
    lab.send_udp(
        &lab.site_ns(),
        &lab.site_ifname(),
        0,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        &acks,
    )
    .expect("send the site's ACKs");
    let warning = ironpxe
        .wait_event(Duration::from_secs(5), |e| e.name == "dhcp.next_server")
        .expect("a dhcp.next_server warning");
    assert_eq!(warning.field("mac"), Some(mac_text(&WRONG).as_str()));
    assert_eq!(
        warning.field("next_server"),
        Some(site.to_string().as_str())
    );
    // Give the other ACKs time to be (not) warned about.
    std::thread::sleep(Duration::from_secs(2));
    let warned: Vec<String> = ironpxe
        .events()
        .iter()
        .filter(|e| e.name == "dhcp.next_server")
        .map(|e| e.summary())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    let log: String = ironpxe
        .lines()
        .iter()
        .map(|l| l.text.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        log.contains("WARN") && log.contains("event=\"dhcp.next_server\""),
        "the warning is in ironpxe's log at warning level:\n{log}"
    );
}
