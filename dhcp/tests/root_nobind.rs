//! Root: the `--dhcp-no-bind` path on real interfaces, in a private network
//! namespace of the test's own thread (`unshare`).
//!
//! A veth pair: `nbsrv` holds 10.9.8.1/24 and runs the no-bind receive path; the
//! test writes whole Ethernet frames onto `nbcli` and captures what comes back. A
//! frame to the host's MAC carrying a packet for 10.9.9.9, an address the host does
//! not have, reaches the packet socket all the same; it must not be answered.

use std::cell::Cell;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use dhcproto::{Decodable, Decoder};
use ironpxe_core::{BootSpec, FileRef, IpxeRole, StaticBooter};
use ironpxe_dhcp::nobind::{build_ipv4_udp, parse_ipv4_udp};
use ironpxe_dhcp::{DhcpSocket, IpxeBinaries, ProxyConfig, ServerPort};
use nix::sys::socket::LinkAddr;
use socket2::{Domain, Protocol, Socket, Type};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 8, 1);
const BROADCAST: [u8; 6] = [0xff; 6];

/// Counts the allocations of the current thread, for the per-packet check.
struct Counting;

thread_local! {
    static ALLOCS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; the counter is a
// const-initialised thread local without a destructor, so touching it never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| {
            let (n, bytes) = c.get();
            c.set((n + 1, bytes + layout.size() as u64));
        });
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> (u64, u64) {
    ALLOCS.with(Cell::get)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread into a new network namespace with the veth pair `<p>srv`
/// (10.9.8.1/24) and `<p>cli` (no address). Threads started from here on live there.
fn private_network(p: &str) -> (String, String) {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("this test needs root (CAP_SYS_ADMIN) for a private network namespace: unshare failed: {e}");
    }
    let (srv, cli) = (format!("{p}srv"), format!("{p}cli"));
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", &srv, "type", "veth", "peer", "name", &cli]);
    ip(&["addr", "add", "10.9.8.1/24", "dev", &srv]);
    ip(&["link", "set", &srv, "up"]);
    ip(&["link", "set", &cli, "up"]);
    (srv, cli)
}

fn link(dev: &str) -> LinkAddr {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .find_map(|a| {
            (a.interface_name == dev)
                .then(|| a.address.as_ref()?.as_link_addr().copied())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no interface {dev}"))
}

/// A raw packet socket on `dev`: writes whole Ethernet frames, reads every IPv4 frame.
struct Wire {
    sock: Socket,
    mac: [u8; 6],
}

impl Wire {
    fn open(dev: &str) -> Wire {
        let proto = Protocol::from(i32::from(0x0800u16.to_be()));
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(proto)).unwrap();
        let l = link(dev);
        nix::sys::socket::bind(sock.as_raw_fd(), &l).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Wire {
            sock,
            mac: l.addr().unwrap(),
        }
    }

    /// Sends `payload` from 0.0.0.0:68 to `dst`:67 in a frame to `eth_dst`.
    fn send(&self, eth_dst: [u8; 6], dst: Ipv4Addr, payload: &[u8]) {
        let pkt = build_ipv4_udp(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(dst, 67),
            payload,
        )
        .unwrap();
        let frame = [&eth_dst[..], &self.mac, &[0x08, 0x00], &pkt].concat();
        assert_eq!(self.sock.send(&frame).unwrap(), frame.len());
    }

    /// Every UDP datagram to port 68 that arrives within `within`: (IP source, DHCP
    /// message).
    fn replies(&self, within: Duration) -> Vec<(SocketAddrV4, Message)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = (&self.sock).read(&mut buf) else {
                continue;
            };
            let frame = &buf[..n];
            if frame.len() < 14 || frame[6..12] == self.mac {
                continue; // our own frame
            }
            let Ok(d) = parse_ipv4_udp(&frame[14..]) else {
                continue;
            };
            if d.dst.port() != 68 {
                continue;
            }
            let m = Message::decode(&mut Decoder::new(d.payload)).expect("a DHCP reply");
            got.push((d.src, m));
        }
        got
    }
}

/// The captured SeaBIOS/iPXE DISCOVER with transaction id `xid`.
fn discover(xid: u32) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/dhcp/seabios-ipxe-rom-discover.bin");
    let mut b = std::fs::read(&path).unwrap();
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b
}

