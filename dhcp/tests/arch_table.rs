//! Every option 93 code of the brief's table, decided with every binary configured:
//! the exact boot path per firmware, and the reply fields HTTP Boot needs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpxe_core::loader::{EfiCpu, LoaderGap};
use ironpxe_core::{
    BootSpec, ClientArch, FileRef, IpxeRole, Loader, LoaderBinary, LoaderSet, StaticBooter,
};
use ironpxe_dhcp::{
    decide, BootPath, ChainloadMemory, Destination, Ignored, IpxeBinaries, ProxyConfig, RecvMeta,
    ServerPort,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn cfg() -> ProxyConfig {
    ProxyConfig {
        http_port: 8080,
        binaries: IpxeBinaries::default()
            .with(IpxeRole::Bios, "undionly.kpxe")
            .with(IpxeRole::Efi32, "ipxe-i386.efi")
            .with(IpxeRole::Efi64, "ipxe.efi")
            .with(IpxeRole::Arm64, "ipxe-arm64.efi")
            .with(IpxeRole::Snponly, "snponly.efi"),
        ..ProxyConfig::default()
    }
}

fn packet(class: &[u8], arch: u16, msg_type: MessageType) -> Message {
    let mut m = Message::new_with_id(
        0x4242_0001,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(Opcode::BootRequest);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(msg_type));
    o.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch,
    )));
    let bytes = m.to_vec().unwrap();
    Message::decode(&mut Decoder::new(&bytes)).unwrap()
}

fn run(c: &ProxyConfig, m: &Message, port: ServerPort) -> Result<ironpxe_dhcp::Reply, Ignored> {
    run_loader(c, m, port, Loader::Ipxe)
}

fn run_loader(
    c: &ProxyConfig,
    m: &Message,
    port: ServerPort,
    loader: Loader,
) -> Result<ironpxe_dhcp::Reply, Ignored> {
    let booter = StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader,
    });
    let meta = RecvMeta {
        local_ip: SERVER,
        ifindex: 2,
        port,
        src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68),
    };
    decide(
        c,
        &booter,
        m,
        &meta,
        Instant::now(),
        &mut ChainloadMemory::default(),
    )
}

fn pxe(arch: u16) -> Message {
    let class = format!("PXEClient:Arch:{arch:05}:UNDI:003016");
    packet(class.as_bytes(), arch, MessageType::Discover)
}

fn http(arch: u16) -> Message {
    let class = format!("HTTPClient:Arch:{arch:05}:UNDI:003000");
    packet(class.as_bytes(), arch, MessageType::Discover)
}

fn tftp(file: &str) -> Result<BootPath, Ignored> {
    Ok(BootPath::Chainload { file: file.into() })
}

fn url(file: &str) -> Result<BootPath, Ignored> {
    Ok(BootPath::HttpBoot {
        url: format!("http://10.77.0.2:8080/_/bin/{file}"),
    })
}

