//! The lab network: private namespaces joined by a bridge, a site DHCP server, and
//! the processes that run inside.
//!
//! ```text
//!   <id>-site ns            <id>-sw ns (the "switch")            <id>-pxe ns
//!   dnsmasq (DHCP + RA)     bridge <id>-br                       ironpxe
//!   <id>-site 10.77.N.1 ── veth ──┤├── veth ── <id>-pxe 10.77.N.2
//!                                 ├── tap <id>-t0 ── QEMU guest0
//!                                 ├── tap <id>-t1 ── QEMU guest1
//!                                 └── veth ── <id>-c0 in <id>-cl0 (udhcpc client)
//! ```
//!
//! Nothing connects to the host's namespace: every link is created inside the switch
//! namespace and its peer moved straight into a lab namespace, and no namespace has a
//! route out. A [`Lab`] is torn down on drop (processes killed by PID, then
//! namespaces deleted), on Ctrl-C or SIGTERM (a handler installed by the first lab),
//! and a lab left behind by a killed process is removed by the next one.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::events::{ironpxe_bin, Event, EventFeed};
use crate::guest::{Guest, GuestConfig};
use crate::proc::{create_log, spawn, LineMode, PipeSink, Proc, WaitEnd};
use crate::timeline::Timeline;

/// Every lab namespace and interface name starts with this.
pub const NAME_PREFIX: &str = "ipxl";

/// Where running labs record their owner process, so stale labs can be found.
const REGISTRY_DIR: &str = "/run/ironpxe-lab";

/// The HTTP port the lab's ironpxe listens on by default.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

static LABS: Mutex<Vec<Weak<LabInner>>> = Mutex::new(Vec::new());
static SIGNAL_HANDLER: Once = Once::new();

/// Configures a [`Lab`] before it is built.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    name: String,
    site_dhcp: bool,
    router_advertisements: bool,
    relayed_segment: bool,
}

impl LabBuilder {
    /// Whether the site namespace runs dnsmasq as the site DHCP server (default on).
    pub fn site_dhcp(mut self, on: bool) -> Self {
        self.site_dhcp = on;
        self
    }

    /// Whether the site dnsmasq sends IPv6 router advertisements (default on). Without
    /// them iPXE waits about 16 s for one in its "Configuring" step.
    pub fn router_advertisements(mut self, on: bool) -> Self {
        self.router_advertisements = on;
        self
    }

    /// Whether the site DHCP server also serves segment 1 (`10.78.N.0/24`, router
    /// `10.78.N.1`) through a relay (default off); see [`Lab::add_relay`].
    pub fn relayed_segment(mut self, on: bool) -> Self {
        self.relayed_segment = on;
        self
    }

    /// Checks the machine ([`crate::preflight`], which panics with what is missing),
    /// removes stale labs, then creates the namespaces, links and site DHCP server.
    pub fn build(self) -> Result<Lab> {
        crate::preflight::preflight();
        for ns in cleanup_stale() {
            eprintln!("ironpxe-lab: removed stale namespace {ns}");
        }
        install_signal_handler();

        let (id, rnd) = unique_id()?;
        let subnet = (rnd % 250) as u8 + 1;
        let out_dir = out_root().join(sanitize(&self.name));
        let _ = fs::remove_dir_all(&out_dir);
        fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .context("cannot create the lab's temporary directory")?;

        let inner = Arc::new(LabInner {
            id: id.clone(),
            name: self.name.clone(),
            t0: Instant::now(),
            subnet,
            mac_seed: [(rnd >> 8) as u8, (rnd >> 16) as u8],
            out_dir,
            tmp_dir: tmp.path().to_path_buf(),
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            site: Mutex::new(None),
            ironpxe: Mutex::new(None),
            torn_down: AtomicBool::new(false),
            teardown_lock: Mutex::new(()),
            next_guest: AtomicU32::new(0),
            next_client: AtomicU32::new(0),
        });
        LABS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&inner));
        let lab = Lab {
            inner,
            _tmp: Some(tmp),
        };
        // From here on, an error drops `lab`, which removes what was created.
        lab.register_owner()?;
        lab.create_network()?;
        if self.site_dhcp {
            lab.start_site_dhcp(self.router_advertisements, self.relayed_segment)?;
        }
        lab.write_description()?;
        Ok(lab)
    }
}

