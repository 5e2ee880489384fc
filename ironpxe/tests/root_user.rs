//! Root: `--user` / `[server] user`. Started as root, ironpxe binds the privileged
//! ports (UDP 67, 4011, 69 and TCP 80), becomes the user with no capabilities, and
//! still answers ProxyDHCP, TFTP (transfer sockets opened after the switch) and
//! HTTP (kernels read as the user), reloads its configuration on SIGHUP and writes
//! its state directory. A user that does not exist, or a kernel the user cannot read,
//! is refused at start with one line; root without a user gets a warning.
//!
//! Each test runs in a private network namespace of its own thread (`unshare`), so
//! the privileged ports are free and nothing else sees the traffic.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd2, 0x00, 0x01];
const NOBODY: u32 = 65534;

/// A process started by this test, killed by PID when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mac_text() -> String {
    MAC.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `test` on a thread moved into a new, empty network namespace with loopback
/// up; processes it starts live there too.
fn in_private_network(test: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            panic!("this test needs root (CAP_SYS_ADMIN) for a private network namespace: unshare failed: {e}");
        }
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run `ip` (apt-get install iproute2)");
        assert!(up.success(), "ip link set lo up failed");
        test();
    })
    .join();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// A directory everyone may enter, with `files` (name, bytes, mode).
fn world_dir(files: &[(&str, &[u8], u32)]) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("ironpxe-user")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, bytes, mode) in files {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    d
}

fn ironpxe(args: &[&str], log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironpxe"));
    cmd.args(args)
        .env_remove("INVOCATION_ID")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits until `log` contains `needle`.
fn wait_log(log: &Path, needle: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_text(log).contains(needle) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "ironpxe exited ({status}) before logging {needle:?}:\n{}",
                log_text(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields of one line of /proc/PID/status, e.g. `Uid:`.
fn status_field(pid: u32, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Local ports this namespace listens on: (UDP, TCP).
fn listening_ports() -> (Vec<u16>, Vec<u16>) {
    let ports = |file: &str, state: &str| -> Vec<u16> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let port = cols.get(1)?.rsplit(':').next()?;
                (cols.get(3) == Some(&state)).then(|| u16::from_str_radix(port, 16).ok())?
            })
            .collect()
    };
    (
        ports("/proc/thread-self/net/udp", "07"),
        ports("/proc/thread-self/net/tcp", "0A"),
    )
}

/// A BIOS PXE client's REQUEST to the boot server port (4011): answered with an
/// ACK unicast back to the sender.
fn pxe_request() -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x5e_c0_00_01,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(Opcode::BootRequest);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        0u16,
    )));
    m.to_vec().unwrap()
}

/// `GET path` on 127.0.0.1:80: the status code and body.
fn get(path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", 80)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, all[split + 4..].to_vec())
}

/// Fetches `file` over TFTP from 127.0.0.1:69 (octet, 512-byte blocks).
fn tftp_get(file: &str) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    s.send_to(&rrq, "127.0.0.1:69").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let (n, from) = s.recv_from(&mut buf).expect("a TFTP DATA packet");
        assert_ne!(from.port(), 69, "DATA must come from a transfer port");
        assert_eq!(&buf[..2], &[0, 3], "not DATA: {:?}", &buf[..n]);
        out.extend_from_slice(&buf[4..n]);
        s.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if n - 4 < 512 {
            return out;
        }
    }
}

fn config(kernel: &Path, initrd: &Path, generation: u32) -> String {
    format!(
        "[server]\nuser = \"nobody\"\n\n[[machines]]\nmac = \"{}\"\nkernel = \"{}\"\n\
         initrd = [\"{}\"]\ncmdline = \"console=ttyS0 generation={generation}\"\n",
        mac_text(),
        kernel.display(),
        initrd.display()
    )
}

