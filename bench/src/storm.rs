//! `ironpxe-bench storm`: N simulated PXE clients boot from one ironpxe at once, each
//! running the protocol a real machine runs against it:
//!
//! 1. ProxyDHCP: the firmware's PXE DISCOVER (option 60 `PXEClient:Arch:0000N:...`,
//!    option 93, its own MAC and xid) broadcast to port 67; the answer is ironpxe's
//!    proxy OFFER (yiaddr 0, option 60 `PXEClient`) with that xid.
//! 2. With `--boot-server`, a PXE REQUEST to the offer's server on UDP 4011 and its
//!    ACK, as firmware that runs PXE boot server discovery does.
//! 3. TFTP of the offer's boot file (`undionly.kpxe` for BIOS, the EFI iPXE for
//!    `--firmware efi`) with tsize, blksize 1432 lockstep (iPXE's PXE ROM) or blksize
//!    1468 with windowsize 4 (EDK2); its size is checked against the OACK.
//! 4. The chainloaded iPXE's DHCP: a DISCOVER with user class `iPXE` and option 175
//!    (HTTP), answered with the script URL as boot file.
//! 5. HTTP: that script, then every `/_/file` URL on its `kernel` and `initrd` lines,
//!    each body counted against its Content-Length, then the `/_/booting` callback.
//!
//! `--scope dhcp-tftp` stops after step 3: the load of firmware fetching the iPXE
//! binary, for storms of thousands of clients.
//!
//! The clients run in the lab's client namespace, in a child process
//! (`ironpxe-bench storm-clients`), one tokio task each. They cannot each bind UDP 68,
//! so one socket bound to 0.0.0.0:68 on the client interface (SO_BINDTODEVICE,
//! SO_BROADCAST) sends every DISCOVER and a demultiplexer hands each OFFER to the
//! task waiting for its xid. The child prints one line per client; the parent reads
//! ironpxe's /proc entries before and after and builds the [`Report`].
//!
//! Phase times use kernel receive timestamps ([`crate::rxtime`]): from the realtime
//! clock read just before a request is sent to the kernel's receive time of the
//! answer's last packet. A client task that is scheduled late after the answer
//! arrived does not inflate the figure; one that is late to send does not either,
//! since the clock is read at the send.
//!
//! `--probe-ms N` adds a DHCP probe: every N ms through the whole storm, one more
//! DISCOVER from a fresh MAC, so DHCP latency is measured while HTTP runs flat out,
//! not only at the start. `--capture` records every DHCP packet on ironpxe's
//! interface with tcpdump and reports the server-side DISCOVER → OFFER latency from
//! the capture's timestamps.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpxe_core::urls::{BOOTING_PATH, FILE_PATH};
use ironpxe_core::{ClientArch, MacAddr};
use ironpxe_lab::preflight::UNDIONLY_KPXE;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

use crate::client::{fetch_with, FetchOptions};
use crate::env::{machine_notes, random_file, Env};
use crate::procstat::{clock_ticks_per_sec, cpu_ticks, memory_kib};
use crate::rxtime;

/// The vendor class a BIOS PXE ROM (UNDI 2.1) sends.
pub const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
/// The largest block size iPXE asks for, so the one a BIOS client asks for.
pub const TFTP_BLKSIZE: u16 = 1432;
/// What EDK2's PXE client asks for.
pub const EFI_BLKSIZE: u16 = 1468;
/// EDK2's TFTP window.
pub const EFI_WINDOWSIZE: u16 = 4;

/// The firmware the simulated clients imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StormFirmware {
    /// A BIOS PXE ROM (arch 0): undionly.kpxe, lockstep blksize 1432.
    Bios,
    /// EDK2's PXE client on x64 (arch 7): the EFI iPXE, blksize 1468, windowsize 4.
    Efi,
}

impl StormFirmware {
    fn arch(self) -> ClientArch {
        match self {
            StormFirmware::Bios => ClientArch::Bios,
            StormFirmware::Efi => ClientArch::EfiX64,
        }
    }

    fn tftp(self) -> FetchOptions {
        match self {
            StormFirmware::Bios => FetchOptions {
                blksize: TFTP_BLKSIZE,
                windowsize: None,
            },
            StormFirmware::Efi => FetchOptions {
                blksize: EFI_BLKSIZE,
                windowsize: Some(EFI_WINDOWSIZE),
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            StormFirmware::Bios => "bios",
            StormFirmware::Efi => "efi",
        }
    }
}

/// How far each simulated client goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StormScope {
    /// The whole boot: DHCP, TFTP, iPXE's DHCP, script, kernel, initrds, callback.
    Full,
    /// Only what firmware does before iPXE runs: DHCP and the TFTP of iPXE.
    DhcpTftp,
}

/// Flags of `ironpxe-bench storm`.
#[derive(clap::Args)]
pub struct Args {
    /// Simulated clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// The firmware the clients imitate.
    #[arg(long, value_enum, default_value_t = StormFirmware::Bios)]
    firmware: StormFirmware,
    /// How far each client goes: `full` boots, `dhcp-tftp` stops after the TFTP of
    /// iPXE (for storms of thousands of clients).
    #[arg(long, value_enum, default_value_t = StormScope::Full)]
    scope: StormScope,
    /// Ask the boot server on UDP 4011 (PXE boot server discovery) before TFTP.
    #[arg(long)]
    boot_server: bool,
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
    /// Send one more DISCOVER from a fresh MAC every this many ms through the whole
    /// storm, to measure DHCP while HTTP and TFTP run (0: no probes).
    #[arg(long, default_value_t = 0)]
    probe_ms: u64,
    /// Capture DHCP on ironpxe's interface (tcpdump) and report the server-side
    /// DISCOVER → OFFER latency.
    #[arg(long)]
    capture: bool,
    /// More flags for ironpxe (e.g. `--ironpxe-arg=--debug`), repeatable.
    #[arg(long = "ironpxe-arg", allow_hyphen_values = true)]
    ironpxe_args: Vec<String>,
}

