//! Root: a 3 MB file reaches real TFTP clients byte-exact while 10% of the packets
//! arriving at the client are dropped at random (nftables `numgen random mod 10 0
//! drop` in the client namespace; this kernel has no netem). The client only ever
//! loses DATA and OACK packets, so recovery is up to ironpxe's retransmission timer,
//! which adapts to the measured round trip.
//!
//! Each client gets 60 s; the times are printed (`--nocapture`).
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test), nft
//! (nftables), curl, atftp and tftp-hpa.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironpxe_lab::preflight::in_path;
use ironpxe_lab::{Client, Ironpxe, Lab};

mod common;
use common::{leased_client, random_bytes, serve_tftp_root, sha256, text};

/// Every client must finish within this, under 10% loss.
const BOUND: Duration = Duration::from_secs(60);
const SIZE: usize = 3 << 20;

fn nft(lab: &Lab, client: &Client, args: &[&str]) -> String {
    let out = lab.run_in(&client.ns, "nft", args).expect("run nft");
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `counter packets N` of the drop rule.
fn dropped(lab: &Lab, client: &Client) -> u64 {
    let rules = nft(lab, client, &["list", "chain", "inet", "loss", "input"]);
    rules
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in:\n{rules}"))
}

fn done_events(ironpxe: &Ironpxe) -> Vec<ironpxe_lab::Event> {
    ironpxe
        .events()
        .into_iter()
        .filter(|e| e.name == "tftp.done")
        .collect()
}

#[test]
fn root_3mb_survives_10_percent_loss() {
    for (prog, pkg) in [
        ("nft", "nftables"),
        ("curl", "curl"),
        ("atftp", "atftp"),
        ("tftp", "tftp-hpa"),
        ("sha256sum", "coreutils"),
    ] {
        assert!(
            in_path(prog),
            "TFTP loss test cannot run: {prog} missing (apt-get install {pkg})"
        );
    }
    let lab = Lab::new("tftp_loss").expect("build lab");
    let root = lab.tmp_dir().join("tftproot");
    let out_dir = lab.tmp_dir().join("client-out");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let source = root.join("random-3m.bin");
    std::fs::write(&source, random_bytes(SIZE)).unwrap();
    let want = sha256(&source);
    let ironpxe = serve_tftp_root(&lab, &root);
    let (client, _) = leased_client(&lab);

    // Drop 10% of what arrives at the client (DHCP replies excepted).
    nft(&lab, &client, &["add", "table", "inet", "loss"]);
    nft(
        &lab,
        &client,
        &[
            "add",
            "chain",
            "inet",
            "loss",
            "input",
            "{ type filter hook input priority 0; }",
        ],
    );
    nft(
        &lab,
        &client,
        &[
            "add", "rule", "inet", "loss", "input", "udp", "sport", "!=", "67", "numgen", "random",
            "mod", "10", "0", "counter", "drop",
        ],
    );

    let server = lab.pxe_addr().to_string();
    let secs = BOUND.as_secs().to_string();
    let clients: Vec<(&str, Vec<String>)> = vec![
        (
            "curl blksize 1468",
            [
                "curl",
                "-sS",
                "--tftp-blksize",
                "1468",
                &format!("tftp://{server}/random-3m.bin"),
                "-o",
                "OUT",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "atftp windowsize 16",
            [
                "atftp",
                "--option",
                "windowsize 16",
                "--option",
                "blksize 1468",
                "-g",
                "-r",
                "random-3m.bin",
                "-l",
                "OUT",
                &server,
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "tftp-hpa (512)",
            [
                "tftp",
                &server,
                "-m",
                "binary",
                "-c",
                "get",
                "random-3m.bin",
                "OUT",
            ]
            .map(String::from)
            .to_vec(),
        ),
    ];
    let mut report = Vec::new();
    for (i, (name, argv)) in clients.iter().enumerate() {
        let local: PathBuf = out_dir.join(format!("{i}.bin"));
        let local_s = local.display().to_string();
        let mut full: Vec<&str> = vec![&secs];
        full.extend(argv.iter().map(|a| {
            if a == "OUT" {
                local_s.as_str()
            } else {
                a.as_str()
            }
        }));
        let before = dropped(&lab, &client);
        let t = Instant::now();
        let out = lab.run_in(&client.ns, "timeout", &full).unwrap();
        let took = t.elapsed();
        let lost = dropped(&lab, &client) - before;
        assert!(
            out.status.success(),
            "{name} did not finish within {BOUND:?} under 10% loss: {}",
            text(&out)
        );
        assert_eq!(sha256(&local), want, "{name}: bytes differ under loss");
        assert!(took < BOUND);
        // Loss really happened: about 10% of ~2100 (or ~6100 at 512) packets.
        assert!(lost >= 50, "{name}: only {lost} packets dropped");
        let done = {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let d = done_events(&ironpxe);
                if d.len() > i {
                    break d[i].clone();
                }
                assert!(Instant::now() < deadline, "no tftp.done for {name}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        assert_eq!(done.field("bytes"), Some(SIZE.to_string().as_str()));
        let retransmits: u64 = done
            .field("retransmits")
            .and_then(|r| r.parse().ok())
            .expect("retransmits field");
        assert!(retransmits > 0, "{name}: {}", done.summary());
        report.push(format!(
            "{name}: 3 MiB byte-exact in {:.2} s, {lost} packets dropped, {retransmits} retransmitted ({})",
            took.as_secs_f64(),
            done.summary()
        ));
    }
    eprintln!("{}", report.join("\n"));
}
