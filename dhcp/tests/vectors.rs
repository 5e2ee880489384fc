//! The decision core on packets captured from real clients in the QEMU lab
//! (`testdata/dhcp/`, see `testdata/README.md`): each gets its exact boot path.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Instant;

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use ironpxe_core::{BootSpec, ClientArch, FileRef, IpxeRole, StaticBooter};
use ironpxe_dhcp::{
    decide, BootPath, ChainloadMemory, Destination, Ignored, IpxeBinaries, NotPxe, ProxyConfig,
    PxeRequest, RecvMeta, Reply, ServerPort,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/dhcp")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cfg() -> ProxyConfig {
    ProxyConfig {
        http_port: 8080,
        binaries: IpxeBinaries::default()
            .with(IpxeRole::Bios, "undionly.kpxe")
            .with(IpxeRole::Efi64, "ipxe.efi")
            .with(IpxeRole::Snponly, "snponly.efi"),
        ..ProxyConfig::default()
    }
}

fn run(name: &str, port: ServerPort) -> Result<Reply, Ignored> {
    let msg = PxeRequest::decode(&vector(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let booter = StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    });
    let meta = RecvMeta {
        local_ip: SERVER,
        ifindex: 2,
        port,
        src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68),
    };
    decide(
        &cfg(),
        &booter,
        &msg,
        &meta,
        Instant::now(),
        &mut ChainloadMemory::default(),
    )
}

fn script(arch: u16, mac: &str) -> BootPath {
    BootPath::Script {
        url: format!("http://10.77.0.2:8080/_/ipxe?mac={mac}&arch={arch}"),
    }
}

#[test]
fn seabios_ipxe_rom_gets_the_script_directly() {
    let r = run("seabios-ipxe-rom-discover.bin", ServerPort::Dhcp).unwrap();
    assert_eq!(r.request.arch, ClientArch::Bios);
    assert!(r.request.ipxe.is_ipxe && r.request.ipxe.http);
    assert_eq!(r.path, script(0, "52:54:00:4e:d0:01"));
    assert_eq!(r.dest, Destination::Broadcast { ifindex: 2 });
    // Its REQUEST on 67 is for the site server.
    let err = run("seabios-ipxe-rom-request.bin", ServerPort::Dhcp).unwrap_err();
    assert!(matches!(
        err,
        Ignored::WrongPort {
            msg_type: MessageType::Request,
            ..
        }
    ));
}

#[test]
fn relayed_discover_is_answered_to_the_relay() {
    let r = run("relayed-seabios-ipxe-rom-discover.bin", ServerPort::Dhcp).unwrap();
    assert_eq!(r.request.giaddr, Ipv4Addr::new(10, 78, 85, 1));
    assert_eq!(
        r.dest,
        Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 78, 85, 1), 67))
    );
    assert_eq!(r.message.giaddr(), Ipv4Addr::new(10, 78, 85, 1));
    assert_eq!(r.path, script(0, "52:54:00:d5:54:00"));
    // ironpxe's own relayed offer, seen on the wire, is not a request.
    let err = run("relayed-ironpxe-offer.bin", ServerPort::Dhcp).unwrap_err();
    assert_eq!(err, Ignored::NotPxe(NotPxe::NotRequest));
}

#[test]
fn ovmf_native_pxe_is_chainloaded_into_ipxe_efi() {
    let r = run("ovmf-pxe-discover.bin", ServerPort::Dhcp).unwrap();
    assert_eq!(r.request.arch, ClientArch::EfiX64);
    assert!(!r.request.ipxe.is_ipxe);
    assert_eq!(
        r.path,
        BootPath::Chainload {
            file: "ipxe.efi".into()
        }
    );
    let opts = r.message.opts();
    assert_eq!(opts.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        opts.get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    // The GUID (option 97) is echoed.
    let guid = opts.get(OptionCode::ClientMachineIdentifier);
    assert!(
        matches!(guid, Some(DhcpOption::ClientMachineIdentifier(g)) if g.len() == 17 && g[0] == 0),
        "{guid:?}"
    );
    // The same firmware's REQUEST, had it been sent to 4011, is ACKed alike.
    let r = run("ovmf-pxe-request.bin", ServerPort::Pxe).unwrap();
    assert_eq!(r.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.path.target(), "ipxe.efi");
}

#[test]
fn chainloaded_ipxe_efi_gets_the_script() {
    let r = run("ovmf-chainloaded-ipxe-efi-discover.bin", ServerPort::Dhcp).unwrap();
    assert!(r.request.ipxe.is_ipxe && r.request.ipxe.http);
    assert_eq!(r.path, script(7, "52:54:00:83:76:00"));
    assert_eq!(r.message.opts().get(OptionCode::VendorExtensions), None);
    let err = run("ovmf-chainloaded-ipxe-efi-request.bin", ServerPort::Dhcp).unwrap_err();
    assert!(matches!(err, Ignored::WrongPort { .. }));
}

#[test]
fn ovmf_http_boot_gets_the_snponly_url() {
    let r = run("ovmf-http-boot-discover.bin", ServerPort::Dhcp).unwrap();
    assert_eq!(r.request.arch, ClientArch::HttpX64);
    assert_eq!(
        r.path,
        BootPath::HttpBoot {
            url: "http://10.77.0.2:8080/_/bin/snponly.efi".into()
        }
    );
    assert_eq!(
        r.message.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    let err = run("ovmf-http-boot-request.bin", ServerPort::Dhcp).unwrap_err();
    assert!(matches!(err, Ignored::WrongPort { .. }));
    // The snponly.efi it downloaded comes back as iPXE with HTTP.
    let r = run("ovmf-http-snponly-ipxe-discover.bin", ServerPort::Dhcp).unwrap();
    assert_eq!(r.path, script(7, "52:54:00:ef:ff:00"));
}

#[test]
fn every_vector_survives_truncation_and_bit_flips() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/dhcp");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        n += 1;
        let bytes = std::fs::read(&path).unwrap();
        for len in (0..bytes.len()).step_by(7) {
            if let Ok(m) = PxeRequest::decode(&bytes[..len]) {
                let _ = PxeRequest::parse(&m);
            }
        }
        for i in (0..bytes.len()).step_by(3) {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            if let Ok(m) = PxeRequest::decode(&b) {
                let _ = PxeRequest::parse(&m);
            }
        }
    }
    assert_eq!(n, 11, "vectors in {}", dir.display());
}

