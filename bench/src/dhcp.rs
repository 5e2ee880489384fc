//! `ironpxe-bench dhcp`: ProxyDHCP answering of ironpxe and dnsmasq (proxy mode),
//! side by side in one run, driven by ISC perfdhcp at a sweep of rates.
//!
//! perfdhcp (Debian 12 package kea-admin) runs in the lab's client namespace and
//! broadcasts DISCOVERs out of the client interface (`-i`: DISCOVER-OFFER only),
//! each carrying the options a BIOS PXE ROM sends: 60 `PXEClient:Arch:00000:UNDI:002001`,
//! 93 = 0, 94 = UNDI 2.1 and 97 (a client GUID). Installing the kea packages could
//! start daemons on the host, so they are fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` into `<lab cache>/kea/`, like in.tftpd.
//!
//! Both servers listen on UDP 67 in the lab's ironpxe namespace, so only one runs at
//! a time: for each rate each server is started, driven for `--secs` seconds and
//! stopped (by PID), in an order that alternates from rate to rate. For each run the
//! report gives perfdhcp's counts and delays, the UDP datagrams the server
//! namespace sent (an independent count of answers, from /proc/net/snmp) and the
//! server's user+system CPU time per answer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{machine_notes, version_of, Env};
use crate::procstat::{clock_ticks_per_sec, cpu_ticks};
use crate::storm::PXE_CLASS;

/// Flags of `ironpxe-bench dhcp`.
#[derive(clap::Args)]
pub struct Args {
    /// DISCOVER rates to sweep, per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    rates: Vec<u32>,
    /// Seconds perfdhcp sends at each rate, per server.
    #[arg(long, default_value_t = 5)]
    secs: u32,
    /// Distinct client MACs perfdhcp cycles through.
    #[arg(long, default_value_t = 100_000)]
    clients: u32,
}

/// perfdhcp and the libraries it links against, unpacked from the Debian packages.
pub struct Perfdhcp {
    pub bin: PathBuf,
    pub lib_dir: PathBuf,
}

/// The packages perfdhcp needs beyond a Debian 12 base system.
const KEA_DEBS: &[&str] = &["kea-admin", "kea-common", "liblog4cplus-2.0.5"];

/// Unpacks perfdhcp into `<lab cache>/kea/` with `apt-get download` and `dpkg-deb
/// -x`; the kea packages are never installed.
pub fn perfdhcp() -> Result<Perfdhcp> {
    let dir = ironpxe_lab::cache_dir().join("kea");
    let root = dir.join("root");
    let p = Perfdhcp {
        bin: root.join("usr/sbin/perfdhcp"),
        lib_dir: root.join("usr/lib/x86_64-linux-gnu"),
    };
    if p.bin.is_file() && p.lib_dir.join("liblog4cplus-2.0.so.3").exists() {
        return Ok(p);
    }
    let dl = dir.join("debs");
    std::fs::create_dir_all(&dl)?;
    let st = Command::new("apt-get")
        .arg("download")
        .args(KEA_DEBS)
        .current_dir(&dl)
        .status()
        .context("cannot run apt-get download (Debian only)")?;
    if !st.success() {
        bail!(
            "apt-get download {} failed; run apt-get update first",
            KEA_DEBS.join(" ")
        );
    }
    for deb in std::fs::read_dir(&dl)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let st = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .status()?;
            if !st.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
    }
    if !p.bin.is_file() {
        bail!("{} missing after unpacking kea-admin", p.bin.display());
    }
    Ok(p)
}

/// The `-o code,hex` options of a BIOS PXE DISCOVER: vendor class, client system
/// architecture 0 (x86 BIOS), network interface UNDI 2.1 and a client GUID.
pub fn pxe_options() -> Vec<String> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut guid = vec![0u8];
    guid.extend((0..16u8).map(|i| 0x10 + i));
    vec![
        format!("60,{}", hex(PXE_CLASS)),
        "93,0000".into(),
        "94,010201".into(),
        format!("97,{}", hex(&guid)),
    ]
}

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Ironpxe,
    Dnsmasq,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ironpxe => "ironpxe",
            Server::Dnsmasq => "dnsmasq",
        }
    }
}

