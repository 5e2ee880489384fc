//! Store, state machine, metrics, persistence and HTTP routes, on synthetic events
//! with made-up timestamps.

use std::net::IpAddr;
use std::sync::Arc;

use ironpxe_core::{BootSpec, FileRef, StaticBooter};

use super::*;
use crate::store::peer_ip;
use ironpxe_core::EventSink;

const MAC: &str = "52:54:00:12:34:56";
const MAC2: &str = "52:54:00:12:34:57";
const T0: u64 = 1_700_000_000_000;

fn spec() -> BootSpec {
    BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![
            FileRef::parse("/srv/initrd-a").unwrap(),
            FileRef::parse("/srv/initrd-b").unwrap(),
        ],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn offer(t: u64, m: &str, path: &str, boot: &str) -> Record {
    Record::new(t, "dhcp.offer")
        .with("mac", m)
        .with("arch", "bios")
        .with("path", path)
        .with("boot", boot)
}

fn with_peer(r: Record, peer: &str) -> Record {
    r.with("peer", peer)
}

/// The events of one BIOS iPXE boot (script served directly), 100 ms apart.
fn http_boot(t: u64, m: &str, ip: &str, spec: &BootSpec) -> Vec<Record> {
    let peer = format!("{ip}:40000");
    let k = spec.kernel.id().to_string();
    let i0 = spec.initrds[0].id().to_string();
    let i1 = spec.initrds[1].id().to_string();
    let file = |t: u64, ev: &str, id: &str, bytes: u64| {
        let r = with_peer(Record::new(t, ev), &peer)
            .with("id", id)
            .with("bytes", bytes);
        if ev == "http.file.done" {
            r.with("duration_ms", 100u64)
        } else {
            r
        }
    };
    vec![
        offer(t, m, "http", "http://10.0.0.2/_/ipxe"),
        with_peer(
            Record::new(t + 100, "http.script")
                .with("mac", m)
                .with("arch", "bios"),
            &peer,
        ),
        file(t + 200, "http.file.start", &k, 1000),
        file(t + 300, "http.file.done", &k, 1000),
        file(t + 400, "http.file.start", &i0, 200),
        file(t + 500, "http.file.done", &i0, 200),
        file(t + 600, "http.file.start", &i1, 300),
        file(t + 700, "http.file.done", &i1, 300),
        with_peer(
            Record::new(t + 800, "http.booting")
                .with("mac", m)
                .with("arch", "bios"),
            &peer,
        ),
    ]
}

fn status() -> Status {
    Status::with_neighbors(StoreConfig::default(), Box::new(NoNeighbors))
}

#[test]
fn a_direct_http_boot_reaches_booted_with_phases_kinds_and_metrics() {
    let st = status();
    let s = spec();
    st.store().expect(mac(MAC), &s, T0);
    for r in http_boot(T0, MAC, "10.0.0.50", &s) {
        st.record(r);
    }
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    assert_eq!(m.state, Some(Phase::Booted));
    assert_eq!(m.progress, 100);
    assert_eq!(m.boot_ms, Some(800));
    assert_eq!(m.boots, 1);
    assert_eq!(m.ip.as_deref(), Some("10.0.0.50"));
    assert_eq!(m.arch.as_deref(), Some("bios"));
    let phases: Vec<(Phase, u64, Option<u64>)> = m
        .phases
        .iter()
        .map(|p| (p.phase, p.start_ms - T0, p.end_ms.map(|e| e - T0)))
        .collect();
    assert_eq!(
        phases,
        [
            (Phase::Offered, 0, Some(100)),
            (Phase::Script, 100, Some(200)),
            (Phase::Kernel, 200, Some(400)),
            (Phase::Initrd, 400, Some(800)),
            (Phase::Booted, 800, None),
        ]
    );
    let kinds: Vec<(String, Option<String>)> = m
        .events
        .iter()
        .map(|e| (e.event.clone(), e.text("kind")))
        .collect();
    let k = |e: &str, kind: Option<&str>| (e.to_string(), kind.map(str::to_string));
    assert_eq!(
        kinds,
        [
            k("dhcp.offer", None),
            k("http.script", None),
            k("http.file.start", Some("kernel")),
            k("http.file.done", Some("kernel")),
            k("http.file.start", Some("initrd")),
            k("http.file.done", Some("initrd")),
            k("http.file.start", Some("initrd")),
            k("http.file.done", Some("initrd")),
            k("http.booting", None),
        ]
    );
    // 1000 bytes in 100 ms.
    assert_eq!(m.events[3].number("bytes_per_s"), Some(10_000));
    drop(store);

    let text = st.metrics_text(T0 + 1000);
    for line in [
        r#"ironpxe_dhcp_offers_total{arch="bios",path="http"} 1"#,
        r#"ironpxe_http_bytes_total{kind="kernel"} 1000"#,
        r#"ironpxe_http_bytes_total{kind="initrd"} 500"#,
        r#"ironpxe_http_files_total{kind="initrd",outcome="done"} 2"#,
        "ironpxe_http_scripts_total 1",
        "ironpxe_boots_total 1",
        "ironpxe_boot_duration_seconds_count 1",
        "ironpxe_boot_duration_seconds_sum 0.8",
        r#"ironpxe_boot_duration_seconds_bucket{le="2.0"} 1"#,
        r#"ironpxe_boot_phase_duration_seconds_sum{phase="initrd"} 0.4"#,
        r#"ironpxe_boot_phase_duration_seconds_count{phase="kernel"} 1"#,
        r#"ironpxe_machines{state="booted"} 1"#,
        r#"ironpxe_machines{state="offered"} 0"#,
        "ironpxe_machines_stuck 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn progress_counts_initrds_of_the_spec() {
    let st = status();
    let s = spec();
    st.store().expect(mac(MAC), &s, T0);
    let evs = http_boot(T0, MAC, "10.0.0.50", &s);
    let mut seen = Vec::new();
    for r in evs {
        st.record(r);
        seen.push(st.store().machine(&mac(MAC)).unwrap().progress);
    }
    assert_eq!(seen, [10, 40, 45, 70, 70, 82, 82, 95, 100]);
}

#[test]
fn without_a_spec_the_first_file_after_the_script_is_the_kernel() {
    let st = status();
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    let kinds: Vec<Option<String>> = m
        .events
        .iter()
        .filter(|e| e.event.starts_with("http.file."))
        .map(|e| e.text("kind"))
        .collect();
    let k = Some("kernel".to_string());
    let i = Some("initrd".to_string());
    assert_eq!(kinds, [k.clone(), k, i.clone(), i.clone(), i.clone(), i]);
    assert_eq!(m.state, Some(Phase::Booted));
}

#[test]
fn a_chainload_tftp_transfer_goes_to_the_only_machine_offered_that_file() {
    let st = status();
    st.record(offer(T0, MAC, "tftp", "undionly.kpxe"));
    let peer = "10.0.0.50:2070";
    st.record(with_peer(
        Record::new(T0 + 50, "tftp.start").with("file", "undionly.kpxe"),
        peer,
    ));
    st.record(with_peer(
        Record::new(T0 + 90, "tftp.done")
            .with("file", "undionly.kpxe")
            .with("bytes", 74213u64)
            .with("duration_ms", 40u64),
        peer,
    ));
    // The chainloaded iPXE asks again: same boot.
    st.record(offer(T0 + 2000, MAC, "http", "http://x/_/ipxe"));
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    let names: Vec<&str> = m.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["dhcp.offer", "tftp.start", "tftp.done", "dhcp.offer"]
    );
    let phases: Vec<Phase> = m.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Offered,
            Phase::Chainloading,
            Phase::Chainloaded,
            Phase::Offered
        ]
    );
    assert_eq!(m.boot_started_ms, Some(T0));
    assert_eq!(m.progress, 30, "progress never goes back within a boot");
    assert_eq!(store.unattributed().count(), 0);
    drop(store);
    let text = st.metrics_text(T0);
    assert!(
        text.contains(r#"ironpxe_tftp_transfers_total{outcome="done"} 1"#),
        "{text}"
    );
    assert!(text.contains("ironpxe_tftp_bytes_total 74213"), "{text}");
}

