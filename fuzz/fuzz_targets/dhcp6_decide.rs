//! DHCPv6: arbitrary bytes → parse → classify → decide with a fixed booter, with and
//! without the stateful mode, on both ports. Never panics; an answer only goes to a
//! boot client, carries the boot URL it decided, and hands out an address only in
//! the stateful mode and only from its range.
#![no_main]

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::OnceLock;
use std::time::Duration;

use ironpxe_core::net6::Ipv6Range;
use ironpxe_core::{BootSpec, Booter, FileRef, IpxeRole, StaticBooter};
use ironpxe_dhcp::v6::{
    answer6, classify6, Config6, Leases, Parsed6, RecvMeta6, Stateful,
};
use ironpxe_dhcp::{IpxeBinaries, ServerPort};
use libfuzzer_sys::fuzz_target;

const SERVER_ID: &[u8] = &[0, 3, 0, 1, 2, 0, 0, 0, 0, 2];

struct Fixed {
    cfg: Config6,
    stateful: Config6,
    booter: StaticBooter,
    range: Ipv6Range,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let cfg = Config6 {
            http_port: 8080,
            binaries: IpxeBinaries::default()
                .with(IpxeRole::Bios, "undionly.kpxe")
                .with(IpxeRole::Efi64, "ipxe.efi")
                .with(IpxeRole::Snponly, "snponly.efi"),
            ..Config6::default()
        };
        let range = Ipv6Range::new(
            "fd77::1000".parse().unwrap(),
            "fd77::10ff".parse().unwrap(),
        )
        .unwrap();
        Fixed {
            stateful: Config6 {
                stateful: Some(Stateful::default()),
                ..cfg.clone()
            },
            cfg,
            booter: StaticBooter::new(BootSpec {
                kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
                initrds: vec![],
                cmdline: "console=ttyS0".into(),
                message: None,
                loader: Default::default(),
            }),
            range,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let src: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    let local: Ipv6Addr = "fd77::2".parse().unwrap();
    for port in [ServerPort::Dhcp, ServerPort::Pxe] {
        for stateful in [false, true] {
            let Ok(parsed) = Parsed6::parse(data, src) else {
                continue;
            };
            let Ok(req) = parsed.into_request(None) else {
                continue;
            };
            let meta = RecvMeta6 {
                local_ip: local,
                dst_ip: if port == ServerPort::Dhcp {
                    "ff02::1:2".parse().unwrap()
                } else {
                    local
                },
                ifindex: 2,
                port,
                src: SocketAddrV6::new(src, 546, 0, 2),
            };
            let Ok(answer) = classify6(&req, &meta, SERVER_ID, stateful) else {
                continue;
            };
            let decision = f.booter.decide(req.mac, req.arch, Duration::ZERO);
            let mut leases = Leases::new(f.range);
            let cfg = if stateful { &f.stateful } else { &f.cfg };
            let leases_arg = stateful.then_some(&mut leases);
            let Ok(reply) = answer6(cfg, req, answer, &decision, &meta, SERVER_ID, leases_arg, 1_000)
            else {
                continue;
            };
            assert!(!reply.bytes.is_empty(), "an empty reply");
            if let Some(addr) = reply.address {
                assert!(stateful, "an address {addr} without the stateful mode");
                let (lo, hi) = (u128::from(f.range.start()), u128::from("fd77::10ff".parse::<Ipv6Addr>().unwrap()));
                let a = u128::from(addr);
                assert!(lo <= a && a <= hi, "{addr} is outside the range");
            }
            if let Some(path) = &reply.path {
                let target = path.target();
                assert!(
                    target.contains("[fd77::2]"),
                    "the boot URL {target:?} does not name our address"
                );
            }
        }
    }
});