/// What one storm does; [`run_storm`] takes it.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// Simulated clients.
    pub clients: usize,
    /// The firmware they imitate.
    pub firmware: StormFirmware,
    /// How far they go.
    pub scope: StormScope,
    /// Whether they ask the boot server on UDP 4011 before TFTP.
    pub boot_server: bool,
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
    /// A DHCP probe every this many ms (0: none).
    pub probe_ms: u64,
    /// Capture DHCP on ironpxe's interface.
    pub capture: bool,
    /// More ironpxe flags.
    pub ironpxe_args: Vec<String>,
    /// The `ironpxe-bench` executable, run in the client namespace as `storm-clients`.
    pub client_exe: PathBuf,
}

impl StormConfig {
    /// The defaults of `ironpxe-bench storm` for `clients` clients run by `client_exe`.
    pub fn new(clients: usize, client_exe: PathBuf) -> Self {
        StormConfig {
            clients,
            firmware: StormFirmware::Bios,
            scope: StormScope::Full,
            boot_server: false,
            initrd_mb: 8,
            kernel_mb: 4,
            ramp_ms: 0,
            deadline_secs: 120,
            shape: false,
            probe_ms: 0,
            capture: false,
            ironpxe_args: Vec::new(),
            client_exe,
        }
    }
}

/// A step of a simulated boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The firmware's DISCOVER until the ProxyDHCP OFFER.
    Dhcp,
    /// The REQUEST to UDP 4011 until its ACK.
    BootServer,
    /// The TFTP read of the boot file.
    Tftp,
    /// The chainloaded iPXE's DISCOVER until the OFFER with the script URL.
    IpxeDhcp,
    /// The iPXE script over HTTP.
    Script,
    /// Kernel and initrds over HTTP.
    Files,
    /// The `/_/booting` callback.
    Booting,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Dhcp,
        Phase::BootServer,
        Phase::Tftp,
        Phase::IpxeDhcp,
        Phase::Script,
        Phase::Files,
        Phase::Booting,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Dhcp => "dhcp",
            Phase::BootServer => "4011",
            Phase::Tftp => "tftp",
            Phase::IpxeDhcp => "ipxe-dhcp",
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

/// How long each phase of one finished client took; a phase the client did not run
/// is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Duration of each phase that ran.
    pub phases: BTreeMap<Phase, Duration>,
    /// From the first DISCOVER to the end of the last phase.
    pub total: Duration,
    /// HTTP body bytes received (script, files, callback).
    pub http_bytes: u64,
    /// DISCOVERs sent until the first OFFER came (1 when the first was answered).
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
    /// One DHCP probe: its latency, or `None` when no OFFER came.
    Probe(Option<Duration>),
}

impl ClientOutcome {
    /// The line the client process prints: `OK i phase=µs... total=µs bytes=N
    /// discovers=N`, `FAIL i phase reason` or `PROBE µs|lost`.
    pub fn to_line(&self) -> String {
        match self {
            ClientOutcome::Booted { index, timings: t } => {
                let mut line = format!("OK {index}");
                for (p, d) in &t.phases {
                    line.push_str(&format!(" {p}={}", d.as_micros()));
                }
                line.push_str(&format!(
                    " total={} bytes={} discovers={}",
                    t.total.as_micros(),
                    t.http_bytes,
                    t.discovers
                ));
                line
            }
            ClientOutcome::Failed {
                index,
                phase,
                reason,
            } => format!("FAIL {index} {phase} {}", reason.replace('\n', " ")),
            ClientOutcome::Probe(Some(d)) => format!("PROBE {}", d.as_micros()),
            ClientOutcome::Probe(None) => "PROBE lost".into(),
        }
    }

