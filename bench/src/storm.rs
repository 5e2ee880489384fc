//! `ironpxe-bench storm`: N simulated BIOS PXE clients boot from one ironpxe at once,
//! each running the whole protocol a real machine runs against it:
//!
//! 1. ProxyDHCP: a PXE DISCOVER (option 60 `PXEClient:Arch:00000:UNDI:002001`,
//!    option 93 = 0, its own MAC and xid) broadcast to port 67; the answer is
//!    ironpxe's proxy OFFER (yiaddr 0, option 60 `PXEClient`) with that xid.
//! 2. TFTP: the OFFER's boot file (undionly.kpxe) with blksize 1432 and tsize, the
//!    size checked against the OACK and the file on disk.
//! 3. HTTP: the iPXE script from [`BootUrls::script`], then every `/_/file` URL on its
//!    `kernel` and `initrd` lines, each body counted against its Content-Length, then
//!    the `/_/booting` callback the script would make.
//!
//! The clients run in the lab's client namespace, in a child process
//! (`ironpxe-bench storm-clients`), one tokio task each. They cannot each bind UDP 68,
//! so one socket bound to 0.0.0.0:68 on the client interface (SO_BINDTODEVICE,
//! SO_BROADCAST) sends every DISCOVER and a demultiplexer hands each OFFER to the
//! task waiting for its xid. The child prints one line per client; the parent reads
//! ironpxe's /proc entries before and after and builds the [`Report`].
//!
//! Timestamps are user-space `Instant`s taken in the client tasks, so they include
//! the clients' own scheduling delay (the clients and ironpxe share the machine).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpxe_core::urls::{BOOTING_PATH, FILE_PATH};
use ironpxe_core::{BootUrls, ClientArch, MacAddr};
use ironpxe_lab::preflight::UNDIONLY_KPXE;
use ironpxe_lab::DEFAULT_HTTP_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

use crate::client::fetch;
use crate::env::{machine_notes, random_file, Env};
use crate::procstat::{clock_ticks_per_sec, cpu_ticks, memory_kib};

/// The vendor class a BIOS PXE ROM (UNDI 2.1) sends.
pub const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
/// The largest block size iPXE asks for, so the one the storm asks for.
pub const TFTP_BLKSIZE: u16 = 1432;

/// Flags of `ironpxe-bench storm`.
#[derive(clap::Args)]
pub struct Args {
    /// Simulated clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Size of the generated initrd, MiB.
    #[arg(long, default_value_t = 8)]
    initrd_mb: usize,
    /// Size of the generated kernel, MiB (ironpxe only serves it).
    #[arg(long, default_value_t = 4)]
    kernel_mb: usize,
    /// Spread the clients' starts evenly over this many milliseconds (0: all at once).
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Every client must have booted this many seconds after its start.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Shape the client link to 1 Gbit/s both ways (tbf).
    #[arg(long)]
    shape: bool,
}

/// What one storm does; [`run_storm`] takes it.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// Simulated clients.
    pub clients: usize,
    /// Generated initrd size, MiB.
    pub initrd_mb: usize,
    /// Generated kernel size, MiB.
    pub kernel_mb: usize,
    /// Starts spread over this many milliseconds.
    pub ramp_ms: u64,
    /// Per-client deadline, seconds.
    pub deadline_secs: u64,
    /// Shape the client link to 1 Gbit/s.
    pub shape: bool,
    /// The `ironpxe-bench` executable, run in the client namespace as `storm-clients`.
    pub client_exe: PathBuf,
}

/// A step of a simulated boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// DISCOVER until the ProxyDHCP OFFER.
    Dhcp,
    /// The TFTP read of the boot file.
    Tftp,
    /// The iPXE script over HTTP.
    Script,
    /// Kernel and initrds over HTTP.
    Files,
    /// The `/_/booting` callback.
    Booting,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Dhcp,
        Phase::Tftp,
        Phase::Script,
        Phase::Files,
        Phase::Booting,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Dhcp => "dhcp",
            Phase::Tftp => "tftp",
            Phase::Script => "script",
            Phase::Files => "files",
            Phase::Booting => "booting",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Phase {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| anyhow!("unknown phase {s:?}"))
    }
}

