//! The DHCPv6 core on messages captured from real clients in the QEMU lab
//! (`testdata/dhcp6/`, see its README): the right answer per architecture, and
//! none for an ordinary DHCPv6 client.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use ironpxe_core::config::StatefulFor;
use ironpxe_core::{BootDecision, BootSpec, ClientArch, FileRef, IpxeBinaries, IpxeRole, MacAddr};
use ironpxe_dhcp::decide::{BootPath, ServerPort};
use ironpxe_dhcp::request::VendorClass;
use ironpxe_dhcp::v6::{
    answer6, classify6, Answer6, Config6, Ignored6, Leases, MacSource, NotBoot6, Parsed6,
    RecvMeta6, Reply6, Stateful,
};

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/../testdata/dhcp6/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The MAC of the guest the HTTP Boot vectors were captured from, and its
/// link-local source address.
const HTTP_GUEST: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x3c, 0xa3, 0x00]);
const HTTP_GUEST_LL: &str = "fe80::5054:ff:fe3c:a300";
/// The same for the PXEv6 vectors.
const PXE_GUEST: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xec, 0xba, 0x00]);
const PXE_GUEST_LL: &str = "fe80::5054:ff:feec:ba00";
const SERVER_ID: &[u8] = &[0, 3, 0, 1, 0x02, 0, 0, 0, 0, 2];

fn local() -> Ipv6Addr {
    "fd77:1::2".parse().unwrap()
}

fn cfg(stateful: bool) -> Config6 {
    Config6 {
        http_port: 8080,
        binaries: IpxeBinaries::default()
            .with(IpxeRole::Efi64, "snponly.efi")
            .with(IpxeRole::Snponly, "snponly.efi"),
        stateful: stateful.then(|| Stateful {
            for_whom: StatefulFor::Ipxe,
            ..Stateful::default()
        }),
        ..Config6::default()
    }
}

fn netboot() -> BootDecision {
    BootDecision::Netboot(Arc::new(BootSpec {
        kernel: FileRef::parse("/k").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }))
}

fn run(name: &str, src: &str, port: ServerPort, stateful: bool) -> Result<Reply6, Ignored6> {
    let src: Ipv6Addr = src.parse().unwrap();
    let meta = RecvMeta6 {
        local_ip: local(),
        dst_ip: if port == ServerPort::Pxe {
            local()
        } else {
            "ff02::1:2".parse().unwrap()
        },
        ifindex: 2,
        port,
        src: SocketAddrV6::new(src, if port == ServerPort::Pxe { 4011 } else { 546 }, 0, 2),
    };
    let req = Parsed6::parse(&vector(name), src)?.into_request(None)?;
    let a = classify6(&req, &meta, SERVER_ID, stateful)?;
    let mut leases = stateful.then(|| Leases::new("fd77:1::1000-fd77:1::10ff".parse().unwrap()));
    answer6(
        &cfg(stateful),
        req,
        a,
        &netboot(),
        &meta,
        SERVER_ID,
        leases.as_mut(),
        1,
    )
}

/// Option `code` of an encoded reply.
fn option(bytes: &[u8], code: u16) -> Option<&[u8]> {
    let mut rest = &bytes[4..];
    while rest.len() >= 4 {
        let c = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let body = rest.get(4..4 + len)?;
        if c == code {
            return Some(body);
        }
        rest = &rest[4 + len..];
    }
    None
}

