//! Root: real TFTP clients (curl, atftp, tftp-hpa, busybox) fetch files from ironpxe's
//! `--tftp-root` and its built-in iPXE binaries across the lab bridge, byte-exact
//! against sha256. Refusals (`..`, a symlink out of the root, a missing file, a write
//! request) reach the clients as TFTP errors.
//!
//! OVMF's own PXE client (blksize, tsize, windowsize, the error-8 size probe) is
//! covered by the UEFI QEMU boot tests.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test) and the
//! Debian packages curl, atftp, tftp-hpa and busybox-static.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ironpxe_lab::preflight::{in_path, IPXE_EFI, UNDIONLY_KPXE};
use ironpxe_lab::{Client, Event, Ironpxe, Lab};

mod common;
use common::{leased_client, random_bytes, serve_tftp_root, sha256, text};

/// A lab with ironpxe serving a generated TFTP root and a client namespace with an
/// address from the site DHCP server.
struct Setup {
    lab: Lab,
    client: Client,
    server: Ipv4Addr,
    root: PathBuf,
    out: PathBuf,
    ironpxe: Ironpxe,
}

fn require_clients() {
    let missing: Vec<_> = [
        ("curl", "curl"),
        ("atftp", "atftp"),
        ("tftp", "tftp-hpa"),
        ("sha256sum", "coreutils"),
    ]
    .into_iter()
    .filter(|(prog, _)| !in_path(prog))
    .map(|(prog, pkg)| format!("{prog} (apt-get install {pkg})"))
    .collect();
    assert!(
        missing.is_empty(),
        "TFTP interop test cannot run, missing: {}",
        missing.join(", ")
    );
}