/// How long each phase of one booted client took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// DISCOVER sent until OFFER received.
    pub dhcp: Duration,
    /// RRQ until the last DATA.
    pub tftp: Duration,
    /// The script's request until its last byte.
    pub script: Duration,
    /// Kernel and initrds, one after the other as iPXE fetches them.
    pub files: Duration,
    /// From the DISCOVER to the end of the booting callback.
    pub total: Duration,
    /// HTTP body bytes received (script, files, callback).
    pub http_bytes: u64,
    /// DISCOVERs sent until the OFFER came (1 when the first was answered).
    pub discovers: u32,
}

/// The end of one simulated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Every phase succeeded.
    Booted {
        /// The client's number.
        index: usize,
        /// Its phases.
        timings: Timings,
    },
    /// A phase failed; the later ones were not tried.
    Failed {
        /// The client's number.
        index: usize,
        /// The phase that failed.
        phase: Phase,
        /// Why, in one line.
        reason: String,
    },
}

impl ClientOutcome {
    /// The line the client process prints: `OK i dhcp tftp script files total bytes
    /// discovers` (durations in microseconds) or `FAIL i phase reason`.
    pub fn to_line(&self) -> String {
        match self {
            ClientOutcome::Booted { index, timings: t } => format!(
                "OK {index} {} {} {} {} {} {} {}",
                t.dhcp.as_micros(),
                t.tftp.as_micros(),
                t.script.as_micros(),
                t.files.as_micros(),
                t.total.as_micros(),
                t.http_bytes,
                t.discovers
            ),
            ClientOutcome::Failed {
                index,
                phase,
                reason,
            } => format!("FAIL {index} {phase} {}", reason.replace('\n', " ")),
        }
    }

    /// Reads a line of [`ClientOutcome::to_line`]; `None` for any other line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut w = line.split_whitespace();
        match w.next()? {
            "OK" => {
                let v: Vec<u64> = w.map(|x| x.parse().ok()).collect::<Option<_>>()?;
                let [index, dhcp, tftp, script, files, total, http_bytes, discovers] = v[..] else {
                    return None;
                };
                let us = Duration::from_micros;
                Some(ClientOutcome::Booted {
                    index: usize::try_from(index).ok()?,
                    timings: Timings {
                        dhcp: us(dhcp),
                        tftp: us(tftp),
                        script: us(script),
                        files: us(files),
                        total: us(total),
                        http_bytes,
                        discovers: u32::try_from(discovers).ok()?,
                    },
                })
            }
            "FAIL" => {
                let index = w.next()?.parse().ok()?;
                let phase = w.next()?.parse().ok()?;
                Some(ClientOutcome::Failed {
                    index,
                    phase,
                    reason: w.collect::<Vec<_>>().join(" "),
                })
            }
            _ => None,
        }
    }
}

/// The `p`th percentile (0–100) of ascending `sorted` values, nearest rank; NaN
/// when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Failures counted by phase and reason. Digits in reasons become `N`, so "short
/// body: 12 of 40 bytes" from two clients counts as one kind.
pub fn tally_failures(outcomes: &[ClientOutcome]) -> BTreeMap<(Phase, String), usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        if let ClientOutcome::Failed { phase, reason, .. } = o {
            let mut kind = String::new();
            for c in reason.chars() {
                if c.is_ascii_digit() {
                    if !kind.ends_with('N') {
                        kind.push('N');
                    }
                } else {
                    kind.push(c);
                }
            }
            *t.entry((*phase, kind)).or_insert(0) += 1;
        }
    }
    t
}

/// The URLs a simulated iPXE takes from ironpxe's script.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptUrls {
    /// Kernel first, then the initrds, in script order, each once.
    pub files: Vec<String>,
    /// The `/_/booting` callback, if the script makes one.
    pub booting: Option<String>,
}

/// Finds the URLs on the script's `kernel`/`initrd` lines (those naming `/_/file`)
/// and its booting callback.
pub fn script_urls(script: &str) -> ScriptUrls {
    let mut urls = ScriptUrls::default();
    let file_route = format!("{FILE_PATH}?");
    let booting_route = format!("{BOOTING_PATH}?");
    for line in script.lines() {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            continue;
        };
        for w in words.filter(|w| w.starts_with("http://") || w.starts_with("https://")) {
            if matches!(command, "kernel" | "initrd") && w.contains(&file_route) {
                if !urls.files.iter().any(|u| u == w) {
                    urls.files.push(w.to_string());
                }
            } else if w.contains(&booting_route) && urls.booting.is_none() {
                urls.booting = Some(w.to_string());
            }
        }
    }
    urls
}

