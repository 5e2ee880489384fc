use std::time::Duration;

use super::*;
use crate::decide::ServerPort;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const NODE: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
const POOL_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 1]);
const POOL_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 2]);

fn settings(pool: bool) -> DhcpServerSettings {
    DhcpServerSettings {
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix_len: 24,
        pool: pool.then_some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102))),
        lease_time: Duration::from_secs(3600),
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
        reservations: vec![
            Reservation {
                mac: NODE,
                ip: Ipv4Addr::new(10, 0, 0, 11),
                hostname: Some("node-01".into()),
            },
            // A reservation inside the pool: the pool skips it.
            Reservation {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 9]),
                ip: Ipv4Addr::new(10, 0, 0, 100),
                hostname: None,
            },
        ],
    }
}

fn meta() -> RecvMeta {
    RecvMeta {
        local_ip: SERVER,
        ifindex: 3,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

fn msg(mac: MacAddr, kind: MessageType, opts: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(0x1234)
        .set_chaddr(&mac.octets());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

fn offer(core: &mut ServerCore, mac: MacAddr, now: u64) -> ServerReply {
    match core.handle(&msg(mac, MessageType::Discover, vec![]), &meta(), now) {
        Decision::Reply(r) => r,
        other => panic!("no offer: {other:?}"),
    }
}

/// DISCOVER, REQUEST (selecting), store: the address the client ends up with.
fn lease(core: &mut ServerCore, mac: MacAddr, now: u64) -> Lease {
    let o = offer(core, mac, now);
    let req = msg(
        mac,
        MessageType::Request,
        vec![
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::RequestedIpAddress(o.yiaddr),
        ],
    );
    match core.handle(&req, &meta(), now) {
        Decision::Commit { lease, reply } => {
            assert_eq!(reply.kind, MessageType::Ack);
            assert_eq!(reply.yiaddr, lease.ip);
            core.committed(lease.clone());
            lease
        }
        other => panic!("no ACK: {other:?}"),
    }
}

#[test]
fn a_reservation_gets_its_address_host_name_and_options() {
    let mut core = ServerCore::new(settings(false), vec![]);
    let o = offer(&mut core, NODE, 0);
    assert_eq!(o.kind, MessageType::Offer);
    assert_eq!(o.yiaddr, Ipv4Addr::new(10, 0, 0, 11));
    assert_eq!(o.dest, Destination::Broadcast { ifindex: 3 });
    let opts = o.message.opts();
    assert_eq!(
        opts.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node-01".into()))
    );
    assert_eq!(
        opts.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opts.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]))
    );
    assert_eq!(
        opts.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    let l = lease(&mut core, NODE, 0);
    assert!(l.reserved);
    assert_eq!(l.expires_ms, 3_600_000);
    assert_eq!(l.hostname.as_deref(), Some("node-01"));
}

#[test]
fn pool_clients_get_free_addresses_and_keep_theirs() {
    let mut core = ServerCore::new(settings(true), vec![]);
    // .100 is reserved for another machine: the pool starts at .101.
    let a = lease(&mut core, POOL_A, 0);
    assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 101));
    assert!(!a.reserved);
    // An outstanding offer holds its address too.
    let b = offer(&mut core, POOL_B, 0);
    assert_eq!(b.yiaddr, Ipv4Addr::new(10, 0, 0, 102));
    // The pool is full for a third client.
    let c = MacAddr([0x52, 0x54, 0, 0, 1, 3]);
    assert!(matches!(
        core.handle(&msg(c, MessageType::Discover, vec![]), &meta(), 0),
        Decision::Silent(Silence::PoolFull(..))
    ));
    // A returning client gets its address again.
    assert_eq!(offer(&mut core, POOL_A, 1000).yiaddr, a.ip);
}

#[test]
fn without_a_pool_unknown_macs_get_nothing() {
    let mut core = ServerCore::new(settings(false), vec![]);
    assert!(matches!(
        core.handle(&msg(POOL_A, MessageType::Discover, vec![]), &meta(), 0),
        Decision::Silent(Silence::Unknown)
    ));
    // An INIT-REBOOT of a stranger is left to whoever knows it.
    let req = msg(
        POOL_A,
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50))],
    );
    assert!(matches!(
        core.handle(&req, &meta(), 0),
        Decision::Silent(Silence::Unknown)
    ));
}

#[test]
fn choosing_another_server_drops_our_offer() {
    let mut core = ServerCore::new(settings(true), vec![]);
    let o = offer(&mut core, POOL_A, 0);
    let req = msg(
        POOL_A,
        MessageType::Request,
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 150)),
        ],
    );
    assert!(matches!(
        core.handle(&req, &meta(), 0),
        Decision::Silent(Silence::OtherServer(_))
    ));
    // Its address is free for the next client.
    assert_eq!(offer(&mut core, POOL_B, 0).yiaddr, o.yiaddr);
}