#[test]
fn ambiguous_tftp_waits_unattributed_until_the_script_names_the_ip() {
    let st = status();
    st.record(offer(T0, MAC, "tftp", "undionly.kpxe"));
    st.record(offer(T0 + 10, MAC2, "tftp", "undionly.kpxe"));
    let peer = "10.0.0.51:2070";
    st.record(with_peer(
        Record::new(T0 + 50, "tftp.start").with("file", "undionly.kpxe"),
        peer,
    ));
    st.record(with_peer(
        Record::new(T0 + 90, "tftp.done")
            .with("file", "undionly.kpxe")
            .with("bytes", 10u64)
            .with("duration_ms", 40u64),
        peer,
    ));
    assert_eq!(st.store().unattributed().count(), 2);
    let mut rx = st.subscribe();
    st.record(with_peer(
        Record::new(T0 + 3000, "http.script").with("mac", MAC2),
        "10.0.0.51:41000",
    ));
    // Three live updates: the two moved TFTP events, then the script.
    let got: Vec<String> = (0..3)
        .map(|_| {
            let v: Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
            assert_eq!(v["mac"], MAC2);
            v["event"]["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(got, ["tftp.start", "tftp.done", "http.script"]);
    let store = st.store();
    assert_eq!(store.unattributed().count(), 0);
    let m2 = store.machine(&mac(MAC2)).unwrap();
    let names: Vec<&str> = m2.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["dhcp.offer", "tftp.start", "tftp.done", "http.script"]
    );
    assert_eq!(m2.state, Some(Phase::Script));
    let m1 = store.machine(&mac(MAC)).unwrap();
    assert_eq!(m1.events.len(), 1);
    drop(store);
    // Counted once, when it arrived.
    let text = st.metrics_text(T0);
    assert!(
        text.contains(r#"ironpxe_tftp_transfers_total{outcome="done"} 1"#),
        "{text}"
    );
}

#[test]
fn the_address_seen_by_dhcp_attributes_tftp_without_the_neighbour_table() {
    // Two machines were offered the same file: only the DHCP-learned address tells
    // them apart, and no neighbour table is consulted.
    let st = Status::with_neighbors(StoreConfig::default(), Box::new(NoNeighbors));
    st.record(offer(T0, MAC, "tftp", "undionly.kpxe"));
    st.record(offer(T0, MAC2, "tftp", "undionly.kpxe"));
    st.event(&ironpxe_core::BootEvent::DhcpClientAddress {
        mac: mac(MAC2),
        ip: "10.0.0.9".parse().unwrap(),
    });
    st.record(with_peer(
        Record::new(T0 + 5, "tftp.start").with("file", "undionly.kpxe"),
        "10.0.0.9:1000",
    ));
    assert_eq!(
        st.store().machine(&mac(MAC2)).unwrap().state,
        Some(Phase::Chainloading)
    );
    assert_eq!(st.store().unattributed().count(), 0);
}

#[test]
fn the_neighbour_table_attributes_known_machines_only() {
    struct Fixed(MacAddr);
    impl Neighbors for Fixed {
        fn mac_of(&self, _: IpAddr) -> Option<MacAddr> {
            Some(self.0)
        }
    }
    // Two candidates for the TFTP file, but ARP knows the sender.
    let st = Status::with_neighbors(StoreConfig::default(), Box::new(Fixed(mac(MAC2))));
    st.record(offer(T0, MAC, "tftp", "undionly.kpxe"));
    st.record(offer(T0, MAC2, "tftp", "undionly.kpxe"));
    st.record(with_peer(
        Record::new(T0 + 5, "tftp.start").with("file", "undionly.kpxe"),
        "10.0.0.9:1000",
    ));
    assert_eq!(
        st.store().machine(&mac(MAC2)).unwrap().state,
        Some(Phase::Chainloading)
    );

    // A MAC the store does not know (a router's) is not trusted.
    let st = Status::with_neighbors(
        StoreConfig::default(),
        Box::new(Fixed(mac("02:00:00:00:00:01"))),
    );
    st.record(with_peer(
        Record::new(T0 + 5, "tftp.start").with("file", "undionly.kpxe"),
        "10.0.0.9:1000",
    ));
    assert_eq!(st.store().unattributed().count(), 1);
    assert_eq!(st.store().machines().len(), 0);
}

#[test]
fn stuck_after_the_threshold_and_never_when_done() {
    let st = status();
    st.record(offer(T0, MAC, "http", "u"));
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    assert!(!m.is_stuck(T0 + 120_000, 120_000));
    assert!(m.is_stuck(T0 + 120_001, 120_000));
    drop(store);
    let v = st.machines_json(T0 + 121_000);
    assert_eq!(v["machines"][0]["stuck"], true);
    assert_eq!(v["machines"][0]["state"], "offered");
    assert_eq!(v["machines"][0]["in_phase_ms"], 121_000);
    assert!(st
        .metrics_text(T0 + 121_000)
        .lines()
        .any(|l| l == "ironpxe_machines_stuck 1"));
    for r in http_boot(T0 + 200_000, MAC, "10.0.0.50", &spec())
        .into_iter()
        .skip(1)
    {
        st.record(r);
    }
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    assert_eq!(m.state, Some(Phase::Booted));
    assert!(!m.is_stuck(T0 + 10_000_000, 120_000));
}

#[test]
fn failures_and_ignores_keep_the_reason_and_a_retry_moves_on() {
    let st = status();
    let s = spec();
    let mut evs = http_boot(T0, MAC, "10.0.0.50", &s);
    let fail = with_peer(
        Record::new(T0 + 250, "http.file.failed")
            .with("id", s.kernel.id().to_string())
            .with("bytes", 10u64)
            .with("reason", "client went away before the end"),
        "10.0.0.50:40000",
    );
    evs.insert(3, fail);
    for r in evs.iter().take(4).cloned() {
        st.record(r);
    }
    {
        let store = st.store();
        let m = store.machine(&mac(MAC)).unwrap();
        assert_eq!(m.state, Some(Phase::Failed));
        assert_eq!(m.reason.as_deref(), Some("client went away before the end"));
        assert_eq!(m.events[3].text("kind").as_deref(), Some("kernel"));
    }
    // iPXE retries the kernel and goes on.
    let retry = evs[2].clone();
    st.record(Record {
        t_ms: T0 + 260,
        ..retry
    });
    for r in evs.into_iter().skip(4) {
        st.record(r);
    }
    assert_eq!(
        st.store().machine(&mac(MAC)).unwrap().state,
        Some(Phase::Booted)
    );
    let text = st.metrics_text(T0);
    assert!(
        text.contains(r#"ironpxe_http_files_total{kind="kernel",outcome="failed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ironpxe_http_bytes_total{kind="kernel"} 1010"#),
        "{text}"
    );

    st.record(
        Record::new(T0 + 5000, "dhcp.ignore")
            .with("mac", MAC2)
            .with("peer", "0.0.0.0:68")
            .with("reason", "not in the machine list"),
    );
    let store = st.store();
    let m = store.machine(&mac(MAC2)).unwrap();
    assert_eq!(m.state, Some(Phase::Ignored));
    assert_eq!(m.reason.as_deref(), Some("not in the machine list"));
    assert_eq!(m.ip, None);
}

#[test]
fn a_new_offer_after_booting_starts_a_new_boot() {
    let st = status();
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    st.record(offer(T0 + 60_000, MAC, "http", "u"));
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    assert_eq!(m.state, Some(Phase::Offered));
    assert_eq!(m.boot_started_ms, Some(T0 + 60_000));
    assert_eq!(m.progress, 10);
    assert_eq!(m.phases.len(), 1);
    assert_eq!(m.boots, 1);
    assert_eq!(m.boot_ms, Some(800), "the last completed boot stays");
    assert_eq!(m.events.len(), 10, "the timeline keeps the earlier boot");
}

#[test]
fn bounded_events_per_machine_and_machines_least_recently_seen_first() {
    let cfg = StoreConfig {
        max_machines: 2,
        max_events: 3,
        ..StoreConfig::default()
    };
    let st = Status::with_neighbors(cfg, Box::new(NoNeighbors));
    for i in 0..5 {
        st.record(offer(T0 + i, MAC, "http", "u"));
    }
    {
        let store = st.store();
        let m = store.machine(&mac(MAC)).unwrap();
        let ts: Vec<u64> = m.events.iter().map(|e| e.t_ms - T0).collect();
        assert_eq!(ts, [2, 3, 4]);
    }
    st.record(offer(T0 + 10, MAC2, "http", "u"));
    st.record(offer(T0 + 20, MAC, "http", "u"));
    st.record(offer(T0 + 30, "52:54:00:00:00:03", "http", "u"));
    let store = st.store();
    let macs: Vec<String> = store.machines().iter().map(|m| m.mac.to_string()).collect();
    assert_eq!(macs, ["52:54:00:00:00:03", MAC]);
}

#[test]
fn server_events_without_a_machine_stay_out_of_machines() {
    let st = status();
    st.record(Record::new(T0, "config.reloaded").with("machines", 3u64));
    assert!(st.store().machines().is_empty());
    assert_eq!(st.store().unattributed().count(), 0);
}

#[test]
fn the_state_directory_keeps_history_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let st = status();
    let saver = st.open_state_dir(dir.path()).unwrap();
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    saver.save().unwrap();
    assert!(!dir.path().join("status.json.tmp").exists());

    let again = status();
    again.open_state_dir(dir.path()).unwrap();
    let a = st.machines_json(T0 + 5000);
    let b = again.machines_json(T0 + 5000);
    assert_eq!(a, b);
    assert_eq!(b["machines"][0]["state"], "booted");
    assert_eq!(b["machines"][0]["events"].as_array().unwrap().len(), 9);
    // A new boot after the restart continues the same machine.
    again.record(offer(T0 + 9000, MAC, "http", "u"));
    assert_eq!(again.store().machine(&mac(MAC)).unwrap().boots, 1);

    std::fs::write(dir.path().join("status.json"), "{not json").unwrap();
    let err = status()
        .open_state_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("status.json is not a valid ironpxe state file"),
        "{err}"
    );
    assert!(err.contains("move it away"), "{err}");
}

#[test]
fn typed_events_are_recorded_with_their_fields() {
    use ironpxe_core::event::DhcpAnswer;
    let st = status();
    st.event(&ironpxe_core::BootEvent::DhcpAnswered {
        answer: DhcpAnswer::Offer,
        mac: mac(MAC),
        arch: ironpxe_core::ClientArch::Bios,
        xid: 0xabcd,
        ipxe: true,
        path: "tftp",
        boot: "undionly.kpxe".into(),
        server: "10.77.1.2".parse().unwrap(),
        peer: "0.0.0.0:68".parse().unwrap(),
        via: "broadcast".into(),
    });
    let store = st.store();
    assert_eq!(store.machines().len(), 1);
    let m = store.machine(&mac(MAC)).unwrap();
    let e = &m.events[0];
    assert_eq!(e.event, "dhcp.offer");
    assert_eq!(e.text("xid").as_deref(), Some("0x0000abcd"));
    assert_eq!(e.details["ipxe"], true);
    assert_eq!(
        m.tftp_offer.as_ref().map(|(_, f)| f.as_str()),
        Some("undionly.kpxe")
    );
}

#[test]
fn the_observed_booter_teaches_file_kinds() {
    let st = status();
    let b = st.observe_booter(Arc::new(StaticBooter::new(spec())));
    let d = b.decide(
        mac(MAC),
        ironpxe_core::ClientArch::Bios,
        std::time::Duration::ZERO,
    );
    assert!(matches!(d, BootDecision::Netboot(_)));
    let m = st
        .store()
        .machine(&mac(MAC))
        .unwrap()
        .expected
        .clone()
        .unwrap();
    assert_eq!(m.kernel, spec().kernel.id().to_string());
    assert_eq!(m.initrds.len(), 2);
    assert_eq!(b.file(&spec().kernel.id()), Some(spec().kernel));
}

#[test]
fn peers_and_arp_lines() {
    assert_eq!(peer_ip("10.0.0.5:68"), Some("10.0.0.5".parse().unwrap()));
    assert_eq!(peer_ip("[fd00::5]:80"), Some("fd00::5".parse().unwrap()));
    assert_eq!(peer_ip("10.0.0.5"), Some("10.0.0.5".parse().unwrap()));
    assert_eq!(peer_ip("0.0.0.0:68"), None);
    assert_eq!(peer_ip("255.255.255.255:68"), None);
    assert_eq!(peer_ip("-"), None);
    let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
               10.77.1.147      0x1         0x2         52:54:00:aa:bb:cc     *        ipxl-pxe\n\
               10.77.1.148      0x1         0x0         00:00:00:00:00:00     *        ipxl-pxe\n";
    assert_eq!(
        store::arp_lookup(arp, "10.77.1.147".parse().unwrap()),
        Some(mac("52:54:00:aa:bb:cc"))
    );
    assert_eq!(store::arp_lookup(arp, "10.77.1.148".parse().unwrap()), None);
    assert_eq!(store::arp_lookup(arp, "10.77.1.1".parse().unwrap()), None);
}

/// GETs `path` from `addr` over a plain TCP connection; returns (head, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test]
async fn routes_answer_json_html_metrics_and_a_live_stream() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let st = status();
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = st.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (head, body) = get(addr, "/api/v1/machines").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let m = &v["machines"][0];
    assert_eq!(m["mac"], MAC);
    assert_eq!(m["name"], Value::Null);
    assert_eq!(m["state"], "booted");
    assert_eq!(m["boot_ms"], 800);
    let evs: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(evs.len(), 9);
    assert_eq!(m["events"][0]["t"], "2023-11-14T22:13:20.000Z");

    let (head, body) = get(addr, &format!("/api/v1/machines/{}", MAC.replace(':', "-"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("\"state\":\"booted\""), "{body}");
    let (head, _) = get(addr, "/api/v1/machines/52:54:00:00:00:99").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get(addr, "/api/v1/machines/zz").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, body) = get(addr, "/api/v1/machines?limit=0").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.starts_with("limit:"), "{body}");
    let (head, body) = get(addr, "/api/v1/machines?limit=1&events=0").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["total"].as_u64(), v["next"].as_str()), (Some(1), None));
    let (head, _) = get(addr, "/api/v1/log?after=x").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    st.record(
        Record::new(T0 + 1, "http.ignored")
            .with("mac", "52:54:00:00:00:66")
            .with("reason", "</script><script>alert(1)</script>"),
    );
    let (head, body) = get(addr, "/").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("new EventSource(\"api/v1/events\")"));
    // The machine list is in the page, and user text cannot close its script block.
    let initial = body
        .split("<script id=\"initial\" type=\"application/json\">")
        .nth(1)
        .and_then(|r| r.split("</script>").next())
        .unwrap();
    let v: Value = serde_json::from_str(initial).unwrap();
    assert_eq!(v["machines"][1]["state"], "booted");
    assert_eq!(
        v["machines"][0]["reason"],
        "</script><script>alert(1)</script>"
    );
    assert_eq!(body.matches("</script>").count(), 2);

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.lines().any(|l| l == "ironpxe_boots_total 1"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    // The live stream delivers the next event.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // The handler subscribes when it runs; give it a moment before recording.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    st.record(offer(T0 + 60_000, MAC2, "tftp", "undionly.kpxe"));
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !got.contains("\ndata:") && !got.starts_with("data:") {
        line.clear();
        tokio::time::timeout_at(deadline, r.read_line(&mut line))
            .await
            .expect("no live event within 5 s")
            .unwrap();
        got.push_str(&line);
    }
    assert!(got.contains("event: boot"), "{got}");
    let data = got
        .lines()
        .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["mac"], MAC2);
    assert_eq!(v["event"]["event"], "dhcp.offer");
    assert_eq!(v["machine"]["state"], "offered");
}