    /// Reads a line of [`ClientOutcome::to_line`]; `None` for any other line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut w = line.split_whitespace();
        match w.next()? {
            "OK" => {
                let index = w.next()?.parse().ok()?;
                let mut t = Timings::default();
                let (mut total, mut bytes, mut discovers) = (None, None, None);
                for kv in w {
                    let (k, v) = kv.split_once('=')?;
                    let v: u64 = v.parse().ok()?;
                    match k {
                        "total" => total = Some(Duration::from_micros(v)),
                        "bytes" => bytes = Some(v),
                        "discovers" => discovers = Some(u32::try_from(v).ok()?),
                        phase => {
                            t.phases
                                .insert(phase.parse().ok()?, Duration::from_micros(v));
                        }
                    }
                }
                t.total = total?;
                t.http_bytes = bytes?;
                t.discovers = discovers?;
                Some(ClientOutcome::Booted { index, timings: t })
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
            "PROBE" => match w.next()? {
                "lost" => Some(ClientOutcome::Probe(None)),
                us => Some(ClientOutcome::Probe(Some(Duration::from_micros(
                    us.parse().ok()?,
                )))),
            },
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

/// xids of the firmware's DISCOVERs: this prefix and the client's number.
const XID_FIRMWARE: u32 = 0x5354_0000;
/// xids of the chainloaded iPXE's DISCOVERs.
const XID_IPXE: u32 = 0x5355_0000;
/// xids of the DHCP probes.
const XID_PROBE: u32 = 0x5052_0000;

/// DISCOVER → OFFER latencies seen on ironpxe's interface, by kind of DISCOVER.
#[derive(Debug, Default, Clone)]
pub struct ServerSide {
    /// Firmware and iPXE DISCOVERs of the storm's clients, milliseconds.
    pub clients_ms: Vec<f64>,
    /// The probes' DISCOVERs, milliseconds.
    pub probes_ms: Vec<f64>,
    /// DISCOVERs seen with no OFFER after them.
    pub unanswered: usize,
}

/// Pairs each DISCOVER (to UDP 67) with the first OFFER (from UDP 67) of its xid
/// after it, in a capture of DHCP on ironpxe's interface.
pub fn server_side(caps: &[ironpxe_lab::segments::CapturedUdp]) -> ServerSide {
    let mut asked: HashMap<u32, Duration> = HashMap::new();
    let mut out = ServerSide::default();
    for c in caps {
        let Ok(m) = Message::decode(&mut Decoder::new(&c.payload)) else {
            continue;
        };
        let kind = match m.opts().get(OptionCode::MessageType) {
            Some(DhcpOption::MessageType(k)) => *k,
            _ => continue,
        };
        if c.dst.port() == 67 && kind == MessageType::Discover {
            asked.entry(m.xid()).or_insert(c.at);
        } else if c.src.port() == 67 && kind == MessageType::Offer {
            if let Some(at) = asked.remove(&m.xid()) {
                let ms = c.at.saturating_sub(at).as_secs_f64() * 1000.0;
                if m.xid() & 0xffff_0000 == XID_PROBE {
                    out.probes_ms.push(ms);
                } else {
                    out.clients_ms.push(ms);
                }
            }
        }
    }
    out.unanswered = asked.len();
    out.clients_ms.sort_by(|a, b| a.total_cmp(b));
    out.probes_ms.sort_by(|a, b| a.total_cmp(b));
    out
}

/// Everything one storm measured.
#[derive(Debug)]
pub struct Report {
    /// The configuration it ran with.
    pub config: StormConfig,
    /// One entry per client, and one per probe.
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
    /// The boot file served over TFTP, and its size.
    pub tftp_file: (String, u64),
    /// Server-side DHCP latencies, with `--capture`.
    pub server_side: Option<ServerSide>,
    /// The ironpxe binary.
    pub binary: PathBuf,
    /// A line about the machine.
    pub machine: String,
    /// Whether the kernel gave receive timestamps ([`rxtime::kernel_stamps_work`]).
    pub kernel_stamps: bool,
}

impl Report {
    /// Clients that booted (or, with `--scope dhcp-tftp`, got their boot file).
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

    /// Probe latencies in milliseconds, ascending, and the number of lost probes.
    pub fn probes(&self) -> (Vec<f64>, usize) {
        let mut ms = Vec::new();
        let mut lost = 0;
        for o in &self.outcomes {
            match o {
                ClientOutcome::Probe(Some(d)) => ms.push(d.as_secs_f64() * 1000.0),
                ClientOutcome::Probe(None) => lost += 1,
                _ => {}
            }
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        (ms, lost)
    }

    fn timings(&self) -> impl Iterator<Item = &Timings> {
        self.outcomes.iter().filter_map(|o| match o {
            ClientOutcome::Booted { timings, .. } => Some(timings),
            _ => None,
        })
    }
}

/// `| name | p50 | p99 | max | n |` of ascending milliseconds.
fn latency_row(f: &mut fmt::Formatter<'_>, name: &str, v: &[f64]) -> fmt::Result {
    writeln!(
        f,
        "| {name} | {:.1} | {:.1} | {:.1} | {} |",
        percentile(v, 50.0),
        percentile(v, 99.0),
        percentile(v, 100.0),
        v.len()
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let what = match c.scope {
            StormScope::Full => "DHCP → TFTP → iPXE DHCP → HTTP",
            StormScope::DhcpTftp => "DHCP → TFTP of iPXE only",
        };
        writeln!(
            f,
            "## Boot storm: {} simulated {} PXE clients ({what})\n",
            c.clients,
            c.firmware.name()
        )?;
        writeln!(f, "Machine: {}", self.machine)?;
        writeln!(f, "ironpxe binary: {}", self.binary.display())?;
        if !c.ironpxe_args.is_empty() {
            writeln!(f, "ironpxe flags added: {}", c.ironpxe_args.join(" "))?;
        }
        let t = c.firmware.tftp();
        writeln!(
            f,
            "Files: {} ({} bytes) over TFTP, blksize {}{}{}",
            self.tftp_file.0,
            self.tftp_file.1,
            t.blksize,
            t.windowsize
                .map_or(", lockstep".to_string(), |w| format!(", windowsize {w}")),
            if c.scope == StormScope::Full {
                format!(
                    "; kernel {} MiB and one initrd {} MiB over HTTP",
                    c.kernel_mb, c.initrd_mb
                )
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "Clients: one tokio task each in a client namespace, started {}; link {}; DHCP \
             over one shared socket on UDP 68, OFFERs matched by xid{}; phase times from \
             the realtime clock at each request's send to {}\n",
            if c.ramp_ms == 0 {
                "together".to_string()
            } else {
                format!("over {} ms", c.ramp_ms)
            },
            if c.shape {
                "veth shaped to 1 Gbit/s (tbf)"
            } else {
                "unshaped veth"
            },
            if c.boot_server {
                "; a REQUEST to UDP 4011 before TFTP"
            } else {
                ""
            },
            if self.kernel_stamps {
                "the kernel receive timestamp (SO_TIMESTAMPNS) of the answer's last packet"
            } else {
                "the read of the answer's last packet (this kernel gives no SO_TIMESTAMPNS, \
                 so the times include the clients' own scheduling delay)"
            }
        )?;
        let booted = self.booted();
        writeln!(f, "| measure | value |\n|---|---|")?;
        writeln!(f, "| booted | {booted} |")?;
        writeln!(f, "| failed | {} |", self.failed())?;
        writeln!(f, "| storm wall time | {:.2} s |", self.wall.as_secs_f64())?;
        let bytes: u64 = self.timings().map(|t| t.http_bytes).sum();
        if c.scope == StormScope::Full {
            writeln!(
                f,
                "| aggregate HTTP throughput | {:.1} MiB/s ({} MiB in the wall time) |",
                bytes as f64 / self.wall.as_secs_f64() / f64::from(1u32 << 20),
                bytes >> 20
            )?;
        }
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
            "\n| phase (client side) | p50 ms | p99 ms | max ms | clients |\n|---|---|---|---|---|"
        )?;
        for phase in Phase::ALL {
            let mut v: Vec<f64> = self
                .timings()
                .filter_map(|t| t.phases.get(&phase))
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(|a, b| a.total_cmp(b));
            let name = if phase == Phase::Files {
                "kernel+initrds"
            } else {
                phase.name()
            };
            latency_row(f, name, &v)?;
        }
        let mut v: Vec<f64> = self
            .timings()
            .map(|t| t.total.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        latency_row(f, "total", &v)?;
        let (probes, lost) = self.probes();
        if !probes.is_empty() || lost > 0 {
            writeln!(
                f,
                "\nDHCP probes, one every {} ms through the storm: {} answered, {lost} without \
                 an OFFER within 5 s.",
                c.probe_ms,
                probes.len()
            )?;
            writeln!(
                f,
                "\n| DISCOVER → OFFER | p50 ms | p99 ms | max ms | n |\n|---|---|---|---|---|"
            )?;
            latency_row(f, "probes, client side", &probes)?;
        }
        if let Some(s) = &self.server_side {
            if probes.is_empty() && lost == 0 {
                writeln!(
                    f,
                    "\n| DISCOVER → OFFER | p50 ms | p99 ms | max ms | n |\n|---|---|---|---|---|"
                )?;
            }
            latency_row(f, "storm clients, server side (capture)", &s.clients_ms)?;
            if !s.probes_ms.is_empty() {
                latency_row(f, "probes, server side (capture)", &s.probes_ms)?;
            }
            writeln!(
                f,
                "\nServer side: tcpdump on ironpxe's interface, from a DISCOVER's capture time \
                 to the capture time of the first OFFER with its xid; {} DISCOVERs had no OFFER \
                 after them (repeats of answered DISCOVERs included).",
                s.unanswered
            )?;
        }
        let tally = tally_failures(&self.outcomes);
        let reported = self
            .outcomes
            .iter()
            .filter(|o| !matches!(o, ClientOutcome::Probe(_)))
            .count();
        let silent = self.config.clients.saturating_sub(reported);
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
    args.extend(config.ironpxe_args.iter().map(Into::into));
    let ironpxe = env.lab.start_ironpxe(&args)?;
    let pid = ironpxe.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ironpxe" {
        bail!("PID {pid} is {comm:?}, not ironpxe");
    }
    // The boot file the firmware gets, to check the TFTP size against.
    let tftp_file = match config.firmware {
        StormFirmware::Bios => PathBuf::from(UNDIONLY_KPXE),
        StormFirmware::Efi => PathBuf::from(ironpxe_lab::preflight::IPXE_EFI),
    };
    let tftp_file_bytes = std::fs::metadata(&tftp_file)
        .with_context(|| format!("{}: apt-get install ipxe", tftp_file.display()))?
        .len();
    let exe = config.client_exe.display().to_string();
    let mut client_args: Vec<String> = vec![
        "storm-clients".into(),
        "--server".into(),
        env.lab.pxe_addr().to_string(),
        "--ifname".into(),
        env.client.ifname.clone(),
        "--count".into(),
        config.clients.to_string(),
        "--firmware".into(),
        config.firmware.name().into(),
        "--scope".into(),
        match config.scope {
            StormScope::Full => "full".into(),
            StormScope::DhcpTftp => "dhcp-tftp".into(),
        },
        "--ramp-ms".into(),
        config.ramp_ms.to_string(),
        "--deadline-secs".into(),
        config.deadline_secs.to_string(),
        "--tftp-size".into(),
        tftp_file_bytes.to_string(),
        "--probe-ms".into(),
        config.probe_ms.to_string(),
    ];
    if config.boot_server {
        client_args.push("--boot-server".into());
    }
    let client_args: Vec<&str> = client_args.iter().map(String::as_str).collect();

    let drops = |ns: &str| {
        env.lab
            .run_in(ns, "cat", &["/proc/net/snmp"])
            .ok()
            .and_then(|o| udp_rcvbuf_errors(&String::from_utf8_lossy(&o.stdout)))
    };
    let (pxe_ns, client_ns) = (env.lab.pxe_ns(), env.client.ns.clone());
    let capture = if config.capture {
        Some(env.lab.capture(
            "storm-dhcp",
            &pxe_ns,
            &env.lab.pxe_ifname(),
            "udp and (port 67 or port 68)",
        )?)
    } else {
        None
    };
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
    let server_side = match capture {
        Some(c) => Some(server_side(&c.finish()?)),
        None => None,
    };
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
    let name = tftp_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Report {
        config: config.clone(),
        outcomes,
        wall,
        rss_before_kib,
        peak_rss_kib,
        cpu_secs,
        udp_drops,
        tftp_file: (name, tftp_file_bytes),
        server_side,
        binary: ironpxe_lab::ironpxe_bin()?,
        machine,
        kernel_stamps: rxtime::kernel_stamps_work(),
    })
}

/// `ironpxe-bench storm`: runs the storm and prints its report.
pub fn run(a: Args) -> Result<()> {
    let report = run_storm(&StormConfig {
        clients: a.clients,
        firmware: a.firmware,
        scope: a.scope,
        boot_server: a.boot_server,
        initrd_mb: a.initrd_mb,
        kernel_mb: a.kernel_mb,
        ramp_ms: a.ramp_ms,
        deadline_secs: a.deadline_secs,
        shape: a.shape,
        probe_ms: a.probe_ms,
        capture: a.capture,
        ironpxe_args: a.ironpxe_args,
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
    /// The client namespace's interface: DISCOVERs are broadcast out of it.
    #[arg(long)]
    ifname: String,
    #[arg(long)]
    count: usize,
    #[arg(long, value_enum, default_value_t = StormFirmware::Bios)]
    firmware: StormFirmware,
    #[arg(long, value_enum, default_value_t = StormScope::Full)]
    scope: StormScope,
    #[arg(long)]
    boot_server: bool,
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Expected size of the TFTP boot file.
    #[arg(long)]
    tftp_size: Option<u64>,
    #[arg(long, default_value_t = 0)]
    probe_ms: u64,
}

/// An OFFER (or ACK) and the kernel time it arrived.
type Answer = (Message, SystemTime);
/// Tasks waiting for an OFFER, by xid.
type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Answer>>>>;

struct Ctx {
    sock: Arc<UdpSocket>,
    waiters: Waiters,
    server: Ipv4Addr,
    firmware: StormFirmware,
    scope: StormScope,
    boot_server: bool,
    tftp_size: Option<u64>,
    deadline: Duration,
}

/// The one DHCP client socket: 0.0.0.0:68 on `ifname`, allowed to broadcast, with
/// kernel receive timestamps.
fn dhcp_socket(ifname: &str) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(ifname.as_bytes()))
        .with_context(|| format!("SO_BINDTODEVICE {ifname}"))?;
    // Thousands of OFFERs can arrive in one burst.
    let _ = s.set_recv_buffer_size(8 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
        .context("bind 0.0.0.0:68 in the client namespace")?;
    rxtime::enable(&s)?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Whether a reply is a ProxyDHCP answer of `kind`: no address, vendor class
/// PXEClient.
fn is_proxy_answer(m: &Message, kind: MessageType) -> bool {
    m.opcode() == Opcode::BootReply
        && m.yiaddr().is_unspecified()
        && matches!(
            m.opts().get(OptionCode::MessageType),
            Some(DhcpOption::MessageType(k)) if *k == kind
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
        let Ok((n, _, at)) = rxtime::recv_from(&sock, &mut buf).await else {
            continue;
        };
        let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if !is_proxy_answer(&m, MessageType::Offer) {
            continue;
        }
        let waiter = waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&m.xid());
        if let Some(tx) = waiter {
            let _ = tx.send((m, at));
        }
    }
}

/// Who sends a DHCP packet: the firmware's PXE client, or the iPXE it chainloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Firmware,
    Ipxe,
}

/// A DHCP packet of simulated client `index` running `firmware`, sent by `sender`:
/// a DISCOVER, or the REQUEST to the boot server on 4011.
fn pxe_packet(
    kind: MessageType,
    xid: u32,
    mac: MacAddr,
    index: usize,
    firmware: StormFirmware,
    sender: Sender,
) -> Result<Vec<u8>> {
    let un = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, un, un, un, un, &mac.0);
    m.set_opcode(Opcode::BootRequest);
    if kind == MessageType::Discover {
        m.set_flags(Flags::default().set_broadcast());
    }
    let mut guid = vec![0u8; 17];
    guid[1..9].copy_from_slice(&(index as u64).to_be_bytes());
    guid[9..].copy_from_slice(b"ironpxes");
    let arch = firmware.arch();
    let class = format!("PXEClient:Arch:{:05}:UNDI:002001", arch.code());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
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
        arch.code(),
    )));
    o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    o.insert(DhcpOption::ClassIdentifier(class.into_bytes()));
    if sender == Sender::Ipxe {
        // iPXE names itself (option 77) and lists its features (option 175); code
        // 19 = 1 says it speaks HTTP.
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![19, 1, 1],
        )));
    }
    Ok(m.to_vec()?)
}

