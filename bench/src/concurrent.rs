//! `ironpxe-bench concurrent`: N transfers of one iPXE binary started at the same
//! moment against ironpxe; failures, timings, ironpxe's peak RSS and CPU time.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ironpxe_lab::preflight::IPXE_EFI;

use crate::env::{machine_notes, sha256_file, Env};
use crate::procstat::{clock_ticks_per_sec, cpu_ticks, memory_kib};
use crate::servers;

#[derive(clap::Args)]
pub struct Args {
    /// Simultaneous transfers.
    #[arg(long, default_value_t = 500)]
    clients: usize,
    /// Do not shape the client link to 1 Gbit/s.
    #[arg(long)]
    no_shape: bool,
}

pub fn run(a: Args) -> Result<()> {
    let notes = machine_notes();
    let env = Env::new("bench-concurrent", !a.no_shape)?;
    let ironpxe = servers::ironpxe(&env)?;
    let pid = ironpxe.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ironpxe" {
        bail!("PID {pid} is {comm:?}, not ironpxe");
    }
    let want = sha256_file(std::path::Path::new(IPXE_EFI))?;
    let size = std::fs::metadata(IPXE_EFI)?.len();
    let exe = std::env::current_exe()?.display().to_string();
    let server = env.lab.pxe_addr().to_string();
    let count = a.clients.to_string();
    let (rss0, _) = memory_kib(pid)?;
    let cpu0 = cpu_ticks(pid)?;
    let t = Instant::now();
    let out = env.lab.run_in(
        &env.client.ns,
        &exe,
        &[
            "many-clients",
            "--server",
            &server,
            "--file",
            "ipxe.efi",
            "--count",
            &count,
            "--sha256",
            &want,
        ],
    )?;
    let wall = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "client failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Transfers log their end just after the last ACK.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (done, failed) = loop {
        let ev = ironpxe.events();
        let done = ev.iter().filter(|e| e.name == "tftp.done").count();
        let failed = ev.iter().filter(|e| e.name == "tftp.failed").count();
        if done + failed >= a.clients || Instant::now() > deadline {
            break (done, failed);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let retransmits: u64 = ironpxe
        .events()
        .iter()
        .filter(|e| e.name == "tftp.done")
        .filter_map(|e| e.field("retransmits")?.parse::<u64>().ok())
        .sum();
    let (rss1, hwm) = memory_kib(pid)?;
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks_per_sec();
    let result = text
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or("RESULT missing");

    println!(
        "## {} concurrent TFTP transfers of ipxe.efi ({size} bytes)\n",
        a.clients
    );
    println!("Machine: {notes}");
    println!("ironpxe binary: {}", ironpxe_lab::ironpxe_bin()?.display());
    println!(
        "Link: {}; client: tokio, blksize 1468 + tsize, lockstep, one socket per transfer, all started together\n",
        if a.no_shape { "unshaped veth" } else { "veth shaped to 1 Gbit/s both ways (tbf)" }
    );
    println!("| measure | value |");
    println!("|---|---|");
    for kv in result.split_whitespace().skip(1) {
        if let Some((k, v)) = kv.split_once('=') {
            println!("| client {k} | {v} |");
        }
    }
    println!("| ironpxe tftp.done events | {done} |");
    println!("| ironpxe tftp.failed events | {failed} |");
    println!("| ironpxe retransmitted packets | {retransmits} |");
    println!("| ironpxe VmRSS before | {rss0} KiB |");
    println!("| ironpxe VmRSS after | {rss1} KiB |");
    println!("| ironpxe peak RSS (VmHWM) | {hwm} KiB |");
    println!("| ironpxe CPU time (user+sys) | {cpu:.2} s |");
    println!(
        "| aggregate goodput | {:.1} MiB/s |",
        (size as f64 * a.clients as f64) / wall.as_secs_f64() / f64::from(1u32 << 20)
    );
    for l in text.lines().filter(|l| l.starts_with("FAIL")).take(20) {
        println!("\n    {l}");
    }
    Ok(())
}
