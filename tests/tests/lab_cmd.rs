//! Root + QEMU: `ironpxe lab`, the command users run against their own images.
//!
//! - `ironpxe lab boot` with the lab's own kernel and initrd passes on BIOS and on
//!   UEFI (EDK2's own PXE client), both in one run;
//! - `ironpxe lab --api` boots through an API on the host's loopback (relayed into
//!   the lab), and with an `--expect` that never matches it exits 1, well within
//!   `--timeout`;
//! - without QEMU in PATH it exits 2 with one line naming the Debian package;
//! - `ironpxe lab --config` with two machines boots both (each with its own command
//!   line; the file's `[server]`, written for a real data NIC, does not get in the
//!   way) and writes a JUnit file with two passing test cases;
//! - as `nobody`, `--user-net` boots the lab kernel, and the namespace lab refuses
//!   to start, naming root.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test). The
//! QEMU runs take turns, so their times are comparable on a small CI machine.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ironpxe_lab::preflight::find_program;
use serde_json::Value;

/// One QEMU run at a time.
static QEMU: Mutex<()> = Mutex::new(());

fn qemu_turn() -> std::sync::MutexGuard<'static, ()> {
    QEMU.lock().unwrap_or_else(|e| e.into_inner())
}

fn ironpxe() -> PathBuf {
    ironpxe_lab::ironpxe_bin().expect("the ironpxe binary (cargo build -p ironpxe)")
}

/// The lab's test kernel, fetched into the cache if needed.
fn kernel() -> PathBuf {
    ironpxe_lab::kernel().expect("the lab's test kernel")
}