pub(crate) struct LabInner {
    id: String,
    name: String,
    t0: Instant,
    subnet: u8,
    mac_seed: [u8; 2],
    out_dir: PathBuf,
    tmp_dir: PathBuf,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<Arc<Proc>>>,
    site: Mutex<Option<Arc<Proc>>>,
    ironpxe: Mutex<Option<(Arc<Proc>, Arc<EventFeed>)>>,
    torn_down: AtomicBool,
    /// Held for the whole teardown, so a second caller (Drop racing the Ctrl-C
    /// handler) returns only once everything is gone.
    teardown_lock: Mutex<()>,
    next_guest: AtomicU32,
    next_client: AtomicU32,
}

impl LabInner {
    /// Kills every process (by PID, through its handle), deletes the namespaces and
    /// the temporary directory. Safe to call more than once and from any thread.
    fn teardown(&self) {
        let _whole = self.teardown_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let procs: Vec<_> = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for p in procs.iter().rev() {
            p.kill();
        }
        *self.site.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.ironpxe.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let namespaces: Vec<_> = self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for ns in namespaces.iter().rev() {
            remove_namespace(ns);
        }
        let _ = fs::remove_dir_all(&self.tmp_dir);
        let _ = fs::remove_file(Path::new(REGISTRY_DIR).join(&self.id));
    }
}

/// A private network with a site DHCP server, where ironpxe and QEMU guests run.
///
/// Build one with [`Lab::builder`]. Dropping it tears everything down.
pub struct Lab {
    inner: Arc<LabInner>,
    _tmp: Option<tempfile::TempDir>,
}

impl Lab {
    /// Starts configuring a lab. `name` names its output directory,
    /// `<workspace>/lab-out/<name>/` (or `$IRONPXE_LAB_OUT/<name>/`).
    pub fn builder(name: &str) -> LabBuilder {
        LabBuilder {
            name: name.to_string(),
            site_dhcp: true,
            router_advertisements: true,
            relayed_segment: false,
        }
    }

    /// Builds a lab with the defaults: site DHCP with router advertisements.
    pub fn new(name: &str) -> Result<Lab> {
        Self::builder(name).build()
    }

    /// The unique id, `ipxl` + 5 hex digits; every namespace and interface name of
    /// this lab starts with it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The name given to [`Lab::builder`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The moment the lab was created; log files are stamped relative to it.
    pub fn t0(&self) -> Instant {
        self.inner.t0
    }

    /// Where logs, serial output and timelines are written.
    pub fn out_dir(&self) -> &Path {
        &self.inner.out_dir
    }