/// The status code and Content-Length of an HTTP response head (up to and
/// including the blank line).
pub fn parse_head(head: &str) -> Result<(u16, Option<u64>)> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status:?}"))?;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse().context("bad Content-Length")?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                bail!("Transfer-Encoding {} instead of a Content-Length", v.trim());
            }
        }
    }
    Ok((code, length))
}

/// `RcvbufErrors` of the `Udp:` lines of a `/proc/net/snmp` text: datagrams the
/// kernel dropped because a socket's receive buffer was full.
pub fn udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?.split_whitespace();
    let values = udp.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
}

/// Everything one storm measured.
#[derive(Debug)]
pub struct Report {
    /// The configuration it ran with.
    pub config: StormConfig,
    /// One entry per client.
    pub outcomes: Vec<ClientOutcome>,
    /// From starting the client process to its exit.
    pub wall: Duration,
    /// ironpxe's VmRSS before the storm, KiB.
    pub rss_before_kib: u64,
    /// ironpxe's VmHWM after the storm, KiB.
    pub peak_rss_kib: u64,
    /// ironpxe's user+system CPU seconds during the storm.
    pub cpu_secs: f64,
    /// UDP datagrams dropped on full receive buffers during the storm, in the
    /// ironpxe namespace and in the client namespace.
    pub udp_drops: (Option<u64>, Option<u64>),
    /// Bytes of the boot file served over TFTP.
    pub tftp_file_bytes: u64,
    /// The ironpxe binary.
    pub binary: PathBuf,
    /// A line about the machine.
    pub machine: String,
}

impl Report {
    /// Clients that booted.
    pub fn booted(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, ClientOutcome::Booted { .. }))
            .count()
    }

    /// Clients that failed (including clients that printed no line at all).
    pub fn failed(&self) -> usize {
        self.config.clients - self.booted()
    }

    fn timings(&self) -> impl Iterator<Item = &Timings> {
        self.outcomes.iter().filter_map(|o| match o {
            ClientOutcome::Booted { timings, .. } => Some(timings),
            ClientOutcome::Failed { .. } => None,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "## Boot storm: {} simulated BIOS PXE clients (DHCP → TFTP → HTTP)\n",
            c.clients
        )?;
        writeln!(f, "Machine: {}", self.machine)?;
        writeln!(f, "ironpxe binary: {}", self.binary.display())?;
        writeln!(
            f,
            "Files: undionly.kpxe ({} bytes) over TFTP, blksize {TFTP_BLKSIZE}; kernel {} MiB and \
             one initrd {} MiB over HTTP",
            self.tftp_file_bytes, c.kernel_mb, c.initrd_mb
        )?;
        writeln!(
            f,
            "Clients: one tokio task each in a client namespace, started {}; link {}; DHCP \
             over one shared socket on UDP 68, OFFERs matched by xid; times are user-space \
             Instants in the clients\n",
            if c.ramp_ms == 0 {
                "together".to_string()
            } else {
                format!("over {} ms", c.ramp_ms)
            },
            if c.shape {
                "veth shaped to 1 Gbit/s (tbf)"
            } else {
                "unshaped veth"
            }
        )?;
        let booted = self.booted();
        writeln!(f, "| measure | value |\n|---|---|")?;
        writeln!(f, "| booted | {booted} |")?;
        writeln!(f, "| failed | {} |", self.failed())?;
        writeln!(f, "| storm wall time | {:.2} s |", self.wall.as_secs_f64())?;
        let bytes: u64 = self.timings().map(|t| t.http_bytes).sum();
        writeln!(
            f,
            "| aggregate HTTP throughput | {:.1} MiB/s ({} MiB in the wall time) |",
            bytes as f64 / self.wall.as_secs_f64() / f64::from(1u32 << 20),
            bytes >> 20
        )?;
        let repeated = self.timings().filter(|t| t.discovers > 1).count();
        writeln!(
            f,
            "| booted clients that repeated their DISCOVER | {repeated} |"
        )?;
        let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        writeln!(
            f,
            "| UDP receive-buffer drops, ironpxe / client namespace | {} / {} |",
            show(self.udp_drops.0),
            show(self.udp_drops.1)
        )?;
        writeln!(f, "| ironpxe VmRSS before | {} KiB |", self.rss_before_kib)?;
        writeln!(
            f,
            "| ironpxe peak RSS (VmHWM) | {} KiB |",
            self.peak_rss_kib
        )?;
        writeln!(
            f,
            "| ironpxe CPU time (user+sys) | {:.2} s |",
            self.cpu_secs
        )?;
        if booted > 0 {
            writeln!(
                f,
                "| ironpxe CPU per booted client | {:.1} ms |",
                self.cpu_secs * 1000.0 / booted as f64
            )?;
        }
        writeln!(
            f,
            "\n| phase | p50 ms | p99 ms | max ms |\n|---|---|---|---|"
        )?;
        type Pick = fn(&Timings) -> Duration;
        let phases: [(&str, Pick); 5] = [
            ("dhcp", |t| t.dhcp),
            ("tftp", |t| t.tftp),
            ("script", |t| t.script),
            ("kernel+initrds", |t| t.files),
            ("total", |t| t.total),
        ];
        for (name, pick) in phases {
            let mut v: Vec<f64> = self
                .timings()
                .map(|t| pick(t).as_secs_f64() * 1000.0)
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            writeln!(
                f,
                "| {name} | {:.1} | {:.1} | {:.1} |",
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                percentile(&v, 100.0)
            )?;
        }
        let tally = tally_failures(&self.outcomes);
        let silent = self.config.clients.saturating_sub(self.outcomes.len());
        if !tally.is_empty() || silent > 0 {
            writeln!(f, "\n| failed phase | reason | clients |\n|---|---|---|")?;
            for ((phase, reason), n) in &tally {
                writeln!(f, "| {phase} | {reason} | {n} |")?;
            }
            if silent > 0 {
                writeln!(
                    f,
                    "| ? | no result line from the client process | {silent} |"
                )?;
            }
        }
        Ok(())
    }
}

