//! Decision-core tests: packets built like the ones real clients send, decided
//! without sockets, the replies checked field by field after an encode/decode trip.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpxe_core::{
    BootDecision, BootSpec, Booter, ClientArch, FileId, FileRef, IpxeRole, MacAddr, StaticBooter,
};
use ironpxe_dhcp::{
    decide, BootPath, ChainloadMemory, Destination, Ignored, IpxeBinaries, NotPxe, ProxyConfig,
    RecvMeta, ServerPort,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn booter() -> StaticBooter {
    StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })
}

fn cfg() -> ProxyConfig {
    ProxyConfig {
        http_port: 8080,
        binaries: IpxeBinaries::default()
            .with(IpxeRole::Bios, "undionly.kpxe")
            .with(IpxeRole::Efi64, "ipxe.efi"),
        ..ProxyConfig::default()
    }
}

fn meta(port: ServerPort) -> RecvMeta {
    RecvMeta {
        local_ip: SERVER,
        ifindex: 3,
        port,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

/// What a client puts in its request.
struct Client {
    xid: u32,
    msg_type: MessageType,
    class: Option<&'static [u8]>,
    arch: Option<u16>,
    ipxe: Option<bool>, // Some(http) for iPXE
    giaddr: Ipv4Addr,
    guid: Option<Vec<u8>>,
}

impl Client {
    fn firmware(arch: u16) -> Self {
        Client {
            xid: 0x1111_0001,
            msg_type: MessageType::Discover,
            class: Some(b"PXEClient:Arch:00000:UNDI:002001"),
            arch: Some(arch),
            ipxe: None,
            giaddr: Ipv4Addr::UNSPECIFIED,
            guid: Some([vec![0u8], vec![0xab; 16]].concat()),
        }
    }

    fn ipxe(http: bool) -> Self {
        Client {
            ipxe: Some(http),
            xid: 0x2222_0001,
            ..Client::firmware(0)
        }
    }

    /// Encodes and decodes, so the core sees exactly what the driver would.
    fn packet(&self) -> Message {
        let mut m = Message::new_with_id(
            self.xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.giaddr,
            &MAC,
        );
        m.set_opcode(Opcode::BootRequest);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(self.msg_type));
        if let Some(c) = self.class {
            o.insert(DhcpOption::ClassIdentifier(c.to_vec()));
        }
        if let Some(a) = self.arch {
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if let Some(g) = &self.guid {
            o.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
        }
        if let Some(http) = self.ipxe {
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            let mut feats = vec![24, 1, 1, 33, 1, 1];
            if http {
                feats.extend_from_slice(&[19, 1, 1]);
            }
            o.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                feats,
            )));
        }
        roundtrip(&m)
    }
}

fn roundtrip(m: &Message) -> Message {
    let bytes = m.to_vec().unwrap();
    Message::decode(&mut Decoder::new(&bytes)).unwrap()
}

fn run(
    c: &ProxyConfig,
    msg: &Message,
    port: ServerPort,
    now: Instant,
    mem: &mut ChainloadMemory,
) -> Result<ironpxe_dhcp::Reply, Ignored> {
    decide(c, &booter(), msg, &meta(port), now, mem)
}

