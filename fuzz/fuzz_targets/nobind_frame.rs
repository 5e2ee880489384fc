//! The no-bind path's view of a captured packet (the packet socket is cooked, so a
//! frame arrives as its IPv4 packet): the checked IPv4 and UDP views and the
//! decision which packets are ours. Never panics; truncated or inconsistent lengths
//! are refused; what is accepted was addressed to the data NIC and is answered from
//! its own address.
#![no_main]

use std::net::Ipv4Addr;

use ironpxe_dhcp::nobind::{
    accept, build_ipv4_udp, parse_ipv4_udp, Dropped, IfAddr, IpError, Ipv4View, LinkType, UdpView,
};
use libfuzzer_sys::fuzz_target;

const OURS: [IfAddr; 2] = [
    IfAddr {
        addr: Ipv4Addr::new(10, 9, 8, 1),
        prefix: 24,
    },
    IfAddr {
        addr: Ipv4Addr::new(192, 168, 7, 5),
        prefix: 30,
    },
];
const LISTEN: Ipv4Addr = Ipv4Addr::new(10, 9, 8, 77);

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fuzz_target!(|pkt: &[u8]| {
    let parsed = parse_ipv4_udp(pkt);
    match (Ipv4View::new_checked(pkt), &parsed) {
        (Ok(ip), _) => {
            // The view is the packet as its header describes it, within the buffer.
            let header = usize::from(pkt[0] & 0x0f) * 4;
            let total = be16(pkt, 2);
            assert!(pkt[0] >> 4 == 4 && header >= 20 && header <= total && total <= pkt.len());
            assert_eq!(ip.payload(), &pkt[header..total]);
            if let Ok(udp) = UdpView::new_checked(ip.payload()) {
                let len = be16(ip.payload(), 4);
                assert!(len >= 8 && len <= ip.payload().len());
                assert_eq!(udp.payload(), &ip.payload()[8..len]);
            }
        }
        (Err(_), Ok(_)) => panic!("a datagram out of a packet the IPv4 view refuses"),
        (Err(IpError::Truncated), _) => {
            assert!(pkt.len() < 20 || be16(pkt, 2) > pkt.len())
        }
        (Err(IpError::Invalid), _) => {}
    }
    if let Ok(d) = parsed {
        // Round trip: the same datagram built again parses to the same thing.
        if let Some(again) = build_ipv4_udp(d.src, d.dst, d.payload) {
            let e = parse_ipv4_udp(&again).expect("a built packet parses");
            assert_eq!((e.src, e.dst, e.payload), (d.src, d.dst, d.payload));
        }
    }
    for link in [LinkType::Host, LinkType::Broadcast, LinkType::Other] {
        for listen in [Ipv4Addr::UNSPECIFIED, LISTEN] {
            for port in [67, 4011] {
                match accept(pkt, link, port, &OURS, listen) {
                    Ok(a) => {
                        assert_ne!(link, LinkType::Other);
                        assert_eq!(Ok(a.datagram), parsed);
                        assert_eq!(a.datagram.dst.port(), port);
                        let dst = *a.datagram.dst.ip();
                        let ours = |ip: Ipv4Addr| {
                            OURS.iter().any(|o| o.addr == ip)
                                || (!listen.is_unspecified() && ip == listen)
                        };
                        assert!(
                            dst.is_broadcast()
                                || ours(dst)
                                || OURS.iter().any(|o| o.broadcast() == Some(dst)),
                            "accepted a packet to {dst}"
                        );
                        assert!(ours(a.local_ip), "answering from {}", a.local_ip);
                        if !listen.is_unspecified() {
                            assert_eq!(a.local_ip, listen);
                        }
                    }
                    Err(Dropped::Malformed(e)) => assert_eq!(Err(e), parsed.map(|_| ())),
                    Err(Dropped::NotOurs(ip)) => {
                        assert!(!ip.is_broadcast());
                        assert_eq!(parsed.map(|d| *d.dst.ip()), Ok(ip));
                    }
                    Err(Dropped::Port(p)) => assert_ne!(p, port),
                    Err(Dropped::LinkType) => assert_eq!(link, LinkType::Other),
                    Err(Dropped::NoAddress) => panic!("the interface has addresses"),
                }
            }
        }
    }
});
