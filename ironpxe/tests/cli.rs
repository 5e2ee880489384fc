//! The `ironpxe` binary as a user meets it: help text, errors for bad input, and a
//! loopback run that serves TFTP and HTTP (no root, no network namespace needed).

mod common;
use common::{free_tcp, free_udp, get};

use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironpxe_core::urls::{BootRoute, MachineQuery};
use ironpxe_core::ClientArch;

fn ironpxe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ironpxe"))
}

fn output(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run ironpxe");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_teaches_the_pixiecore_flags() {
    let (code, text) = output(ironpxe().args(["boot", "--help"]));
    assert_eq!(code, 0, "{text}");
    for flag in [
        "--cmdline",
        "--bootmsg",
        "--listen-addr",
        "--port",
        "--interface",
        "--ipxe-bios",
        "--ipxe-efi32",
        "--ipxe-efi64",
        "--ipxe-ipxe",
        "--debug",
        "--log-timestamps",
        "KERNEL",
        "INITRD",
    ] {
        assert!(text.contains(flag), "boot --help lacks {flag}:\n{text}");
    }
}

#[test]
fn missing_kernel_is_one_clear_line() {
    let (code, text) =
        output(ironpxe().args(["boot", "/nonexistent/vmlinuz", "--ipxe-bios", "/dev/null"]));
    assert_eq!(code, 1);
    assert!(text.contains("KERNEL /nonexistent/vmlinuz"), "{text}");
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
}

#[test]
fn bad_url_scheme_and_unknown_interface_are_refused() {
    let (code, text) = output(ironpxe().args(["boot", "ftp://host/vmlinuz"]));
    assert_eq!(code, 1);
    assert!(text.contains("unsupported URL scheme"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinuz");
    let b = dir.path().join("undionly.kpxe");
    std::fs::write(&k, b"k").unwrap();
    std::fs::write(&b, b"b").unwrap();
    let (code, text) = output(
        ironpxe()
            .arg("boot")
            .arg(&k)
            .arg("--ipxe-bios")
            .arg(&b)
            .args(["--interface", "nosuchnic0"]),
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("--interface nosuchnic0: no such network interface"),
        "{text}"
    );
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Minimal lockstep TFTP read with default options.
fn tftp_get(port: u16, name: &str) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    sock.send_to(&rrq, ("127.0.0.1", port)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 600];
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("TFTP data");
        assert_eq!(&buf[..2], &[0, 3], "expected DATA, got {:?}", &buf[..n]);
        out.extend_from_slice(&buf[4..n]);
        sock.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if n - 4 < 512 {
            return out;
        }
    }
}

#[test]
fn serves_ipxe_over_tftp_and_boot_files_over_http_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    let bios = dir.path().join("undionly.kpxe");
    let kernel_bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&kernel, &kernel_bytes).unwrap();
    std::fs::write(&initrd, b"initrd bytes").unwrap();
    let bios_bytes: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(&bios, &bios_bytes).unwrap();

    let (http, tftp, dhcp, pxe) = (free_tcp(), free_udp(), free_udp(), free_udp());
    let child = ironpxe()
        .arg("boot")
        .arg(&kernel)
        .arg(&initrd)
        .args(["--cmdline", "console=ttyS0 note=a=b", "--bootmsg", "hello"])
        .arg("--ipxe-bios")
        .arg(&bios)
        .args(["-l", "127.0.0.1", "-p", &http.to_string()])
        .args([
            "--tftp-port",
            &tftp.to_string(),
            "--dhcp-port",
            &dhcp.to_string(),
            "--pxe-port",
            &pxe.to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server(child);

    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "ironpxe did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(tftp_get(tftp, "undionly.kpxe"), bios_bytes);
    assert_eq!(tftp_get(tftp, "/undionly.kpxe"), bios_bytes);

    let script = BootRoute::Script(MachineQuery {
        mac: "52:54:00:00:00:01".parse().unwrap(),
        arch: ClientArch::Bios,
    });
    let (head, body) = get(http, &script.to_string());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let script = String::from_utf8(body).unwrap();
    assert!(script.starts_with("#!ipxe"), "{script}");
    // The file URLs as the script names them (each names this machine too).
    let paths: Vec<String> = script
        .split("/_/file?")
        .skip(1)
        .map(|rest| format!("/_/file?{}", rest.split_whitespace().next().unwrap()))
        .collect();
    assert_eq!(paths.len(), 2, "kernel and initrd URLs in:\n{script}");
    assert!(
        paths[0].ends_with("&mac=52:54:00:00:00:01&arch=0"),
        "{script}"
    );
    let (head, body) = get(http, &paths[0]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", kernel_bytes.len())),
        "{head}"
    );
    assert_eq!(body, kernel_bytes);
    let (_, body) = get(http, &paths[1]);
    assert_eq!(body, b"initrd bytes");

    let (head, _) = get(
        http,
        "/_/file?name=00000000000000000000000000000000&mac=52:54:00:00:00:01&arch=0",
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn runs_as_pixiecore_under_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("pixiecore");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ironpxe"), &link).unwrap();
    let (code, text) = output(Command::new(&link).arg("--version"));
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("pixiecore "), "{text}");
    let (code, text) = output(Command::new(&link).args(["boot", "--help"]));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Usage: pixiecore boot"), "{text}");
    // A pixiecore command line with a missing kernel fails the same clear way.
    let (code, text) =
        output(Command::new(&link).args(["boot", "/nonexistent/k", "--cmdline", "x"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("KERNEL /nonexistent/k"), "{text}");
}

/// Started with systemd's default soft limit of open files below a higher hard
/// limit, ironpxe raises the soft limit to the hard one.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let bios = dir.path().join("undionly.kpxe");
    std::fs::write(&kernel, b"kernel").unwrap();
    std::fs::write(&bios, [0u8; 512]).unwrap();
    let (http, tftp, dhcp, pxe) = (free_tcp(), free_udp(), free_udp(), free_udp());
    // The shell lowers its limits to soft 512, hard 2048, then becomes ironpxe.
    let child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -Sn 512 && ulimit -Hn 2048 && exec "$0" "$@""#,
        ])
        .arg(env!("CARGO_BIN_EXE_ironpxe"))
        .arg("boot")
        .arg(&kernel)
        .arg("--ipxe-bios")
        .arg(&bios)
        .args(["-l", "127.0.0.1", "-p", &http.to_string()])
        .args(["--tftp-port", &tftp.to_string()])
        .args(["--dhcp-port", &dhcp.to_string()])
        .args(["--pxe-port", &pxe.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "ironpxe did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["2048", "2048"], "{line}");
}