/// The BOOTP file field as text, without its NUL padding.
fn fname(m: &Message) -> Option<&[u8]> {
    m.fname().map(|f| f.split(|b| *b == 0).next().unwrap_or(f))
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

#[test]
fn bios_firmware_is_chainloaded_over_tftp() {
    let mut mem = ChainloadMemory::default();
    let client = Client::firmware(0);
    let r = run(
        &cfg(),
        &client.packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "undionly.kpxe".into()
        }
    );
    assert_eq!(r.dest, Destination::Broadcast { ifindex: 3 });
    let m = roundtrip(&r.message);
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid(), client.xid);
    assert_eq!(m.chaddr()[..6], MAC);
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "ProxyDHCP never assigns an address"
    );
    assert_eq!(m.siaddr(), SERVER);
    assert!(m.flags().broadcast());
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        opt(&m, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opt(&m, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        opt(&m, OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(
            client.guid.clone().unwrap()
        ))
    );
    assert_eq!(
        opt(&m, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"undionly.kpxe".to_vec()))
    );
    assert_eq!(fname(&m), Some(&b"undionly.kpxe"[..]));
    assert_eq!(
        opt(&m, OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert!(opt(&m, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&m, OptionCode::SubnetMask).is_none());
}

#[test]
fn efi_firmware_gets_the_efi_binary() {
    let mut mem = ChainloadMemory::default();
    for arch in [7u16, 9] {
        let r = run(
            &cfg(),
            &Client::firmware(arch).packet(),
            ServerPort::Dhcp,
            Instant::now(),
            &mut mem,
        )
        .unwrap();
        assert_eq!(
            r.path,
            BootPath::Chainload {
                file: "ipxe.efi".into()
            },
            "arch {arch}"
        );
    }
    let err = run(
        &cfg(),
        &Client::firmware(6).packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap_err();
    assert_eq!(err, Ignored::NoBinary(ClientArch::EfiIa32));
    assert!(err.to_string().contains("option 93 = 6"), "{err}");
}

#[test]
fn ipxe_with_http_gets_the_script_url_directly() {
    let mut mem = ChainloadMemory::default();
    let r = run(
        &cfg(),
        &Client::ipxe(true).packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    let url = "http://10.77.0.2:8080/_/ipxe?mac=52:54:00:12:34:56&arch=0";
    assert_eq!(r.path, BootPath::Script { url: url.into() });
    let m = roundtrip(&r.message);
    assert_eq!(fname(&m), Some(url.as_bytes()));
    assert_eq!(
        opt(&m, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(url.as_bytes().to_vec()))
    );
    assert!(
        opt(&m, OptionCode::VendorExtensions).is_none(),
        "iPXE needs no PXE vendor options"
    );
    assert!(mem.is_empty(), "a script answer is not a chainload");
}

#[test]
fn port_80_is_left_out_of_the_url() {
    let mut mem = ChainloadMemory::default();
    let c = ProxyConfig {
        http_port: 80,
        ..cfg()
    };
    let r = run(
        &c,
        &Client::ipxe(true).packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    assert_eq!(
        r.path.target(),
        "http://10.77.0.2/_/ipxe?mac=52:54:00:12:34:56&arch=0"
    );
}

#[test]
fn ipxe_without_http_is_chainloaded_once_then_left_alone() {
    let mut mem = ChainloadMemory::default();
    let t0 = Instant::now();
    let c = ProxyConfig {
        binaries: cfg().binaries.with(IpxeRole::Ipxe, "ipxe.pxe"),
        ..cfg()
    };
    let first = Client::ipxe(false);
    let r = run(&c, &first.packet(), ServerPort::Dhcp, t0, &mut mem).unwrap();
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "ipxe.pxe".into()
        }
    );
    // A retransmitted DISCOVER of the same exchange gets the same answer.
    let r = run(
        &c,
        &first.packet(),
        ServerPort::Dhcp,
        t0 + Duration::from_secs(1),
        &mut mem,
    )
    .unwrap();
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "ipxe.pxe".into()
        }
    );
    // The chainloaded binary starts a new exchange and still has no HTTP: a loop.
    let again = Client {
        xid: 0x2222_0002,
        ..Client::ipxe(false)
    };
    let err = run(
        &c,
        &again.packet(),
        ServerPort::Dhcp,
        t0 + Duration::from_secs(5),
        &mut mem,
    )
    .unwrap_err();
    assert_eq!(err, Ignored::ChainloadLoop);
    // Long after, a reboot starts over.
    let later = Client {
        xid: 0x2222_0003,
        ..Client::ipxe(false)
    };
    let r = run(
        &c,
        &later.packet(),
        ServerPort::Dhcp,
        t0 + Duration::from_secs(600),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.path.kind(), "tftp");
}