/// A fresh artefacts directory under `lab-out/<name>`.
fn out_dir(name: &str) -> PathBuf {
    let dir = ironpxe_lab::lab::out_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd`, returning its output and how long it took.
fn run(cmd: &mut Command) -> (Output, Duration) {
    let start = Instant::now();
    let out = cmd.output().expect("run ironpxe lab");
    (out, start.elapsed())
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{}", show(o)))
}

fn guest<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["guests"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no guest {name} in {report:#}"))
}

#[test]
fn lab_boot_passes_on_bios_and_uefi() {
    let out = out_dir("lab_cmd-bios-uefi");
    let _turn = qemu_turn();
    let (o, took) = run(Command::new(ironpxe())
        .args(["lab", "boot", "--firmware", "bios,uefi", "--jobs", "2"])
        .args(["--timeout", "4m", "--json", "--out"])
        .arg(&out));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let report = json(&o);
    assert_eq!(report["result"], "pass");
    assert_eq!(report["network"], "namespaces");
    for (name, firmware) in [("bios", "bios"), ("uefi", "uefi")] {
        let g = guest(&report, name);
        assert_eq!(g["result"], "pass", "{g:#}");
        assert_eq!(g["firmware"], firmware);
        assert!(
            g["line"].as_str().is_some_and(
                |l| l.contains("IRONPXE-MARKER cmdline=[") && l.contains("console=ttyS0")
            ),
            "{g:#}"
        );
        let events: Vec<&str> = g["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"] == "ironpxe")
            .filter_map(|e| e["text"].as_str()?.split_whitespace().next())
            .collect();
        assert!(
            events.contains(&"dhcp.offer") && events.contains(&"http.booting"),
            "{name}: the timeline lacks ironpxe's events: {events:?}"
        );
        println!(
            "{name}: marker {:.1} s after power-on",
            g["seconds"].as_f64().unwrap_or_default()
        );
    }
    // EDK2's own PXE client fetched ipxe.efi over TFTP first.
    let uefi = guest(&report, "uefi").to_string();
    assert!(
        uefi.contains("tftp.done"),
        "no TFTP in the UEFI boot: {uefi}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("ironpxe lab: accelerator "), "{stderr}");
    for file in [
        "bios.serial.log",
        "uefi.serial.log",
        "ironpxe.log",
        "report.json",
    ] {
        assert!(
            out.join(file).is_file(),
            "{file} missing from {}",
            out.display()
        );
    }
    println!("whole run: {:.1} s", took.as_secs_f64());
}

/// A static HTTP server on a free loopback port serving the files under `root`
/// (one request per connection); returns its base URL. It lives as long as the
/// test process.
fn serve_dir(root: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let file = root.join(path.trim_start_matches('/'));
                let mut out = &stream;
                match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = out.write_all(&body);
                    }
                    _ => {
                        let _ = out.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    base
}

/// `ironpxe lab --api URL --mac MAC` against an API on the host's loopback whose
/// answer names kernel and initrd by http:// URLs on the same server: the lab
/// relays that server into ironpxe's namespace. The guest boots (its marker is on
/// the console), but `--expect` asks for a line that never comes: exit 1, long
/// before `--timeout`.
#[test]
fn lab_api_boot_with_a_wrong_expect_fails_within_the_timeout() {
    let out = out_dir("lab_cmd-api-wrong-expect");
    let www = out.join("www");
    std::fs::create_dir_all(www.join("v1/boot")).unwrap();
    std::fs::copy(kernel(), www.join("vmlinuz")).unwrap();
    let o = Command::new(ironpxe())
        .args(["lab", "initrd"])
        .arg(www.join("initrd"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let base = serve_dir(www.clone());
    let mac = "52:54:00:1a:b0:09";
    std::fs::write(
        www.join("v1/boot").join(mac),
        format!(
            r#"{{"kernel": "{base}/vmlinuz", "initrd": ["{base}/initrd"], "cmdline": "console=ttyS0 via=api"}}"#
        ),
    )
    .unwrap();

    let timeout = Duration::from_secs(60);
    let _turn = qemu_turn();
    let (o, took) = run(Command::new(ironpxe())
        .args(["lab", "--api", &base, "--mac", mac])
        .args(["--expect", "NO-SUCH-LINE-[0-9]+", "--json"])
        .args(["--timeout", &format!("{}s", timeout.as_secs()), "--out"])
        .arg(out.join("run")));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let report = json(&o);
    let g = guest(&report, "52-54-00-1a-b0-09");
    assert_eq!(g["result"], "fail");
    assert!(
        g["reason"]
            .as_str()
            .is_some_and(|r| r.contains("QEMU exited") && r.contains("NO-SUCH-LINE")),
        "{g:#}"
    );
    // It did boot, through the API and the relayed kernel URL.
    let timeline = g["timeline"].to_string();
    for needle in [
        "api.answer",
        "http.booting",
        "IRONPXE-MARKER cmdline=[console=ttyS0 via=api]",
    ] {
        assert!(timeline.contains(needle), "no {needle}: {timeline}");
    }
    // The lab itself needs a few seconds to build and tear down.
    assert!(
        took < timeout,
        "took {took:?} with --timeout {timeout:?}: the failure was not noticed when QEMU exited"
    );
    println!(
        "wrong --expect: exit 1 after {:.1} s ({:.1} s from power-on)",
        took.as_secs_f64(),
        g["seconds"].as_f64().unwrap_or_default()
    );
}

#[test]
fn lab_without_qemu_in_path_exits_2_naming_the_package() {
    // A PATH with everything the lab uses except QEMU.
    let bin = tempfile::tempdir().unwrap();
    for prog in [
        "ip",
        "dnsmasq",
        "apt-get",
        "apt-cache",
        "dpkg-deb",
        "busybox",
    ] {
        if let Some(p) = find_program(prog) {
            std::os::unix::fs::symlink(p, bin.path().join(prog)).unwrap();
        }
    }
    let out = out_dir("lab_cmd-no-qemu");
    let (o, _) = run(Command::new(ironpxe())
        .env("PATH", bin.path())
        .args(["lab", "boot"])
        .arg(kernel())
        .arg("--out")
        .arg(&out));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(
        lines[0].starts_with("ironpxe lab: cannot start: missing qemu-system-x86_64")
            && lines[0].contains("Debian package qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn lab_config_boots_two_machines_and_writes_junit() {
    let out = out_dir("lab_cmd-config");
    let initrd = out.join("marker-initrd.cpio");
    let o = Command::new(ironpxe())
        .args(["lab", "initrd"])
        .arg(&initrd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let config = out.join("lab.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n\
             interface = \"eno2\"\n\
             listen_addr = \"192.0.2.7\"\n\
             http_port = 80\n\
             status_port = 9999\n\n\
             [profiles.installer]\n\
             kernel = \"{}\"\n\
             initrd = [\"{}\"]\n\
             cmdline = \"console=ttyS0\"\n\n\
             [[machines]]\nmac = \"52:54:00:1a:b0:01\"\nname = \"storage-01\"\n\
             profile = \"installer\"\ncmdline_append = \"role=storage\"\n\n\
             [[machines]]\nmac = \"52:54:00:1a:b0:02\"\nname = \"compute-01\"\n\
             profile = \"installer\"\ncmdline_append = \"role=compute\"\n",
            kernel().display(),
            initrd.display()
        ),
    )
    .unwrap();
    let junit = out.join("junit.xml");
    let _turn = qemu_turn();
    let (o, _) = run(Command::new(ironpxe())
        .args(["lab", "--config"])
        .arg(&config)
        .args(["--jobs", "2", "--timeout", "3m", "--json", "--junit"])
        .arg(&junit)
        .arg("--out")
        .arg(out.join("run")));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let report = json(&o);
    for (name, mac, role) in [
        ("storage-01", "52:54:00:1a:b0:01", "role=storage"),
        ("compute-01", "52:54:00:1a:b0:02", "role=compute"),
    ] {
        let g = guest(&report, name);
        assert_eq!(g["mac"], mac);
        // Each machine booted its own command line.
        assert!(
            g["line"].as_str().is_some_and(|l| l.contains(role)),
            "{g:#}"
        );
        println!(
            "{name}: marker {:.1} s after power-on",
            g["seconds"].as_f64().unwrap_or_default()
        );
    }

    let cases = junit_cases(&std::fs::read_to_string(&junit).expect("the JUnit file"));
    assert_eq!(
        cases,
        [
            ("storage-01".to_string(), true),
            ("compute-01".to_string(), true)
        ],
        "JUnit test cases (name, passed)"
    );
}

/// The `testcase`s of a JUnit XML document: name, and whether it has no
/// `failure` or `error` child.
fn junit_cases(xml: &str) -> Vec<(String, bool)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut cases: Vec<(String, bool)> = Vec::new();
    let mut suites = 0;
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testsuite" => suites += 1,
                b"testcase" => {
                    let name = e
                        .try_get_attribute("name")
                        .unwrap()
                        .expect("a testcase name")
                        .unescape_value()
                        .unwrap()
                        .into_owned();
                    cases.push((name, true));
                }
                b"failure" | b"error" => {
                    if let Some(last) = cases.last_mut() {
                        last.1 = false;
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(suites, 1, "one testsuite:\n{xml}");
    cases
}

/// Copies `src` into `dir` with mode `mode`.
fn copy_with_mode(src: &Path, dir: &Path, mode: u32) -> PathBuf {
    let dest = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
    dest
}

#[test]
fn lab_user_net_boots_as_nobody() {
    let setpriv = find_program("setpriv").expect("setpriv (Debian package util-linux)");
    // Everything nobody needs, readable by nobody: the binary, and a cache holding
    // the kernel. The output directory is nobody's.
    let root = tempfile::Builder::new()
        .prefix("ironpxe-lab-nobody-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = copy_with_mode(&ironpxe(), root.path(), 0o755);
    let boot = root.path().join("cache/kernel-lab/boot");
    std::fs::create_dir_all(&boot).unwrap();
    for d in ["cache", "cache/kernel-lab", "cache/kernel-lab/boot"] {
        std::fs::set_permissions(root.path().join(d), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    copy_with_mode(&kernel(), &boot, 0o644);
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).expect("chown to nobody");
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(&setpriv);
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env_remove("IRONPXE_LAB_CACHE")
            .env("HOME", "/nonexistent")
            .current_dir(&out);
        cmd
    };
    let cache = root.path().join("cache");
    let cache = cache.to_str().unwrap();

    // Without root, the namespace lab cannot start, and says why.
    let (o, _) = run(&mut as_nobody(&["lab", "boot", "--cache-dir", cache]));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing root privileges"),
        "{}",
        show(&o)
    );

    let _turn = qemu_turn();
    let run_dir = out.join("run");
    let (o, took) = run(&mut as_nobody(&[
        "lab",
        "--user-net",
        "boot",
        "--cache-dir",
        cache,
        "--timeout",
        "3m",
        "--json",
        "--out",
        run_dir.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let report = json(&o);
    assert_eq!(report["network"], "user");
    let g = guest(&report, "bios");
    assert_eq!(g["result"], "pass", "{g:#}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("not ProxyDHCP or TFTP"),
        "the output must say what user networking does not test:\n{stderr}"
    );
    // ironpxe served the script, kernel and initrd over HTTP, as nobody.
    let timeline = g["timeline"].to_string();
    for event in ["http.script", "http.file.done", "http.booting"] {
        assert!(timeline.contains(event), "no {event}: {timeline}");
    }
    println!(
        "user-net as nobody: marker {:.1} s after power-on, run {:.1} s",
        g["seconds"].as_f64().unwrap_or_default(),
        took.as_secs_f64()
    );
}
