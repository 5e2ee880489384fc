//! The DHCPv6 core on built messages: every answer kind, the stateful mode with a
//! restart, relays, and the clients that are never answered. (Captured messages
//! from real firmware are in `v6_vectors.rs`.)

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v6::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};
use ironpxe_core::config::StatefulFor;
use ironpxe_core::net6::eui64_link_local;
use ironpxe_core::{BootDecision, BootSpec, ClientArch, FileRef, IpxeBinaries, IpxeRole, MacAddr};
use ironpxe_dhcp::decide::{BootPath, ServerPort};
use ironpxe_dhcp::v6::{
    answer6, classify6, Answer6, Config6, Ignored6, LeaseFile, Leases, MacSource, NotBoot6,
    Parsed6, RecvMeta6, Stateful,
};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
const SERVER_ID: &[u8] = &[0, 3, 0, 1, 2, 0, 0, 0, 0, 2];
const UUID_DUID: &[u8] = &[0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

fn local() -> Ipv6Addr {
    "fd77:1::2".parse().unwrap()
}

fn opt(code: u16, data: &[u8]) -> Vec<u8> {
    let mut o = code.to_be_bytes().to_vec();
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(data);
    o
}

fn class(s: &str) -> Vec<u8> {
    let mut d = 343u32.to_be_bytes().to_vec();
    d.extend_from_slice(&(s.len() as u16).to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    d
}

fn ia_na(iaid: u32, addr: Option<Ipv6Addr>) -> Vec<u8> {
    let mut d = iaid.to_be_bytes().to_vec();
    d.extend_from_slice(&[0; 8]);
    if let Some(a) = addr {
        let mut ia = a.octets().to_vec();
        ia.extend_from_slice(&[0; 8]);
        d.extend(opt(5, &ia));
    }
    d
}

/// A message of type `t` with `opts`.
fn message(t: u8, opts: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![t, 0x12, 0x34, 0x56];
    for o in opts {
        m.extend_from_slice(o);
    }
    m
}

/// EDK2's PXE SOLICIT: DUID-UUID, IA_NA, arch 7, PXEClient.
fn edk2_pxe(t: u8, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut o = vec![
        opt(1, UUID_DUID),
        opt(3, &ia_na(1, None)),
        opt(6, &[0, 59, 0, 60, 0, 23, 0, 16]),
        opt(61, &[0, 7]),
        opt(62, &[1, 3, 0]),
        opt(16, &class("PXEClient:Arch:00007:UNDI:003000")),
    ];
    o.extend_from_slice(extra);
    message(t, &o)
}

fn edk2_http() -> Vec<u8> {
    message(
        1,
        &[
            opt(1, UUID_DUID),
            opt(3, &ia_na(1, None)),
            opt(61, &[0, 16]),
            opt(16, &class("HTTPClient:Arch:00016:UNDI:003000")),
        ],
    )
}

fn ipxe(t: u8, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut o = vec![
        opt(1, UUID_DUID),
        opt(3, &ia_na(0xdead_beef, None)),
        opt(16, &class("PXEClient:Arch:00007:UNDI:003010")),
        opt(61, &[0, 7]),
        opt(15, &[0, 4, b'i', b'P', b'X', b'E']),
    ];
    o.extend_from_slice(extra);
    message(t, &o)
}

/// A Linux DHCPv6 client: DUID-LLT, IA_NA, ORO, no boot classes.
fn plain_client() -> Vec<u8> {
    let mut llt = vec![0, 1, 0, 1, 0x2c, 0x11, 0x22, 0x33];
    llt.extend_from_slice(&MAC.octets());
    message(
        1,
        &[
            opt(1, &llt),
            opt(3, &ia_na(9, None)),
            opt(6, &[0, 23, 0, 24]),
            opt(8, &[0, 0]),
        ],
    )
}

fn meta(port: ServerPort, src: Ipv6Addr) -> RecvMeta6 {
    RecvMeta6 {
        local_ip: local(),
        dst_ip: "ff02::1:2".parse().unwrap(),
        ifindex: 3,
        port,
        src: SocketAddrV6::new(src, if port == ServerPort::Pxe { 4011 } else { 546 }, 0, 3),
    }
}

fn cfg(stateful: Option<StatefulFor>) -> Config6 {
    Config6 {
        http_port: 8080,
        binaries: IpxeBinaries::default()
            .with(IpxeRole::Efi64, "snponly.efi")
            .with(IpxeRole::Snponly, "snponly.efi"),
        stateful: stateful.map(|for_whom| Stateful {
            for_whom,
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

struct Run {
    leases: Option<Leases>,
    cfg: Config6,
}

impl Run {
    fn new(stateful: Option<StatefulFor>) -> Self {
        Run {
            leases: stateful.map(|_| Leases::new("fd77:1::1000-fd77:1::10ff".parse().unwrap())),
            cfg: cfg(stateful),
        }
    }

    fn go(&mut self, bytes: &[u8], m: RecvMeta6) -> Result<ironpxe_dhcp::v6::Reply6, Ignored6> {
        let req = Parsed6::parse(bytes, *m.src.ip())?.into_request(Some(MAC))?;
        let a = classify6(&req, &m, SERVER_ID, self.leases.is_some())?;
        answer6(
            &self.cfg,
            req,
            a,
            &netboot(),
            &m,
            SERVER_ID,
            self.leases.as_mut(),
            1_000_000,
        )
    }
}

/// A reply as dhcproto reads it, and its bytes.
struct Decoded {
    m: Message,
    bytes: Vec<u8>,
}

impl std::ops::Deref for Decoded {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.m
    }
}

fn decode(bytes: &[u8]) -> Decoded {
    Decoded {
        m: Message::decode(&mut Decoder::new(bytes)).expect("a reply dhcproto decodes"),
        bytes: bytes.to_vec(),
    }
}

/// Option `code` of a message as it is on the wire (dhcproto reads option 16 as
/// a count of strings, so the bytes are checked here).
fn unknown(m: &Decoded, code: u16) -> Option<Vec<u8>> {
    let mut rest = &m.bytes[4..];
    while rest.len() >= 4 {
        let c = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if c == code {
            return Some(rest[4..4 + len].to_vec());
        }
        rest = &rest[4 + len..];
    }
    None
}

fn ia_addr(m: &Message) -> Option<Ipv6Addr> {
    match m.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => match ia.opts.get(OptionCode::IAAddr) {
            Some(DhcpOption::IAAddr(a)) => Some(a.addr),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn pxe_firmware_gets_a_proxy_advertise_with_a_tftp_url_and_no_address() {
    let mut run = Run::new(None);
    let ll = eui64_link_local(MAC);
    let r = run
        .go(&edk2_pxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    assert_eq!(r.answer, Answer6::Advertise);
    assert_eq!(r.dest, SocketAddrV6::new(ll, 546, 0, 3));
    assert!(r.resend.is_empty());
    let m = decode(&r.bytes);
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(m.xid(), [0x12, 0x34, 0x56]);
    assert_eq!(
        unknown(&m, 59).as_deref(),
        Some(&b"tftp://[fd77:1::2]/snponly.efi"[..])
    );
    // Enterprise 343, then the length of the one string, then the string.
    assert_eq!(
        unknown(&m, 16).as_deref(),
        Some(&[&[0u8, 0, 1, 87, 0, 9][..], b"PXEClient"].concat()[..])
    );
    assert!(m.opts().get(OptionCode::IANA).is_none(), "no address");
    assert!(
        m.opts().get(OptionCode::Preference).is_none(),
        "a proxy never says 255"
    );
    assert!(
        matches!(m.opts().get(OptionCode::ClientId), Some(DhcpOption::ClientId(d)) if d == UUID_DUID)
    );
    assert!(
        matches!(m.opts().get(OptionCode::ServerId), Some(DhcpOption::ServerId(d)) if d == SERVER_ID)
    );
    assert!(matches!(r.path, Some(BootPath::Chainload { .. })));
}

#[test]
fn the_4011_request_is_answered_unicast_and_sent_again() {
    let mut run = Run::new(None);
    let global: Ipv6Addr = "fd77:1::1a5".parse().unwrap();
    let req = edk2_pxe(3, &[opt(2, b"\x00\x03site")]);
    let mut m = meta(ServerPort::Pxe, global);
    m.dst_ip = local();
    let r = run.go(&req, m).unwrap();
    assert_eq!(r.answer, Answer6::PxeReply);
    assert_eq!(r.dest, SocketAddrV6::new(global, 4011, 0, 3));
    assert_eq!(
        r.resend,
        [Duration::from_millis(300), Duration::from_millis(1000)]
    );
    let d = decode(&r.bytes);
    assert_eq!(d.msg_type(), MessageType::Reply);
    assert_eq!(
        unknown(&d, 59).as_deref(),
        Some(&b"tftp://[fd77:1::2]/snponly.efi"[..])
    );
    // The same REQUEST to 547 is the site server's business.
    let e = run.go(&req, meta(ServerPort::Dhcp, global)).unwrap_err();
    assert_eq!(e, Ignored6::OtherServer);
    assert!(e.is_routine());
}

#[test]
fn http_boot_gets_the_binary_url_and_an_httpclient_class() {
    let mut run = Run::new(None);
    let r = run
        .go(&edk2_http(), meta(ServerPort::Dhcp, eui64_link_local(MAC)))
        .unwrap();
    let m = decode(&r.bytes);
    assert_eq!(
        unknown(&m, 59).as_deref(),
        Some(&b"http://[fd77:1::2]:8080/_/bin/snponly.efi"[..])
    );
    assert_eq!(
        unknown(&m, 16).as_deref(),
        Some(&[&[0u8, 0, 1, 87, 0, 10][..], b"HTTPClient"].concat()[..])
    );
    // The option as it goes on the wire: code 16, length 16.
    let at = r.bytes.windows(4).position(|w| w == [0, 16, 0, 16]);
    assert!(at.is_some(), "option 16 with length 16 in {:02x?}", r.bytes);
    assert!(matches!(r.path, Some(BootPath::HttpBoot { .. })));
}

#[test]
fn ipxe_gets_no_address_without_the_stateful_mode_and_one_with_it() {
    let ll = eui64_link_local(MAC);
    let r = Run::new(None)
        .go(&ipxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    let m = decode(&r.bytes);
    assert_eq!(
        unknown(&m, 59).as_deref(),
        Some(&b"http://[fd77:1::2]:8080/_/ipxe?mac=52:54:00:ab:cd:01&arch=7"[..])
    );
    assert!(ia_addr(&m).is_none());

    let mut run = Run::new(Some(StatefulFor::Ipxe));
    let adv = run.go(&ipxe(1, &[]), meta(ServerPort::Dhcp, ll)).unwrap();
    let m = decode(&adv.bytes);
    let addr = ia_addr(&m).expect("an address");
    assert!(run.leases.as_ref().unwrap().range().contains(addr));
    assert!(matches!(
        m.opts().get(OptionCode::Preference),
        Some(DhcpOption::Preference(255))
    ));
    assert!(adv.leases_changed);
    assert_eq!(adv.address, Some(addr));
    // The REQUEST to us gets the same address and the script again.
    let rep = run
        .go(&ipxe(3, &[opt(2, SERVER_ID)]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    let m = decode(&rep.bytes);
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert_eq!(ia_addr(&m), Some(addr));
    assert!(unknown(&m, 59).is_some());
    // Firmware still gets the ProxyDHCP-style answer in the "ipxe" mode.
    let fw = run
        .go(&edk2_pxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    assert!(ia_addr(&decode(&fw.bytes)).is_none());
    // ... and an address in the "all" mode.
    let mut all = Run::new(Some(StatefulFor::All));
    let fw = all
        .go(&edk2_pxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    assert!(ia_addr(&decode(&fw.bytes)).is_some());
}

#[test]
fn leases_survive_a_restart_and_release_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = LeaseFile::new(dir.path().join("dhcp6-leases"));
    let ll = eui64_link_local(MAC);
    let mut run = Run::new(Some(StatefulFor::Ipxe));
    let r = run.go(&ipxe(1, &[]), meta(ServerPort::Dhcp, ll)).unwrap();
    file.save(run.leases.as_ref().unwrap()).unwrap();
    let first = r.address.unwrap();
    // A new process: the leases come back from the file.
    let range = run.leases.as_ref().unwrap().range();
    run.leases = Some(file.load(range, 1_000_010).unwrap());
    let again = run.go(&ipxe(1, &[]), meta(ServerPort::Dhcp, ll)).unwrap();
    assert_eq!(again.address, Some(first));
    // RENEW of that address extends it; RELEASE ends it.
    let held = opt(3, &ia_na(0xdead_beef, Some(first)));
    let renew = run
        .go(
            &message(
                5,
                &[
                    opt(1, UUID_DUID),
                    opt(2, SERVER_ID),
                    held.clone(),
                    opt(15, &[0, 4, b'i', b'P', b'X', b'E']),
                ],
            ),
            meta(ServerPort::Dhcp, ll),
        )
        .unwrap();
    assert_eq!(ia_addr(&decode(&renew.bytes)), Some(first));
    let release = run
        .go(
            &message(
                8,
                &[
                    opt(1, UUID_DUID),
                    opt(2, SERVER_ID),
                    held,
                    opt(15, &[0, 4, b'i', b'P', b'X', b'E']),
                ],
            ),
            meta(ServerPort::Dhcp, ll),
        )
        .unwrap();
    assert!(release.leases_changed);
    assert!(release.path.is_none());
    assert!(run.leases.as_ref().unwrap().is_empty());
}

#[test]
fn ordinary_clients_and_other_servers_get_nothing() {
    let mut run = Run::new(Some(StatefulFor::All));
    let ll = eui64_link_local(MAC);
    let e = run
        .go(&plain_client(), meta(ServerPort::Dhcp, ll))
        .unwrap_err();
    assert_eq!(e, Ignored6::NotBoot(NotBoot6::NotBootClient));
    assert!(e.is_routine());
    // A boot client's REQUEST to the site's server is not ours either.
    let e = run
        .go(
            &ipxe(3, &[opt(2, b"\x00\x03other")]),
            meta(ServerPort::Dhcp, ll),
        )
        .unwrap_err();
    assert_eq!(e, Ignored6::OtherServer);
    // Nor is lease business without the stateful mode.
    let e = Run::new(None)
        .go(&ipxe(3, &[opt(2, SERVER_ID)]), meta(ServerPort::Dhcp, ll))
        .unwrap_err();
    assert!(matches!(e, Ignored6::NotStateful(3)));
    // A client that does not say it is ARM32 or an unknown firmware is refused.
    let arm32 = message(
        1,
        &[
            opt(1, UUID_DUID),
            opt(61, &[0, 10]),
            opt(16, &class("PXEClient")),
        ],
    );
    assert_eq!(
        run.go(&arm32, meta(ServerPort::Dhcp, ll)).unwrap_err(),
        Ignored6::UnsupportedArch(ClientArch::EfiArm32)
    );
}

#[test]
fn the_mac_comes_from_the_duid_the_relay_or_the_link_local_address() {
    let mut llt = vec![0, 1, 0, 1, 1, 2, 3, 4];
    llt.extend_from_slice(&MAC.octets());
    let with_llt = message(1, &[opt(1, &llt), opt(16, &class("PXEClient"))]);
    let p = Parsed6::parse(&with_llt, "fd77:1::99".parse().unwrap()).unwrap();
    assert_eq!(p.mac, Some((MAC, MacSource::Duid)));

    let p = Parsed6::parse(&edk2_pxe(1, &[]), eui64_link_local(MAC)).unwrap();
    assert_eq!(p.mac, Some((MAC, MacSource::Eui64)));

    // DUID-UUID from a stable-private address: nothing tells the MAC ...
    let p = Parsed6::parse(
        &edk2_pxe(1, &[]),
        "fe80::1234:5678:9abc:def0".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(p.mac, None);
    let e = p.clone().into_request(None).unwrap_err();
    assert!(e.to_string().contains("DUID is type 4"), "{e}");
    // ... unless the same DUID was seen with one.
    assert_eq!(
        p.into_request(Some(MAC)).unwrap().mac_from,
        MacSource::Remembered
    );

    // Relayed: option 79 names it, and the answer is a RELAY-REPL to the relay.
    let inner = edk2_pxe(1, &[]);
    let link: Ipv6Addr = "fd78:1::1".parse().unwrap();
    let peer: Ipv6Addr = "fe80::1234:5678:9abc:def0".parse().unwrap();
    let mut relay = vec![12u8, 0];
    relay.extend_from_slice(&link.octets());
    relay.extend_from_slice(&peer.octets());
    relay.extend(opt(18, b"eth1"));
    relay.extend(opt(79, &[&[0u8, 1][..], &MAC.octets()].concat()));
    relay.extend(opt(9, &inner));
    let relay_addr: Ipv6Addr = "fd78:1::1".parse().unwrap();
    let p = Parsed6::parse(&relay, relay_addr).unwrap();
    assert_eq!(p.mac, Some((MAC, MacSource::Relay)));
    assert_eq!(p.client_addr, peer);
    let mut run = Run::new(None);
    let mut m = meta(ServerPort::Dhcp, relay_addr);
    m.src.set_port(547);
    let r = run.go(&relay, m).unwrap();
    assert_eq!(r.dest, SocketAddrV6::new(relay_addr, 547, 0, 3));
    assert_eq!(r.bytes[0], 13, "RELAY-REPL");
    assert_eq!(&r.bytes[2..18], &link.octets());
    assert_eq!(&r.bytes[18..34], &peer.octets());
    // interface-id echoed, then the ADVERTISE inside option 9.
    assert_eq!(&r.bytes[34..42], &opt(18, b"eth1")[..]);
    assert_eq!(&r.bytes[42..44], &[0, 9]);
    let m = decode(&r.bytes[46..]);
    assert_eq!(m.msg_type(), MessageType::Advertise);
}

#[test]
fn a_full_range_says_so_and_still_names_the_boot_file() {
    let mut run = Run {
        leases: Some(Leases::new("fd77:1::1000-fd77:1::1000".parse().unwrap())),
        cfg: cfg(Some(StatefulFor::Ipxe)),
    };
    let ll = eui64_link_local(MAC);
    run.go(&ipxe(1, &[]), meta(ServerPort::Dhcp, ll)).unwrap();
    let mut other = ipxe(1, &[]);
    // Another DUID wants the one address.
    let at = other
        .windows(UUID_DUID.len())
        .position(|w| w == UUID_DUID)
        .unwrap();
    other[at + 3] ^= 0xff;
    let r = run.go(&other, meta(ServerPort::Dhcp, ll)).unwrap();
    let m = decode(&r.bytes);
    assert_eq!(ia_addr(&m), None);
    match m.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => assert!(matches!(
            ia.opts.get(OptionCode::StatusCode),
            Some(DhcpOption::StatusCode(s)) if s.status == dhcproto::v6::Status::NoAddrsAvail
        )),
        other => panic!("no IA_NA: {other:?}"),
    }
    assert!(unknown(&m, 59).is_some());
}

#[test]
fn a_proxy_preference_is_sent_only_when_asked_for() {
    let ll = eui64_link_local(MAC);
    let mut run = Run::new(None);
    let r = run
        .go(&edk2_pxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    assert!(decode(&r.bytes)
        .opts()
        .get(OptionCode::Preference)
        .is_none());
    run.cfg.proxy_preference = Some(255);
    let r = run
        .go(&edk2_pxe(1, &[]), meta(ServerPort::Dhcp, ll))
        .unwrap();
    assert!(matches!(
        decode(&r.bytes).opts().get(OptionCode::Preference),
        Some(DhcpOption::Preference(255))
    ));
}