#[tokio::test]
async fn end_streams_ends_open_live_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let st = status();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = st.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    st.end_streams();
    // The chunked body ends (its last chunk arrives): the stream is over.
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !rest.ends_with(b"0\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the stream did not end")
            .unwrap();
        assert!(n > 0, "closed without ending the body");
        rest.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn the_log_feed_returns_events_after_a_sequence_number() {
    let st = status();
    st.record(offer(T0, MAC, "tftp", "undionly.kpxe"));
    st.record(Record::new(T0 + 1, "tftp.start").with("file", "undionly.kpxe"));
    st.record(offer(T0 + 2, MAC2, "http", "http://x/_/ipxe"));
    let all = st.log_json(0);
    assert_eq!(all["next"], 4);
    let seqs: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Unattributed events are in the feed too, as recorded.
    assert_eq!(all["events"][1]["event"], "tftp.start");
    let later = st.log_json(2);
    assert_eq!(later["events"].as_array().unwrap().len(), 1);
    assert_eq!(later["events"][0]["details"]["mac"], MAC2);
}

#[test]
fn dropped_dhcp_packets_are_counted_not_stored() {
    let st = status();
    for n in 0..3u8 {
        st.event(&ironpxe_core::BootEvent::DhcpDropped {
            mac: MacAddr([2, 0, 0, 0, 9, n]),
            limit: 64,
        });
    }
    assert!(st.store().machines().is_empty());
    let text = st.metrics_text(T0);
    assert!(text.contains("ironpxe_dhcp_dropped_total 3"), "{text}");
}

