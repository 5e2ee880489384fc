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
//! Each test runs in a private network namespace of its own thread, so ironpxe's
//! ports are on a loopback nothing else sees. Needs the `ironpxe` binary built
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