/// The DISCOVER of simulated BIOS client `index`.
fn discover(xid: u32, mac: MacAddr, index: usize) -> Result<Vec<u8>> {
    pxe_packet(
        MessageType::Discover,
        xid,
        mac,
        index,
        StormFirmware::Bios,
        Sender::Firmware,
    )
}

/// Sends `packet` to the broadcast address and waits for the OFFER with `xid`,
/// repeating after 1, 2, 4, 4... s of silence until `deadline`. Returns the OFFER,
/// the realtime clock at the first send, the OFFER's kernel receive time and the
/// number of DISCOVERs sent.
async fn ask(
    ctx: &Ctx,
    xid: u32,
    packet: &[u8],
    deadline: Instant,
) -> Result<(Message, SystemTime, SystemTime, u32)> {
    let (tx, mut rx) = oneshot::channel();
    ctx.waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(xid, tx);
    let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let mut wait = Duration::from_secs(1);
    let mut sent = 0;
    let first = rxtime::now();
    loop {
        ctx.sock
            .send_to(packet, to)
            .await
            .context("send DISCOVER")?;
        sent += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait.min(left), &mut rx).await {
            Ok(Ok((m, at))) => return Ok((m, first, at, sent)),
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

/// The REQUEST to the boot server on UDP 4011, from a socket of its own, repeated
/// after 1 s of silence (4 tries). Returns the ACK and the time it took.
async fn ask_boot_server(
    ctx: &Ctx,
    server: Ipv4Addr,
    xid: u32,
    mac: MacAddr,
    index: usize,
) -> Result<(Message, Duration)> {
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    rxtime::enable(&sock)?;
    let packet = pxe_packet(
        MessageType::Request,
        xid,
        mac,
        index,
        ctx.firmware,
        Sender::Firmware,
    )?;
    let to = SocketAddr::from((server, 4011));
    let mut buf = vec![0u8; 2048];
    let sent = rxtime::now();
    for _ in 0..4 {
        sock.send_to(&packet, to)
            .await
            .context("send REQUEST to 4011")?;
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(r) =
            tokio::time::timeout_at(until.into(), rxtime::recv_from(&sock, &mut buf)).await
        {
            let (n, _, at) = r?;
            let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if m.xid() == xid && is_proxy_answer(&m, MessageType::Ack) {
                return Ok((m, rxtime::between(sent, at)));
            }
        }
    }
    bail!("no ACK from {to} after 4 REQUESTs")
}

/// The boot file an OFFER or ACK names: the BOOTP file field (NUL-padded), else
/// option 67.
fn boot_file(m: &Message) -> Option<String> {
    let field = m
        .fname()
        .map(|f| f.split(|&b| b == 0).next().unwrap_or_default())
        .filter(|f| !f.is_empty());
    match field {
        Some(f) => Some(String::from_utf8_lossy(f).into_owned()),
        None => match m.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(f)) => Some(String::from_utf8_lossy(f).into_owned()),
            _ => None,
        },
    }
}

