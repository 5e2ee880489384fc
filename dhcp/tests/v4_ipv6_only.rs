//! On an IPv6-only segment the IPv4 ProxyDHCP has no address to announce: it must
//! stay silent rather than offer `http://0.0.0.0:…` (which the IPv6 QEMU test saw
//! before this rule).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use ironpxe_core::StaticBooter;
use ironpxe_dhcp::{
    decide, ChainloadMemory, Ignored, ProxyConfig, PxeRequest, RecvMeta, ServerPort,
};

#[test]
fn no_offer_without_an_ipv4_address_on_the_interface() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/dhcp/seabios-ipxe-rom-discover.bin"
    ))
    .unwrap();
    let msg = PxeRequest::decode(&bytes).unwrap();
    let booter = StaticBooter::new(ironpxe_core::BootSpec {
        kernel: ironpxe_core::FileRef::parse("/k").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    });
    let meta = |ip| RecvMeta {
        local_ip: ip,
        ifindex: 7,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    let cfg = ProxyConfig::default();
    let mut mem = ChainloadMemory::default();
    let r = decide(
        &cfg,
        &booter,
        &msg,
        &meta(Ipv4Addr::UNSPECIFIED),
        Instant::now(),
        &mut mem,
    );
    let e = r.unwrap_err();
    assert_eq!(e, Ignored::NoLocalAddress(7));
    assert!(e.is_routine());
    let ok = decide(
        &cfg,
        &booter,
        &msg,
        &meta(Ipv4Addr::new(10, 0, 0, 2)),
        Instant::now(),
        &mut mem,
    );
    assert!(ok.is_ok(), "{ok:?}");
}