/// `bytes` with option `code` replaced by `value` (or removed when `None`); the
/// options are walked as TLVs from the magic cookie.
fn with_option(bytes: &[u8], code: u8, value: Option<&[u8]>) -> Vec<u8> {
    let mut out = bytes[..240].to_vec();
    let mut i = 240;
    while i < bytes.len() {
        match bytes[i] {
            0 => {
                out.push(0);
                i += 1;
            }
            255 => break,
            c => {
                let len = usize::from(bytes[i + 1]);
                if c != code {
                    out.extend_from_slice(&bytes[i..i + 2 + len]);
                }
                i += 2 + len;
            }
        }
    }
    if let Some(v) = value {
        out.push(code);
        out.push(u8::try_from(v.len()).unwrap());
        out.extend_from_slice(v);
    }
    out.push(255);
    out
}

/// Option 97 is echoed only as a well-formed GUID (type 0 and 16 bytes); any other
/// is left out of the reply, which is still sent.
#[test]
fn only_a_well_formed_guid_is_echoed() {
    let original = vector("ovmf-pxe-discover.bin");
    let guid = [[0u8].as_slice(), &[0x5a; 16]].concat();
    let long = [[0u8].as_slice(), &[0x41; 254]].concat();
    let typed = [[1u8].as_slice(), &[0x5a; 16]].concat();
    for (what, value, echoed) in [
        ("a 17-byte GUID", Some(&guid[..]), true),
        ("255 bytes", Some(&long[..]), false),
        ("type 1", Some(&typed[..]), false),
        ("16 bytes", Some(&guid[..16]), false),
        (
            "18 bytes",
            Some(&[guid.as_slice(), &[7]].concat()[..]),
            false,
        ),
        ("empty", Some(&[][..]), false),
        ("absent", None, false),
    ] {
        let bytes = with_option(&original, 97, value);
        let msg = PxeRequest::decode(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        let booter = StaticBooter::new(BootSpec {
            kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
            initrds: vec![],
            cmdline: String::new(),
            message: None,
            loader: Default::default(),
        });
        let meta = RecvMeta {
            local_ip: SERVER,
            ifindex: 2,
            port: ServerPort::Dhcp,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        };
        let r = decide(
            &cfg(),
            &booter,
            &msg,
            &meta,
            Instant::now(),
            &mut ChainloadMemory::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: not answered: {e}"));
        assert_eq!(r.path.target(), "ipxe.efi", "{what}");
        // What the client receives: encode the reply as the driver does.
        use dhcproto::Encodable;
        let wire = PxeRequest::decode(&r.message.to_vec().unwrap()).unwrap();
        let got = wire.opts().get(OptionCode::ClientMachineIdentifier);
        if echoed {
            assert_eq!(
                got,
                Some(&DhcpOption::ClientMachineIdentifier(guid.clone())),
                "{what}"
            );
        } else {
            assert_eq!(got, None, "{what} was echoed");
        }
    }
}

/// Found by the `dhcp_decide` fuzzer: an option 80 (rapid commit) with a length trips
/// a debug assertion inside dhcproto's decoder. `PxeRequest::decode` contains it in
/// debug builds (release builds have no such assertion), so the packet is refused or
/// read, never a panic.
#[test]
fn a_rapid_commit_option_with_a_length_does_not_panic() {
    let original = vector("seabios-ipxe-rom-discover.bin");
    for len in [1u8, 2, 255] {
        let value = vec![0x41; usize::from(len)];
        let bytes = with_option(&original, 80, Some(&value));
        if let Ok(m) = PxeRequest::decode(&bytes) {
            let _ = PxeRequest::parse(&m);
        }
    }
}
