//! `ironpxe-bench http`: many concurrent downloads of one large initrd, from ironpxe
//! (the URL its own iPXE script hands out) and from nginx with `sendfile on` serving
//! the same file, side by side in rounds; wall time, server CPU and ironpxe's memory.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ironpxe_core::{BootUrls, ClientArch, MacAddr};
use ironpxe_lab::DEFAULT_HTTP_PORT;

use crate::env::{machine_notes, random_file, Env};
use crate::procstat::{clock_ticks_per_sec, cpu_ticks, memory_kib};

/// Flags of `ironpxe-bench http`.
#[derive(clap::Args)]
pub struct Args {
    /// Concurrent downloads per case.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Size of the initrd, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: usize,
    /// Rounds; each runs both servers, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// nginx unpacked from its Debian package into the lab cache, never installed: the
/// package would start a daemon on the host.
pub(crate) fn nginx() -> Result<PathBuf> {
    let dir = ironpxe_lab::cache_dir().join("nginx");
    let bin = dir.join("root/usr/sbin/nginx");
    if bin.is_file() {
        return Ok(bin);
    }
    let dl = dir.join("debs");
    std::fs::create_dir_all(&dl)?;
    let st = Command::new("apt-get")
        .args(["download", "nginx"])
        .current_dir(&dl)
        .status()
        .context("cannot run apt-get download (Debian only)")?;
    if !st.success() {
        bail!("apt-get download nginx failed; run apt-get update first");
    }
    for deb in std::fs::read_dir(&dl)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let st = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root"))
                .status()?;
            if !st.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
    }
    if !bin.is_file() {
        bail!("{} missing after unpacking nginx", bin.display());
    }
    Ok(bin)
}

/// CPU ticks of `pid` and its direct children (nginx's workers).
fn tree_ticks(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: u64 = children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .filter_map(|c| cpu_ticks(c).ok())
        .sum();
    cpu_ticks(pid).unwrap_or(0) + kids
}

/// One case: `clients` curls at once in the client namespace. Returns the wall time
/// and checks every download's size.
fn download(env: &Env, url: &str, clients: usize, size: u64) -> Result<f64> {
    let script = format!(
        "for i in $(seq {clients}); do curl -sS -o /dev/null -w '%{{size_download}}\\n' '{url}' & done; wait"
    );
    let t = Instant::now();
    let out = env.run_ok(&env.client.ns, "sh", &["-c", &script])?;
    let wall = t.elapsed().as_secs_f64();
    let sizes: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if sizes.len() != clients || sizes.iter().any(|&s| s != size) {
        bail!("{url}: expected {clients} downloads of {size} bytes, got {sizes:?}");
    }
    Ok(wall)
}

pub fn run(a: Args) -> Result<()> {
    let machine = machine_notes();
    let nginx_bin = nginx()?;
    let mut env = Env::new("bench-http", false)?;
    let dir = env.lab.tmp_dir().to_path_buf();
    random_file(&dir, "initrd", a.size_mb << 20)?;
    let initrd = dir.join("initrd");
    let size = std::fs::metadata(&initrd)?.len();
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"kernel")?;

    let mut args = env
        .lab
        .ironpxe_boot_args(&kernel, &[&initrd], "console=ttyS0");
    args.push("-l".into());
    args.push(env.lab.pxe_addr().to_string().into());
    let ironpxe = env.lab.start_ironpxe(&args)?;
    let ipid = ironpxe.pid();
    // The initrd URL exactly as ironpxe's script for a BIOS machine gives it.
    let base = format!("http://{}:{DEFAULT_HTTP_PORT}", env.lab.pxe_addr());
    let mac: MacAddr = "02:42:48:54:54:50".parse()?;
    let script_url = BootUrls::from_base(&base)?.script(mac, ClientArch::Bios);
    let script = env.run_ok(&env.client.ns, "curl", &["-sS", &script_url])?;
    let ironpxe_url = script
        .split_whitespace()
        .filter(|w| w.contains("/_/file?"))
        .nth(1)
        .with_context(|| format!("no initrd URL in ironpxe's script:\n{script}"))?
        .to_string();

    let naddr = env.add_server_addr(3)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{ sendfile on; tcp_nopush on; access_log off;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {naddr}:8080; root {d}; }} }}\n",
            d = dir.display()
        ),
    )?;
    let ns = env.lab.pxe_ns();
    let conf_s = conf.display().to_string();
    let npid = env.spawn(
        "nginx",
        &ns,
        &nginx_bin,
        &["-c", &conf_s, "-e", "stderr"],
        &[],
    )?;
    let nginx_url = format!("http://{naddr}:8080/initrd");
    crate::env::retry(std::time::Duration::from_secs(10), || {
        env.run_ok(
            &env.client.ns,
            "curl",
            &["-sSf", "-o", "/dev/null", "-r", "0-0", &nginx_url],
        )
    })?;
    env.check_running()?;
    // Warm the page cache and both servers once.
    download(&env, &ironpxe_url, 1, size)?;
    download(&env, &nginx_url, 1, size)?;

    let hz = clock_ticks_per_sec();
    let gb = (a.clients as f64 * size as f64) / 1e9;
    let mut rows = String::new();
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (rss0, _) = memory_kib(ipid)?;
    for round in 0..a.rounds {
        let one = |name: &str| -> Result<(f64, f64)> {
            let (pid, url) = if name == "ironpxe" {
                (ipid, &ironpxe_url)
            } else {
                (npid, &nginx_url)
            };
            let c0 = tree_ticks(pid);
            let wall = download(&env, url, a.clients, size)?;
            let cpu = (tree_ticks(pid) - c0) as f64 / hz;
            Ok((wall, cpu))
        };
        let order = if round % 2 == 0 {
            ["ironpxe", "nginx"]
        } else {
            ["nginx", "ironpxe"]
        };
        let mut got = std::collections::HashMap::new();
        for name in order {
            got.insert(name, one(name)?);
        }
        let (iw, ic) = got["ironpxe"];
        let (nw, nc) = got["nginx"];
        ratios.push(iw / nw);
        cpu_ratios.push(ic / nc.max(0.01));
        writeln!(
            rows,
            "| {} | {} | {iw:.2} s | {:.2} s/GB | {nw:.2} s | {:.2} s/GB | {:.2} | {:.2} |",
            round + 1,
            order.join(" → "),
            ic / gb,
            nc / gb,
            iw / nw,
            ic / nc.max(0.01),
        )?;
    }
    let (rss1, hwm) = memory_kib(ipid)?;
    println!(
        "## HTTP: {} concurrent downloads of a {} MiB initrd\n",
        a.clients, a.size_mb
    );
    println!("{machine}\n");
    println!(
        "ironpxe: `{}`; nginx: `{}` (sendfile on, 2 workers)\n",
        ironpxe_url, nginx_url
    );
    println!("| round | order | ironpxe wall | ironpxe CPU | nginx wall | nginx CPU | time ratio | CPU ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    print!("{rows}");
    println!(
        "\nmedian time ratio ironpxe/nginx {:.2}, median CPU ratio {:.2}; ironpxe VmRSS {rss0} → {rss1} KiB, peak (VmHWM) {hwm} KiB",
        crate::env::median(&ratios),
        crate::env::median(&cpu_ratios)
    );
    drop(ironpxe);
    Ok(())
}
