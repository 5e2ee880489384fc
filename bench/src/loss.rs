//! `ironpxe-bench tftp-loss`: 3 MiB to curl (blksize 1468, lockstep) while nftables
//! drops 10% of the packets arriving at the client, from ironpxe, dnsmasq and
//! in.tftpd. A reference for the loss test, with the same rule.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::env::{machine_notes, random_file, retry, sha256_file, Env};
use crate::servers;

#[derive(clap::Args)]
pub struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 3)]
    size_mib: usize,
    /// Give up on a transfer after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub fn run(a: Args) -> Result<()> {
    let notes = machine_notes();
    let mut env = Env::new("bench-tftp-loss", false)?;
    let want = random_file(&env.root, "loss.bin", a.size_mib << 20)?;
    let tftpd = servers::tftpd_hpa()?;
    let dnsmasq_ip = env.add_server_addr(3)?;
    let tftpd_ip = env.add_server_addr(4)?;
    let _ironpxe = servers::ironpxe(&env)?;
    servers::dnsmasq(&mut env, dnsmasq_ip)?;
    servers::in_tftpd(&mut env, &tftpd, tftpd_ip)?;
    let out = env.lab.tmp_dir().join("fetched.bin");
    let servers = [
        ("ironpxe", env.lab.pxe_addr()),
        ("dnsmasq", dnsmasq_ip),
        ("tftp-hpa", tftpd_ip),
    ];
    let curl = |server: std::net::Ipv4Addr, timeout: u64| {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        let o = env.lab.run_in(
            &env.client.ns,
            "timeout",
            &[
                &timeout.to_string(),
                "curl",
                "-sS",
                "--tftp-blksize",
                "1468",
                &format!("tftp://{server}/loss.bin"),
                "-o",
                &out.display().to_string(),
            ],
        );
        (o, t.elapsed())
    };
    for (name, ip) in servers {
        retry(Duration::from_secs(10), || {
            let (o, _) = curl(ip, 10);
            anyhow::ensure!(o?.status.success(), "{name} does not answer");
            Ok(())
        })?;
    }
    let ns = env.client.ns.clone();
    env.run_ok(&ns, "nft", &["add", "table", "inet", "loss"])?;
    env.run_ok(
        &ns,
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "loss",
            "input",
            "{ type filter hook input priority 0; }",
        ],
    )?;
    env.run_ok(
        &ns,
        "nft",
        &[
            "add", "rule", "inet", "loss", "input", "udp", "sport", "!=", "67", "numgen", "random",
            "mod", "10", "0", "drop",
        ],
    )?;
    println!(
        "## TFTP under 10% loss ({} MiB to curl --tftp-blksize 1468)\n",
        a.size_mib
    );
    println!("Machine: {notes}\n");
    println!("| server | result |");
    println!("|---|---|");
    for (name, ip) in servers {
        let (o, took) = curl(ip, a.timeout_secs);
        let ok = o?.status.success() && sha256_file(&out).ok().as_deref() == Some(want.as_str());
        let result = if ok {
            format!("byte-exact in {:.2} s", took.as_secs_f64())
        } else {
            format!("not delivered within {} s", a.timeout_secs)
        };
        eprintln!("{name}: {result}");
        println!("| {name} | {result} |");
    }
    Ok(())
}
