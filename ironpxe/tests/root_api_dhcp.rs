//! Root: `ironpxe api` answers the first DISCOVER of a machine the API knows at
//! once, and a slow API delays only its own machine.
//!
//! Each test runs in a private network namespace of its own thread (`unshare`), so
//! ironpxe, the fake API and the relay-side client share a loopback that nothing
//! else sees. Packets are sent as a relay would (giaddr = 127.0.0.1), so ironpxe
//! answers unicast to 127.0.0.1:67, where the test listens.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

const FAST: [u8; 6] = [0x52, 0x54, 0x00, 0xd1, 0x00, 0x01];
const SLOW: [u8; 6] = [0x52, 0x54, 0x00, 0xd1, 0x00, 0x02];
const DHCP_PORT: u16 = 1067;
const PXE_PORT: u16 = 4011;
const HTTP_PORT: u16 = 8080;
const TFTP_PORT: u16 = 1069;

/// A process started by this test, killed by PID when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Moves this thread into a new, empty network namespace with loopback up. Threads
/// and processes it starts from now on live there too.
fn private_network() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("this test needs root (CAP_SYS_ADMIN) for a private network namespace: unshare failed: {e}");
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run `ip` (apt-get install iproute2)");
    assert!(up.success(), "ip link set lo up failed");
}

/// A fake pixiecore API on 127.0.0.1: answers `/v1/boot/<mac>` after that MAC's
/// delay, 404 for others.
fn fake_api(answers: Vec<([u8; 6], Duration)>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let answers = answers.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                let hit = answers
                    .iter()
                    .find(|(m, _)| path.ends_with(&format!("/v1/boot/{}", mac_text(*m))));
                let (status, body) = match hit {
                    Some((m, delay)) => {
                        std::thread::sleep(*delay);
                        (
                            200,
                            format!(r#"{{"kernel": "/k", "cmdline": "m={}"}}"#, mac_text(*m)),
                        )
                    }
                    None => (404, "not found".to_string()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

fn start_ironpxe(api_port: u16, dir: &std::path::Path) -> Owned {
    let bios = dir.join("undionly.kpxe");
    std::fs::write(&bios, [0u8; 512]).unwrap();
    let log = std::fs::File::create(dir.join("ironpxe.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
        .args(["api", &format!("http://127.0.0.1:{api_port}")])
        .args(["--api-request-timeout", "5s"])
        .arg("--ipxe-bios")
        .arg(&bios)
        .args(["-l", "127.0.0.1", "-p", &HTTP_PORT.to_string()])
        .args(["--tftp-port", &TFTP_PORT.to_string()])
        .args(["--dhcp-port", &DHCP_PORT.to_string()])
        .args(["--pxe-port", &PXE_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ironpxe");
    let owned = Owned(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", HTTP_PORT)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ironpxe did not start listening; see {}",
            dir.join("ironpxe.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    owned
}

/// A relayed BIOS PXE DISCOVER.
fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::LOCALHOST,
        &mac,
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

/// Every reply that arrives within `within`, as (xid, elapsed since `t0`).
fn offers(relay: &UdpSocket, t0: Instant, within: Duration) -> Vec<(u32, Duration)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        relay
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok((n, _)) = relay.recv_from(&mut buf) else {
            break;
        };
        let m = Message::decode(&mut Decoder::new(&buf[..n])).expect("a DHCP reply");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        got.push((m.xid(), t0.elapsed()));
    }
    got
}

fn in_private_network(test: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        private_network();
        test();
    })
    .join();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn root_api_mode_answers_the_first_discover() {
    in_private_network(|| {
        let dir = tempfile::tempdir().unwrap();
        let api = fake_api(vec![(FAST, Duration::ZERO)]);
        let _ironpxe = start_ironpxe(api, dir.path());
        let relay = UdpSocket::bind("127.0.0.1:67").expect("bind 127.0.0.1:67");
        let t0 = Instant::now();
        relay
            .send_to(&discover(FAST, 0xfa57_0001), ("127.0.0.1", DHCP_PORT))
            .unwrap();
        // One DISCOVER and no retransmit: firmware would send its next one after 4 s.
        let got = offers(&relay, t0, Duration::from_secs(3));
        println!("offers: {got:?}");
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            [0xfa57_0001],
            "the first DISCOVER got no offer (ironpxe log: {})",
            std::fs::read_to_string(dir.path().join("ironpxe.log")).unwrap_or_default()
        );
    });
}

#[test]
fn root_a_slow_api_delays_only_its_own_machine() {
    in_private_network(|| {
        let dir = tempfile::tempdir().unwrap();
        let api = fake_api(vec![(SLOW, Duration::from_secs(3)), (FAST, Duration::ZERO)]);
        let _ironpxe = start_ironpxe(api, dir.path());
        let relay = UdpSocket::bind("127.0.0.1:67").expect("bind 127.0.0.1:67");
        let t0 = Instant::now();
        relay
            .send_to(&discover(SLOW, 0x5100_0001), ("127.0.0.1", DHCP_PORT))
            .unwrap();
        relay
            .send_to(&discover(FAST, 0xfa57_0002), ("127.0.0.1", DHCP_PORT))
            .unwrap();
        // The fast machine is answered while the slow one's lookup runs; the slow
        // one's first DISCOVER is not (its source took longer than the wait).
        let first = offers(&relay, t0, Duration::from_millis(3500));
        println!("first round: {first:?}");
        assert_eq!(
            first.iter().map(|g| g.0).collect::<Vec<_>>(),
            [0xfa57_0002],
            "expected only the fast machine's offer"
        );
        // The retransmit, as firmware sends it about 4 s later, is answered from
        // the cache.
        let t1 = Instant::now();
        relay
            .send_to(&discover(SLOW, 0x5100_0001), ("127.0.0.1", DHCP_PORT))
            .unwrap();
        let retry = offers(&relay, t1, Duration::from_secs(2));
        println!("retransmit: {retry:?}");
        assert_eq!(
            retry.iter().map(|g| g.0).collect::<Vec<_>>(),
            [0x5100_0001],
            "the slow machine's retransmit got no offer"
        );
    });
}
