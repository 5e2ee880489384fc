//! `ironpxe serve --config` on loopback (no root needed: every port is a free high
//! port on 127.0.0.1, except in the test that passes `-p 80` on purpose): flags given
//! on the command line beat the file, `[server] status_port` moves the status page,
//! and SIGTERM lets a download finish, refuses new connections, then exits 0 within
//! the shutdown timeout.

mod common;
use common::{free_tcp, free_udp, get};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ironpxe process of one test, killed (by its PID) if the test ends early.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `ironpxe serve --config FILE -l 127.0.0.1` with free UDP ports and `flags`.
    fn start(config: &Path, flags: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["-l", "127.0.0.1"])
            .args(["--tftp-port", &free_udp().to_string()])
            .args(["--dhcp-port", &free_udp().to_string()])
            .args(["--pxe-port", &free_udp().to_string()])
            .args(flags)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Server { child, log }
    }

    fn logged(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit, at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to this process (and only to it: by its PID).
    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }
}

fn wait_for(what: &str, timeout: Duration, server: &Server, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const MAC: &str = "52:54:00:00:00:01";

/// A directory with an iPXE binary, an 8 MB kernel and a config booting it for
/// [`MAC`]; `server` is the config's `[server]` section body.
fn setup(server: &str) -> (tempfile::TempDir, Vec<u8>, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("big-kernel"), &big).unwrap();
    std::fs::write(dir.join("undionly.kpxe"), b"ipxe").unwrap();
    let cfg = dir.join("ironpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\n{server}\n\n[ipxe]\nbios = \"undionly.kpxe\"\n\n\
             [[machines]]\nmac = \"{MAC}\"\nkernel = \"big-kernel\"\n"
        ),
    )
    .unwrap();
    (d, big, cfg)
}

/// Starts a download of the big kernel and reads only its first KiB.
fn start_download(http: u16) -> (TcpStream, Vec<u8>) {
    let (head, script) = get(http, &format!("/_/ipxe?arch=0&mac={MAC}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let script = String::from_utf8(script).unwrap();
    let id = &script.split("/_/file?name=").nth(1).expect("a file URL")[..32];
    let mut dl = TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(
        dl,
        "GET /_/file?name={id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = vec![0u8; 1024];
    dl.read_exact(&mut first).unwrap();
    (dl, first)
}

#[test]
fn status_port_in_the_file_moves_the_status_page() {
    let status = free_tcp();
    let (_d, _, cfg) = setup(&format!("status_port = {status}"));
    let http = free_tcp();
    let server = Server::start(&cfg, &["-p", &http.to_string()]);
    wait_for("the status port", Duration::from_secs(20), &server, || {
        TcpStream::connect(("127.0.0.1", status)).is_ok()
    });
    let (head, body) = get(status, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("ironpxe · boot status"));
    let (head, _) = get(status, "/api/v1/machines");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The boot server answers boot requests, and no longer the status page.
    let (head, _) = get(http, &format!("/_/ipxe?arch=0&mac={MAC}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = get(http, "/api/v1/machines");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn an_explicit_port_flag_beats_http_port_in_the_file_even_when_it_is_the_default() {
    let from_file = free_tcp();
    let (_d, _, cfg) = setup(&format!("http_port = {from_file}"));
    let mut server = Server::start(&cfg, &["-p", "80"]);
    // Either port 80 is served (as root, with 127.0.0.1:80 free), or ironpxe stops
    // because it cannot bind it. Either way it never uses the file's port.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(!status.success());
            std::thread::sleep(Duration::from_millis(200));
            let log = server.log_text();
            assert!(
                log.contains("cannot bind HTTP on tcp 127.0.0.1:80"),
                "{log}"
            );
            break;
        }
        if let Some(ready) = server.logged("ironpxe ready") {
            assert!(ready.contains("http=127.0.0.1:80 "), "{ready}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neither ready nor stopped; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", from_file)).is_err(),
        "the file's http_port is served although -p 80 was given"
    );
}

#[test]
fn sigterm_lets_a_download_finish_refuses_new_connections_and_exits_0() {
    let (_d, big, cfg) = setup("");
    let http = free_tcp();
    let mut server = Server::start(&cfg, &["-p", &http.to_string()]);
    wait_for("HTTP", Duration::from_secs(20), &server, || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    let (mut dl, first) = start_download(http);
    // An open status page (its live stream) does not hold up the shutdown.
    let mut live = TcpStream::connect(("127.0.0.1", http)).unwrap();
    // A read that never returns fails the test instead of hanging it.
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    dl.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(live, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    live.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    server.terminate();
    let asked = Instant::now();
    wait_for("shutting down", Duration::from_secs(10), &server, || {
        server.logged("shutting down").is_some()
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", http)).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a download in flight"
    );

    // Read the rest slowly: the download still completes, byte for byte.
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = dl.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = [first, rest].concat();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(all[split + 4..].len(), big.len());
    assert!(all[split + 4..] == big[..]);

    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running; log:\n{}", server.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    // It left once the download was done, not at the end of the 30 s timeout.
    assert!(asked.elapsed() < Duration::from_secs(25));
}

#[test]
fn shutdown_timeout_in_the_file_bounds_a_stalled_download() {
    let (_d, _, cfg) = setup("shutdown_timeout = \"1s\"");
    let http = free_tcp();
    let mut server = Server::start(&cfg, &["-p", &http.to_string()]);
    wait_for("HTTP", Duration::from_secs(20), &server, || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    // A client that stops reading: the transfer cannot finish.
    let (_dl, _) = start_download(http);
    server.terminate();
    let asked = Instant::now();
    let status = server
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running; log:\n{}", server.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        server.logged("still running after 1s").is_some(),
        "{}",
        server.log_text()
    );
}