    /// A private temporary directory, removed at teardown.
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp_dir
    }

    /// The namespace holding the bridge and the guests' tap devices.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.inner.id)
    }

    /// The namespace of the site DHCP server.
    pub fn site_ns(&self) -> String {
        format!("{}-site", self.inner.id)
    }

    /// The namespace ironpxe runs in.
    pub fn pxe_ns(&self) -> String {
        format!("{}-pxe", self.inner.id)
    }

    /// The bridge in the switch namespace.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.inner.id)
    }

    /// The site server's interface (in [`Lab::site_ns`]).
    pub fn site_ifname(&self) -> String {
        format!("{}-site", self.inner.id)
    }

    /// ironpxe's interface (in [`Lab::pxe_ns`]); pass it to `--interface`.
    pub fn pxe_ifname(&self) -> String {
        format!("{}-pxe", self.inner.id)
    }

    /// All namespaces that currently belong to this lab.
    pub fn namespaces(&self) -> Vec<String> {
        self.inner
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The lab's subnet number N (addresses are `10.77.N.x`).
    pub fn subnet(&self) -> u8 {
        self.inner.subnet
    }

    /// The site server's address, `10.77.N.1`.
    pub fn site_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.inner.subnet, 1)
    }

    /// ironpxe's address, `10.77.N.2`.
    pub fn pxe_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.inner.subnet, 2)
    }

    /// The addresses the site server hands out, `10.77.N.100` to `.200`.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::new(10, 77, self.inner.subnet, 100),
            Ipv4Addr::new(10, 77, self.inner.subnet, 200),
        )
    }

    /// The IPv6 prefix the site advertises, `fd77:N::` (a /64).
    pub fn prefix6(&self) -> String {
        format!("fd77:{:x}::", self.inner.subnet)
    }

    pub(crate) fn ip(&self, args: &[&str]) -> Result<()> {
        run_ip(args)
    }

    /// Runs a program inside one of the lab's namespaces and waits for it.
    pub fn run_in(&self, ns: &str, program: &str, args: &[&str]) -> Result<std::process::Output> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} in namespace {ns}"))
    }

    /// Writes `value` to `/proc/sys/<key>` as seen from inside `ns` (never the host's).
    pub(crate) fn sysctl_in(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.run_in(ns, "sh", &["-c", &format!("echo {value} > {path}")])?;
        if !out.status.success() {
            bail!(
                "cannot set {key}={value} in namespace {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub(crate) fn add_namespace(&self, ns: &str) -> Result<()> {
        self.ip(&["netns", "add", ns])?;
        self.inner
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ns.to_string());
        self.ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn register_owner(&self) -> Result<()> {
        fs::create_dir_all(REGISTRY_DIR)
            .with_context(|| format!("cannot create {REGISTRY_DIR}"))?;
        let me = std::process::id();
        let start = process_start_time(me).unwrap_or_default();
        fs::write(
            Path::new(REGISTRY_DIR).join(&self.inner.id),
            format!("{me} {start}\n"),
        )
        .context("cannot record the lab in the registry")
    }

    fn create_network(&self) -> Result<()> {
        let id = &self.inner.id;
        let (sw, site, pxe) = (self.switch_ns(), self.site_ns(), self.pxe_ns());
        let br = self.bridge();
        for ns in [&sw, &site, &pxe] {
            self.add_namespace(ns)?;
        }
        // The switch is layer 2 only: no addresses, no IPv6 of its own.
        self.sysctl_in(&sw, "net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl_in(&sw, "net.ipv6.conf.default.disable_ipv6", "1")?;
        self.ip(&[
            "-n",
            &sw,
            "link",
            "add",
            &br,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.ip(&["-n", &sw, "link", "set", &br, "up"])?;

        let n = self.inner.subnet;
        for (ns, ifname, port, host) in [
            (&site, self.site_ifname(), format!("{id}-vs"), 1u8),
            (&pxe, self.pxe_ifname(), format!("{id}-vp"), 2u8),
        ] {
            // No duplicate address detection: addresses are usable at once.
            self.sysctl_in(ns, "net.ipv6.conf.default.accept_dad", "0")?;
            self.sysctl_in(ns, "net.ipv6.conf.all.accept_dad", "0")?;
            self.attach_veth(&port, ns, &ifname)?;
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.77.{n}.{host}/24"),
                "dev",
                &ifname,
            ])?;
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd77:{n:x}::{host}/64"),
                "dev",
                &ifname,
                "nodad",
            ])?;
            self.ip(&["-n", ns, "link", "set", &ifname, "up"])?;
        }
        Ok(())
    }

    /// Creates a veth pair inside the switch namespace, enslaves `port` to the bridge
    /// and moves `ifname` into `ns`. The host namespace never sees either end.
    fn attach_veth(&self, port: &str, ns: &str, ifname: &str) -> Result<()> {
        let sw = self.switch_ns();
        self.ip(&[
            "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ])?;
        self.ip(&["-n", &sw, "link", "set", port, "master", &self.bridge()])?;
        self.ip(&["-n", &sw, "link", "set", port, "up"])
    }

    fn start_site_dhcp(&self, ra: bool, relayed: bool) -> Result<()> {
        let (lo, hi) = self.dhcp_range();
        let leases = self.inner.tmp_dir.join("site-dnsmasq.leases");
        let mut cmd = crate::segments::dnsmasq_cmd(&self.site_ns(), &self.site_ifname());
        cmd.arg(format!("--dhcp-range={lo},{hi},255.255.255.0,1h"))
            .arg(format!("--dhcp-leasefile={}", leases.display()));
        if relayed {
            let far = crate::segments::segment_prefix(1, self.inner.subnet);
            cmd.arg(format!(
                "--dhcp-range=set:seg1,{far}.100,{far}.200,255.255.255.0,1h"
            ))
            .arg(format!("--dhcp-option=tag:seg1,option:router,{far}.1"));
        }
        if ra {
            cmd.arg("--enable-ra")
                .arg(format!("--dhcp-range={},ra-only", self.prefix6()));
        }
        let log = self.inner.out_dir.join("site-dnsmasq.log");
        let proc = self.spawn_proc("site-dnsmasq", cmd, &log, LineMode::Plain, None)?;
        *self.inner.site.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc.clone());
        let ready = proc
            .log
            .wait_for(Instant::now() + Duration::from_secs(10), |lines| {
                lines
                    .iter()
                    .any(|l| l.text.contains("DHCP, IP range") || l.text.contains("sockets bound"))
                    .then_some(())
            });
        match ready {
            Ok(()) => Ok(()),
            Err(end) => bail!(
                "site dnsmasq did not start ({}):\n{}",
                if end == WaitEnd::Closed {
                    "it exited"
                } else {
                    "no start-up line in 10 s"
                },
                proc.tail(20)
            ),
        }
    }

    fn write_description(&self) -> Result<()> {
        let text = format!(
            "lab {name} ({id})\n\
             namespaces: switch={sw} site={site} ironpxe={pxe}\n\
             bridge: {br}\n\
             site: {site_if} {site_addr}/24 fd77:{n:x}::1/64, DHCP {lo}-{hi}\n\
             ironpxe: {pxe_if} {pxe_addr}/24 fd77:{n:x}::2/64\n",
            name = self.inner.name,
            id = self.inner.id,
            sw = self.switch_ns(),
            site = self.site_ns(),
            pxe = self.pxe_ns(),
            br = self.bridge(),
            site_if = self.site_ifname(),
            site_addr = self.site_addr(),
            pxe_if = self.pxe_ifname(),
            pxe_addr = self.pxe_addr(),
            n = self.inner.subnet,
            lo = self.dhcp_range().0,
            hi = self.dhcp_range().1,
        );
        fs::write(self.inner.out_dir.join("lab.txt"), text)?;
        Ok(())
    }

    pub(crate) fn spawn_proc(
        &self,
        name: &str,
        cmd: Command,
        log: &Path,
        stdout_mode: LineMode,
        raw: Option<&Path>,
    ) -> Result<Arc<Proc>> {
        if self.inner.torn_down.load(Ordering::SeqCst) {
            bail!("the lab has been torn down");
        }
        let log_file = create_log(log)?;
        let err_file = log_file.try_clone()?;
        let raw_file = raw.map(create_log).transpose()?;
        let proc = spawn(
            name,
            cmd,
            self.inner.t0,
            PipeSink {
                mode: stdout_mode,
                log_file,
                raw_file,
            },
            PipeSink {
                mode: LineMode::Plain,
                log_file: err_file,
                raw_file: None,
            },
        )?;
        self.inner
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc.clone());
        Ok(proc)
    }

    /// Name and PID of every process the lab has started and not yet ended.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.inner
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.is_running())
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// The site dnsmasq's log lines so far (empty without site DHCP).
    pub fn site_lines(&self) -> Vec<crate::LogLine> {
        self.inner
            .site
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.lines())
            .unwrap_or_default()
    }

    /// Waits until the site dnsmasq logs a DHCPACK for `mac`; returns the address and
    /// when the line was logged.
    pub fn wait_site_ack(&self, mac: &str, timeout: Duration) -> Result<(Ipv4Addr, Instant)> {
        let site = self
            .inner
            .site
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("this lab has no site DHCP server"))?;
        let mac = mac.to_lowercase();
        site.log
            .wait_for(Instant::now() + timeout, |lines| {
                lines
                    .iter()
                    .find_map(|l| parse_site_ack(&l.text, &mac).map(|ip| (ip, l.at)))
            })
            .map_err(|_| anyhow!("site dnsmasq sent no DHCPACK to {mac} within {timeout:?}"))
    }

    /// The site server's lease file: `(mac, address)` pairs.
    pub fn site_leases(&self) -> Vec<(String, Ipv4Addr)> {
        let text =
            fs::read_to_string(self.inner.tmp_dir.join("site-dnsmasq.leases")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let _expiry = f.next()?;
                let mac = f.next()?.to_string();
                let ip = f.next()?.parse().ok()?;
                Some((mac, ip))
            })
            .collect()
    }

    /// The arguments of `ironpxe boot` for this lab: `boot KERNEL INITRD... --cmdline
    /// CMDLINE -p 8080 --interface <pxe ifname>`.
    pub fn ironpxe_boot_args(
        &self,
        kernel: &Path,
        initrds: &[&Path],
        cmdline: &str,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["boot".into(), kernel.into()];
        args.extend(initrds.iter().map(|p| OsString::from(p.as_os_str())));
        args.push("--cmdline".into());
        args.push(cmdline.into());
        args.push("-p".into());
        args.push(DEFAULT_HTTP_PORT.to_string().into());
        args.push("--interface".into());
        args.push(self.pxe_ifname().into());
        args
    }

    /// Starts the ironpxe binary ([`crate::ironpxe_bin`]) with `args` inside the
    /// ironpxe namespace, logging to `ironpxe.log`. Waits (up to 15 s) until it
    /// listens on UDP 67 or its HTTP port, and fails if it exits first.
    pub fn start_ironpxe<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Ironpxe> {
        self.start_ironpxe_in(&self.pxe_ns(), args)
    }

    /// Like [`Lab::start_ironpxe`], in namespace `ns` (for example the site
    /// namespace, next to its DHCP server). Outside the ironpxe namespace UDP 67 may
    /// belong to another server, so only the HTTP port counts as "listening" there.
    pub fn start_ironpxe_in<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Result<Ironpxe> {
        let bin = ironpxe_bin()?;
        let udp67_counts = ns == self.pxe_ns();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&bin)
            .args(args)
            .env("NO_COLOR", "1");
        let log = self.inner.out_dir.join("ironpxe.log");
        let proc = self.spawn_proc("ironpxe", cmd, &log, LineMode::Plain, None)?;
        let feed = Arc::new(EventFeed::new(ns, &status_base_of(args)));
        *self.inner.ironpxe.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((proc.clone(), feed.clone()));

        let port = http_port_of(args);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if !proc.is_running() {
                // Give the readers a moment to collect its last words.
                std::thread::sleep(Duration::from_millis(200));
                bail!(
                    "ironpxe ({}) exited during start-up:\n{}",
                    bin.display(),
                    proc.tail(30)
                );
            }
            if self.listening(ns, port, udp67_counts) {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "ironpxe-lab: ironpxe is running but not listening on UDP 67 or TCP {port} \
                     after 15 s; going on"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Ironpxe { proc, feed })
    }

    /// Whether something in `ns` listens on TCP `http_port` (or UDP 67, if `udp67`).
    fn listening(&self, ns: &str, http_port: u16, udp67: bool) -> bool {
        let Ok(out) = self.run_in(
            ns,
            "cat",
            &[
                "/proc/net/udp",
                "/proc/net/udp6",
                "/proc/net/tcp",
                "/proc/net/tcp6",
            ],
        ) else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let tcp = format!(":{http_port:04X} ");
        text.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && ((udp67 && format!("{} ", cols[1]).ends_with(":0043 ") && cols[3] == "07")
                    || (format!("{} ", cols[1]).ends_with(&tcp) && cols[3] == "0A"))
        })
    }

    /// The boot events of the ironpxe started last, from its status feed (empty if
    /// ironpxe was not started).
    pub fn ironpxe_events(&self) -> Vec<Event> {
        let feed = self
            .inner
            .ironpxe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, f)| f.clone());
        feed.map(|f| f.events()).unwrap_or_default()
    }

    pub(crate) fn ironpxe_proc(&self) -> Option<Arc<Proc>> {
        self.inner
            .ironpxe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(p, _)| p.clone())
    }

    /// Creates a tap device on the bridge and starts a QEMU guest on it.
    pub fn start_guest(&self, config: GuestConfig) -> Result<Guest> {
        self.start_guest_on(&self.bridge(), config)
    }

    /// Starts a QEMU guest on another bridge of the switch namespace (see
    /// [`Lab::add_segment`]).
    pub fn start_guest_on(&self, bridge: &str, config: GuestConfig) -> Result<Guest> {
        let n = self.inner.next_guest.fetch_add(1, Ordering::SeqCst);
        if n > 250 {
            bail!("too many guests in one lab");
        }
        let tap = format!("{}-t{n}", self.inner.id);
        let sw = self.switch_ns();
        self.ip(&["-n", &sw, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ip(&["-n", &sw, "link", "set", &tap, "master", bridge])?;
        self.ip(&["-n", &sw, "link", "set", &tap, "up"])?;
        let mac = config.mac.unwrap_or(ironpxe_core::MacAddr([
            0x52,
            0x54,
            0x00,
            self.inner.mac_seed[0],
            self.inner.mac_seed[1],
            n as u8,
        ]));
        let name = config.name.clone().unwrap_or_else(|| format!("guest{n}"));
        crate::guest::start(self, config, name, mac, &tap)
    }

    /// Adds a namespace `<id>-cl<n>` with one interface on the bridge, for running
    /// ordinary network clients next to the guests.
    pub fn add_client(&self) -> Result<Client> {
        let n = self.inner.next_client.fetch_add(1, Ordering::SeqCst);
        let ns = format!("{}-cl{n}", self.inner.id);
        let ifname = format!("{}-c{n}", self.inner.id);
        self.add_namespace(&ns)?;
        self.attach_veth(&format!("{}-vc{n}", self.inner.id), &ns, &ifname)?;
        self.ip(&["-n", &ns, "link", "set", &ifname, "up"])?;
        Ok(Client {
            ns,
            ifname,
            index: n,
        })
    }

    /// Asks the site server for an address from a client namespace with busybox
    /// udhcpc; returns the address it leased.
    pub fn client_dhcp(&self, client: &Client, timeout: Duration) -> Result<Ipv4Addr> {
        let busybox = crate::assets::busybox_path()
            .ok_or_else(|| anyhow!("busybox not found: apt-get install busybox-static"))?;
        let tries = timeout.as_secs().clamp(2, 60).to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &client.ns])
            .arg(busybox)
            .args([
                "udhcpc",
                "-f",
                "-q",
                "-n",
                "-T",
                "1",
                "-t",
                &tries,
                "-s",
                "/bin/true",
                "-i",
            ])
            .arg(&client.ifname);
        let log = self
            .inner
            .out_dir
            .join(format!("client{}-udhcpc.log", client.index));
        let proc = self.spawn_proc(
            &format!("client{}-udhcpc", client.index),
            cmd,
            &log,
            LineMode::Plain,
            None,
        )?;
        let found = proc.log.wait_for(Instant::now() + timeout, |lines| {
            lines.iter().find_map(|l| parse_udhcpc_lease(&l.text))
        });
        proc.kill();
        found.map_err(|_| {
            anyhow!(
                "udhcpc in {} got no lease within {timeout:?}:\n{}",
                client.ns,
                proc.tail(20)
            )
        })
    }

    /// Merges a guest's serial lines, ironpxe's events and the site server's DHCP
    /// lines for that guest into one timeline, relative to the guest's power-on.
    pub fn timeline(&self, guest: &Guest) -> Timeline {
        crate::timeline::build(self, guest)
    }

    /// Writes the timeline to `<out_dir>/timeline-<guest>.txt` and returns it.
    pub fn write_timeline(&self, guest: &Guest) -> Timeline {
        let t = self.timeline(guest);
        let _ = fs::write(
            self.inner
                .out_dir
                .join(format!("timeline-{}.txt", guest.name())),
            t.to_string(),
        );
        t
    }

    /// Tears the lab down now (also done on drop).
    pub fn teardown(&self) {
        self.inner.teardown();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.inner.teardown();
    }
}