/// A dnsmasq started by this benchmark, killed (by PID) on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running server: its PID and what stops it when dropped.
enum Running {
    Ironpxe(ironpxe_lab::Ironpxe),
    Dnsmasq(Dnsmasq),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Ironpxe(i) => i.pid(),
            Running::Dnsmasq(d) => d.0.id(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Ironpxe(i) = self {
            i.stop();
        }
    }
}

/// Starts `server` in the ironpxe namespace and waits until it listens on UDP 67.
fn start(env: &Env, server: Server, n: usize) -> Result<Running> {
    let running = match server {
        Server::Ironpxe => {
            let dir = env.lab.tmp_dir();
            let (kernel, initrd) = (dir.join("dhcp-vmlinuz"), dir.join("dhcp-initrd"));
            std::fs::write(&kernel, b"not a kernel: ProxyDHCP only")?;
            std::fs::write(&initrd, b"not an initrd: ProxyDHCP only")?;
            let mut args = env
                .lab
                .ironpxe_boot_args(&kernel, &[&initrd], "console=ttyS0");
            args.push("-l".into());
            args.push(env.lab.pxe_addr().to_string().into());
            Running::Ironpxe(env.lab.start_ironpxe(&args)?)
        }
        Server::Dnsmasq => {
            let o = env.lab.pxe_addr().octets();
            let net = format!("{}.{}.{}.0", o[0], o[1], o[2]);
            let leases = env.lab.tmp_dir().join("dnsmasq.leases");
            let log = std::fs::File::create(env.lab.out_dir().join(format!("dnsmasq-{n}.log")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &env.lab.pxe_ns(), "dnsmasq"])
                .args([
                    "--port=0",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    "--log-facility=-",
                    &format!("--interface={}", env.lab.pxe_ifname()),
                    "--bind-interfaces",
                    &format!("--dhcp-leasefile={}", leases.display()),
                    &format!("--dhcp-range={net},proxy"),
                    "--pxe-service=x86PC,ironpxe-bench,undionly",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start dnsmasq")?;
            Running::Dnsmasq(Dnsmasq(child))
        }
    };
    let pid = running.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == server.name() && listens_udp67(env)? {
            return Ok(running);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} (PID {pid}, comm {comm:?}) is not listening on UDP 67 after 10 s; see {}",
                server.name(),
                env.lab.out_dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a socket in the ironpxe namespace is bound to UDP port 67.
fn listens_udp67(env: &Env) -> Result<bool> {
    let out = env.run_ok(&env.lab.pxe_ns(), "cat", &["/proc/net/udp"])?;
    Ok(out.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| a.ends_with(":0043"))
    }))
}

/// The `Udp:` counters of a namespace's /proc/net/snmp, by name.
fn udp_counters(env: &Env, ns: &str) -> Result<Vec<(String, u64)>> {
    let snmp = env.run_ok(ns, "cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp of {ns}");
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect())
}

