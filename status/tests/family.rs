//! Status and metrics label each machine and answer with its address family.

use ironpxe_core::event::{BootEvent, DhcpAnswer, EventSink};
use ironpxe_core::{ClientArch, MacAddr};
use ironpxe_status::{now_ms, Status, StoreConfig};

fn offer(mac: MacAddr, peer: &str, server: &str) -> BootEvent {
    BootEvent::DhcpAnswered {
        answer: DhcpAnswer::Offer,
        mac,
        arch: ClientArch::EfiX64,
        xid: 1,
        ipxe: false,
        path: "tftp",
        boot: "snponly.efi".into(),
        server: server.parse().unwrap(),
        peer: peer.parse().unwrap(),
        via: "x".into(),
    }
}

#[test]
fn machines_and_metrics_say_ipv4_or_ipv6() {
    let st = Status::new(StoreConfig::default());
    let v6 = MacAddr([2, 0, 0, 0, 0, 6]);
    let v4 = MacAddr([2, 0, 0, 0, 0, 4]);
    st.event(&offer(v6, "[fe80::ff:fe00:6%2]:546", "fd77:1::2"));
    st.event(&offer(v4, "10.0.0.9:68", "10.0.0.2"));
    st.event(&BootEvent::TftpDone {
        file: "snponly.efi".into(),
        peer: "[fd77:1::1a5]:1053".parse().unwrap(),
        bytes: 10,
        duration_ms: 1,
        blksize: 1228,
        windowsize: 4,
        retransmits: 0,
    });
    let now = now_ms();
    let m6 = st.machine_json(&v6, now).unwrap();
    assert_eq!(m6["family"], "ipv6", "{m6}");
    let m4 = st.machine_json(&v4, now).unwrap();
    assert_eq!(m4["family"], "ipv4", "{m4}");
    let text = st.metrics_text(now);
    for line in [
        r#"ironpxe_answers_by_family_total{family="ipv6",protocol="dhcp"} 1"#,
        r#"ironpxe_answers_by_family_total{family="ipv4",protocol="dhcp"} 1"#,
        r#"ironpxe_answers_by_family_total{family="ipv6",protocol="tftp"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[test]
fn a_tftp_transfer_over_ipv6_finds_the_machine_its_url_was_offered_to() {
    let st = Status::new(StoreConfig::default());
    let mac = MacAddr([2, 0, 0, 0, 0, 7]);
    let mut ev = offer(mac, "[fe80::ff:fe00:7%2]:546", "fd77:1::2");
    if let BootEvent::DhcpAnswered { boot, .. } = &mut ev {
        *boot = "tftp://[fd77:1::2]/snponly.efi".into();
    }
    st.event(&ev);
    st.event(&BootEvent::TftpStart {
        file: "snponly.efi".into(),
        peer: "[fd77:1::99]:1053".parse().unwrap(),
        blksize: 1228,
        windowsize: 4,
        tsize: false,
        size: 10,
    });
    let m = st.machine_json(&mac, now_ms()).unwrap();
    assert_eq!(m["state"], "chainloading", "{m}");
}