#[test]
fn every_firmware_code_gets_its_boot_path() {
    let c = cfg();
    let table: Vec<(&str, Message, Result<BootPath, Ignored>)> = vec![
        ("0 BIOS", pxe(0), tftp("undionly.kpxe")),
        ("6 EFI ia32", pxe(6), tftp("ipxe-i386.efi")),
        ("7 EFI x64", pxe(7), tftp("ipxe.efi")),
        ("9 EFI BC", pxe(9), tftp("ipxe.efi")),
        (
            "10 arm32",
            pxe(10),
            Err(Ignored::UnsupportedArch(ClientArch::EfiArm32)),
        ),
        ("11 arm64", pxe(11), tftp("ipxe-arm64.efi")),
        ("15 HTTP ia32", http(15), url("ipxe-i386.efi")),
        ("16 HTTP x64", http(16), url("snponly.efi")),
        (
            "18 HTTP arm32",
            http(18),
            Err(Ignored::UnsupportedArch(ClientArch::HttpArm32)),
        ),
        ("19 HTTP arm64", http(19), url("ipxe-arm64.efi")),
        (
            "42 unknown",
            pxe(42),
            Err(Ignored::UnsupportedArch(ClientArch::Unknown(42))),
        ),
        (
            "HTTPClient claiming BIOS",
            http(0),
            Err(Ignored::UnsupportedArch(ClientArch::Bios)),
        ),
    ];
    for (name, msg, want) in table {
        let got = run(&c, &msg, ServerPort::Dhcp).map(|r| r.path);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn unknown_architecture_has_one_clear_reason() {
    let err = run(&cfg(), &pxe(42), ServerPort::Dhcp).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported client firmware unknown(42) (option 93 = 42); not answering"
    );
    assert!(!err.is_routine(), "must be logged at info level");
}

#[test]
fn arm64_without_a_binary_names_the_gap() {
    let c = ProxyConfig {
        binaries: cfg().binaries.without(IpxeRole::Arm64),
        ..cfg()
    };
    let err = run(&c, &pxe(11), ServerPort::Dhcp).unwrap_err();
    assert_eq!(err, Ignored::NoBinary(ClientArch::EfiArm64));
    let err = run(&c, &http(19), ServerPort::Dhcp).unwrap_err();
    assert_eq!(err, Ignored::NoHttpBinary(ClientArch::HttpArm64));
}

#[test]
fn http_boot_x64_falls_back_to_the_efi64_binary() {
    let c = ProxyConfig {
        binaries: cfg().binaries.without(IpxeRole::Snponly),
        ..cfg()
    };
    assert_eq!(
        run(&c, &http(16), ServerPort::Dhcp).map(|r| r.path),
        url("ipxe.efi")
    );
}

#[test]
fn http_boot_offer_is_proxy_style_with_the_url_in_both_fields() {
    let r = run(&cfg(), &http(16), ServerPort::Dhcp).unwrap();
    let m = r.message;
    let want = b"http://10.77.0.2:8080/_/bin/snponly.efi";
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), SERVER);
    assert!(m.flags().broadcast());
    assert_eq!(r.dest, Destination::Broadcast { ifindex: 2 });
    assert_eq!(
        m.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        m.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(want.to_vec()))
    );
    let fname = m.fname().unwrap();
    assert_eq!(&fname[..want.len()], want);
    assert!(fname[want.len()..].iter().all(|b| *b == 0));
    // No PXE vendor options for an HTTP client.
    assert_eq!(m.opts().get(OptionCode::VendorExtensions), None);
}

#[test]
fn efi_pxe_request_on_4011_is_acked_with_the_same_binary() {
    let req = packet(b"PXEClient:Arch:00007:UNDI:003016", 7, MessageType::Request);
    let r = run(&cfg(), &req, ServerPort::Pxe).unwrap();
    assert_eq!(r.path, tftp("ipxe.efi").unwrap());
    assert_eq!(r.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        r.dest,
        Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68))
    );
}

/// Every shim and GRUB binary, and an arm64 GRUB with the http module.
fn loader_cfg() -> ProxyConfig {
    ProxyConfig {
        loaders: LoaderBinary::ALL
            .into_iter()
            .fold(LoaderSet::default(), LoaderSet::with)
            .with_grub_http(EfiCpu::Arm64),
        ..cfg()
    }
}

fn shim(file: &str) -> Result<BootPath, Ignored> {
    Ok(BootPath::Loader {
        loader: Loader::Shim,
        file: file.into(),
    })
}

fn grub(file: &str) -> Result<BootPath, Ignored> {
    Ok(BootPath::Loader {
        loader: Loader::Grub,
        file: file.into(),
    })
}

fn loader_url(loader: Loader, file: &str) -> Result<BootPath, Ignored> {
    Ok(BootPath::LoaderHttp {
        loader,
        url: format!("http://10.77.0.2:8080/_/bin/{file}"),
    })
}