/// Builds a lab, starts ironpxe in it with a generated kernel and initrd, runs
/// `config.clients` simulated boots from the client namespace and reports.
pub fn run_storm(config: &StormConfig) -> Result<Report> {
    let machine = machine_notes();
    let env = Env::new("bench-storm", config.shape)?;
    let dir = env.lab.tmp_dir().to_path_buf();
    random_file(&dir, "storm-vmlinuz", config.kernel_mb << 20)?;
    random_file(&dir, "storm-initrd", config.initrd_mb << 20)?;
    let (kernel, initrd) = (dir.join("storm-vmlinuz"), dir.join("storm-initrd"));
    let mut args = env
        .lab
        .ironpxe_boot_args(&kernel, &[&initrd], "console=ttyS0 ironpxe-storm");
    args.push("-l".into());
    args.push(env.lab.pxe_addr().to_string().into());
    // The simulated machines share the client namespace's address.
    args.push("--tftp-per-address".into());
    args.push("100000".into());
    let ironpxe = env.lab.start_ironpxe(&args)?;
    let pid = ironpxe.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ironpxe" {
        bail!("PID {pid} is {comm:?}, not ironpxe");
    }
    let tftp_file_bytes = std::fs::metadata(UNDIONLY_KPXE)
        .with_context(|| format!("{UNDIONLY_KPXE}: apt-get install ipxe"))?
        .len();
    let exe = config.client_exe.display().to_string();
    let client_args: Vec<String> = vec![
        "storm-clients".into(),
        "--server".into(),
        env.lab.pxe_addr().to_string(),
        "--http-port".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--ifname".into(),
        env.client.ifname.clone(),
        "--count".into(),
        config.clients.to_string(),
        "--ramp-ms".into(),
        config.ramp_ms.to_string(),
        "--deadline-secs".into(),
        config.deadline_secs.to_string(),
        "--tftp-size".into(),
        tftp_file_bytes.to_string(),
    ];
    let client_args: Vec<&str> = client_args.iter().map(String::as_str).collect();

    let drops = |ns: &str| {
        env.lab
            .run_in(ns, "cat", &["/proc/net/snmp"])
            .ok()
            .and_then(|o| udp_rcvbuf_errors(&String::from_utf8_lossy(&o.stdout)))
    };
    let (pxe_ns, client_ns) = (env.lab.pxe_ns(), env.client.ns.clone());
    let drops0 = (drops(&pxe_ns), drops(&client_ns));
    let (rss_before_kib, _) = memory_kib(pid)?;
    let cpu0 = cpu_ticks(pid)?;
    let t = Instant::now();
    let out = env.lab.run_in(&env.client.ns, &exe, &client_args)?;
    let wall = t.elapsed();
    let cpu_secs = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks_per_sec();
    let (_, peak_rss_kib) = memory_kib(pid)?;
    let since = |before: Option<u64>, after: Option<u64>| Some(after?.saturating_sub(before?));
    let udp_drops = (
        since(drops0.0, drops(&pxe_ns)),
        since(drops0.1, drops(&client_ns)),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "storm clients failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let outcomes = text.lines().filter_map(ClientOutcome::parse_line).collect();
    Ok(Report {
        config: config.clone(),
        outcomes,
        wall,
        rss_before_kib,
        peak_rss_kib,
        cpu_secs,
        udp_drops,
        tftp_file_bytes,
        binary: ironpxe_lab::ironpxe_bin()?,
        machine,
    })
}