#[test]
fn ovmf_pxe6_solicit_gets_snponly_over_tftp_without_an_address() {
    let p = Parsed6::parse(
        &vector("ovmf-pxe6-solicit.bin"),
        PXE_GUEST_LL.parse().unwrap(),
    )
    .unwrap();
    assert_eq!(p.arch, ClientArch::EfiX64);
    assert_eq!(p.class, VendorClass::PxeClient);
    assert!(!p.ipxe);
    assert!(p.ia_na.is_some(), "EDK2 asks for an address");
    // QEMU with -uuid: EDK2 sends DUID-UUID, so the MAC comes from the EUI-64
    // link-local source.
    assert_eq!(p.client_id[..2], [0, 4]);
    assert_eq!(p.mac, Some((PXE_GUEST, MacSource::Eui64)));

    let r = run(
        "ovmf-pxe6-solicit.bin",
        PXE_GUEST_LL,
        ServerPort::Dhcp,
        false,
    )
    .unwrap();
    assert_eq!(r.answer, Answer6::Advertise);
    assert_eq!(r.bytes[0], 2, "ADVERTISE");
    assert_eq!(
        option(&r.bytes, 59),
        Some(&b"tftp://[fd77:1::2]/snponly.efi"[..])
    );
    assert_eq!(
        option(&r.bytes, 16),
        Some(&[&[0u8, 0, 1, 87, 0, 9][..], b"PXEClient"].concat()[..])
    );
    assert_eq!(option(&r.bytes, 3), None, "no IA_NA");
    assert_eq!(option(&r.bytes, 7), None, "no preference");
    assert_eq!(
        option(&r.bytes, 1),
        option(&vector("ovmf-pxe6-solicit.bin"), 1),
        "client id echoed"
    );
}

#[test]
fn ovmf_pxe6_request_to_4011_gets_the_boot_file_again() {
    // It comes from EDK2's new global address with a DUID-UUID: its MAC is what
    // the SOLICIT told.
    let src = "fd77:b9::1e4";
    let p = Parsed6::parse(&vector("ovmf-pxe6-request-4011.bin"), src.parse().unwrap()).unwrap();
    assert_eq!(p.msg_type, 3, "REQUEST");
    assert_eq!(p.mac, None);
    let e = p.clone().into_request(None).unwrap_err();
    assert!(matches!(e, NotBoot6::NoMac { duid_type: 4, .. }), "{e}");
    let req = p.into_request(Some(PXE_GUEST)).unwrap();
    let meta = RecvMeta6 {
        local_ip: local(),
        dst_ip: local(),
        ifindex: 2,
        port: ServerPort::Pxe,
        src: SocketAddrV6::new(src.parse().unwrap(), 4011, 0, 0),
    };
    let a = classify6(&req, &meta, SERVER_ID, false).unwrap();
    assert_eq!(a, Answer6::PxeReply);
    let r = answer6(&cfg(false), req, a, &netboot(), &meta, SERVER_ID, None, 1).unwrap();
    assert_eq!(r.bytes[0], 7, "REPLY");
    assert_eq!(r.dest, meta.src);
    assert_eq!(r.resend.len(), 2);
    assert_eq!(
        option(&r.bytes, 59),
        Some(&b"tftp://[fd77:1::2]/snponly.efi"[..])
    );
}

#[test]
fn ovmf_http6_solicit_gets_the_binary_url_and_httpclient() {
    let r = run(
        "ovmf-http6-solicit.bin",
        HTTP_GUEST_LL,
        ServerPort::Dhcp,
        false,
    )
    .unwrap();
    assert_eq!(r.request.arch, ClientArch::HttpX64);
    assert_eq!(r.request.mac, HTTP_GUEST);
    assert_eq!(
        option(&r.bytes, 59),
        Some(&b"http://[fd77:1::2]:8080/_/bin/snponly.efi"[..])
    );
    assert_eq!(
        option(&r.bytes, 16),
        Some(&[&[0u8, 0, 1, 87, 0, 10][..], b"HTTPClient"].concat()[..])
    );
    assert!(matches!(r.path, Some(BootPath::HttpBoot { .. })));
    assert_eq!(option(&r.bytes, 3), None);
}

