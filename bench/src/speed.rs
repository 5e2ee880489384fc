//! `ironpxe-bench tftp`: one file, one client (atftp), four cases, rounds side by side.
//!
//! atftp is the client for every case because it is the only packaged client that
//! speaks windowsize (RFC 7440), so the windowsize-16 case and the lockstep cases
//! share one client implementation; curl and tftp-hpa would only cover lockstep.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::env::{machine_notes, median, random_file, retry, sha256_file, version_of, Env};
use crate::servers;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each runs every case once, in a rotating order.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// File size in MiB.
    #[arg(long, default_value_t = 16)]
    size_mib: usize,
    /// Do not shape the client link to 1 Gbit/s.
    #[arg(long)]
    no_shape: bool,
}

struct Case {
    name: &'static str,
    server: Ipv4Addr,
    window: Option<u16>,
    secs: Vec<f64>,
}

/// Fetches `remote` with atftp at blksize 1468 (and `windowsize` if given) into
/// `out`; returns the wall time of the client process.
pub fn atftp(
    env: &Env,
    server: Ipv4Addr,
    remote: &str,
    out: &Path,
    window: Option<u16>,
) -> Result<Duration> {
    let _ = std::fs::remove_file(out);
    let out_s = out.display().to_string();
    let server_s = server.to_string();
    let win = window.map(|w| format!("windowsize {w}"));
    let mut args: Vec<&str> = vec!["--option", "blksize 1468"];
    if let Some(w) = &win {
        args.extend(["--option", w.as_str()]);
    }
    args.extend(["-g", "-r", remote, "-l", &out_s, &server_s]);
    let t = Instant::now();
    let o = env.lab.run_in(&env.client.ns, "atftp", &args)?;
    let took = t.elapsed();
    if !o.status.success() {
        bail!(
            "atftp from {server} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(took)
}

pub fn run(a: Args) -> Result<()> {
    let notes = machine_notes();
    let mut env = Env::new("bench-tftp", !a.no_shape)?;
    let size = a.size_mib << 20;
    let want = random_file(&env.root, "big.bin", size)?;
    let tftpd = servers::tftpd_hpa()?;
    let ironpxe_ip = env.lab.pxe_addr();
    let dnsmasq_ip = env.add_server_addr(3)?;
    let tftpd_ip = env.add_server_addr(4)?;
    let ironpxe = servers::ironpxe(&env)?;
    servers::dnsmasq(&mut env, dnsmasq_ip)?;
    servers::in_tftpd(&mut env, &tftpd, tftpd_ip)?;
    let out = env.lab.tmp_dir().join("fetched.bin");

    let mut cases = vec![
        Case {
            name: "ironpxe lockstep",
            server: ironpxe_ip,
            window: None,
            secs: vec![],
        },
        Case {
            name: "dnsmasq lockstep",
            server: dnsmasq_ip,
            window: None,
            secs: vec![],
        },
        Case {
            name: "tftp-hpa lockstep",
            server: tftpd_ip,
            window: None,
            secs: vec![],
        },
        Case {
            name: "ironpxe windowsize 16",
            server: ironpxe_ip,
            window: Some(16),
            secs: vec![],
        },
    ];
    // Warm-up: every server answers, and the file is in the page cache (and in
    // ironpxe's cache) before anything is timed.
    for c in &cases {
        retry(Duration::from_secs(10), || {
            env.check_running()?;
            atftp(&env, c.server, "big.bin", &out, c.window)
        })?;
        if sha256_file(&out)? != want {
            bail!("{}: warm-up fetch returned different bytes", c.name);
        }
    }
    for round in 0..a.rounds {
        let n = cases.len();
        for i in 0..n {
            let c = &mut cases[(i + round) % n];
            let took = atftp(&env, c.server, "big.bin", &out, c.window)?;
            if sha256_file(&out)? != want {
                bail!("{} round {round}: bytes differ", c.name);
            }
            c.secs.push(took.as_secs_f64());
        }
        eprintln!(
            "round {}: {}",
            round + 1,
            cases
                .iter()
                .map(|c| format!("{} {:.3} s", c.name, c.secs[round]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let retransmits: u64 = ironpxe
        .events()
        .iter()
        .filter(|e| e.name == "tftp.done")
        .filter_map(|e| e.field("retransmits")?.parse::<u64>().ok())
        .sum();

    let ratio = |num: usize, den: usize| -> f64 {
        let per_round: Vec<f64> = cases[num]
            .secs
            .iter()
            .zip(&cases[den].secs)
            .map(|(a, b)| a / b)
            .collect();
        median(&per_round)
    };
    let mib = size as f64 / f64::from(1u32 << 20);
    println!(
        "## TFTP throughput ({} MiB, atftp, blksize 1468, {} rounds)\n",
        a.size_mib, a.rounds
    );
    println!("Machine: {notes}");
    println!("ironpxe binary: {}", ironpxe_lab::ironpxe_bin()?.display());
    println!(
        "Link: {}",
        if a.no_shape {
            "veth through a bridge, unshaped".to_string()
        } else {
            format!(
                "veth through a bridge, both directions `tc qdisc add dev <if> {}`",
                crate::env::SHAPE.join(" ")
            )
        }
    );
    let lib = tftpd.lib_dir.display().to_string();
    println!(
        "Versions: {}; {}; {}\n",
        version_of("dnsmasq", &["--version"], &[]),
        version_of(
            &tftpd.bin.display().to_string(),
            &["-V"],
            &[("LD_LIBRARY_PATH", &lib)]
        ),
        version_of("atftp", &["--version"], &[]),
    );
    println!("| case | median s | min s | max s | median MiB/s |");
    println!("|---|---|---|---|---|");
    for c in &cases {
        let m = median(&c.secs);
        let min = c.secs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = c.secs.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {m:.3} | {min:.3} | {max:.3} | {:.1} |",
            c.name,
            mib / m
        );
    }
    println!("\nMedian of the per-round time ratios (side by side in each round):\n");
    println!("| ratio | value | target |");
    println!("|---|---|---|");
    println!(
        "| ironpxe lockstep / dnsmasq lockstep (time) | {:.2} | <= 1.0 |",
        ratio(0, 1)
    );
    println!(
        "| ironpxe lockstep / tftp-hpa lockstep (time) | {:.2} | <= 1.0 |",
        ratio(0, 2)
    );
    println!(
        "| ironpxe lockstep / ironpxe windowsize 16 (speed-up) | {:.2} | >= 3 |",
        ratio(0, 3)
    );
    println!(
        "\nironpxe retransmitted {retransmits} packets over all its transfers; the 1 Gbit/s link alone needs {:.3} s for the file's bytes.",
        (size as f64 * 8.0) / 1e9
    );
    Ok(())
}