/// The URL after `kernel --name NAME` in a script, as a path on this server.
fn kernel_path(script: &str) -> String {
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in:\n{script}"));
    let url = line.split_whitespace().nth(3).unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

#[test]
fn root_user_drops_root_after_binding_and_keeps_serving() {
    in_private_network(|| {
        let kernel_bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ipxe: Vec<u8> = (0..700u32).map(|i| (i % 199) as u8).collect();
        // The iPXE binary only root may read: it is loaded before the switch.
        let dir = world_dir(&[
            ("vmlinuz", &kernel_bytes, 0o644),
            ("initrd", b"initrd", 0o644),
            ("undionly.kpxe", &ipxe, 0o600),
        ]);
        let (kernel, initrd) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
        let file = dir.path().join("ironpxe.toml");
        std::fs::write(&file, config(&kernel, &initrd, 1)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let state: PathBuf = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
        let log = dir.path().join("ironpxe.log");
        let mut child = ironpxe(
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "-p",
                "80",
                "--state-dir",
                state.to_str().unwrap(),
                "--ipxe-bios",
                dir.path().join("undionly.kpxe").to_str().unwrap(),
            ],
            &log,
        )
        .spawn()
        .expect("start ironpxe");
        let pid = child.id();
        wait_log(&log, "ironpxe ready", &mut child);
        let _owned = Owned(child);

        // Every privileged port is bound ...
        let (udp, tcp) = listening_ports();
        for port in [67, 4011, 69] {
            assert!(udp.contains(&port), "udp {port} not bound: {udp:?}");
        }
        assert!(tcp.contains(&80), "tcp 80 not bound: {tcp:?}");
        // ... by a process that is nobody, in nobody's groups, with no capabilities.
        let log_now = log_text(&log);
        assert!(log_now.contains("dropped root"), "{log_now}");
        assert!(!log_now.contains("running as root"), "{log_now}");
        let nobody = NOBODY.to_string();
        assert_eq!(
            status_field(pid, "Uid:"),
            [nobody.as_str(); 4],
            "real, effective, saved, fs uid"
        );
        assert_eq!(
            status_field(pid, "Gid:"),
            [nobody.as_str(); 4],
            "real, effective, saved, fs gid"
        );
        let groups = status_field(pid, "Groups:");
        let expected = Command::new("id").args(["-G", "nobody"]).output().unwrap();
        let mut expected: Vec<String> = String::from_utf8_lossy(&expected.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        expected.sort();
        let mut got = groups.clone();
        got.sort();
        assert_eq!(
            got, expected,
            "supplementary groups: nobody's own, none of root's"
        );
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(status_field(pid, caps), ["0000000000000000"], "{caps}");
        }

        // ProxyDHCP (the boot server port) answers.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&pxe_request(), "127.0.0.1:4011").unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = s
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer on 4011 ({e}):\n{}", log_text(&log)));
        let ack = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));

        // TFTP: a transfer socket opened as nobody.
        assert_eq!(tftp_get("undionly.kpxe"), ipxe, "TFTP bytes");

        // HTTP: the script, and the kernel read from disk as nobody.
        let script_path = format!("/_/ipxe?mac={}&arch=0", mac_text());
        let (code, script) = get(&script_path);
        let script = String::from_utf8_lossy(&script).into_owned();
        assert_eq!(code, 200, "{script}");
        assert!(script.contains("generation=1"), "{script}");
        let (code, body) = get(&kernel_path(&script));
        assert_eq!(code, 200);
        assert!(
            body == kernel_bytes,
            "the kernel's bytes differ ({} bytes)",
            body.len()
        );

        // SIGHUP: the configuration is read again, as nobody.
        std::fs::write(&file, config(&kernel, &initrd, 2)).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, script) = get(&script_path);
            if String::from_utf8_lossy(&script).contains("generation=2") {
                break;
            }
            assert!(Instant::now() < deadline, "no reload:\n{}", log_text(&log));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !log_text(&log).contains("config.rejected"),
            "{}",
            log_text(&log)
        );

        // The state directory is written as nobody.
        let saved = state.join("status.json");
        let meta = std::fs::metadata(&saved).expect("status.json written");
        assert_eq!(meta.uid(), NOBODY, "status.json is not nobody's");
    });
}