/// `ironpxe-bench storm`: runs the storm and prints its report.
pub fn run(a: Args) -> Result<()> {
    let report = run_storm(&StormConfig {
        clients: a.clients,
        initrd_mb: a.initrd_mb,
        kernel_mb: a.kernel_mb,
        ramp_ms: a.ramp_ms,
        deadline_secs: a.deadline_secs,
        shape: a.shape,
        client_exe: std::env::current_exe()?,
    })?;
    print!("{report}");
    Ok(())
}

/// Flags of the hidden `storm-clients` command (run inside the client namespace).
#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    server: Ipv4Addr,
    #[arg(long)]
    http_port: u16,
    /// The client namespace's interface: DISCOVERs are broadcast out of it.
    #[arg(long)]
    ifname: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Expected size of the TFTP boot file.
    #[arg(long)]
    tftp_size: Option<u64>,
}

/// Tasks waiting for an OFFER, by xid.
type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Message>>>>;

struct Ctx {
    sock: Arc<UdpSocket>,
    waiters: Waiters,
    server: Ipv4Addr,
    http_port: u16,
    tftp_size: Option<u64>,
    deadline: Duration,
}

/// The one DHCP client socket: 0.0.0.0:68 on `ifname`, allowed to broadcast.
fn dhcp_socket(ifname: &str) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(ifname.as_bytes()))
        .with_context(|| format!("SO_BINDTODEVICE {ifname}"))?;
    // Hundreds of OFFERs can arrive in one burst.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
        .context("bind 0.0.0.0:68 in the client namespace")?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Whether a reply is a ProxyDHCP OFFER: no address, vendor class PXEClient.
fn is_proxy_offer(m: &Message) -> bool {
    m.opcode() == Opcode::BootReply
        && m.yiaddr().is_unspecified()
        && matches!(
            m.opts().get(OptionCode::MessageType),
            Some(DhcpOption::MessageType(MessageType::Offer))
        )
        && matches!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient")
        )
}

/// Hands every ProxyDHCP OFFER to the task waiting for its xid.
async fn demultiplex(sock: Arc<UdpSocket>, waiters: Waiters) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, _)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if !is_proxy_offer(&m) {
            continue;
        }
        let waiter = waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&m.xid());
        if let Some(tx) = waiter {
            let _ = tx.send(m);
        }
    }
}

/// The DISCOVER of simulated BIOS client `index`.
fn discover(xid: u32, mac: MacAddr, index: usize) -> Result<Vec<u8>> {
    let un = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, un, un, un, un, &mac.0);
    m.set_opcode(Opcode::BootRequest);
    m.set_flags(Flags::default().set_broadcast());
    let mut guid = vec![0u8; 17];
    guid[1..9].copy_from_slice(&(index as u64).to_be_bytes());
    guid[9..].copy_from_slice(b"ironpxes");
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(DhcpOption::MaxMessageSize(1260));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::VendorExtensions,
        OptionCode::ServerIdentifier,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        ClientArch::Bios.code(),
    )));
    o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    o.insert(DhcpOption::ClassIdentifier(PXE_CLASS.to_vec()));
    Ok(m.to_vec()?)
}