fn counter(c: &[(String, u64)], name: &str) -> u64 {
    c.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

/// What perfdhcp printed about the DISCOVER-OFFER exchange.
#[derive(Debug, Default, Clone)]
pub struct PerfdhcpStats {
    pub sent: u64,
    pub received: u64,
    /// min, avg, max, std deviation, ms.
    pub delays_ms: [Option<f64>; 4],
}

/// Parses perfdhcp's report: the first `sent packets`, `received packets` and
/// `min/avg/max delay` and `std deviation` lines (the DO exchange comes first).
pub fn parse_perfdhcp(text: &str) -> PerfdhcpStats {
    let mut s = PerfdhcpStats::default();
    let num =
        |l: &str| -> Option<f64> { l.split(':').nth(1)?.split_whitespace().next()?.parse().ok() };
    let (mut got_sent, mut got_recv) = (false, false);
    for l in text.lines().map(str::trim) {
        if l.starts_with("sent packets:") && !got_sent {
            s.sent = num(l).unwrap_or(0.0) as u64;
            got_sent = true;
        } else if l.starts_with("received packets:") && !got_recv {
            s.received = num(l).unwrap_or(0.0) as u64;
            got_recv = true;
        }
        for (i, k) in ["min delay:", "avg delay:", "max delay:", "std deviation:"]
            .iter()
            .enumerate()
        {
            if l.starts_with(k) && s.delays_ms[i].is_none() {
                s.delays_ms[i] = num(l);
            }
        }
    }
    s
}

/// One server at one rate.
#[derive(Debug, Clone)]
pub struct Sample {
    pub server: Server,
    pub rate: u32,
    pub perf: PerfdhcpStats,
    /// UDP datagrams sent from the ironpxe namespace during the run.
    pub server_udp_out: u64,
    /// UDP datagrams dropped on full receive buffers in the ironpxe namespace.
    pub server_rcvbuf_errors: u64,
    /// The server's user+system CPU seconds during the run.
    pub cpu_secs: f64,
}

impl Sample {
    /// Answers: perfdhcp's received count, or if it counted none, the datagrams the
    /// server namespace sent.
    pub fn answers(&self) -> u64 {
        if self.perf.received > 0 {
            self.perf.received
        } else {
            self.server_udp_out
        }
    }

    /// CPU microseconds per answer.
    pub fn cpu_us_per_answer(&self) -> f64 {
        self.cpu_secs * 1e6 / self.answers().max(1) as f64
    }
}

/// Runs perfdhcp once against whichever server listens, at `rate` for `secs`.
fn drive(env: &Env, p: &Perfdhcp, rate: u32, secs: u32, clients: u32) -> Result<String> {
    let lib = p.lib_dir.display().to_string();
    let mut args: Vec<String> = vec![
        "-4".into(),
        "-i".into(),
        "-l".into(),
        env.client.ifname.clone(),
        "-r".into(),
        rate.to_string(),
        "-p".into(),
        secs.to_string(),
        "-R".into(),
        clients.to_string(),
        "-W".into(),
        "1000000".into(),
    ];
    for o in pxe_options() {
        args.push("-o".into());
        args.push(o);
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &env.client.ns])
        .arg(&p.bin)
        .args(&args)
        .env("LD_LIBRARY_PATH", &lib)
        .stdin(Stdio::null())
        .output()
        .context("cannot run perfdhcp")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // perfdhcp exits non-zero when packets were dropped; that is a result, not an
    // error, as long as it printed its statistics.
    if !text.contains("sent packets") {
        bail!("perfdhcp failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// Everything one `ironpxe-bench dhcp` run measured.
pub struct Report {
    pub samples: Vec<Sample>,
    pub secs: u32,
    pub machine: String,
    pub load_after: String,
    pub versions: Vec<String>,
    pub command: String,
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the lab and runs every rate against both servers, alternating the order.
pub fn run_sweep(a: &Args) -> Result<Report> {
    let machine = machine_notes();
    let p = perfdhcp()?;
    let lib = p.lib_dir.display().to_string();
    let bin = ironpxe_lab::ironpxe_bin()?;
    let versions = vec![
        format!("ironpxe: {}", bin.display()),
        format!("dnsmasq: {}", version_of("dnsmasq", &["--version"], &[])),
        format!(
            "perfdhcp: {}",
            version_of(
                &p.bin.display().to_string(),
                &["-v"],
                &[("LD_LIBRARY_PATH", &lib)]
            )
        ),
    ];
    let env = Env::new("bench-dhcp", false)?;
    let pxe_ns = env.lab.pxe_ns();
    let ticks = clock_ticks_per_sec();
    let mut samples = Vec::new();
    let mut n = 0;
    for (i, &rate) in a.rates.iter().enumerate() {
        let order = if i % 2 == 0 {
            [Server::Ironpxe, Server::Dnsmasq]
        } else {
            [Server::Dnsmasq, Server::Ironpxe]
        };
        for server in order {
            n += 1;
            let running = start(&env, server, n)?;
            let pid = running.pid();
            let udp0 = udp_counters(&env, &pxe_ns)?;
            let cpu0 = cpu_ticks(pid)?;
            let text = drive(&env, &p, rate, a.secs, a.clients)?;
            let cpu1 = cpu_ticks(pid)?;
            let udp1 = udp_counters(&env, &pxe_ns)?;
            drop(running);
            std::fs::write(
                env.lab
                    .out_dir()
                    .join(format!("perfdhcp-{}-{rate}.txt", server.name())),
                &text,
            )?;
            let d = |k: &str| counter(&udp1, k).saturating_sub(counter(&udp0, k));
            let s = Sample {
                server,
                rate,
                perf: parse_perfdhcp(&text),
                server_udp_out: d("OutDatagrams"),
                server_rcvbuf_errors: d("RcvbufErrors"),
                cpu_secs: (cpu1 - cpu0) as f64 / ticks,
            };
            eprintln!(
                "{} at {rate}/s: sent {}, perfdhcp received {}, server sent {}, cpu {:.2} s",
                server.name(),
                s.perf.sent,
                s.perf.received,
                s.server_udp_out,
                s.cpu_secs
            );
            samples.push(s);
            // Let the sockets settle before the next server binds port 67.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    eprintln!("logs and perfdhcp output: {}", env.lab.out_dir().display());
    Ok(Report {
        samples,
        secs: a.secs,
        machine,
        load_after: load_avg(),
        versions,
        command: perfdhcp_command_line(&env, &p.bin, a),
    })
}

fn perfdhcp_command_line(env: &Env, p: &Path, a: &Args) -> String {
    let opts: Vec<String> = pxe_options().iter().map(|o| format!("-o {o}")).collect();
    format!(
        "{} -4 -i -l {} -r RATE -p {} -R {} -W 1000000 {}",
        p.display(),
        env.client.ifname,
        a.secs,
        a.clients,
        opts.join(" ")
    )
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "## ProxyDHCP: ironpxe against dnsmasq (perfdhcp)\n")?;
        writeln!(
            f,
            "- machine: {}; load average at end {}",
            self.machine, self.load_after
        )?;
        for v in &self.versions {
            writeln!(f, "- {v}")?;
        }
        writeln!(f, "- client: `{}`", self.command)?;
        writeln!(
            f,
            "- each run {} s; answers = perfdhcp's received count (server-side UDP datagrams sent if perfdhcp counted none)\n",
            self.secs
        )?;
        writeln!(
            f,
            "| rate/s | server | sent | perfdhcp received | answered % | server UDP out | server rcvbuf drops | delay min/avg/max/sd ms | CPU s | CPU µs/answer |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|")?;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
        for s in &self.samples {
            let pct = 100.0 * s.answers() as f64 / s.perf.sent.max(1) as f64;
            let d = &s.perf.delays_ms;
            writeln!(
                f,
                "| {} | {} | {} | {} | {:.1} | {} | {} | {}/{}/{}/{} | {:.2} | {:.1} |",
                s.rate,
                s.server.name(),
                s.perf.sent,
                s.perf.received,
                pct,
                s.server_udp_out,
                s.server_rcvbuf_errors,
                ms(d[0]),
                ms(d[1]),
                ms(d[2]),
                ms(d[3]),
                s.cpu_secs,
                s.cpu_us_per_answer()
            )?;
        }
        let mut ratios = String::new();
        let rates: Vec<u32> = {
            let mut r: Vec<u32> = self.samples.iter().map(|s| s.rate).collect();
            r.dedup();
            r
        };
        for rate in rates {
            let get = |srv| {
                self.samples
                    .iter()
                    .find(|s| s.rate == rate && s.server == srv)
                    .map(Sample::cpu_us_per_answer)
            };
            if let (Some(i), Some(d)) = (get(Server::Ironpxe), get(Server::Dnsmasq)) {
                let _ = writeln!(ratios, "| {rate} | {:.2} |", i / d);
            }
        }
        writeln!(
            f,
            "\n| rate/s | ironpxe / dnsmasq CPU per answer |\n|---|---|\n{ratios}"
        )
    }
}

/// `ironpxe-bench dhcp`: runs the sweep and prints its report.
pub fn run(a: Args) -> Result<()> {
    let report = run_sweep(&a)?;
    print!("{report}");
    Ok(())
}