fn setup(name: &str) -> Setup {
    require_clients();
    let lab = Lab::new(name).expect("build lab");
    let root = lab.tmp_dir().join("tftproot");
    let out = lab.tmp_dir().join("client-out");
    std::fs::create_dir_all(root.join("grub/x86_64-efi")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(root.join("random-3m.bin"), random_bytes(3 << 20)).unwrap();
    // A size that is a multiple of 1468 and of 512: the transfer ends with an empty block.
    std::fs::write(
        root.join("grub/x86_64-efi/normal.mod"),
        random_bytes(1468 * 512),
    )
    .unwrap();
    std::fs::write(lab.tmp_dir().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("grub/escape")).unwrap();
    std::os::unix::fs::symlink("x86_64-efi/normal.mod", root.join("grub/inside")).unwrap();
    let ironpxe = serve_tftp_root(&lab, &root);
    let (client, _) = leased_client(&lab);
    Setup {
        server: lab.pxe_addr(),
        lab,
        client,
        root,
        out,
        ironpxe,
    }
}

/// A TFTP client invocation: fetches `remote` into `local`.
#[derive(Clone, Copy, Debug)]
enum Tool {
    Curl { blksize: u16 },
    AtftpWindow16,
    TftpHpa,
    Busybox,
}

impl Tool {
    fn run(self, s: &Setup, remote: &str, local: &Path) -> Output {
        let ip = s.server.to_string();
        let local = local.display().to_string();
        match self {
            Tool::Curl { blksize } => s
                .lab
                .run_in(
                    &s.client.ns,
                    "curl",
                    &[
                        "-sS",
                        "--tftp-blksize",
                        &blksize.to_string(),
                        &format!("tftp://{ip}/{remote}"),
                        "-o",
                        &local,
                    ],
                )
                .unwrap(),
            Tool::AtftpWindow16 => s
                .lab
                .run_in(
                    &s.client.ns,
                    "atftp",
                    &[
                        "--option",
                        "windowsize 16",
                        "--option",
                        "blksize 1468",
                        "-g",
                        "-r",
                        remote,
                        "-l",
                        &local,
                        &ip,
                    ],
                )
                .unwrap(),
            Tool::TftpHpa => s
                .lab
                .run_in(
                    &s.client.ns,
                    "tftp",
                    &[&ip, "-m", "binary", "-c", "get", remote, &local],
                )
                .unwrap(),
            Tool::Busybox => {
                let bb = ironpxe_lab::assets::busybox_path().expect("busybox");
                s.lab
                    .run_in(
                        &s.client.ns,
                        &bb.display().to_string(),
                        &["tftp", "-g", "-r", remote, "-l", &local, "-b", "1468", &ip],
                    )
                    .unwrap()
            }
        }
    }

    /// The (blksize, windowsize) ironpxe should log for this client.
    fn negotiated(self) -> (&'static str, &'static str) {
        match self {
            Tool::Curl { blksize: 512 } => ("512", "1"),
            Tool::Curl { .. } => ("1468", "1"),
            Tool::AtftpWindow16 => ("1468", "16"),
            Tool::TftpHpa => ("512", "1"),
            Tool::Busybox => ("1468", "1"),
        }
    }
}

fn tftp_events(ironpxe: &Ironpxe, name: &str) -> Vec<Event> {
    ironpxe
        .events()
        .into_iter()
        .filter(|e| e.name == name)
        .collect()
}

/// Waits (up to 5 s) for the `n`th event called `name`: a transfer's end is logged
/// just after its last ACK arrives, so possibly after the client has exited.
fn nth_event(ironpxe: &Ironpxe, name: &str, n: usize) -> Option<Event> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = tftp_events(ironpxe, name);
        if events.len() >= n {
            return Some(events[n - 1].clone());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_real_tftp_clients_fetch_byte_exact() {
    let s = setup("tftp_interop-clients");
    let files: Vec<(&str, PathBuf)> = vec![
        ("random-3m.bin", s.root.join("random-3m.bin")),
        (
            "/grub/x86_64-efi/normal.mod",
            s.root.join("grub/x86_64-efi/normal.mod"),
        ),
        ("grub/inside", s.root.join("grub/x86_64-efi/normal.mod")),
        ("ipxe.efi", PathBuf::from(IPXE_EFI)),
        ("undionly.kpxe", PathBuf::from(UNDIONLY_KPXE)),
    ];
    let tools = [
        Tool::Curl { blksize: 512 },
        Tool::Curl { blksize: 1468 },
        Tool::AtftpWindow16,
        Tool::TftpHpa,
        Tool::Busybox,
    ];
    let mut n = 0usize;
    let mut report = Vec::new();
    for tool in tools {
        for (remote, source) in &files {
            let local = s.out.join(format!("{n}.bin"));
            let t = Instant::now();
            let out = tool.run(&s, remote, &local);
            let took = t.elapsed();
            assert!(
                out.status.success(),
                "{tool:?} get {remote}: {}",
                text(&out)
            );
            assert_eq!(
                sha256(&local),
                sha256(source),
                "{tool:?} fetched {remote} with different bytes ({})",
                text(&out)
            );
            n += 1;
            // The transfer's end is logged right after the last ACK arrives.
            let done = nth_event(&s.ironpxe, "tftp.done", n)
                .unwrap_or_else(|| panic!("no tftp.done for {tool:?} {remote}"));
            let size = std::fs::metadata(source).unwrap().len().to_string();
            let (blksize, windowsize) = tool.negotiated();
            assert_eq!(
                done.field("bytes"),
                Some(size.as_str()),
                "{}",
                done.summary()
            );
            assert_eq!(
                done.field("blksize"),
                Some(blksize),
                "{tool:?}: {}",
                done.summary()
            );
            assert_eq!(
                done.field("windowsize"),
                Some(windowsize),
                "{tool:?}: {}",
                done.summary()
            );
            report.push(format!("{tool:?} {remote}: {size} bytes in {took:?}"));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(tftp_events(&s.ironpxe, "tftp.failed").is_empty());
}

#[test]
fn root_refusals_reach_real_tftp_clients() {
    let s = setup("tftp_interop-refusals");
    let local = s.out.join("x");
    let ip = s.server.to_string();

    // `..` and a symlink out of the root: error 2 (access violation).
    for remote in ["../secret", "grub/../../secret", "grub/escape"] {
        let out = s
            .lab
            .run_in(
                &s.client.ns,
                "atftp",
                &["-g", "-r", remote, "-l", &local.display().to_string(), &ip],
            )
            .unwrap();
        let msg = text(&out);
        assert!(!out.status.success(), "atftp got {remote}: {msg}");
        assert!(msg.contains("access violation"), "atftp {remote}: {msg}");
    }
    let out = Tool::TftpHpa.run(&s, "grub/escape", &local);
    let msg = text(&out);
    assert!(
        msg.contains("Error code 2") && msg.contains("path leaves the TFTP root"),
        "{msg}"
    );
    // curl normalises `..` away unless told not to.
    let out = s
        .lab
        .run_in(
            &s.client.ns,
            "curl",
            &[
                "-sS",
                "--path-as-is",
                &format!("tftp://{ip}/grub/../../secret"),
                "-o",
                &local.display().to_string(),
            ],
        )
        .unwrap();
    // Exit code 69 is curl's CURLE_TFTP_PERM: the server answered "access violation".
    assert_eq!(out.status.code(), Some(69), "curl: {}", text(&out));

    // A missing file: error 1.
    let out = Tool::TftpHpa.run(&s, "grub/missing.mod", &local);
    assert!(text(&out).contains("Error code 1"), "{}", text(&out));

    // A write request: error 2, read-only server.
    let upload = s.out.join("upload");
    std::fs::write(&upload, b"data").unwrap();
    let out = s
        .lab
        .run_in(
            &s.client.ns,
            "tftp",
            &[
                &ip,
                "-m",
                "binary",
                "-c",
                "put",
                &upload.display().to_string(),
                "uploaded",
            ],
        )
        .unwrap();
    let msg = text(&out);
    assert!(
        msg.contains("Error code 2") && msg.contains("read-only server"),
        "{msg}"
    );
    assert!(!s.root.join("uploaded").exists());

    let failed = tftp_events(&s.ironpxe, "tftp.failed");
    let reasons: Vec<_> = failed.iter().filter_map(|e| e.field("reason")).collect();
    assert!(
        reasons
            .iter()
            .filter(|r| r.contains("path leaves the TFTP root"))
            .count()
            >= 2,
        "{reasons:?}"
    );
    assert!(!s.ironpxe.events().iter().any(|e| e.name == "tftp.done"));
}