/// DISCOVER, repeated after 1, 2, 4, 4... s of silence, until the OFFER or `deadline`.
async fn dhcp(
    ctx: &Ctx,
    xid: u32,
    mac: MacAddr,
    index: usize,
    deadline: Instant,
) -> Result<(Message, u32)> {
    let (tx, mut rx) = oneshot::channel();
    ctx.waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(xid, tx);
    let packet = discover(xid, mac, index)?;
    let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let mut wait = Duration::from_secs(1);
    let mut sent = 0;
    loop {
        ctx.sock
            .send_to(&packet, to)
            .await
            .context("send DISCOVER")?;
        sent += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait.min(left), &mut rx).await {
            Ok(Ok(m)) => return Ok((m, sent)),
            Ok(Err(_)) => bail!("DHCP demultiplexer stopped"),
            Err(_) if Instant::now() >= deadline => {
                ctx.waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&xid);
                bail!("no ProxyDHCP offer after {sent} DISCOVERs");
            }
            Err(_) => wait = (wait * 2).min(Duration::from_secs(4)),
        }
    }
}

/// GETs `url` (plain `http://IP:PORT/...`), insisting on 200 and a body exactly as
/// long as its Content-Length. Returns the body's length, and the body if `keep`.
async fn http_get(url: &str, keep: bool) -> Result<(u64, Vec<u8>)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: SocketAddr = if authority.contains(':') {
        authority.parse()
    } else {
        format!("{authority}:80").parse()
    }
    .with_context(|| format!("host {authority:?} is not IP:PORT"))?;
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ironpxe-bench-storm\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .context("send request")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let body_at = loop {
        let n = s.read(&mut buf).await.context("read head")?;
        if n == 0 {
            bail!("connection closed before the end of the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
    };
    let (code, length) = parse_head(&String::from_utf8_lossy(&head[..body_at]))?;
    if code != 200 {
        bail!("status {code}");
    }
    let length = length.context("no Content-Length")?;
    let mut body = Vec::new();
    if keep {
        body.extend_from_slice(&head[body_at..]);
    }
    let mut got = (head.len() - body_at) as u64;
    while got < length {
        let n = s.read(&mut buf).await.context("read body")?;
        if n == 0 {
            bail!("short body: {got} of {length} bytes");
        }
        got += n as u64;
        if keep {
            body.extend_from_slice(&buf[..n]);
        }
    }
    if got != length {
        bail!("body of {got} bytes, Content-Length {length}");
    }
    Ok((got, body))
}

/// One simulated boot, from DISCOVER to the booting callback.
async fn boot(ctx: Arc<Ctx>, index: usize) -> ClientOutcome {
    let fail = |phase, e: anyhow::Error| ClientOutcome::Failed {
        index,
        phase,
        reason: format!("{e:#}"),
    };
    let start = Instant::now();
    let deadline = start + ctx.deadline;
    let mac = MacAddr([0x02, 0x53, 0x54, 0x4f, (index >> 8) as u8, index as u8]);
    let xid = 0x5354_0000 | (index as u32 & 0xffff);

    let (offer, discovers) = match dhcp(&ctx, xid, mac, index, deadline).await {
        Ok(m) => m,
        Err(e) => return fail(Phase::Dhcp, e),
    };
    let t_dhcp = start.elapsed();

    let t = Instant::now();
    // The BOOTP file field is NUL-padded to 128 bytes.
    let fname = offer
        .fname()
        .map(|f| f.split(|&b| b == 0).next().unwrap_or_default());
    let file = match fname.filter(|f| !f.is_empty()) {
        Some(f) => String::from_utf8_lossy(f).into_owned(),
        None => match offer.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(f)) => String::from_utf8_lossy(f).into_owned(),
            _ => return fail(Phase::Dhcp, anyhow!("OFFER names no boot file")),
        },
    };
    let tftp_server = if offer.siaddr().is_unspecified() {
        ctx.server
    } else {
        offer.siaddr()
    };
    let fetched = match fetch(
        SocketAddr::from((tftp_server, 69)),
        file.clone(),
        TFTP_BLKSIZE,
        deadline,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return fail(Phase::Tftp, e.context(file)),
    };
    let len = fetched.data.len() as u64;
    if fetched.tsize.is_some_and(|s| s != len) {
        let e = anyhow!("{file}: {len} bytes, tsize said {:?}", fetched.tsize);
        return fail(Phase::Tftp, e);
    }
    if file.ends_with("undionly.kpxe") && ctx.tftp_size.is_some_and(|s| s != len) {
        let e = anyhow!("{file}: {len} bytes, the file has {:?}", ctx.tftp_size);
        return fail(Phase::Tftp, e);
    }
    let t_tftp = t.elapsed();

    let t = Instant::now();
    let script_url = BootUrls::http(ctx.server, ctx.http_port).script(mac, ClientArch::Bios);
    let (mut bytes, script) = match http_get(&script_url, true).await {
        Ok(r) => r,
        Err(e) => return fail(Phase::Script, e),
    };
    let urls = script_urls(&String::from_utf8_lossy(&script));
    if urls.files.is_empty() {
        return fail(Phase::Script, anyhow!("script names no /_/file URL"));
    }
    let t_script = t.elapsed();

    let t = Instant::now();
    for url in &urls.files {
        match http_get(url, false).await {
            Ok((n, _)) => bytes += n,
            Err(e) => return fail(Phase::Files, e),
        }
    }
    let t_files = t.elapsed();

    let Some(booting) = urls.booting else {
        return fail(Phase::Booting, anyhow!("script has no /_/booting callback"));
    };
    match http_get(&booting, false).await {
        Ok((n, _)) => bytes += n,
        Err(e) => return fail(Phase::Booting, e),
    }
    ClientOutcome::Booted {
        index,
        timings: Timings {
            dhcp: t_dhcp,
            tftp: t_tftp,
            script: t_script,
            files: t_files,
            total: start.elapsed(),
            http_bytes: bytes,
            discovers,
        },
    }
}