#[test]
fn a_full_store_evicts_its_oldest_eighth_at_once() {
    let cfg = StoreConfig {
        max_machines: 16,
        ..StoreConfig::default()
    };
    let st = Status::with_neighbors(cfg, Box::new(NoNeighbors));
    for i in 0..17u64 {
        st.record(offer(
            T0 + i,
            &format!("52:54:00:00:01:{i:02x}"),
            "http",
            "u",
        ));
    }
    let store = st.store();
    let macs: Vec<String> = store.machines().iter().map(|m| m.mac.to_string()).collect();
    assert_eq!(macs.len(), 15, "{macs:?}");
    assert!(!macs.contains(&"52:54:00:00:01:00".to_string()));
    assert!(!macs.contains(&"52:54:00:00:01:01".to_string()));
    assert!(macs.contains(&"52:54:00:00:01:10".to_string()));
}

/// The MAC of flood machine `i`.
fn flood_mac(i: u32) -> String {
    let b = i.to_be_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[test]
fn machines_come_in_pages_in_mac_order() {
    let st = status();
    for i in (0..250u32).rev() {
        st.record(offer(T0 + u64::from(i), &flood_mac(i), "http", "u"));
    }
    let first = st.machines_json(T0 + 1000);
    assert_eq!(first["total"], 250);
    let macs = |v: &Value| -> Vec<String> {
        v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mac"].as_str().unwrap().to_string())
            .collect()
    };
    let want: Vec<String> = (0..100).map(flood_mac).collect();
    assert_eq!(macs(&first), want);
    assert_eq!(first["next"], flood_mac(99));
    assert!(first["machines"][0]["events"].is_array());

    let q = PageQuery::parse(&format!("after={}&limit=120", flood_mac(99))).unwrap();
    let second = st.machines_page(&q, T0 + 1000);
    assert_eq!(macs(&second), (100..220).map(flood_mac).collect::<Vec<_>>());
    assert_eq!(second["next"], flood_mac(219));
    assert_eq!(second["unattributed"].as_array().unwrap().len(), 0);
    let q = PageQuery::parse(&format!("after={}&limit=1000&events=0", flood_mac(219))).unwrap();
    let last = st.machines_page(&q, T0 + 1000);
    assert_eq!(macs(&last), (220..250).map(flood_mac).collect::<Vec<_>>());
    assert_eq!(last["next"], Value::Null);
    assert!(last["machines"][0].get("events").is_none());
    assert_eq!(last["machines"][0]["last_event"]["event"], "dhcp.offer");

    for (bad, why) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("after=zz", "after"),
        ("events=maybe", "events"),
    ] {
        let e = PageQuery::parse(bad).unwrap_err();
        assert!(e.starts_with(why), "{bad}: {e}");
    }
}