/// An answer to a GET: status checked, body counted against Content-Length.
struct Got {
    /// Body bytes.
    len: u64,
    /// The body, when asked to keep it.
    body: Vec<u8>,
    /// Realtime clock just before the request was sent.
    sent: SystemTime,
    /// Kernel receive time of the body's last bytes.
    last_rx: SystemTime,
}

/// GETs `url` (plain `http://IP:PORT/...`), insisting on 200 and a body exactly as
/// long as its Content-Length. Keeps the body if `keep`.
async fn http_get(url: &str, keep: bool) -> Result<Got> {
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
    rxtime::enable(&s)?;
    let sent = rxtime::now();
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
    let (body_at, mut last_rx) = loop {
        let (n, at) = rxtime::read(&s, &mut buf).await.context("read head")?;
        if n == 0 {
            bail!("connection closed before the end of the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break (i + 4, at);
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
        let (n, at) = rxtime::read(&s, &mut buf).await.context("read body")?;
        if n == 0 {
            bail!("short body: {got} of {length} bytes");
        }
        got += n as u64;
        last_rx = at;
        if keep {
            body.extend_from_slice(&buf[..n]);
        }
    }
    if got != length {
        bail!("body of {got} bytes, Content-Length {length}");
    }
    Ok(Got {
        len: got,
        body,
        sent,
        last_rx,
    })
}

/// One simulated boot, from the firmware's DISCOVER to the booting callback (or to
/// the end of the TFTP read with [`StormScope::DhcpTftp`]).
async fn boot(ctx: Arc<Ctx>, index: usize) -> ClientOutcome {
    let fail = |phase, e: anyhow::Error| ClientOutcome::Failed {
        index,
        phase,
        reason: format!("{e:#}"),
    };
    let deadline = Instant::now() + ctx.deadline;
    let mac = MacAddr([0x02, 0x53, 0x54, 0x4f, (index >> 8) as u8, index as u8]);
    let mut t = Timings::default();

    let xid = XID_FIRMWARE | (index as u32 & 0xffff);
    let packet = match pxe_packet(
        MessageType::Discover,
        xid,
        mac,
        index,
        ctx.firmware,
        Sender::Firmware,
    ) {
        Ok(p) => p,
        Err(e) => return fail(Phase::Dhcp, e),
    };
    let (offer, start, at, discovers) = match ask(&ctx, xid, &packet, deadline).await {
        Ok(r) => r,
        Err(e) => return fail(Phase::Dhcp, e),
    };
    t.phases.insert(Phase::Dhcp, rxtime::between(start, at));
    t.discovers = discovers;
    let server = if offer.siaddr().is_unspecified() {
        ctx.server
    } else {
        offer.siaddr()
    };
    let mut file = match boot_file(&offer) {
        Some(f) => f,
        None => return fail(Phase::Dhcp, anyhow!("OFFER names no boot file")),
    };

    if ctx.boot_server {
        match ask_boot_server(&ctx, server, xid, mac, index).await {
            Ok((ack, took)) => {
                t.phases.insert(Phase::BootServer, took);
                if let Some(f) = boot_file(&ack) {
                    file = f;
                }
            }
            Err(e) => return fail(Phase::BootServer, e),
        }
    }

    let fetched = match fetch_with(
        SocketAddr::from((server, 69)),
        file.clone(),
        ctx.firmware.tftp(),
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
    let default_binary = match ctx.firmware {
        StormFirmware::Bios => "undionly.kpxe",
        StormFirmware::Efi => "ipxe.efi",
    };
    if file.ends_with(default_binary) && ctx.tftp_size.is_some_and(|s| s != len) {
        let e = anyhow!("{file}: {len} bytes, the file has {:?}", ctx.tftp_size);
        return fail(Phase::Tftp, e);
    }
    t.phases.insert(
        Phase::Tftp,
        rxtime::between(fetched.rrq_sent, fetched.last_rx),
    );
    if ctx.scope == StormScope::DhcpTftp {
        t.total = rxtime::between(start, fetched.last_rx);
        return ClientOutcome::Booted { index, timings: t };
    }

    // The chainloaded iPXE asks DHCP again and gets the script URL.
    let xid = XID_IPXE | (index as u32 & 0xffff);
    let packet = match pxe_packet(
        MessageType::Discover,
        xid,
        mac,
        index,
        ctx.firmware,
        Sender::Ipxe,
    ) {
        Ok(p) => p,
        Err(e) => return fail(Phase::IpxeDhcp, e),
    };
    let (offer, sent, at, _) = match ask(&ctx, xid, &packet, deadline).await {
        Ok(r) => r,
        Err(e) => return fail(Phase::IpxeDhcp, e),
    };
    t.phases.insert(Phase::IpxeDhcp, rxtime::between(sent, at));
    let script_url = match boot_file(&offer) {
        Some(u) if u.starts_with("http://") => u,
        other => {
            let e = anyhow!("iPXE's OFFER names {other:?}, not an http:// script URL");
            return fail(Phase::IpxeDhcp, e);
        }
    };

    let script = match http_get(&script_url, true).await {
        Ok(r) => r,
        Err(e) => return fail(Phase::Script, e),
    };
    t.phases
        .insert(Phase::Script, rxtime::between(script.sent, script.last_rx));
    t.http_bytes = script.len;
    let urls = script_urls(&String::from_utf8_lossy(&script.body));
    if urls.files.is_empty() {
        return fail(Phase::Script, anyhow!("script names no /_/file URL"));
    }

    let mut first_sent = None;
    let mut last_rx = script.last_rx;
    for url in &urls.files {
        match http_get(url, false).await {
            Ok(g) => {
                first_sent.get_or_insert(g.sent);
                last_rx = g.last_rx;
                t.http_bytes += g.len;
            }
            Err(e) => return fail(Phase::Files, e),
        }
    }
    if let Some(first) = first_sent {
        t.phases
            .insert(Phase::Files, rxtime::between(first, last_rx));
    }

    let Some(booting) = urls.booting else {
        return fail(Phase::Booting, anyhow!("script has no /_/booting callback"));
    };
    match http_get(&booting, false).await {
        Ok(g) => {
            t.http_bytes += g.len;
            t.phases
                .insert(Phase::Booting, rxtime::between(g.sent, g.last_rx));
            t.total = rxtime::between(start, g.last_rx);
        }
        Err(e) => return fail(Phase::Booting, e),
    }
    ClientOutcome::Booted { index, timings: t }
}

/// DHCP probes: one DISCOVER from a fresh MAC every `every` until `stop` turns
/// true; prints one [`ClientOutcome::Probe`] line each.
async fn probe(ctx: Arc<Ctx>, every: Duration, stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    for n in 0u32.. {
        tick.tick().await;
        if *stop.borrow() || n > 0xffff {
            break;
        }
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mac = MacAddr([0x02, 0x50, 0x52, 0x4f, (n >> 8) as u8, n as u8]);
            let xid = XID_PROBE | n;
            let packet = discover(xid, mac, 0x1_0000 + n as usize).ok()?;
            let (tx, rx) = oneshot::channel();
            ctx.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(xid, tx);
            let sent = rxtime::now();
            let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
            ctx.sock.send_to(&packet, to).await.ok()?;
            let answer = tokio::time::timeout(Duration::from_secs(5), rx).await;
            ctx.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&xid);
            Some(match answer {
                Ok(Ok((_, at))) => rxtime::between(sent, at),
                _ => return None,
            })
        }));
    }
    for t in tasks {
        let line = ClientOutcome::Probe(t.await.ok().flatten()).to_line();
        println!("{line}");
    }
}