#[test]
fn a_wrong_address_is_naked_and_renewals_are_unicast() {
    let mut core = ServerCore::new(settings(true), vec![]);
    let l = lease(&mut core, NODE, 0);
    // INIT-REBOOT with an address that is not its own.
    let req = msg(
        NODE,
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 12))],
    );
    match core.handle(&req, &meta(), 0) {
        Decision::Reply(r) => {
            assert_eq!(r.kind, MessageType::Nak);
            assert!(r.nak_reason.unwrap().contains("10.0.0.11 is"));
            assert!(r.message.flags().broadcast());
        }
        other => panic!("{other:?}"),
    }
    // RENEWING: ciaddr, no option 50, no server id.
    let mut renew = msg(NODE, MessageType::Request, vec![]);
    renew.set_ciaddr(l.ip);
    match core.handle(&renew, &meta(), 10_000) {
        Decision::Commit { lease, reply } => {
            assert_eq!(lease.expires_ms, 10_000 + 3_600_000);
            assert_eq!(
                reply.dest,
                Destination::Unicast(SocketAddrV4::new(l.ip, 68))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn relayed_requests_go_back_to_the_relay_and_foreign_relays_are_ignored() {
    let mut core = ServerCore::new(settings(false), vec![]);
    let mut m = msg(NODE, MessageType::Discover, vec![]);
    m.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    match core.handle(&m, &meta(), 0) {
        Decision::Reply(r) => assert_eq!(
            r.dest,
            Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 67))
        ),
        other => panic!("{other:?}"),
    }
    m.set_giaddr(Ipv4Addr::new(192, 168, 1, 1));
    assert!(matches!(
        core.handle(&m, &meta(), 0),
        Decision::Silent(Silence::ForeignRelay(_))
    ));
}

#[test]
fn leases_loaded_from_the_store_are_kept_and_expired_ones_reused_last() {
    let stored = Lease {
        mac: POOL_A,
        ip: Ipv4Addr::new(10, 0, 0, 101),
        expires_ms: 5_000,
        hostname: None,
        reserved: false,
    };
    let mut core = ServerCore::new(settings(true), vec![stored.clone()]);
    // While valid, nobody else gets it.
    assert_eq!(
        offer(&mut core, POOL_B, 1_000).yiaddr,
        Ipv4Addr::new(10, 0, 0, 102)
    );
    // Its owner gets it back.
    assert_eq!(offer(&mut core, POOL_A, 1_000).yiaddr, stored.ip);
    // Expired, and every never-used address taken: the expired one is reused.
    let mut core = ServerCore::new(settings(true), vec![stored.clone()]);
    lease(&mut core, POOL_B, 10_000);
    let c = MacAddr([0x52, 0x54, 0, 0, 1, 3]);
    assert_eq!(offer(&mut core, c, 10_000).yiaddr, stored.ip);
}

#[test]
fn release_and_decline() {
    let mut core = ServerCore::new(settings(true), vec![]);
    let a = lease(&mut core, POOL_A, 0);
    let mut rel = msg(POOL_A, MessageType::Release, vec![]);
    rel.set_ciaddr(a.ip);
    assert!(matches!(core.handle(&rel, &meta(), 1), Decision::Forget { mac } if mac == POOL_A));
    core.forgotten(&POOL_A);
    assert!(core.table().lease(&POOL_A).is_none());
    let a = lease(&mut core, POOL_A, 2);
    let dec = msg(
        POOL_A,
        MessageType::Decline,
        vec![DhcpOption::RequestedIpAddress(a.ip)],
    );
    assert!(matches!(
        core.handle(&dec, &meta(), 3),
        Decision::Forget { .. }
    ));
    core.forgotten(&POOL_A);
    // The declined address is kept from everyone for a while.
    assert_ne!(offer(&mut core, POOL_B, 4).yiaddr, a.ip);
}

#[test]
fn inform_gets_options_without_an_address() {
    let mut core = ServerCore::new(settings(false), vec![]);
    let mut m = msg(POOL_A, MessageType::Inform, vec![]);
    m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    match core.handle(&m, &meta(), 0) {
        Decision::Reply(r) => {
            assert_eq!(r.kind, MessageType::Ack);
            assert_eq!(r.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
            assert!(r.message.opts().get(OptionCode::AddressLeaseTime).is_none());
            assert_eq!(
                r.dest,
                Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn servers_replies_and_junk_are_ignored() {
    let mut core = ServerCore::new(settings(true), vec![]);
    let mut m = msg(NODE, MessageType::Offer, vec![]);
    m.set_opcode(Opcode::BootReply);
    assert!(matches!(
        core.handle(&m, &meta(), 0),
        Decision::Silent(Silence::NotForUs(_))
    ));
    let mut m = msg(NODE, MessageType::Discover, vec![]);
    m.set_htype(HType::from(6u8));
    assert!(matches!(
        core.handle(&m, &meta(), 0),
        Decision::Silent(Silence::NotForUs(_))
    ));
}