/// A running ironpxe started by [`Lab::start_ironpxe`].
pub struct Ironpxe {
    proc: Arc<Proc>,
    feed: Arc<EventFeed>,
}

impl Ironpxe {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Its log lines so far.
    pub fn lines(&self) -> Vec<crate::LogLine> {
        self.proc.lines()
    }

    /// Its boot events so far, from its status feed (`GET /api/v1/log`).
    pub fn events(&self) -> Vec<Event> {
        self.feed.events()
    }

    /// Waits for an event that `pred` accepts, polling the status feed.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.feed.events().into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if !self.proc.is_running() {
                bail!("ironpxe exited:\n{}", self.proc.tail(20));
            }
            if Instant::now() >= deadline {
                bail!("no matching ironpxe event within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (SIGKILL by PID).
    pub fn stop(&self) {
        self.proc.kill();
    }
}

/// A client namespace on the lab bridge, from [`Lab::add_client`].
#[derive(Debug, Clone)]
pub struct Client {
    /// Its namespace.
    pub ns: String,
    /// Its interface inside that namespace.
    pub ifname: String,
    index: u32,
}

/// `... DHCPACK(ipxl1a2b3-site) 10.77.5.157 52:54:00:12:34:56 ...` → the address.
pub(crate) fn parse_site_ack(line: &str, mac: &str) -> Option<Ipv4Addr> {
    let pos = line.find("DHCPACK(")?;
    let rest = &line[pos..];
    let mut words = rest.split_whitespace().skip(1);
    let ip = words.next()?.parse().ok()?;
    let m = words.next()?;
    m.eq_ignore_ascii_case(mac).then_some(ip)
}

/// `udhcpc: lease of 10.77.5.123 obtained from 10.77.5.1, lease time 3600`.
pub(crate) fn parse_udhcpc_lease(line: &str) -> Option<Ipv4Addr> {
    let rest = &line[line.find("lease of ")? + "lease of ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `http://ADDR:PORT` of the status server ironpxe starts with `args`: its own
/// `--status-port`, or the boot HTTP port; on `-l ADDR`, or loopback.
fn status_base_of<S: AsRef<OsStr>>(args: &[S]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let value = |long: &str, short: Option<&str>| {
        args.iter().enumerate().find_map(|(i, a)| {
            if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                return Some(v.to_string());
            }
            (a == long || Some(a.as_str()) == short)
                .then(|| args.get(i + 1).cloned())
                .flatten()
        })
    };
    let host = value("--listen-addr", Some("-l"))
        .filter(|a| a != "0.0.0.0")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = value("--status-port", None)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| http_port_of(&args));
    format!("http://{host}:{port}")
}

fn http_port_of<S: AsRef<OsStr>>(args: &[S]) -> u16 {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--port=") {
            return v.parse().unwrap_or(80);
        }
        if a == "-p" || a == "--port" {
            return args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(80);
        }
    }
    80
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kills whatever still runs in a lab namespace (by PID) and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -9 {pid}")])
                    .output();
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// The names of all network namespaces.
pub fn list_namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the namespaces of labs whose owning process is gone (killed before it
/// could tear down). Returns the namespaces removed.
pub fn cleanup_stale() -> Vec<String> {
    // Namespaces first, registry second: a lab registers before it creates
    // namespaces, so any namespace seen here already has its registry entry.
    let namespaces: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    let mut alive = Vec::new();
    let mut dead = Vec::new();
    if let Ok(dir) = fs::read_dir(REGISTRY_DIR) {
        for e in dir.filter_map(|e| e.ok()) {
            let id = e.file_name().to_string_lossy().into_owned();
            let owner = fs::read_to_string(e.path()).unwrap_or_default();
            let mut f = owner.split_whitespace();
            let pid: Option<u32> = f.next().and_then(|p| p.parse().ok());
            let start: Option<u64> = f.next().and_then(|s| s.parse().ok());
            let running = match pid {
                Some(pid) => process_start_time(pid).is_some_and(|s| Some(s) == start),
                None => false,
            };
            if running {
                alive.push(id);
            } else {
                dead.push(e.path());
            }
        }
    }
    let mut removed = Vec::new();
    for ns in namespaces {
        let id = ns.split('-').next().unwrap_or_default();
        if !alive.iter().any(|a| a == id) {
            remove_namespace(&ns);
            removed.push(ns);
        }
    }
    for path in dead {
        let _ = fs::remove_file(path);
    }
    removed
}

/// Field 22 of /proc/PID/stat: the process start time, which tells a live owner
/// from a recycled PID.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn install_signal_handler() {
    SIGNAL_HANDLER.call_once(|| {
        let res = ctrlc::set_handler(|| {
            eprintln!("\nironpxe-lab: interrupted; tearing down labs");
            let labs: Vec<_> = LABS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for lab in labs {
                lab.teardown();
            }
            std::process::exit(130);
        });
        if let Err(e) = res {
            eprintln!("ironpxe-lab: cannot install the Ctrl-C handler ({e}); labs are still removed on drop");
        }
    });
}