#[test]
fn forced_chainload_replaces_rom_ipxe_then_boots_the_script() {
    let mut mem = ChainloadMemory::default();
    let t0 = Instant::now();
    let c = ProxyConfig {
        force_chainload: true,
        ..cfg()
    };
    let rom = Client::ipxe(true);
    let r = run(&c, &rom.packet(), ServerPort::Dhcp, t0, &mut mem).unwrap();
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "undionly.kpxe".into()
        }
    );
    // Same exchange (a ProxyDHCP request to 4011 for the same xid): same answer.
    let rom_req = Client {
        msg_type: MessageType::Request,
        ..Client::ipxe(true)
    };
    let r = run(&c, &rom_req.packet(), ServerPort::Pxe, t0, &mut mem).unwrap();
    assert_eq!(r.path.kind(), "tftp");
    // The chainloaded iPXE: new exchange, HTTP capable: the script.
    let chained = Client {
        xid: 0x3333_0001,
        ..Client::ipxe(true)
    };
    let r = run(
        &c,
        &chained.packet(),
        ServerPort::Dhcp,
        t0 + Duration::from_secs(8),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.path.kind(), "http");
    // Past the window, the next boot is chainloaded again.
    let next_boot = Client {
        xid: 0x3333_0002,
        ..Client::ipxe(true)
    };
    let r = run(
        &c,
        &next_boot.packet(),
        ServerPort::Dhcp,
        t0 + Duration::from_secs(121),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.path.kind(), "tftp");
}

#[test]
fn non_pxe_clients_never_get_anything() {
    let mut mem = ChainloadMemory::default();
    for class in [
        None,
        Some(&b"MSFT 5.0"[..]),
        Some(&b"android-dhcp-13"[..]),
        Some(&b"PXEClien"[..]),
    ] {
        let c = Client {
            class,
            arch: None,
            guid: None,
            ..Client::firmware(0)
        };
        let err = run(
            &cfg(),
            &c.packet(),
            ServerPort::Dhcp,
            Instant::now(),
            &mut mem,
        )
        .unwrap_err();
        assert!(
            matches!(err, Ignored::NotPxe(NotPxe::NotPxeClass(_))),
            "{class:?}: {err:?}"
        );
        assert!(err.is_routine());
    }
    // Option 93 alone does not make a PXE client.
    let c = Client {
        class: None,
        ..Client::firmware(0)
    };
    assert!(run(
        &cfg(),
        &c.packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem
    )
    .is_err());
}

#[test]
fn only_discover_on_67_and_request_on_4011() {
    let mut mem = ChainloadMemory::default();
    let now = Instant::now();
    let req = Client {
        msg_type: MessageType::Request,
        ..Client::firmware(0)
    };
    let err = run(&cfg(), &req.packet(), ServerPort::Dhcp, now, &mut mem).unwrap_err();
    assert!(matches!(err, Ignored::WrongPort { .. }), "{err:?}");
    let err = run(
        &cfg(),
        &Client::firmware(0).packet(),
        ServerPort::Pxe,
        now,
        &mut mem,
    )
    .unwrap_err();
    assert!(matches!(err, Ignored::WrongPort { .. }), "{err:?}");
    for t in [MessageType::Release, MessageType::Decline] {
        let c = Client {
            msg_type: t,
            ..Client::firmware(0)
        };
        assert!(matches!(
            run(&cfg(), &c.packet(), ServerPort::Dhcp, now, &mut mem),
            Err(Ignored::NotPxe(NotPxe::MessageType(_)))
        ));
    }
}

