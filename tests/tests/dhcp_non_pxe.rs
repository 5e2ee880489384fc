//! Root: ordinary DHCP clients never receive anything from ironpxe. A busybox
//! udhcpc gets its lease from the site server, and crafted non-PXE packets (no
//! vendor class, other classes, REQUEST on 67, BOOTREPLY, RELEASE, bad hlen,
//! garbage) get no answer, while a PXE DISCOVER sent the same way does: tcpdump in
//! the client's namespace sees exactly one packet from ironpxe, for that one.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;
use ironpxe_lab::Lab;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x99, 0x00, 0x01];

fn packet(xid: u32, msg_type: MessageType, class: Option<&[u8]>) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(Opcode::BootRequest);
    m.opts_mut().insert(DhcpOption::MessageType(msg_type));
    if let Some(c) = class {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(c.to_vec()));
    }
    m
}

#[test]
fn root_non_pxe_dhcp_clients_never_hear_from_ironpxe() {
    let lab = Lab::new("dhcp_non_pxe").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let args = lab.ironpxe_boot_args(&kernel, &[&initrd], "console=ttyS0");
    let ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let client = lab.add_client().expect("client namespace");
    let capture = lab
        .capture("client", &client.ns, &client.ifname, "udp")
        .expect("tcpdump");

    let lease = lab
        .client_dhcp(&client, Duration::from_secs(20))
        .expect("udhcpc lease");
    println!("udhcpc leased {lease}");

    let control_xid = 0x7e57_0000;
    let mut crafted: Vec<Vec<u8>> = [
        packet(0x7e57_0001, MessageType::Discover, None),
        packet(0x7e57_0002, MessageType::Discover, Some(b"MSFT 5.0")),
        packet(0x7e57_0003, MessageType::Discover, Some(b"udhcp 1.35.0")),
        packet(0x7e57_0004, MessageType::Discover, Some(b"PXEClien")),
        packet(
            0x7e57_0005,
            MessageType::Request,
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
        ),
        packet(
            0x7e57_0006,
            MessageType::Release,
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
        ),
        packet(
            0x7e57_0007,
            MessageType::Decline,
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
        ),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    let mut reply = packet(0x7e57_0008, MessageType::Discover, Some(b"PXEClient"));
    reply.set_opcode(Opcode::BootReply);
    crafted.push(reply.to_vec().unwrap());
    let mut long_hw = packet(0x7e57_0009, MessageType::Discover, Some(b"PXEClient"))
        .to_vec()
        .unwrap();
    long_hw[2] = 20; // hlen beyond chaddr
    crafted.push(long_hw);
    crafted.push(b"not a dhcp packet at all".to_vec());
    crafted.push(vec![0u8; 300]);
    // The control: a PXE DISCOVER sent the same way must be answered.
    crafted.push(
        packet(
            control_xid,
            MessageType::Discover,
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
        )
        .to_vec()
        .unwrap(),
    );
    lab.send_udp(
        &client.ns,
        &client.ifname,
        68,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &crafted,
    )
    .expect("send crafted packets");
    ironpxe
        .wait_event(Duration::from_secs(5), |e| {
            e.name == "dhcp.offer" && e.field("xid") == Some("0x7e570000")
        })
        .expect("the PXE control packet was answered");
    let packets = capture.finish().expect("capture");

    let from_ironpxe: Vec<_> = packets
        .iter()
        .filter(|p| {
            *p.src.ip() == lab.pxe_addr() || (p.src.port() == 67 && *p.src.ip() != lab.site_addr())
        })
        .collect();
    let xids: Vec<u32> = from_ironpxe
        .iter()
        .map(|p| u32::from_be_bytes([p.payload[4], p.payload[5], p.payload[6], p.payload[7]]))
        .collect();
    assert_eq!(
        xids,
        vec![control_xid],
        "packets from ironpxe: {from_ironpxe:#?}"
    );
    assert!(
        packets
            .iter()
            .any(|p| *p.src.ip() == lab.site_addr() && p.src.port() == 67),
        "the capture saw no packet from the site server; is it capturing?"
    );
    let offers: Vec<String> = lab
        .ironpxe_events()
        .iter()
        .filter(|e| e.name.starts_with("dhcp.offer") || e.name == "dhcp.ack")
        .map(|e| e.summary())
        .collect();
    assert_eq!(offers.len(), 1, "{offers:#?}");
}