/// `ipxl` + 5 hex digits not used by any existing namespace, and the random bits.
fn unique_id() -> Result<(String, u32)> {
    let existing = list_namespaces();
    for _ in 0..100 {
        let rnd = random_u32()?;
        let id = format!("{NAME_PREFIX}{:05x}", rnd & 0xf_ffff);
        if !existing.iter().any(|n| n.starts_with(&format!("{id}-"))) {
            return Ok((id, rnd >> 4));
        }
    }
    bail!("could not find an unused lab id")
}

fn random_u32() -> Result<u32> {
    let mut b = [0u8; 4];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Output root: `$IRONPXE_LAB_OUT`, else `<workspace>/lab-out`.
pub fn out_root() -> PathBuf {
    match std::env::var_os("IRONPXE_LAB_OUT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::assets::workspace_dir().join("lab-out"),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ack_lines() {
        let l = "dnsmasq-dhcp[6798]: 4036828789 DHCPACK(ipxl1-site) 10.77.5.157 52:54:00:12:34:56";
        assert_eq!(
            parse_site_ack(l, "52:54:00:12:34:56"),
            Some(Ipv4Addr::new(10, 77, 5, 157))
        );
        assert_eq!(parse_site_ack(l, "52:54:00:12:34:57"), None);
    }

    #[test]
    fn udhcpc_lines() {
        assert_eq!(
            parse_udhcpc_lease(
                "udhcpc: lease of 10.77.5.123 obtained from 10.77.5.1, lease time 3600"
            ),
            Some(Ipv4Addr::new(10, 77, 5, 123))
        );
    }

    #[test]
    fn status_base_from_args() {
        assert_eq!(
            status_base_of(&["boot", "k", "-p", "8080"]),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            status_base_of(&["api", "u", "--status-port", "9090", "-l", "10.0.0.2"]),
            "http://10.0.0.2:9090"
        );
        assert_eq!(
            status_base_of(&["boot", "--status-port=81"]),
            "http://127.0.0.1:81"
        );
    }

    #[test]
    fn http_port_from_args() {
        assert_eq!(http_port_of(&["boot", "k", "-p", "8080"]), 8080);
        assert_eq!(http_port_of(&["boot", "--port=81"]), 81);
        assert_eq!(http_port_of(&["boot"]), 80);
    }

    #[test]
    fn names_fit_interface_limit() {
        let id = format!("{NAME_PREFIX}fffff");
        for suffix in [
            "-br", "-vs", "-vp", "-site", "-pxe", "-t250", "-vc99", "-c99",
        ] {
            assert!(format!("{id}{suffix}").len() <= 15, "{suffix}");
        }
    }
}