#[test]
fn ipxe_solicit_gets_the_script_and_an_address_only_in_the_stateful_mode() {
    let proxy = run("ipxe-solicit.bin", HTTP_GUEST_LL, ServerPort::Dhcp, false).unwrap();
    assert!(proxy.request.ipxe);
    assert_eq!(proxy.request.client_id[..2], [0, 4], "iPXE sends DUID-UUID");
    assert_eq!(proxy.request.mac_from, MacSource::Eui64);
    assert_eq!(
        option(&proxy.bytes, 59),
        Some(&b"http://[fd77:1::2]:8080/_/ipxe?mac=52:54:00:3c:a3:00&arch=7"[..])
    );
    assert_eq!(option(&proxy.bytes, 3), None);

    let stateful = run("ipxe-solicit.bin", HTTP_GUEST_LL, ServerPort::Dhcp, true).unwrap();
    let ia = option(&stateful.bytes, 3).expect("IA_NA");
    // The IAID echoed, then an IAADDR from the range.
    assert_eq!(
        ia[..4],
        option(&vector("ipxe-solicit.bin"), 3).unwrap()[..4]
    );
    assert_eq!(u16::from_be_bytes([ia[12], ia[13]]), 5);
    assert_eq!(option(&stateful.bytes, 7), Some(&[255u8][..]));
    assert!(stateful.address.is_some());
}

#[test]
fn ipxe_stateful_request_to_ironpxe_gets_its_lease() {
    let src = PXE_GUEST_LL;
    let p = Parsed6::parse(&vector("ipxe-request.bin"), src.parse().unwrap()).unwrap();
    let server = p.server_id.clone().expect("a REQUEST names its server");
    let req = p.into_request(None).unwrap();
    let meta = RecvMeta6 {
        local_ip: local(),
        dst_ip: "ff02::1:2".parse().unwrap(),
        ifindex: 2,
        port: ServerPort::Dhcp,
        src: SocketAddrV6::new(src.parse().unwrap(), 546, 0, 2),
    };
    // Not ours under another server id; ours under the one it names.
    assert_eq!(
        classify6(&req, &meta, SERVER_ID, true),
        Err(Ignored6::OtherServer)
    );
    let a = classify6(&req, &meta, &server, true).unwrap();
    let mut leases = Leases::new("fd77:1::1000-fd77:1::10ff".parse().unwrap());
    let r = answer6(
        &cfg(true),
        req,
        a,
        &netboot(),
        &meta,
        &server,
        Some(&mut leases),
        1,
    )
    .unwrap();
    assert_eq!(r.bytes[0], 7);
    assert!(r.address.is_some());
    assert!(option(&r.bytes, 59).is_some());
}

#[test]
fn requests_to_the_site_server_and_plain_clients_get_nothing() {
    let e = run(
        "ipxe-request-to-site.bin",
        HTTP_GUEST_LL,
        ServerPort::Dhcp,
        true,
    )
    .unwrap_err();
    assert_eq!(e, Ignored6::OtherServer);
    // EDK2's Ip6Config SOLICIT: an ordinary DHCPv6 client (no vendor or user class).
    for stateful in [false, true] {
        let e = run(
            "ovmf-ip6config-solicit.bin",
            HTTP_GUEST_LL,
            ServerPort::Dhcp,
            stateful,
        )
        .unwrap_err();
        assert_eq!(e, Ignored6::NotBoot(NotBoot6::NotBootClient));
    }
}

#[test]
fn every_truncation_of_every_vector_is_refused_without_panic() {
    for name in [
        "ovmf-pxe6-solicit.bin",
        "ovmf-pxe6-request-4011.bin",
        "ovmf-http6-solicit.bin",
        "ovmf-ip6config-solicit.bin",
        "ipxe-solicit.bin",
        "ipxe-request.bin",
        "ipxe-request-to-site.bin",
    ] {
        let v = vector(name);
        for n in 0..v.len() {
            let _ = Parsed6::parse(&v[..n], "fe80::1".parse().unwrap());
        }
        let mut flipped = v.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = Parsed6::parse(&flipped, "fe80::1".parse().unwrap());
            flipped[i] ^= 0xff;
        }
    }
}
