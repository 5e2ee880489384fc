//! The driver with a slow booter: packets that need a lookup wait off the receive
//! loop, at most `max_lookups` at once; the rest are dropped, each one counted as a
//! `dhcp.dropped` event. Loopback, no root. One test per binary: it installs the
//! process's event sink.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;
use ironpxe_core::{
    BootDecision, BootEvent, Booter, ClientArch, EventSink, FileId, FileRef, MacAddr,
};
use ironpxe_dhcp::{DhcpSocket, IpxeBinaries, ProxyConfig, ServerPort};

/// Knows nothing at once; asked to wait, it takes `delay` and then declines.
struct Slow {
    delay: Duration,
    waits: AtomicUsize,
}

impl Booter for Slow {
    fn decide(&self, mac: MacAddr, _: ClientArch, wait: Duration) -> BootDecision {
        if wait.is_zero() {
            return BootDecision::Pending;
        }
        self.waits.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay.min(wait));
        BootDecision::Ignore(format!("{mac} declined"))
    }
    fn file(&self, _: &FileId) -> Option<FileRef> {
        None
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<BootEvent>>);

impl EventSink for Events {
    fn event(&self, e: &BootEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

fn discover(n: u8) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x5107_0000 + u32::from(n),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[0x52, 0x54, 0, 0x5e, 0, n],
    );
    m.set_opcode(Opcode::BootRequest);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        0u16,
    )));
    m.to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_slots_are_dropped_and_counted() {
    let events = Arc::new(Events::default());
    assert!(ironpxe_core::event::set_sink(events.clone()));
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sock = DhcpSocket::bind(ServerPort::Dhcp, port, None, Ipv4Addr::UNSPECIFIED).unwrap();
    let booter = Arc::new(Slow {
        delay: Duration::from_secs(2),
        waits: AtomicUsize::new(0),
    });
    let cfg = ProxyConfig {
        binaries: IpxeBinaries::default().with(ironpxe_core::IpxeRole::Bios, "undionly.kpxe"),
        lookup_wait: Duration::from_secs(3),
        max_lookups: 2,
        ..ProxyConfig::default()
    };
    tokio::spawn(ironpxe_dhcp::serve(
        vec![sock],
        cfg,
        booter.clone(),
        std::future::pending(),
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in 1..=6 {
        client.send_to(&discover(n), ("127.0.0.1", port)).unwrap();
    }
    // Two packets take the slots; the other four are dropped at once, while the
    // two lookups are still running.
    let deadline = Instant::now() + Duration::from_secs(5);
    let dropped = loop {
        let dropped: Vec<MacAddr> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                BootEvent::DhcpDropped { mac, limit } => {
                    assert_eq!(*limit, 2);
                    Some(*mac)
                }
                _ => None,
            })
            .collect();
        if dropped.len() >= 4 || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dropped.len(), 4, "dropped: {dropped:?}");
    // Both waiting packets end with the booter's answer, as an ignore.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ignored = events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, BootEvent::DhcpIgnored { .. }))
            .count();
        if ignored == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ignored} ignore events, expected 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(booter.waits.load(Ordering::SeqCst), 2);
}