/// Packets to an address the data NIC does not have, or to another subnet's
/// broadcast, get nothing; those to its address, 255.255.255.255 and its subnet
/// broadcast are answered, and every answer names 10.9.8.1 as IP source, siaddr
/// and option 54.
#[test]
fn root_nobind_answers_only_packets_to_the_interface() {
    let (srv, cli) = private_network("nba");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sock = {
        let _g = rt.enter();
        DhcpSocket::no_bind(ServerPort::Dhcp, 67, Some(&srv), Ipv4Addr::UNSPECIFIED)
            .expect("a packet socket (needs CAP_NET_RAW)")
    };
    let booter = Arc::new(StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }));
    let cfg = ProxyConfig {
        binaries: IpxeBinaries::default().with(IpxeRole::Bios, "undionly.kpxe"),
        ..ProxyConfig::default()
    };
    rt.spawn(ironpxe_dhcp::serve(
        vec![sock],
        cfg,
        booter,
        std::future::pending(),
    ));
    let wire = Wire::open(&cli);
    let host = link(&srv).addr().unwrap();
    let sent = [
        (1, host, Ipv4Addr::new(10, 9, 9, 9)),
        (2, BROADCAST, Ipv4Addr::BROADCAST),
        (3, BROADCAST, Ipv4Addr::new(10, 9, 8, 255)),
        (4, host, SERVER_IP),
        (5, BROADCAST, Ipv4Addr::new(10, 9, 9, 255)),
        (6, BROADCAST, Ipv4Addr::new(10, 9, 9, 9)),
    ];
    // The receive path is up once a broadcast is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        wire.send(BROADCAST, Ipv4Addr::BROADCAST, &discover(0x100));
        if !wire.replies(Duration::from_millis(300)).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer to a broadcast DISCOVER"
        );
    }
    for (xid, eth, dst) in sent {
        wire.send(eth, dst, &discover(xid));
    }
    let replies = wire.replies(Duration::from_secs(2));
    let mut answered: Vec<u32> = replies.iter().map(|(_, m)| m.xid()).collect();
    answered.sort_unstable();
    answered.dedup();
    for (src, m) in &replies {
        assert_eq!((*src.ip(), src.port()), (SERVER_IP, 67), "xid {}", m.xid());
        assert_eq!(m.siaddr(), SERVER_IP, "xid {}", m.xid());
        assert_eq!(
            m.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER_IP)),
            "xid {}",
            m.xid()
        );
    }
    assert_eq!(answered, [2, 3, 4], "replies: {replies:?}");
}

/// The no-bind receive path allocates nothing per packet: 20 packets cost fewer
/// bytes than one 64 KiB buffer (in practice, nothing).
#[test]
fn root_nobind_receive_does_not_allocate_per_packet() {
    let (srv, cli) = private_network("nbm");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = {
        let _g = rt.enter();
        DhcpSocket::no_bind(ServerPort::Dhcp, 67, Some(&srv), Ipv4Addr::UNSPECIFIED)
            .expect("a packet socket (needs CAP_NET_RAW)")
    };
    let wire = Wire::open(&cli);
    let payload = discover(7);
    let mut buf = vec![0u8; 4096];
    let recv = |buf: &mut Vec<u8>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), sock.recv(buf))
                .await
                .expect("a packet within 5 s")
                .unwrap()
        })
    };
    // The first packet reads the interface's addresses.
    wire.send(BROADCAST, Ipv4Addr::BROADCAST, &payload);
    recv(&mut buf);
    const N: u64 = 20;
    for _ in 0..N {
        wire.send(BROADCAST, Ipv4Addr::BROADCAST, &payload);
    }
    let before = allocs();
    for _ in 0..N {
        let (n, meta) = recv(&mut buf);
        assert_eq!(&buf[..n], &payload[..]);
        assert_eq!(meta.local_ip, SERVER_IP);
    }
    let (count, bytes) = (allocs().0 - before.0, allocs().1 - before.1);
    eprintln!("{N} packets received: {count} allocations, {bytes} bytes");
    assert!(
        bytes < 65536,
        "{N} packets allocated {count} times, {bytes} bytes"
    );
}
