//! DHCPv4 decode → classify/decide → encode → decode, with a fixed configuration and
//! two booters: one whose machines boot through iPXE, one through shim and GRUB.
//! Never panics; a reply never assigns an address and never answers a client that
//! is not PXE or HTTP Boot firmware; what is sent decodes back to what was decided;
//! a shim or GRUB binary goes only to a machine whose loader asks for it.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Once, OnceLock};
use std::time::Instant;

use ironpxe_core::{
    BootSpec, EfiCpu, FileRef, IpxeRole, Loader, LoaderBinary, LoaderSet, StaticBooter,
};
use ironpxe_dhcp::dhcproto::v4::{DhcpOption, MessageType, Opcode, OptionCode};
use ironpxe_dhcp::dhcproto::Encodable;
use ironpxe_dhcp::{
    decide, BootPath, ChainloadMemory, Destination, IpxeBinaries, ProxyConfig, PxeRequest,
    RecvMeta, ServerPort,
};
use libfuzzer_sys::fuzz_target;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

struct Fixed {
    cfg: ProxyConfig,
    ipxe: StaticBooter,
    shim: StaticBooter,
}

fn booter(loader: Loader) -> StaticBooter {
    StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: "console=ttyS0".into(),
        message: None,
        loader,
    })
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| Fixed {
        cfg: ProxyConfig {
            http_port: 8080,
            binaries: IpxeBinaries::default()
                .with(IpxeRole::Bios, "undionly.kpxe")
                .with(IpxeRole::Efi64, "ipxe.efi")
                .with(IpxeRole::Snponly, "snponly.efi")
                .with(IpxeRole::Ipxe, "ipxe.pxe"),
            loaders: LoaderSet::default()
                .with(LoaderBinary::ShimX64)
                .with(LoaderBinary::GrubX64)
                .with(LoaderBinary::ShimArm64)
                .with(LoaderBinary::GrubArm64)
                .with_grub_http(EfiCpu::Arm64),
            ..ProxyConfig::default()
        },
        ipxe: booter(Loader::Ipxe),
        shim: booter(Loader::Shim),
    })
}

/// dhcproto has `debug_assert!`s on some option lengths, which fire in this debug-
/// assertion build. `PxeRequest::decode` contains them with `catch_unwind`, as in
/// ironpxe's own debug builds (release builds have no such assertion), but the
/// fuzzer's panic hook would abort first. Panics raised inside dhcproto reach that
/// `catch_unwind`; every other panic is still a crash, and so is one that escapes.
fn contain_decoder_assertions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_dhcproto = info
                .location()
                .is_some_and(|l| l.file().contains("/dhcproto-"));
            if !in_dhcproto {
                fuzzer_hook(info)
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    contain_decoder_assertions();
    let Ok(msg) = PxeRequest::decode(data) else {
        return;
    };
    let f = fixed();
    let now = Instant::now();
    for (port, booter) in [
        (ServerPort::Dhcp, &f.ipxe),
        (ServerPort::Pxe, &f.ipxe),
        (ServerPort::Dhcp, &f.shim),
        (ServerPort::Pxe, &f.shim),
    ] {
        let shim_machine = std::ptr::eq(booter, &f.shim);
        let meta = RecvMeta {
            local_ip: SERVER,
            ifindex: 2,
            port,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68),
        };
        let mut memory = ChainloadMemory::default();
        let Ok(reply) = decide(&f.cfg, booter, &msg, &meta, now, &mut memory) else {
            continue;
        };
        // Only PXE and HTTP Boot firmware is answered: a BOOTREQUEST from an
        // Ethernet MAC with option 60 PXEClient/HTTPClient, of a type this port serves.
        assert_eq!(msg.opcode(), Opcode::BootRequest);
        let class = match msg.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
            _ => panic!("answered a client without option 60"),
        };
        assert!(
            class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient"),
            "answered vendor class {class:?}"
        );
        let (want_type, req_types) = match port {
            ServerPort::Dhcp => (MessageType::Offer, &[MessageType::Discover][..]),
            ServerPort::Pxe => (
                MessageType::Ack,
                &[MessageType::Request, MessageType::Inform][..],
            ),
        };
        let req_type = msg.opts().msg_type().expect("answered without option 53");
        assert!(req_types.contains(&req_type), "{req_type:?} on {port:?}");
        // What goes on the wire decodes, and says what was decided.
        let wire = reply.message.to_vec().expect("the reply encodes");
        let back = PxeRequest::decode(&wire).expect("the reply decodes");
        assert_eq!(back.opcode(), Opcode::BootReply);
        assert_eq!(back.yiaddr(), Ipv4Addr::UNSPECIFIED, "assigned an address");
        assert_eq!(back.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(back.xid(), msg.xid());
        assert_eq!(
            back.chaddr().get(..6),
            Some(&reply.request.mac.octets()[..])
        );
        assert_eq!(back.siaddr(), SERVER);
        assert_eq!(back.opts().msg_type(), Some(want_type));
        assert_eq!(
            back.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(back.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(back.opts().get(OptionCode::SubnetMask).is_none());
        assert!(back.opts().get(OptionCode::Router).is_none());
        // Option 97 only as a well-formed GUID.
        match back.opts().get(OptionCode::ClientMachineIdentifier) {
            None => {}
            Some(DhcpOption::ClientMachineIdentifier(g)) => {
                assert!(g.len() == 17 && g[0] == 0, "echoed option 97 {g:?}")
            }
            Some(other) => panic!("option 97 decoded as {other:?}"),
        }
        // Option 67 and the BOOTP file field name the same thing.
        let target = reply.path.target().as_bytes();
        assert_eq!(
            back.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(target.to_vec()))
        );
        if target.len() < 128 {
            // dhcproto hands the field back with its terminating NUL.
            let fname = back.fname().map(|f| f.strip_suffix(&[0]).unwrap_or(f));
            assert_eq!(fname, Some(target));
        }
        match &reply.path {
            BootPath::Chainload { file } => assert!(!file.is_empty()),
            BootPath::Script { url } | BootPath::HttpBoot { url } => {
                assert!(url.starts_with("http://10.77.0.2:8080/"), "{url}")
            }
            BootPath::Loader { loader, file } => {
                assert!(shim_machine, "an iPXE machine was handed {file}");
                assert_eq!(*loader, Loader::Shim);
                assert!(file.starts_with("shim"), "{file}");
            }
            BootPath::LoaderHttp { loader, url } => {
                assert!(shim_machine, "an iPXE machine was handed {url}");
                assert_eq!(*loader, Loader::Shim);
                assert!(url.starts_with("http://10.77.0.2:8080/_/bin/"), "{url}")
            }
        }
        // Relayed requests go back to the relay, others are broadcast (67) or
        // unicast to the sender (4011).
        let giaddr = msg.giaddr();
        match reply.dest {
            Destination::Unicast(a) if !giaddr.is_unspecified() => {
                assert_eq!(a, SocketAddrV4::new(giaddr, 67))
            }
            Destination::Unicast(a) => {
                assert_eq!((port, a), (ServerPort::Pxe, meta.src))
            }
            Destination::Broadcast { ifindex } => {
                assert!(giaddr.is_unspecified() && port == ServerPort::Dhcp);
                assert_eq!(ifindex, 2);
            }
        }
    }
});