#[test]
fn a_boot_event_is_applied_while_a_page_is_being_serialised() {
    let st = status();
    for i in 0..50u32 {
        for r in http_boot(
            T0 + u64::from(i) * 1000,
            &flood_mac(i),
            "10.0.0.50",
            &spec(),
        ) {
            st.record(r);
        }
    }
    let mut calls = 0;
    let page = st.machines_page_with(&PageQuery::default(), T0 + 100_000, &mut || {
        calls += 1;
        // The store is free while the page is built: a boot event goes straight in.
        assert!(
            st.inner.store.try_lock().is_ok(),
            "the store is locked while a page is serialised"
        );
        if calls == 1 {
            st.record(offer(T0 + 200_000, MAC, "http", "u"));
        }
    });
    assert_eq!(calls, 50);
    // The page is the snapshot taken before; the event is in the store.
    assert_eq!(page["total"], 50);
    assert!(st.store().machine(&mac(MAC)).is_some());
    assert_eq!(st.machines_json(T0 + 200_000)["total"], 51);
}

/// `rounds` spoofed offers for each of `macs` MACs, interleaved, from `t`.
fn flood(st: &Status, macs: u32, rounds: u32, mut t: u64) -> u64 {
    for round in 0..rounds {
        for i in 0..macs {
            t += 1;
            st.record(
                Record::new(t, "dhcp.offer")
                    .with("mac", flood_mac(i).as_str())
                    .with("arch", "bios")
                    .with("path", "http")
                    .with("xid", u64::from(round)),
            );
        }
    }
    t
}