#[test]
fn every_firmware_code_gets_its_loader_path() {
    let c = loader_cfg();
    let no_http_x64 = Err(Ignored::Loader(LoaderGap::GrubWithoutHttp {
        cpu: EfiCpu::X64,
    }));
    let table: Vec<(&str, Message, Loader, Result<BootPath, Ignored>)> = vec![
        // No shim or GRUB for BIOS and 32-bit EFI: iPXE, as for loader "ipxe".
        ("0 BIOS, shim", pxe(0), Loader::Shim, tftp("undionly.kpxe")),
        ("0 BIOS, grub", pxe(0), Loader::Grub, tftp("undionly.kpxe")),
        (
            "6 EFI ia32, shim",
            pxe(6),
            Loader::Shim,
            tftp("ipxe-i386.efi"),
        ),
        ("7 EFI x64, shim", pxe(7), Loader::Shim, shim("shimx64.efi")),
        ("9 EFI BC, shim", pxe(9), Loader::Shim, shim("shimx64.efi")),
        ("9 EFI BC, grub", pxe(9), Loader::Grub, grub("grubx64.efi")),
        ("9 EFI BC, ipxe", pxe(9), Loader::Ipxe, tftp("ipxe.efi")),
        (
            "10 arm32, shim",
            pxe(10),
            Loader::Shim,
            Err(Ignored::UnsupportedArch(ClientArch::EfiArm32)),
        ),
        (
            "11 arm64, shim",
            pxe(11),
            Loader::Shim,
            shim("shimaa64.efi"),
        ),
        (
            "11 arm64, grub",
            pxe(11),
            Loader::Grub,
            grub("grubaa64.efi"),
        ),
        (
            "15 HTTP ia32, shim",
            http(15),
            Loader::Shim,
            url("ipxe-i386.efi"),
        ),
        // Debian's signed GRUB has no http: HTTP Boot x64 into it cannot work.
        (
            "16 HTTP x64, shim",
            http(16),
            Loader::Shim,
            no_http_x64.clone(),
        ),
        ("16 HTTP x64, grub", http(16), Loader::Grub, no_http_x64),
        (
            "19 HTTP arm64, grub",
            http(19),
            Loader::Grub,
            loader_url(Loader::Grub, "grubaa64.efi"),
        ),
        (
            "19 HTTP arm64, shim",
            http(19),
            Loader::Shim,
            loader_url(Loader::Shim, "shimaa64.efi"),
        ),
    ];
    for (name, msg, loader, want) in table {
        let got = run_loader(&c, &msg, ServerPort::Dhcp, loader).map(|r| r.path);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn shim_is_named_in_the_file_field_and_option_67_alike() {
    // shim finds GRUB next to the file the BOOTP `file` field names.
    for port in [ServerPort::Dhcp, ServerPort::Pxe] {
        let msg_type = match port {
            ServerPort::Dhcp => MessageType::Discover,
            ServerPort::Pxe => MessageType::Request,
        };
        let req = packet(b"PXEClient:Arch:00011:UNDI:003016", 11, msg_type);
        let r = run_loader(&loader_cfg(), &req, port, Loader::Shim).unwrap();
        let m = r.message;
        assert_eq!(
            m.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"shimaa64.efi".to_vec()))
        );
        let fname = m.fname().unwrap();
        assert_eq!(&fname[..12], b"shimaa64.efi");
        assert!(fname[12..].iter().all(|b| *b == 0));
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(r.path.kind(), "shim");
    }
    // HTTP Boot: the URL in both, option 60 HTTPClient.
    let r = run_loader(&loader_cfg(), &http(19), ServerPort::Dhcp, Loader::Grub).unwrap();
    let want = b"http://10.77.0.2:8080/_/bin/grubaa64.efi";
    assert_eq!(&r.message.fname().unwrap()[..want.len()], want);
    assert_eq!(
        r.message.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert_eq!(r.path.kind(), "httpboot-grub");
}

#[test]
fn a_missing_loader_binary_is_not_answered_and_named() {
    let c = ProxyConfig {
        loaders: LoaderSet::default().with(LoaderBinary::GrubX64),
        ..cfg()
    };
    let err = run_loader(&c, &pxe(7), ServerPort::Dhcp, Loader::Shim).unwrap_err();
    assert_eq!(
        err,
        Ignored::Loader(LoaderGap::Missing {
            loader: Loader::Shim,
            cpu: EfiCpu::X64,
            missing: LoaderBinary::ShimX64
        })
    );
    assert!(err.to_string().contains("install shim-signed"), "{err}");
    assert!(!err.is_routine());
    // GRUB alone is there.
    assert_eq!(
        run_loader(&c, &pxe(7), ServerPort::Dhcp, Loader::Grub).map(|r| r.path),
        grub("grubx64.efi")
    );
    // HTTP Boot into a GRUB without http: said plainly.
    let err = run_loader(&loader_cfg(), &http(16), ServerPort::Dhcp, Loader::Shim).unwrap_err();
    assert!(err.to_string().contains("has no http module"), "{err}");
}
