//! Helpers of the install-state and DHCP server tests: a private network namespace
//! for the test's thread, the ironpxe process (killed by PID when dropped), and a
//! small HTTP client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Moves this thread into a new, empty network namespace with loopback up. Threads
/// and processes it starts from now on live there too; nothing it does reaches the
/// host's network.
pub(crate) fn private_network() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!(
            "this test needs root (CAP_SYS_ADMIN) for a private network namespace: unshare failed: {e}"
        );
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run `ip` (apt-get install iproute2)");
    assert!(up.success(), "ip link set lo up failed");
}

/// An ironpxe process started by the test, killed by PID when dropped.
pub(crate) struct Server {
    pub child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts `ironpxe ARGS`, logging to `log`, and waits until TCP `port` on
    /// 127.0.0.1 accepts connections (or panics with the log's end).
    pub(crate) fn start(args: &[String], log: &Path, port: u16) -> Server {
        let bin = ironpxe_lab::ironpxe_bin().expect("the ironpxe binary (cargo build -p ironpxe)");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start ironpxe");
        let mut s = Server {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("ironpxe exited ({st}) during start-up:\n{}", s.tail());
            }
            assert!(
                Instant::now() < deadline,
                "ironpxe did not listen on {port} within 30 s:\n{}",
                s.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// SIGKILL, as a crash or power loss would stop it, and reaps it.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of its log.
    pub(crate) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request with `Connection: close`: the status code and the body.
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// `GET path` as JSON (panics on anything else).
pub(crate) fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http(port, "GET", path, &[], "").expect("GET");
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A file that stands in for a kernel (serving needs one; nothing boots it here).
pub(crate) fn dummy_kernel(dir: &Path) -> PathBuf {
    let k = dir.join("vmlinuz");
    std::fs::write(&k, b"not a kernel").unwrap();
    k
}