/// Checks every bound of `cfg` on `st`'s store; returns the booted machine `MAC`.
fn check_bounds(st: &Status, cfg: &StoreConfig) -> Machine {
    let store = st.store();
    assert!(store.machines().len() <= cfg.max_machines);
    assert!(
        store.total_events() <= cfg.max_total_events,
        "{} events",
        store.total_events()
    );
    let counted: usize = store.machines().iter().map(|m| m.events.len()).sum();
    assert_eq!(counted, store.total_events());
    assert!(store
        .machines()
        .iter()
        .all(|m| m.events.len() <= cfg.max_events));
    let real = store
        .machine(&mac(MAC))
        .expect("the booted machine was evicted by the flood")
        .clone();
    assert_eq!(real.state, Some(Phase::Booted));
    // Its short timeline is whole.
    assert_eq!(real.events.len(), 9);
    real
}

#[test]
fn a_flood_of_macs_stays_within_the_bounds_and_keeps_booted_machines() {
    // The audit's flood: 102,400 spoofed requests from 1,024 MACs, after a real boot
    // (so the real machine is the least recently seen).
    let cfg = StoreConfig::default();
    let st = Status::with_neighbors(cfg.clone(), Box::new(NoNeighbors));
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    let t = flood(&st, 1024, 100, T0 + 10_000);
    check_bounds(&st, &cfg);
    // One page stays small whatever the flood did.
    let page = st.machines_json(t).to_string();
    assert!(page.len() < 4 << 20, "a page of {} bytes", page.len());

    // Fewer MACs than the store holds, each with many events: the event budget cuts
    // the flooded timelines, not the real one.
    let cfg = StoreConfig {
        max_machines: 64,
        max_total_events: 1000,
        ..StoreConfig::default()
    };
    let st = Status::with_neighbors(cfg.clone(), Box::new(NoNeighbors));
    for r in http_boot(T0, MAC, "10.0.0.50", &spec()) {
        st.record(r);
    }
    flood(&st, 60, 100, T0 + 10_000);
    check_bounds(&st, &cfg);
}

