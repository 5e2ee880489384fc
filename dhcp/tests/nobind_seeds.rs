//! The no-bind path on the IPv4 packets in `testdata/nobind/` (the fuzzer's seeds):
//! each is the UDP payload of a `testdata/dhcp/` vector in the packet a packet
//! socket would deliver, and gets the verdict its name says, for a data NIC holding
//! 10.9.8.1/24.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ironpxe_dhcp::nobind::{accept, Dropped, IfAddr, IpError, LinkType};

const OURS: [IfAddr; 1] = [IfAddr {
    addr: Ipv4Addr::new(10, 9, 8, 1),
    prefix: 24,
}];

#[test]
fn every_seed_gets_the_verdict_its_name_says() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("nobind")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let pkt = std::fs::read(&path).unwrap();
        n += 1;
        let (kind, vector) = [
            "broadcast-",
            "subnet-broadcast-",
            "unicast-",
            "ip-options-",
            "foreign-",
            "fragment-",
            "port-4011-",
        ]
        .iter()
        .find_map(|p| name.strip_prefix(p).map(|v| (*p, v)))
        .unwrap_or_else(|| panic!("{name}: no known prefix"));
        let link = if kind == "unicast-" || kind == "foreign-" {
            LinkType::Host
        } else {
            LinkType::Broadcast
        };
        let got = accept(&pkt, link, 67, &OURS, Ipv4Addr::UNSPECIFIED);
        match kind {
            "foreign-" => assert_eq!(
                got,
                Err(Dropped::NotOurs(Ipv4Addr::new(10, 9, 9, 9))),
                "{name}"
            ),
            "fragment-" => assert_eq!(got, Err(Dropped::Malformed(IpError::Invalid)), "{name}"),
            "port-4011-" => assert_eq!(got, Err(Dropped::Port(4011)), "{name}"),
            _ => {
                let a = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(a.local_ip, OURS[0].addr, "{name}");
                let payload = std::fs::read(root.join("dhcp").join(vector)).unwrap();
                assert_eq!(a.datagram.payload, &payload[..], "{name}");
            }
        }
    }
    assert_eq!(n, 7, "seeds in testdata/nobind");
}
