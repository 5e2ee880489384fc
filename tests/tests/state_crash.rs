//! Root: crash safety of the state database. ironpxe is killed with SIGKILL in the
//! middle of a burst of state changes; after a restart on the same `--state-dir`,
//! every change it acknowledged is there.
//!
//! - install state: a burst of `POST .../installed` (no token), then a burst of
//!   `POST .../reinstall` (Bearer token), each cut by `kill -9`;
//! - DHCP leases: a burst of DISCOVER/REQUEST exchanges with the built-in DHCP
//!   server (`[dhcp] mode = "server"`), cut by `kill -9`; every ACKed address is
//!   still the client's after the restart.
//!
//! Each test runs in a private network namespace of its own thread (and the threads
//! it starts), so ironpxe's ports are on a loopback nothing else sees. Needs the `ironpxe` binary built
//! (`cargo build -p ironpxe`) and root.

mod install_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use install_common::{dummy_kernel, get_json, http, private_network, Server};

const HTTP_PORT: u16 = 8080;
const STATUS_PORT: u16 = 8081;
const TOKEN: &str = "crash-test-token";

fn mac(i: usize) -> String {
    format!("52:54:00:cc:{:02x}:{:02x}", i >> 8, i & 0xff)
}

fn server_args(cfg: &Path, state: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--config".into(),
        cfg.display().to_string(),
        "-l".into(),
        "127.0.0.1".into(),
        "-p".into(),
        HTTP_PORT.to_string(),
        "--status-port".into(),
        STATUS_PORT.to_string(),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

/// Sends `path(i)` for every machine from `threads` threads at once, and kills the
/// server after `kill_after` acknowledgements. Returns the acknowledged machines and
/// how many requests got no answer.
fn burst(
    server: &mut Server,
    machines: usize,
    threads: usize,
    kill_after: usize,
    request: impl Fn(usize) -> std::io::Result<(u16, String)> + Send + Sync + 'static,
) -> (BTreeSet<usize>, usize) {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let request = Arc::new(request);
    let mut handles = Vec::new();
    for t in 0..threads {
        let (acked, stop, request) = (acked.clone(), stop.clone(), request.clone());
        handles.push(std::thread::spawn(move || {
            let mut unanswered = 0;
            for i in (t..machines).step_by(threads) {
                if stop.load(Ordering::SeqCst) {
                    unanswered += 1;
                    continue;
                }
                match request(i) {
                    Ok((200, _)) => {
                        acked.lock().unwrap().insert(i);
                    }
                    Ok((code, body)) => panic!("machine {i}: HTTP {code}: {body}"),
                    Err(_) => {
                        // The server is gone: this change was not acknowledged.
                        stop.store(true, Ordering::SeqCst);
                        unanswered += 1;
                    }
                }
            }
            unanswered
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < kill_after {
        assert!(Instant::now() < deadline, "the burst did not get going");
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    let unanswered: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let acked = acked.lock().unwrap().clone();
    (acked, unanswered)
}

/// Every machine's install state, from the restarted server.
fn install_states(port: u16) -> BTreeMap<String, String> {
    let v = get_json(port, "/api/v1/installs");
    assert_eq!(v["state_kept"], true);
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mac"].as_str().unwrap().to_string(),
                m["install"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn root_install_state_survives_kill_9_during_a_burst() {
    private_network();
    const MACHINES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dummy_kernel(dir.path());
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let mut cfg = format!(
        "[server]\nadmin_token_file = \"token\"\n\n[profiles.inst]\nkernel = \"{}\"\nonce = true\n",
        kernel.display()
    );
    for i in 0..MACHINES {
        cfg.push_str(&format!(
            "\n[[machines]]\nmac = \"{}\"\nname = \"node-{i}\"\nprofile = \"inst\"\n",
            mac(i)
        ));
    }
    let cfg_path = dir.path().join("ironpxe.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("ironpxe.log");
    let args = server_args(&cfg_path, &state);

    // 1. Installers report success, on the boot port, without a token.
    let mut server = Server::start(&args, &log, HTTP_PORT);
    let (installed, unanswered) = burst(&mut server, MACHINES, 8, 100, |i| {
        http(
            HTTP_PORT,
            "POST",
            &format!("/api/v1/machines/{}/installed", mac(i)),
            &[],
            "",
        )
    });
    println!(
        "installed burst: {} acknowledged, {unanswered} unanswered when killed",
        installed.len()
    );
    assert!(
        unanswered > 0,
        "the kill came after the burst ended; nothing was tested"
    );
    let mut server = Server::start(&args, &log, STATUS_PORT);
    let states = install_states(STATUS_PORT);
    let lost: Vec<String> = installed
        .iter()
        .map(|&i| mac(i))
        .filter(|m| states.get(m).map(String::as_str) != Some("installed"))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged installs lost after kill -9: {lost:?}\n{}",
        server.tail()
    );

    // 2. Reinstalls of the installed machines, with the admin token.
    let bearer = format!("Bearer {TOKEN}");
    let targets: Vec<usize> = installed.iter().copied().collect();
    let t2 = targets.clone();
    let (reset, unanswered) = burst(&mut server, targets.len(), 8, targets.len() / 4, move |k| {
        http(
            STATUS_PORT,
            "POST",
            &format!("/api/v1/machines/{}/reinstall", mac(t2[k])),
            &[("Authorization", &bearer)],
            "",
        )
    });
    println!(
        "reinstall burst: {} acknowledged, {unanswered} unanswered when killed",
        reset.len()
    );
    assert!(
        unanswered > 0,
        "the kill came after the reinstall burst ended"
    );
    let _server = Server::start(&args, &log, STATUS_PORT);
    let states = install_states(STATUS_PORT);
    let lost: Vec<String> = reset
        .iter()
        .map(|&k| mac(targets[k]))
        .filter(|m| states.get(m).map(String::as_str) != Some("install"))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged reinstalls lost after kill -9: {lost:?}"
    );
}

/// A DHCP client speaking through a relay on 127.0.0.1: requests go to ironpxe's
/// DHCP port, replies come back to the relay's port 67.
struct Relay {
    sock: std::net::UdpSocket,
    server_port: u16,
}

impl Relay {
    fn new(server_port: u16) -> Relay {
        let sock = std::net::UdpSocket::bind("127.0.0.1:67").expect("bind 127.0.0.1:67");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        Relay { sock, server_port }
    }

    fn exchange(
        &self,
        mac: [u8; 6],
        xid: u32,
        kind: dhcproto::v4::MessageType,
        opts: Vec<dhcproto::v4::DhcpOption>,
    ) -> Option<dhcproto::v4::Message> {
        use dhcproto::v4::{DhcpOption, HType, Message, Opcode};
        use dhcproto::{Decodable, Decoder, Encodable};
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_xid(xid)
            .set_chaddr(&mac)
            .set_hops(1)
            .set_giaddr(std::net::Ipv4Addr::LOCALHOST);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        self.sock
            .send_to(&m.to_vec().unwrap(), ("127.0.0.1", self.server_port))
            .ok()?;
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = self.sock.recv_from(&mut buf).ok()?;
            let r = Message::decode(&mut Decoder::new(&buf[..n])).ok()?;
            if r.xid() == xid {
                return Some(r);
            }
        }
    }

    /// DISCOVER, REQUEST: the ACKed address, or `None` when the server did not
    /// acknowledge (it is gone).
    fn lease(&self, mac: [u8; 6], xid: u32) -> Option<std::net::Ipv4Addr> {
        use dhcproto::v4::{DhcpOption, MessageType};
        let offer = self.exchange(mac, xid, MessageType::Discover, vec![])?;
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let ack = self.exchange(
            mac,
            xid,
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(std::net::Ipv4Addr::LOCALHOST),
                DhcpOption::RequestedIpAddress(offer.yiaddr()),
            ],
        )?;
        (ack.opts().msg_type() == Some(MessageType::Ack)).then_some(ack.yiaddr())
    }
}

#[test]
fn root_dhcp_leases_survive_kill_9_during_a_burst() {
    private_network();
    const DHCP_PORT: u16 = 1067;
    const CLIENTS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dummy_kernel(dir.path());
    let cfg = dir.path().join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ninterface = \"lo\"\n\n[dhcp]\nmode = \"server\"\nsubnet = \"127.0.0.0/8\"\n\
             pool = \"127.0.16.1-127.0.31.254\"\nlease_time = \"1h\"\n\n\
             [profiles.p]\nkernel = \"{}\"\n",
            kernel.display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("ironpxe.log");
    let mut args = server_args(&cfg, &state);
    // The relay's replies go to port 67, so the server listens elsewhere; there is
    // no other DHCP server on this private loopback to probe for.
    args.extend([
        "--dhcp-port".into(),
        DHCP_PORT.to_string(),
        "--force".into(),
    ]);
    let mut server = Server::start(&args, &log, STATUS_PORT);
    let relay = Relay::new(DHCP_PORT);
    let acked: Arc<Mutex<Vec<(usize, std::net::Ipv4Addr)>>> = Arc::default();
    let client = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            // The private namespace is per thread: this one joins the test's.
            let mut unanswered = 0;
            for i in 0..CLIENTS {
                match relay.lease(client_mac(i), 0x5000_0000 + i as u32) {
                    Some(ip) => acked.lock().unwrap().push((i, ip)),
                    None => {
                        unanswered += 1;
                        break;
                    }
                }
            }
            unanswered
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 150 {
        assert!(
            Instant::now() < deadline,
            "the DHCP burst did not get going:\n{}",
            server.tail()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    server.kill9();
    let unanswered = client.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    println!(
        "lease burst: {} acknowledged, killed with {unanswered} exchange(s) cut",
        acked.len()
    );
    assert!(
        unanswered > 0,
        "the kill came after the burst ended; nothing was tested"
    );

    let _server = Server::start(&args, &log, STATUS_PORT);
    let v = get_json(STATUS_PORT, "/api/v1/leases");
    let stored: BTreeMap<String, String> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mac"].as_str().unwrap().to_string(),
                l["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lost: Vec<String> = acked
        .iter()
        .filter(|(i, ip)| stored.get(&mac_text(client_mac(*i))) != Some(&ip.to_string()))
        .map(|(i, ip)| format!("{} {ip}", mac_text(client_mac(*i))))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged leases lost after kill -9: {lost:?}"
    );
}

fn client_mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xdd, (i >> 8) as u8, i as u8]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