#[test]
fn the_log_comes_in_pages() {
    let st = status();
    for i in 0..30u64 {
        st.record(offer(T0 + i, MAC, "http", "u"));
    }
    let page = st.log_page(&LogQuery::parse("after=5&limit=10").unwrap());
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=15).collect::<Vec<_>>());
    assert_eq!(page["next"], 16);
    // Polling from next - 1 gets the rest, then nothing, with the same next.
    let rest = st.log_page(&LogQuery::parse("after=15").unwrap());
    assert_eq!(rest["events"].as_array().unwrap().len(), 15);
    assert_eq!(rest["next"], 31);
    let none = st.log_json(30);
    assert_eq!(none["events"].as_array().unwrap().len(), 0);
    assert_eq!(none["next"], 31);
    assert!(LogQuery::parse("limit=0").is_err());
    assert!(LogQuery::parse("after=-1").is_err());
}

#[test]
fn active_transfer_gauges_follow_starts_and_ends() {
    let st = status();
    let active = |st: &Status| {
        let text = st.metrics_text(T0);
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        (
            get("ironpxe_tftp_transfers_active"),
            get("ironpxe_http_files_active"),
        )
    };
    assert_eq!(active(&st), (0, 0));
    let tftp =
        |ev: &str, peer: &str| with_peer(Record::new(T0, ev).with("file", "undionly.kpxe"), peer);
    let http = |ev: &str, peer: &str, id: &str| with_peer(Record::new(T0, ev).with("id", id), peer);
    st.record(tftp("tftp.start", "10.0.0.5:2000"));
    st.record(tftp("tftp.start", "10.0.0.6:2000"));
    st.record(http("http.file.start", "10.0.0.5:40000", "k1"));
    st.record(http("http.file.start", "10.0.0.6:40000", "k1"));
    assert_eq!(active(&st), (2, 2));
    // A refusal before any transfer began (server busy) has no start: no change.
    st.record(tftp("tftp.failed", "10.0.0.7:2000"));
    // The same client port's other file is another transfer.
    st.record(http("http.file.done", "10.0.0.5:40000", "other"));
    assert_eq!(active(&st), (2, 2));
    st.record(tftp("tftp.aborted", "10.0.0.5:2000"));
    st.record(tftp("tftp.failed", "10.0.0.6:2000"));
    st.record(http("http.file.failed", "10.0.0.6:40000", "k1"));
    assert_eq!(active(&st), (0, 1));
    st.record(http("http.file.done", "10.0.0.5:40000", "k1"));
    // An end seen twice counts once.
    st.record(http("http.file.done", "10.0.0.5:40000", "k1"));
    assert_eq!(active(&st), (0, 0));
}