/// `ironpxe-bench storm-clients`: runs the simulated clients and prints one line
/// each ([`ClientOutcome::to_line`]).
pub fn run_clients(a: ClientArgs) -> Result<()> {
    raise_open_file_limit();
    // Arrival stamps on before the first client's socket reads anything.
    rxtime::kernel_stamps_work();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = Arc::new(dhcp_socket(&a.ifname)?);
        let waiters: Waiters = Arc::default();
        let demux = tokio::spawn(demultiplex(sock.clone(), waiters.clone()));
        let ctx = Arc::new(Ctx {
            sock,
            waiters,
            server: a.server,
            firmware: a.firmware,
            scope: a.scope,
            boot_server: a.boot_server,
            tftp_size: a.tftp_size,
            deadline: Duration::from_secs(a.deadline_secs),
        });
        let (stop_probes, probes_stop) = tokio::sync::watch::channel(false);
        let probes = (a.probe_ms > 0).then(|| {
            tokio::spawn(probe(
                ctx.clone(),
                Duration::from_millis(a.probe_ms),
                probes_stop,
            ))
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
        let _ = stop_probes.send(true);
        if let Some(p) = probes {
            let _ = p.await;
        }
        demux.abort();
        Ok(())
    })
}

/// Thousands of clients need thousands of sockets: the soft open-file limit goes up
/// to the hard one.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
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
        let b = ironpxe_core::BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 8080);
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
                timings: Timings::default(),
            },
            ClientOutcome::Probe(None),
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
        let ms = Duration::from_micros;
        let booted = ClientOutcome::Booted {
            index: 3,
            timings: Timings {
                phases: [
                    (Phase::Dhcp, ms(1500)),
                    (Phase::BootServer, ms(700)),
                    (Phase::Tftp, ms(20_000)),
                    (Phase::IpxeDhcp, ms(800)),
                    (Phase::Script, ms(900)),
                    (Phase::Files, ms(300_000)),
                    (Phase::Booting, ms(400)),
                ]
                .into_iter()
                .collect(),
                total: ms(330_000),
                http_bytes: 12 << 20,
                discovers: 2,
            },
        };
        let tftp_only = ClientOutcome::Booted {
            index: 4,
            timings: Timings {
                phases: [(Phase::Dhcp, ms(10)), (Phase::Tftp, ms(20))]
                    .into_iter()
                    .collect(),
                total: ms(30),
                http_bytes: 0,
                discovers: 1,
            },
        };
        let failed = ClientOutcome::Failed {
            index: 9,
            phase: Phase::Tftp,
            reason: "undionly.kpxe: server silent\nafter 0 bytes".into(),
        };
        let probes = [
            ClientOutcome::Probe(Some(ms(2500))),
            ClientOutcome::Probe(None),
        ];
        for o in [booted, tftp_only, failed].into_iter().chain(probes) {
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
        assert_eq!(ClientOutcome::parse_line("OK 1 dhcp=5 total=9"), None);
        assert_eq!(
            ClientOutcome::parse_line("OK 1 nophase=5 total=9 bytes=0 discovers=1"),
            None
        );
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

    #[test]
    fn ipxe_discovers_carry_its_user_class_and_http_feature() {
        let mac = MacAddr([2, 0x53, 0x54, 0x4f, 0, 6]);
        let bytes = pxe_packet(
            MessageType::Discover,
            XID_IPXE | 6,
            mac,
            6,
            StormFirmware::Efi,
            Sender::Ipxe,
        )
        .unwrap();
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert!(matches!(
            m.opts().get(OptionCode::UserClass),
            Some(DhcpOption::UserClass(c)) if c == b"iPXE"
        ));
        match m.opts().get(OptionCode::Unknown(175)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), &[19, 1, 1]),
            other => panic!("option 175: {other:?}"),
        }
        assert!(matches!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(c)) if c == b"PXEClient:Arch:00007:UNDI:002001"
        ));
        // The firmware's own DISCOVER does not claim to be iPXE.
        let fw = pxe_packet(
            MessageType::Discover,
            XID_FIRMWARE | 6,
            mac,
            6,
            StormFirmware::Efi,
            Sender::Firmware,
        )
        .unwrap();
        let m = Message::decode(&mut Decoder::new(&fw)).unwrap();
        assert!(m.opts().get(OptionCode::UserClass).is_none());
        assert!(m.opts().get(OptionCode::Unknown(175)).is_none());
    }

    #[test]
    fn server_side_latency_pairs_each_discover_with_the_next_offer_of_its_xid() {
        use ironpxe_lab::segments::CapturedUdp;
        use std::net::SocketAddrV4;
        let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let bcast67 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 67);
        let bcast68 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let offer = |xid: u32| {
            let un = Ipv4Addr::UNSPECIFIED;
            let mut m = Message::new_with_id(xid, un, un, un, un, &[2, 0, 0, 0, 0, 1]);
            m.set_opcode(Opcode::BootReply);
            m.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Offer));
            m.to_vec().unwrap()
        };
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let at = Duration::from_millis;
        let caps = vec![
            // A client: asked at 100 ms (and again at 1100 ms), answered at 1103 ms.
            CapturedUdp {
                at: at(100),
                src: client,
                dst: bcast67,
                payload: discover(XID_FIRMWARE | 1, mac, 1).unwrap(),
            },
            CapturedUdp {
                at: at(1100),
                src: client,
                dst: bcast67,
                payload: discover(XID_FIRMWARE | 1, mac, 1).unwrap(),
            },
            CapturedUdp {
                at: at(1103),
                src: server,
                dst: bcast68,
                payload: offer(XID_FIRMWARE | 1),
            },
            // A probe answered after 4 ms.
            CapturedUdp {
                at: at(200),
                src: client,
                dst: bcast67,
                payload: discover(XID_PROBE | 3, mac, 3).unwrap(),
            },
            CapturedUdp {
                at: at(204),
                src: server,
                dst: bcast68,
                payload: offer(XID_PROBE | 3),
            },
            // An OFFER nobody asked for, and a DISCOVER never answered.
            CapturedUdp {
                at: at(300),
                src: server,
                dst: bcast68,
                payload: offer(77),
            },
            CapturedUdp {
                at: at(400),
                src: client,
                dst: bcast67,
                payload: discover(XID_PROBE | 4, mac, 4).unwrap(),
            },
        ];
        let s = server_side(&caps);
        // From the first DISCOVER: the repeat only exists because the first went
        // unanswered.
        let close = |v: &[f64], want: f64| v.len() == 1 && (v[0] - want).abs() < 1e-6;
        assert!(close(&s.clients_ms, 1003.0), "{:?}", s.clients_ms);
        assert!(close(&s.probes_ms, 4.0), "{:?}", s.probes_ms);
        assert_eq!(s.unanswered, 1);
    }
}
