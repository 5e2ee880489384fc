//! The `ironpxe` binary on loopback against input it must not trust: a command line
//! iPXE cannot carry (refused at start, not with a 500 for every script), and API
//! answers naming local files (`--api-file-root`) or text iPXE cannot carry
//! (refused for that machine only).

mod common;
use common::{free_tcp, free_udp, get};

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running ironpxe, killed (by its PID) when dropped; its stderr is collected.
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
    /// `ironpxe ARGS -l 127.0.0.1` with free ports and a dummy BIOS binary in `dir`.
    fn start(dir: &Path, args: &[&str], http: u16) -> Server {
        let bios = dir.join("undionly.kpxe");
        std::fs::write(&bios, b"ipxe").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
            .args(args)
            .arg("--ipxe-bios")
            .arg(&bios)
            .args(["-l", "127.0.0.1", "-p", &http.to_string()])
            .args(["--tftp-port", &free_udp().to_string()])
            .args(["--dhcp-port", &free_udp().to_string()])
            .args(["--pxe-port", &free_udp().to_string()])
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Server { child, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the process exits (its code) or `timeout` passes (`None`).
    fn exit_within(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn wait_http(&mut self, http: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "ironpxe exited:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "not listening; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first log line holding every one of `needles`, waiting up to 5 s.
    fn logged(&self, needles: &[&str]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn boot_refuses_a_cmdline_ipxe_cannot_carry_at_start() {
    let d = tempfile::tempdir().unwrap();
    let kernel = d.path().join("vmlinuz");
    std::fs::write(&kernel, b"k").unwrap();
    let k = kernel.display().to_string();
    let http = free_tcp();
    let mut server = Server::start(d.path(), &["boot", &k, "--cmdline", "x=${y}"], http);
    let code = server.exit_within(Duration::from_secs(20));
    let log = server.log_text();
    assert_eq!(
        code,
        Some(1),
        "ironpxe started with a cmdline iPXE cannot carry:\n{log}"
    );
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(
        log.contains(r#"--cmdline "x=${y}": '}' at byte 5 cannot be passed through iPXE"#),
        "{log}"
    );

    // What iPXE can carry starts, and is served exactly.
    let mut server = Server::start(
        d.path(),
        &["boot", &k, "--cmdline", "x=${ y} a=$b #c || d"],
        http,
    );
    server.wait_http(http);
    let (head, _) = get(http, "/_/ipxe?mac=52:54:00:00:00:01&arch=0");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Writes the API answer of `mac` into the tree `api`.
fn answer(api: &Path, mac: &str, json: &str) {
    let dir = api.join("v1/boot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(mac), json).unwrap();
}

/// The file URLs a script names, as paths.
fn file_paths(script: &str) -> Vec<String> {
    script
        .split("/_/file?")
        .skip(1)
        .map(|rest| format!("/_/file?{}", rest.split_whitespace().next().unwrap()))
        .collect()
}

#[test]
fn api_file_root_keeps_file_answers_inside_the_tree() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("netboot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("vmlinuz"), b"inside").unwrap();
    std::fs::write(d.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(d.path().join("secret"), root.join("escape")).unwrap();
    let api = d.path().join("api");
    let (inside, outside, link) = (
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "52:54:00:00:00:03",
    );
    let url = |p: &Path| format!("file://{}", p.display());
    answer(
        &api,
        inside,
        &format!(r#"{{"kernel": "{}"}}"#, url(&root.join("vmlinuz"))),
    );
    answer(
        &api,
        outside,
        &format!(r#"{{"kernel": "{}"}}"#, url(&d.path().join("secret"))),
    );
    answer(
        &api,
        link,
        &format!(r#"{{"kernel": "{}"}}"#, url(&root.join("escape"))),
    );

    let http = free_tcp();
    let api_url = url(&api);
    let root_arg = root.display().to_string();
    let mut server = Server::start(
        d.path(),
        &["api", &api_url, "--api-file-root", &root_arg],
        http,
    );
    server.wait_http(http);

    let (head, script) = get(http, &format!("/_/ipxe?mac={inside}&arch=0"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let paths = file_paths(&String::from_utf8(script).unwrap());
    let (head, body) = get(http, &paths[0]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"inside");

    for (mac, path) in [
        (outside, d.path().join("secret")),
        (link, root.join("escape")),
    ] {
        let (head, body) = get(http, &format!("/_/ipxe?mac={mac}&arch=0"));
        assert!(
            head.starts_with("HTTP/1.1 404"),
            "{mac} was booted from {}: {head}",
            path.display()
        );
        assert!(String::from_utf8_lossy(&body).contains("outside the file root"));
        let path = path.display().to_string();
        let line = server
            .logged(&["api.error", mac, &path, "outside the file root"])
            .unwrap_or_else(|| {
                panic!(
                    "no log line naming {mac} and {path}:\n{}",
                    server.log_text()
                )
            });
        assert!(line.contains("--api-file-root"), "{line}");
    }
}

#[test]
fn an_api_answer_ipxe_cannot_carry_is_refused_for_that_machine_only() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("vmlinuz"), b"k").unwrap();
    let api = d.path().join("api");
    let kernel = format!("file://{}", d.path().join("vmlinuz").display());
    let (bad, good) = ("52:54:00:00:00:0b", "52:54:00:00:00:0c");
    answer(
        &api,
        bad,
        &format!(r#"{{"kernel": "{kernel}", "cmdline": "x=${{y}}"}}"#),
    );
    answer(
        &api,
        good,
        &format!(r#"{{"kernel": "{kernel}", "cmdline": "x=${{ y}}"}}"#),
    );
    let http = free_tcp();
    let api_url = format!("file://{}", api.display());
    let mut server = Server::start(d.path(), &["api", &api_url], http);
    server.wait_http(http);

    let (head, _) = get(http, &format!("/_/ipxe?mac={bad}&arch=0"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let line = server
        .logged(&["api.error", bad, "cannot be passed through iPXE"])
        .unwrap_or_else(|| panic!("no log line for {bad}:\n{}", server.log_text()));
    assert!(line.contains("byte 5"), "{line}");
    let (head, _) = get(http, &format!("/_/ipxe?mac={good}&arch=0"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