/// Runs ironpxe to its exit (it must exit within 20 s); stderr goes through `log`.
fn run_to_exit(mut cmd: Command, log: &Path) -> Output {
    cmd.stderr(std::fs::File::create(log).unwrap());
    let mut child = cmd.spawn().expect("start ironpxe");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ironpxe did not exit:\n{}", log_text(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(log).unwrap(),
    }
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn root_user_refuses_what_it_cannot_do_with_one_line() {
    in_private_network(|| {
        let dir = world_dir(&[("vmlinuz", b"k", 0o644), ("undionly.kpxe", b"x", 0o644)]);
        let kernel = dir.path().join("vmlinuz");
        let bios = dir.path().join("undionly.kpxe");
        let log = dir.path().join("unused.log");
        let base = |extra: &[&str]| {
            let mut args = vec![
                "boot",
                kernel.to_str().unwrap(),
                "--ipxe-bios",
                bios.to_str().unwrap(),
                "-p",
                "80",
            ];
            args.extend_from_slice(extra);
            ironpxe(&args.iter().map(|s| &**s).collect::<Vec<_>>(), &log)
        };

        // No such user: refused before anything is bound.
        let out = run_to_exit(base(&["--user", "ironpxe-no-such-user"]), &log);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{lines:#?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("ironpxe: error: --user: no such user \"ironpxe-no-such-user\""),
            "{lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("ironpxe ready")),
            "{lines:#?}"
        );

        // The same from the configuration file's [server] user.
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nuser = \"ironpxe-no-such-user\"\n[[machines]]\nmac = \"{}\"\nkernel = \"{}\"\n",
                mac_text(),
                kernel.display()
            ),
        )
        .unwrap();
        let cmd = ironpxe(
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "-p",
                "80",
                "--ipxe-bios",
                bios.to_str().unwrap(),
            ],
            &log,
        );
        let out = run_to_exit(cmd, &log);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{lines:#?}");
        assert_eq!(
            lines.last().cloned(),
            Some(format!(
                "ironpxe: error: {}: server.user: no such user \"ironpxe-no-such-user\"",
                file.display()
            )),
            "{lines:#?}"
        );

        // A kernel nobody cannot read: refused right after the switch, naming it.
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = private.path().join("vmlinuz");
        std::fs::write(&secret, b"k").unwrap();
        let cmd = ironpxe(
            &[
                "boot",
                secret.to_str().unwrap(),
                "--ipxe-bios",
                bios.to_str().unwrap(),
                "-p",
                "80",
                "--user",
                "nobody",
            ],
            &log,
        );
        let out = run_to_exit(cmd, &log);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{lines:#?}");
        assert_eq!(
            lines.last().cloned(),
            Some(format!(
                "ironpxe: error: {}: not readable by user nobody, which ironpxe runs as (--user); \
                 fix the permissions or choose another user: Permission denied (os error 13)",
                secret.display()
            )),
            "{lines:#?}"
        );
    });
}

#[test]
fn root_without_user_is_warned_outside_systemd_unless_root_is_asked_for() {
    in_private_network(|| {
        let dir = world_dir(&[("vmlinuz", b"k", 0o644), ("undionly.kpxe", b"x", 0o644)]);
        let args = |dir: &Path| {
            vec![
                "boot".to_string(),
                dir.join("vmlinuz").display().to_string(),
                "--ipxe-bios".into(),
                dir.join("undionly.kpxe").display().to_string(),
                "-p".into(),
                "80".into(),
            ]
        };
        let argv = args(dir.path());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        // Plain root; under systemd; root asked for with --user root.
        for (case, warned) in [("plain", true), ("systemd", false), ("user-root", false)] {
            let log = dir.path().join(format!("ironpxe-{case}.log"));
            let mut cmd = ironpxe(&argv, &log);
            match case {
                "systemd" => {
                    cmd.env("INVOCATION_ID", "0123456789abcdef0123456789abcdef");
                }
                "user-root" => {
                    cmd.args(["--user", "nobody", "--user", "root"]);
                }
                _ => {}
            }
            let mut child = cmd.spawn().expect("start ironpxe");
            wait_log(&log, "ironpxe ready", &mut child);
            let _owned = Owned(child);
            let text = log_text(&log);
            let warning = "running as root: pass --user NAME";
            assert_eq!(text.contains(warning), warned, "{case}:\n{text}");
            assert!(!text.contains("dropped root"), "{case}:\n{text}");
        }
    });
}
