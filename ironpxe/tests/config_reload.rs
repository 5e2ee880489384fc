//! `ironpxe serve --config` on loopback (no root): per-MAC scripts, `boot = "local"`,
//! reload on file change and on SIGHUP, a bad file refused while the old one keeps
//! serving, and a download running across a reload finishing intact.

mod common;
use common::{free_tcp, free_udp, get};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironpxe_core::urls::{BootRoute, MachineQuery};
use ironpxe_core::ClientArch;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(port: u16, mac: &str) -> (String, String) {
    let script = BootRoute::Script(MachineQuery {
        mac: mac.parse().unwrap(),
        arch: ClientArch::Bios,
    });
    let (head, body) = get(port, &script.to_string());
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// The hex bytes of `set ironpxe-cmdline0:hex`, decoded, or the literal kernel args.
fn cmdline_of(script: &str) -> String {
    if let Some(l) = script
        .lines()
        .find(|l| l.starts_with("set ironpxe-cmdline0:hex "))
    {
        let hex = l.rsplit(' ').next().unwrap();
        let bytes: Vec<u8> = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        return String::from_utf8(bytes).unwrap();
    }
    let k = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .expect("kernel line");
    let args = k.split(' ').skip(4).collect::<Vec<_>>().join(" ");
    args.trim_end_matches(" || goto ironpxe-failed").to_string()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_answers_per_mac_and_reloads() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("big-kernel"), &big).unwrap();
    std::fs::write(dir.join("k2"), b"k2").unwrap();
    std::fs::write(dir.join("undionly.kpxe"), b"ipxe").unwrap();
    let cfg = dir.join("ironpxe.toml");
    let v1 = r#"
[ipxe]
bios = "undionly.kpxe"

[profiles.p]
kernel = "big-kernel"
cmdline = "console=ttyS0 gen=1"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "p"

[[machines]]
mac = "52:54:00:00:00:02"
boot = "local"
"#;
    std::fs::write(&cfg, v1).unwrap();
    let http = free_tcp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .args(["-l", "127.0.0.1", "-p", &http.to_string()])
        .args(["--tftp-port", &free_udp().to_string()])
        .args(["--dhcp-port", &free_udp().to_string()])
        .args(["--pxe-port", &free_udp().to_string()])
        .env("NO_COLOR", "1")
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
    let _server = Server(child);
    let logged = |needle: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };
    wait_for("HTTP", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });

    let (head, s) = script(http, "52:54:00:00:00:01");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{s}");
    assert_eq!(cmdline_of(&s), "console=ttyS0 gen=1");
    let big_url = format!(
        "/_/file?{}",
        s.split("/_/file?")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
    );

    let (head, s) = script(http, "52:54:00:00:00:02");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        s.contains("boots from its next boot device\nsanboot --no-describe --drive 0x80 ||\n"),
        "{s}"
    );
    let (head, _) = script(http, "52:54:00:00:00:03");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Start a download of the big kernel and read only its first bytes.
    let mut dl = TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(
        dl,
        "GET {big_url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 1024];
    dl.read_exact(&mut first).unwrap();

    // A new file that no longer references the big kernel: reloaded on change.
    let v2 = v1.replace("big-kernel", "k2").replace("gen=1", "gen=2");
    std::fs::write(&cfg, &v2).unwrap();
    wait_for("config.reloaded", Duration::from_secs(10), || {
        logged("event=\"config.reloaded\"") + logged("event=config.reloaded") >= 1
    });
    assert_eq!(
        cmdline_of(&script(http, "52:54:00:00:00:01").1),
        "console=ttyS0 gen=2"
    );

    // The download that started before the reload finishes, byte for byte.
    let mut rest = Vec::new();
    dl.read_to_end(&mut rest).unwrap();
    let all = [&first[..], &rest[..]].concat();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(all[split + 4..].len(), big.len());
    assert!(all[split + 4..] == big[..]);

    // A bad file is refused with its reason, and the previous one keeps serving.
    std::fs::write(&cfg, v2.replace("52:54:00:00:00:02", "52:54:00:00:00:01")).unwrap();
    wait_for("config.rejected", Duration::from_secs(10), || {
        logged("config.rejected") >= 1
    });
    let rejected = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("config.rejected"))
        .cloned()
        .unwrap();
    assert!(
        rejected.contains("duplicate MAC 52:54:00:00:00:01: also at line"),
        "{rejected}"
    );
    assert_eq!(
        cmdline_of(&script(http, "52:54:00:00:00:01").1),
        "console=ttyS0 gen=2"
    );
    let (_, s) = script(http, "52:54:00:00:00:02");
    assert!(s.contains("sanboot --no-describe --drive 0x80"), "{s}");

    // SIGHUP reloads even an unchanged file (here: fixed again by hand first).
    std::fs::write(&cfg, v2.replace("gen=2", "gen=3")).unwrap();
    wait_for("second reload", Duration::from_secs(10), || {
        cmdline_of(&script(http, "52:54:00:00:00:01").1) == "console=ttyS0 gen=3"
    });
    let before = logged("config.reloaded");
    let pid = _server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("SIGHUP reload", Duration::from_secs(10), || {
        logged("config.reloaded") > before
    });
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("config.reloaded") && l.contains("SIGHUP")));
    assert!(_server.0.id() > 0);
}