/// `ironpxe-bench storm-clients`: runs the simulated clients and prints one line
/// each ([`ClientOutcome::to_line`]).
pub fn run_clients(a: ClientArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // ironpxe's HTTP server may come up just after its DHCP socket.
        let http = SocketAddr::from((a.server, a.http_port));
        let ready = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(http).await.is_err() {
            if Instant::now() > ready {
                bail!("nothing listens on {http} after 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sock = Arc::new(dhcp_socket(&a.ifname)?);
        let waiters: Waiters = Arc::default();
        let demux = tokio::spawn(demultiplex(sock.clone(), waiters.clone()));
        let ctx = Arc::new(Ctx {
            sock,
            waiters,
            server: a.server,
            http_port: a.http_port,
            tftp_size: a.tftp_size,
            deadline: Duration::from_secs(a.deadline_secs),
        });
        let mut tasks = Vec::with_capacity(a.count);
        for index in 0..a.count {
            let ctx = ctx.clone();
            let delay = Duration::from_millis(a.ramp_ms * index as u64 / a.count.max(1) as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                boot(ctx, index).await
            }));
        }
        for (index, t) in tasks.into_iter().enumerate() {
            let outcome = t.await.unwrap_or_else(|e| ClientOutcome::Failed {
                index,
                phase: Phase::Dhcp,
                reason: format!("task: {e}"),
            });
            println!("{}", outcome.to_line());
        }
        demux.abort();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "#!ipxe\n\
        set ironpxe-what kernel\n\
        kernel --name vmlinuz http://10.0.0.2:8080/_/file?name=k1 console=ttyS0 || goto ironpxe-failed\n\
        initrd --name initrd.img http://10.0.0.2:8080/_/file?name=i1 || goto ironpxe-failed\n\
        initrd --name store http://10.0.0.2:8080/_/file?name=i2 || goto ironpxe-failed\n\
        initrd --name again http://10.0.0.2:8080/_/file?name=i1 || goto ironpxe-failed\n\
        imgfetch --name ironpxe-booting http://10.0.0.2:8080/_/booting?mac=02:00:00:00:00:01&arch=0 && imgfree ironpxe-booting ||\n\
        imgfetch --name ironpxe-refresh http://10.0.0.2:8080/_/ipxe?mac=02:00:00:00:00:01&arch=0 ||\n\
        boot\n";

    #[test]
    fn script_urls_are_kernel_then_initrds_then_the_callback() {
        let u = script_urls(SCRIPT);
        assert_eq!(
            u.files,
            [
                "http://10.0.0.2:8080/_/file?name=k1",
                "http://10.0.0.2:8080/_/file?name=i1",
                "http://10.0.0.2:8080/_/file?name=i2",
            ]
        );
        assert_eq!(
            u.booting.as_deref(),
            Some("http://10.0.0.2:8080/_/booting?mac=02:00:00:00:00:01&arch=0")
        );
    }

    #[test]
    fn script_urls_ignore_file_urls_outside_kernel_and_initrd_lines() {
        let u = script_urls("echo http://h:1/_/file?name=x\nchain http://h:1/_/file?name=y\n");
        assert_eq!(u, ScriptUrls::default());
    }

    #[test]
    fn script_urls_match_the_urls_boot_urls_builds() {
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        let b = BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 8080);
        let booting = b.booting(mac, ClientArch::Bios);
        let script = format!("imgfetch --name x {booting} && imgfree x ||\n");
        assert_eq!(script_urls(&script).booting, Some(booting));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn failures_are_tallied_by_phase_and_reason_kind() {
        let f = |index, phase, reason: &str| ClientOutcome::Failed {
            index,
            phase,
            reason: reason.into(),
        };
        let outcomes = vec![
            f(0, Phase::Files, "short body: 12 of 40 bytes"),
            f(1, Phase::Files, "short body: 99 of 40 bytes"),
            f(2, Phase::Dhcp, "no ProxyDHCP offer after 5 DISCOVERs"),
            f(3, Phase::Files, "status 404"),
            ClientOutcome::Booted {
                index: 4,
                timings: Timings {
                    dhcp: Duration::ZERO,
                    tftp: Duration::ZERO,
                    script: Duration::ZERO,
                    files: Duration::ZERO,
                    total: Duration::ZERO,
                    http_bytes: 0,
                    discovers: 1,
                },
            },
        ];
        let t = tally_failures(&outcomes);
        let key = |p, r: &str| (p, r.to_string());
        assert_eq!(t.len(), 3);
        assert_eq!(t[&key(Phase::Files, "short body: N of N bytes")], 2);
        assert_eq!(t[&key(Phase::Files, "status N")], 1);
        assert_eq!(
            t[&key(Phase::Dhcp, "no ProxyDHCP offer after N DISCOVERs")],
            1
        );
    }

    #[test]
    fn outcome_lines_round_trip() {
        let booted = ClientOutcome::Booted {
            index: 3,
            timings: Timings {
                dhcp: Duration::from_micros(1500),
                tftp: Duration::from_micros(20_000),
                script: Duration::from_micros(900),
                files: Duration::from_micros(300_000),
                total: Duration::from_micros(330_000),
                http_bytes: 12 << 20,
                discovers: 2,
            },
        };
        let failed = ClientOutcome::Failed {
            index: 9,
            phase: Phase::Tftp,
            reason: "undionly.kpxe: server silent\nafter 0 bytes".into(),
        };
        for o in [booted, failed] {
            let line = o.to_line();
            assert!(!line.contains('\n'));
            let back = ClientOutcome::parse_line(&line).expect(&line);
            match (&o, &back) {
                (
                    ClientOutcome::Failed { reason, .. },
                    ClientOutcome::Failed { reason: r2, .. },
                ) => {
                    assert_eq!(&reason.replace('\n', " "), r2)
                }
                _ => assert_eq!(o, back),
            }
        }
        assert_eq!(ClientOutcome::parse_line("RESULT ok=1"), None);
        assert_eq!(ClientOutcome::parse_line("OK 1 2 3"), None);
    }

    #[test]
    fn udp_receive_buffer_errors_come_from_the_udp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 100 2 7 90 5 0\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            UdpLite: 0 0 0 0 9 0\n";
        assert_eq!(udp_rcvbuf_errors(snmp), Some(5));
        assert_eq!(udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn response_heads_give_status_and_length() {
        let (code, len) =
            parse_head("HTTP/1.1 200 OK\r\ncontent-length: 42\r\nx: y\r\n\r\n").unwrap();
        assert_eq!((code, len), (200, Some(42)));
        assert_eq!(
            parse_head("HTTP/1.1 404 Not Found\r\n\r\n").unwrap(),
            (404, None)
        );
        assert!(parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head("garbage").is_err());
    }

    #[test]
    fn discover_is_a_bios_pxe_request() {
        let mac = MacAddr([2, 0x53, 0x54, 0x4f, 0, 5]);
        let bytes = discover(0x5354_0005, mac, 5).unwrap();
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.xid(), 0x5354_0005);
        assert_eq!(&m.chaddr()[..6], &mac.0);
        assert!(m.flags().broadcast());
        assert!(matches!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(c)) if c == PXE_CLASS
        ));
        assert!(matches!(
            m.opts().get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if u16::from(*a) == 0
        ));
    }
}