/// The TFTP events of one shim and GRUB boot, 100 ms apart, from `ip`.
fn grub_boot(t: u64, m: &str, ip: &str, spec: &BootSpec) -> Vec<Record> {
    use ironpxe_core::loader::{GrubPath, GrubStep};
    let mac: MacAddr = m.parse().unwrap();
    let n = spec.initrds.len();
    let mut files = vec![GrubPath::File {
        mac,
        step: GrubStep::Kernel { initrds: n },
        id: spec.kernel.id(),
        name: "vmlinuz".into(),
    }
    .to_path()];
    for (i, f) in spec.initrds.iter().enumerate() {
        files.push(
            GrubPath::File {
                mac,
                step: GrubStep::Initrd {
                    index: i + 1,
                    of: n,
                },
                id: f.id(),
                name: format!("initrd{i}"),
            }
            .to_path(),
        );
    }
    let cfg = GrubPath::Machine {
        mac,
        cpu: ironpxe_core::EfiCpu::X64,
    }
    .to_path();
    let mut out = vec![offer(t, m, "shim", "shimx64.efi")];
    let mut t = t;
    let mut tftp = |ev: &str, file: &str, port: u16| {
        t += 100;
        let r = with_peer(Record::new(t, ev), &format!("{ip}:{port}")).with("file", file);
        match ev {
            "tftp.done" => r.with("bytes", 1000u64).with("duration_ms", 100u64),
            "tftp.failed" => r.with("reason", "file not found"),
            _ => r,
        }
    };
    out.push(tftp("tftp.start", "shimx64.efi", 1001));
    out.push(tftp("tftp.done", "shimx64.efi", 1001));
    out.push(tftp("tftp.failed", "revocations_sbat.efi", 1002));
    out.push(tftp("tftp.start", "grubx64.efi", 1003));
    out.push(tftp("tftp.done", "grubx64.efi", 1003));
    out.push(tftp("tftp.start", "grub/grub.cfg", 1004));
    out.push(tftp("tftp.done", "grub/grub.cfg", 1004));
    out.push(tftp("tftp.start", &cfg, 1005));
    out.push(tftp("tftp.done", &cfg, 1005));
    let n_files = files.len();
    for (i, f) in files.iter().enumerate() {
        let port = 1006 + i as u16;
        out.push(tftp("tftp.start", f, port));
        out.push(tftp("tftp.sent", f, port));
        if i + 1 < n_files {
            out.push(tftp("tftp.done", f, port));
        }
    }
    let last = files.last().unwrap().clone();
    let last_port = 1006 + n_files as u16 - 1;
    out.push(with_peer(
        Record::new(t + 1, "grub.booting")
            .with("mac", m)
            .with("file", last.as_str()),
        &format!("{ip}:{last_port}"),
    ));
    // The machine booted before it acknowledged the last block: that transfer then
    // fails, which does not undo the boot.
    t += 1000;
    out.push(
        with_peer(Record::new(t, "tftp.failed"), &format!("{ip}:{last_port}"))
            .with("file", last.as_str())
            .with("reason", "no acknowledgement after 10 retransmissions"),
    );
    out
}

#[test]
fn a_shim_and_grub_boot_reaches_booted_at_its_last_tftp_byte() {
    let st = status();
    let s = spec();
    st.store().expect(mac(MAC), &s, T0);
    for r in grub_boot(T0, MAC, "10.0.0.60", &s) {
        st.record(r);
    }
    let store = st.store();
    let m = store.machine(&mac(MAC)).unwrap();
    assert_eq!(m.state, Some(Phase::Booted));
    assert_eq!(m.progress, 100);
    assert_eq!(m.boots, 1);
    assert_eq!(m.reason, None, "shim's optional probe is not a failure");
    // Every event found the machine: the binaries by the offer, the probe by the
    // address GRUB's paths taught, the GRUB files by their paths.
    assert_eq!(store.unattributed().count(), 0);
    assert_eq!(m.ip.as_deref(), Some("10.0.0.60"));
    let phases: Vec<Phase> = m.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Offered,
            Phase::Chainloading,
            Phase::Chainloaded,
            Phase::Chainloading,
            Phase::Chainloaded,
            Phase::Script,
            Phase::Kernel,
            Phase::Initrd,
            Phase::Booted,
        ]
    );
    assert_eq!(
        m.files_done.len(),
        2,
        "the last file was sent, not acknowledged"
    );
}