#[test]
fn port_4011_request_is_acked_by_unicast_to_the_sender() {
    let mut mem = ChainloadMemory::default();
    let req = Client {
        msg_type: MessageType::Request,
        arch: Some(7),
        ..Client::firmware(7)
    };
    let mut m = meta(ServerPort::Pxe);
    m.src = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68);
    let r = decide(
        &cfg(),
        &booter(),
        &req.packet(),
        &m,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.dest, Destination::Unicast(m.src));
    assert_eq!(
        roundtrip(&r.message).opts().msg_type(),
        Some(MessageType::Ack)
    );
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "ipxe.efi".into()
        }
    );
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    let mut mem = ChainloadMemory::default();
    let relay = Ipv4Addr::new(10, 78, 0, 1);
    let c = Client {
        giaddr: relay,
        ..Client::firmware(0)
    };
    let r = run(
        &cfg(),
        &c.packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.dest, Destination::Unicast(SocketAddrV4::new(relay, 67)));
    assert_eq!(roundtrip(&r.message).giaddr(), relay);
}

#[test]
fn unknown_and_unsupported_firmware_is_ignored_with_a_reason() {
    let mut mem = ChainloadMemory::default();
    let err = run(
        &cfg(),
        &Client::firmware(42).packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap_err();
    assert_eq!(err, Ignored::UnsupportedArch(ClientArch::Unknown(42)));
    assert!(!err.is_routine());
    // HTTP Boot x64 without any x64 binary configured.
    let http = Client {
        class: Some(b"HTTPClient:Arch:00016:UNDI:003000"),
        ..Client::firmware(16)
    };
    let no_x64 = ProxyConfig {
        binaries: cfg().binaries.without(IpxeRole::Efi64),
        ..cfg()
    };
    let err = run(
        &no_x64,
        &http.packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap_err();
    assert_eq!(err, Ignored::NoHttpBinary(ClientArch::HttpX64));
    assert!(!err.is_routine());
}

#[test]
fn arch_falls_back_to_the_class_string() {
    let mut mem = ChainloadMemory::default();
    let c = Client {
        class: Some(b"PXEClient:Arch:00007:UNDI:003016"),
        arch: None,
        ..Client::firmware(7)
    };
    let r = run(
        &cfg(),
        &c.packet(),
        ServerPort::Dhcp,
        Instant::now(),
        &mut mem,
    )
    .unwrap();
    assert_eq!(r.request.arch, ClientArch::EfiX64);
    assert_eq!(r.path.target(), "ipxe.efi");
}

struct Picky;
impl Booter for Picky {
    fn decide(&self, mac: MacAddr, _arch: ClientArch, _wait: std::time::Duration) -> BootDecision {
        BootDecision::Ignore(format!("{mac} is not in the config"))
    }
    fn file(&self, _id: &FileId) -> Option<FileRef> {
        None
    }
}

#[test]
fn machines_the_booter_declines_get_nothing() {
    let mut mem = ChainloadMemory::default();
    let err = decide(
        &cfg(),
        &Picky,
        &Client::firmware(0).packet(),
        &meta(ServerPort::Dhcp),
        Instant::now(),
        &mut mem,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Ignored::Booter("52:54:00:12:34:56 is not in the config".into())
    );
    assert!(mem.is_empty());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic generator: mutations of a valid packet plus random noise.
    let valid = Client::ipxe(true).packet().to_vec().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut mem = ChainloadMemory::default();
    for i in 0..20_000 {
        let mut pkt = if i % 2 == 0 {
            valid.clone()
        } else {
            vec![0u8; (next() % 600) as usize]
        };
        for _ in 0..(next() % 8 + 1) {
            if pkt.is_empty() {
                break;
            }
            let at = (next() as usize) % pkt.len();
            pkt[at] = next() as u8;
        }
        if next() % 4 == 0 {
            let cut = (next() as usize) % (pkt.len() + 1);
            pkt.truncate(cut);
        }
        if let Ok(m) = ironpxe_dhcp::PxeRequest::decode(&pkt) {
            let _ = run(&cfg(), &m, ServerPort::Dhcp, Instant::now(), &mut mem);
        }
    }
}
