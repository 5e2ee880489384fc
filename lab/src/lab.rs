//! The lab: where ironpxe and QEMU guests run, and everything it started.
//!
//! A [`Lab`] has one of two networks ([`Network`]):
//!
//! - **Namespaces** (root): private network namespaces joined by a bridge, with a
//!   site DHCP server ([`crate::site`]) and ironpxe on its own NIC.
//!
//!   ```text
//!     <id>-site ns            <id>-sw ns (the "switch")            <id>-pxe ns
//!     dnsmasq (DHCP + RA)     bridge <id>-br                       ironpxe
//!     <id>-site 10.77.N.1 ── veth ──┤├── veth ── <id>-pxe 10.77.N.2
//!                                   ├── tap <id>-t0 ── QEMU guest0
//!                                   ├── tap <id>-t1 ── QEMU guest1
//!                                   └── veth ── <id>-c0 in <id>-cl0 (udhcpc client)
//!   ```
//!
//!   Nothing connects to the host's namespace: every link is created inside the
//!   switch namespace and its peer moved straight into a lab namespace, and no
//!   namespace has a route out.
//! - **User networking** (any user): ironpxe on loopback ports of the host, and each
//!   guest on its own QEMU user network (slirp), whose DHCP server hands the guest's
//!   iPXE NIC ROM the URL of its boot script on ironpxe (`bootfile=`). ProxyDHCP and
//!   TFTP are not part of such a boot.
//!
//! A [`Lab`] is torn down on drop (processes killed by PID, then namespaces deleted),
//! on Ctrl-C or SIGTERM (a handler installed by the first lab), and a lab left behind
//! by a killed process is removed by the next one ([`crate::cleanup_stale`]).

use std::fs;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Instant;

use ironpxe_core::urls::BootUrls;

use crate::accel::{Accel, AccelChoice};
use crate::error::{io_err, Error, Result};
use crate::events::EventFeed;
use crate::guest::{Guest, GuestConfig};
use crate::netns::{self, exec_in, remove_namespace, run_ip};
use crate::preflight::{self, Needs};
use crate::proc::{create_log, spawn, LineMode, PipeSink, Proc};
use crate::timeline::Timeline;

pub use crate::netns::{cleanup_stale, list_namespaces, NAME_PREFIX};

static LABS: Mutex<Vec<Weak<LabInner>>> = Mutex::new(Vec::new());
static SIGNAL_HANDLER: Once = Once::new();

/// How guests reach ironpxe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Network namespaces, a bridge and tap devices, a site DHCP server, and ironpxe
    /// on its own NIC answering ProxyDHCP: the whole boot path. Needs root.
    Namespaces,
    /// QEMU user networking: ironpxe's HTTP on loopback, the script URL handed out by
    /// QEMU's own DHCP server. Tests the image and ironpxe's HTTP and iPXE script
    /// path, not ProxyDHCP or TFTP. Needs no privileges.
    User,
}

/// The loopback ports of an ironpxe started for user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPorts {
    /// Boot HTTP (scripts, kernels, initrds).
    pub http: u16,
    /// The status server (events the lab reads).
    pub status: u16,
    /// ProxyDHCP (unused by user-network guests, but ironpxe binds it).
    pub dhcp: u16,
    /// PXE boot server (unused likewise).
    pub pxe: u16,
    /// TFTP (unused likewise).
    pub tftp: u16,
}

/// The address under which a user-network guest reaches the host's loopback.
pub const USER_NET_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// Configures a [`Lab`] before it is built.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    name: String,
    network: Network,
    site_dhcp: bool,
    site_addresses: bool,
    router_advertisements: bool,
    relayed_segment: bool,
    site_v6: crate::v6::SiteV6,
    ipv4: bool,
    site_next_server: bool,
    out_dir: Option<PathBuf>,
    needs: Option<Needs>,
    accel: Option<Accel>,
    ironpxe_bin: Option<PathBuf>,
    quiet: bool,
}

impl LabBuilder {
    /// Namespaces (the default) or QEMU user networking.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Whether the site namespace runs dnsmasq as the site DHCP server (default on).
    pub fn site_dhcp(mut self, on: bool) -> Self {
        self.site_dhcp = on;
        self
    }

    /// Whether the site dnsmasq hands out IPv4 addresses (default on). Off, it only
    /// sends router advertisements, so that ironpxe can be the segment's DHCP server
    /// (`[dhcp] mode = "server"`) while iPXE still gets its RA at once.
    pub fn site_addresses(mut self, on: bool) -> Self {
        self.site_addresses = on;
        self
    }

    /// Whether the site dnsmasq sends IPv6 router advertisements (default on). Without
    /// them iPXE waits about 16 s for one in its "Configuring" step.
    pub fn router_advertisements(mut self, on: bool) -> Self {
        self.router_advertisements = on;
        self
    }

    /// Whether the site DHCP server names ironpxe as next-server (`siaddr`, with no
    /// boot file) in its answers (default off). Debian's signed GRUB takes its TFTP
    /// server from there, not from ProxyDHCP, so labs that boot through shim and
    /// GRUB turn this on, as a real site must.
    pub fn site_next_server(mut self, on: bool) -> Self {
        self.site_next_server = on;
        self
    }

    /// Whether the site DHCP server also serves segment 1 (`10.78.N.0/24`, router
    /// `10.78.N.1`) through a relay (default off); see [`Lab::add_relay`].
    pub fn relayed_segment(mut self, on: bool) -> Self {
        self.relayed_segment = on;
        self
    }

    /// What the site server does on IPv6 (default [`SiteV6::RaOnly`]).
    ///
    /// [`SiteV6::RaOnly`]: crate::v6::SiteV6::RaOnly
    pub fn site_ipv6(mut self, v6: crate::v6::SiteV6) -> Self {
        self.site_v6 = v6;
        self
    }

    /// Whether the main segment has IPv4 at all (default on). Off, it is IPv6-only:
    /// no IPv4 addresses on the site server or ironpxe, no DHCPv4 range.
    pub fn ipv4(mut self, on: bool) -> Self {
        self.ipv4 = on;
        self
    }

    /// Where logs, serial output and timelines go. The directory is created, and
    /// what is in it is left alone. Default: `$IRONPXE_LAB_OUT/<name>` or
    /// `<source tree>/lab-out/<name>`, emptied first.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// What the preflight check requires (default: [`Needs::everything`] for
    /// namespaces, and the same without namespaces for user networking).
    pub fn needs(mut self, needs: Needs) -> Self {
        self.needs = Some(needs);
        self
    }

    /// Use this accelerator instead of detecting one ([`crate::accel::detect`]).
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// The ironpxe binary to run (default [`crate::ironpxe_bin`]).
    pub fn ironpxe_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.ironpxe_bin = Some(path.into());
        self
    }

    /// Say nothing on stderr (stale labs removed, the accelerator chosen).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Checks the machine ([`preflight::check`]; anything missing is
    /// [`Error::Preflight`]), removes stale labs, then creates the network: the
    /// namespaces, links and site DHCP server, or the loopback ports.
    pub fn build(self) -> Result<Lab> {
        let namespaces = self.network == Network::Namespaces;
        let needs = self.needs.clone().unwrap_or_else(|| Needs {
            namespaces,
            ..Needs::everything()
        });
        let report = preflight::check(&needs);
        if !report.is_ok() {
            return Err(Error::Preflight(report));
        }
        if namespaces {
            for ns in netns::cleanup_stale() {
                if !self.quiet {
                    eprintln!("ironpxe lab: removed stale namespace {ns}");
                }
            }
        }
        install_signal_handler();

        let (id, rnd) = netns::unique_id()?;
        let subnet = (rnd % 250) as u8 + 1;
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = out_root().join(sanitize(&self.name));
                let _ = fs::remove_dir_all(&dir);
                dir
            }
        };
        fs::create_dir_all(&out_dir).map_err(io_err("create", &out_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .map_err(io_err(
                "create a temporary directory in",
                std::env::temp_dir(),
            ))?;
        let user_ports = match self.network {
            Network::User => Some(free_ports()?),
            Network::Namespaces => None,
        };
        let accel = match self.accel {
            Some(a) => AccelChoice {
                accel: a,
                reason: "chosen".into(),
            },
            None => crate::accel::detect(tmp.path()),
        };

        let inner = Arc::new(LabInner {
            id: id.clone(),
            name: self.name.clone(),
            network: self.network,
            t0: Instant::now(),
            subnet,
            ipv4: self.ipv4,
            mac_seed: [(rnd >> 8) as u8, (rnd >> 16) as u8],
            out_dir,
            tmp_dir: tmp.path().to_path_buf(),
            user_ports,
            accel,
            ironpxe_bin: self.ironpxe_bin.clone(),
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            site: Mutex::new(None),
            ironpxe: Mutex::new(None),
            torn_down: AtomicBool::new(false),
            teardown_lock: Mutex::new(()),
            next_guest: AtomicU32::new(0),
            next_client: AtomicU32::new(0),
            next_bmc: AtomicU32::new(0),
            pid_files: Mutex::new(Vec::new()),
            relays: Mutex::new(Vec::new()),
            relay_stop: Arc::new(AtomicBool::new(false)),
        });
        LABS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&inner));
        let lab = Lab {
            inner,
            _tmp: Some(tmp),
        };
        // From here on, an error drops `lab`, which removes what was created.
        if namespaces {
            netns::register_owner(&id)?;
            lab.create_network()?;
            if self.site_dhcp {
                lab.start_site_dhcp(
                    self.site_addresses,
                    self.router_advertisements,
                    self.relayed_segment,
                    self.site_v6,
                    self.site_next_server,
                )?;
            }
        }
        lab.write_description()?;
        Ok(lab)
    }
}

pub(crate) struct LabInner {
    id: String,
    name: String,
    network: Network,
    t0: Instant,
    subnet: u8,
    ipv4: bool,
    mac_seed: [u8; 2],
    out_dir: PathBuf,
    tmp_dir: PathBuf,
    user_ports: Option<UserPorts>,
    accel: AccelChoice,
    ironpxe_bin: Option<PathBuf>,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<Arc<Proc>>>,
    pub(crate) site: Mutex<Option<Arc<Proc>>>,
    pub(crate) ironpxe: Mutex<Option<(Arc<Proc>, Arc<EventFeed>)>>,
    torn_down: AtomicBool,
    /// Held for the whole teardown, so a second caller (Drop racing the Ctrl-C
    /// handler) returns only once everything is gone.
    teardown_lock: Mutex<()>,
    next_guest: AtomicU32,
    next_client: AtomicU32,
    next_bmc: AtomicU32,
    /// Processes the lab started indirectly (a BMC's QEMU), by PID file; killed at
    /// teardown.
    pid_files: Mutex<Vec<PathBuf>>,
    /// `host:port` of every server relayed into the ironpxe namespace.
    pub(crate) relays: Mutex<Vec<String>>,
    /// Set at teardown; the relay threads end.
    pub(crate) relay_stop: Arc<AtomicBool>,
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
        for f in self
            .pid_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            crate::bmc::kill_qemu(&f);
        }
        *self.site.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.ironpxe.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let namespaces: Vec<_> = self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        self.relay_stop.store(true, Ordering::SeqCst);
        for ns in namespaces.iter().rev() {
            remove_namespace(ns);
            let etc = crate::relay::netns_etc(ns);
            if etc.exists() {
                let _ = fs::remove_dir_all(&etc);
                // /etc/netns itself, if the lab made it and nothing else uses it.
                if let Some(parent) = etc.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.tmp_dir);
        if self.network == Network::Namespaces {
            netns::unregister(&self.id);
        }
    }
}

/// A private network where ironpxe and QEMU guests run.
///
/// Build one with [`Lab::builder`]. Dropping it tears everything down.
pub struct Lab {
    pub(crate) inner: Arc<LabInner>,
    _tmp: Option<tempfile::TempDir>,
}

impl Lab {
    /// Starts configuring a lab. `name` names its output directory (see
    /// [`LabBuilder::out_dir`]).
    pub fn builder(name: &str) -> LabBuilder {
        LabBuilder {
            name: name.to_string(),
            network: Network::Namespaces,
            site_dhcp: true,
            site_addresses: true,
            router_advertisements: true,
            relayed_segment: false,
            site_v6: crate::v6::SiteV6::RaOnly,
            ipv4: true,
            site_next_server: false,
            out_dir: None,
            needs: None,
            accel: None,
            ironpxe_bin: None,
            quiet: false,
        }
    }

    /// Builds a lab with the defaults: namespaces, site DHCP with router
    /// advertisements, everything the QEMU tests need.
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

    /// Namespaces or user networking.
    pub fn network(&self) -> Network {
        self.inner.network
    }

    /// ironpxe's loopback ports, with user networking.
    pub fn user_ports(&self) -> Option<UserPorts> {
        self.inner.user_ports
    }

    /// The accelerator guests run with, and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.inner.accel
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

    /// Whether the main segment has IPv4 (see [`LabBuilder::ipv4`]).
    pub fn has_ipv4(&self) -> bool {
        self.inner.ipv4
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

    /// ironpxe's boot HTTP server as guests reach it: `http://10.77.N.2:8080` in
    /// namespaces, `http://10.0.2.2:<port>` with user networking.
    pub fn guest_boot_urls(&self) -> BootUrls {
        match self.inner.user_ports {
            Some(p) => BootUrls::http(USER_NET_HOST, p.http),
            None => BootUrls::http(self.pxe_addr(), crate::ironpxe::DEFAULT_HTTP_PORT),
        }
    }

    pub(crate) fn ip(&self, args: &[&str]) -> Result<()> {
        run_ip(args)
    }

    /// Runs a program inside one of the lab's namespaces and waits for it.
    pub fn run_in(&self, ns: &str, program: &str, args: &[&str]) -> Result<std::process::Output> {
        exec_in(ns, program)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                program: format!("{program} in namespace {ns}"),
                hint: None,
                source,
            })
    }

    /// Writes `value` to `/proc/sys/<key>` as seen from inside `ns` (never the host's).
    pub(crate) fn sysctl_in(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.run_in(ns, "sh", &["-c", &format!("echo {value} > {path}")])?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("sysctl {key}={value} in namespace {ns}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                hint: None,
            });
        }
        Ok(())
    }

    pub(crate) fn add_namespace(&self, ns: &str) -> Result<()> {
        self.require_namespaces("a namespace")?;
        self.ip(&["netns", "add", ns])?;
        self.inner
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ns.to_string());
        self.ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Fails for a user-network lab, which has no namespaces to put `what` in.
    pub(crate) fn require_namespaces(&self, what: &str) -> Result<()> {
        match self.inner.network {
            Network::Namespaces => Ok(()),
            Network::User => Err(Error::Invalid(format!(
                "{what} needs a lab with network namespaces, not user networking"
            ))),
        }
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
        self.add_bridge(&br)?;

        let n = self.inner.subnet;
        for (ns, ifname, port, host) in [
            (&site, self.site_ifname(), format!("{id}-vs"), 1u8),
            (&pxe, self.pxe_ifname(), format!("{id}-vp"), 2u8),
        ] {
            // No duplicate address detection: addresses are usable at once.
            self.sysctl_in(ns, "net.ipv6.conf.default.accept_dad", "0")?;
            self.sysctl_in(ns, "net.ipv6.conf.all.accept_dad", "0")?;
            self.attach_veth(&port, ns, &ifname)?;
            if self.inner.ipv4 {
                self.ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.77.{n}.{host}/24"),
                    "dev",
                    &ifname,
                ])?;
            }
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

    /// Creates a bridge in the switch namespace: no STP, no forwarding delay, no
    /// multicast snooping (so DHCPv6 and RAs reach every port).
    pub(crate) fn add_bridge(&self, bridge: &str) -> Result<()> {
        let sw = self.switch_ns();
        self.ip(&[
            "-n",
            &sw,
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.ip(&["-n", &sw, "link", "set", bridge, "up"])
    }

    /// Creates a veth pair inside the switch namespace, enslaves `port` to the bridge
    /// and moves `ifname` into `ns`. The host namespace never sees either end.
    pub(crate) fn attach_veth(&self, port: &str, ns: &str, ifname: &str) -> Result<()> {
        let sw = self.switch_ns();
        self.ip(&[
            "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ])?;
        self.ip(&["-n", &sw, "link", "set", port, "master", &self.bridge()])?;
        self.ip(&["-n", &sw, "link", "set", port, "up"])
    }

    fn write_description(&self) -> Result<()> {
        let text = match self.inner.user_ports {
            Some(p) => format!(
                "lab {name} ({id}): QEMU user networking\n\
                 ironpxe: 127.0.0.1, HTTP {http}, status {status} (guests reach it at {host}:{http})\n\
                 accelerator: {accel}\n",
                name = self.inner.name,
                id = self.inner.id,
                http = p.http,
                status = p.status,
                host = USER_NET_HOST,
                accel = self.inner.accel,
            ),
            None => format!(
                "lab {name} ({id})\n\
                 namespaces: switch={sw} site={site} ironpxe={pxe}\n\
                 bridge: {br}\n\
                 site: {site_if} {site_addr}/24 fd77:{n:x}::1/64, DHCP {lo}-{hi}\n\
                 ironpxe: {pxe_if} {pxe_addr}/24 fd77:{n:x}::2/64\n\
                 accelerator: {accel}\n",
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
                accel = self.inner.accel,
            ),
        };
        let path = self.inner.out_dir.join("lab.txt");
        fs::write(&path, text).map_err(io_err("write", path))
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
            return Err(Error::TornDown);
        }
        let log_file = create_log(log)?;
        let err_file = log_file.try_clone().map_err(io_err("reopen", log))?;
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

    pub(crate) fn ironpxe_bin_override(&self) -> Option<&Path> {
        self.inner.ironpxe_bin.as_deref()
    }

    /// Creates a tap device on the bridge (or, with user networking, a user network)
    /// and starts a QEMU guest on it.
    pub fn start_guest(&self, config: GuestConfig) -> Result<Guest> {
        match self.inner.network {
            Network::Namespaces => self.start_guest_on(&self.bridge(), config),
            Network::User => {
                if !config.link.is_empty() {
                    return Err(Error::Invalid(
                        "link faults need a lab with network namespaces, not user networking"
                            .into(),
                    ));
                }
                let (n, mac, name) = self.next_guest(&config)?;
                let _ = n;
                crate::guest::start(self, config, name, mac, None)
            }
        }
    }

    /// Starts a QEMU guest on another bridge of the switch namespace (see
    /// [`Lab::add_segment`]).
    pub fn start_guest_on(&self, bridge: &str, config: GuestConfig) -> Result<Guest> {
        let (mac, name, tap) = self.guest_tap(bridge, &config)?;
        crate::guest::start(self, config, name, mac, Some(&tap))
    }

    /// A new guest's MAC, name and tap device (created on `bridge`, and persistent:
    /// it outlives a QEMU that exits, so a guest can be powered on again).
    pub(crate) fn guest_tap(
        &self,
        bridge: &str,
        config: &GuestConfig,
    ) -> Result<(ironpxe_core::MacAddr, String, String)> {
        self.require_namespaces("a guest on a bridge")?;
        let (n, mac, name) = self.next_guest(config)?;
        let tap = format!("{}-t{n}", self.inner.id);
        let sw = self.switch_ns();
        self.ip(&["-n", &sw, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ip(&["-n", &sw, "link", "set", &tap, "master", bridge])?;
        self.ip(&["-n", &sw, "link", "set", &tap, "up"])?;
        if !config.link.is_empty() {
            crate::link::Link::apply(sw, &tap, &config.link)?;
        }
        Ok((mac, name, tap))
    }

    /// The next guest's number, MAC (`52:54:00:<lab>:<N>` unless configured) and name.
    fn next_guest(&self, config: &GuestConfig) -> Result<(u32, ironpxe_core::MacAddr, String)> {
        let n = self.inner.next_guest.fetch_add(1, Ordering::SeqCst);
        if n > 250 {
            return Err(Error::Invalid("too many guests in one lab".into()));
        }
        let mac = config.mac.unwrap_or(ironpxe_core::MacAddr([
            0x52,
            0x54,
            0x00,
            self.inner.mac_seed[0],
            self.inner.mac_seed[1],
            n as u8,
        ]));
        let name = config.name.clone().unwrap_or_else(|| format!("guest{n}"));
        Ok((n, mac, name))
    }

    pub(crate) fn next_client_index(&self) -> u32 {
        self.inner.next_client.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn next_bmc_index(&self) -> u32 {
        self.inner.next_bmc.fetch_add(1, Ordering::SeqCst)
    }

    /// Kills the process whose PID is in `pid_file` at teardown (one the lab
    /// started through another process, such as a BMC's QEMU).
    pub(crate) fn kill_at_teardown(&self, pid_file: PathBuf) {
        self.inner
            .pid_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid_file);
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

/// Five free loopback ports: TCP for HTTP and status, UDP for DHCP, PXE and TFTP.
/// All are held at once while chosen, so they differ; ironpxe binds them a moment
/// later.
fn free_ports() -> Result<UserPorts> {
    let lo = (Ipv4Addr::LOCALHOST, 0);
    let err = || io_err("bind a port on", "127.0.0.1");
    let tcp = [TcpListener::bind(lo), TcpListener::bind(lo)];
    let udp = [
        UdpSocket::bind(lo),
        UdpSocket::bind(lo),
        UdpSocket::bind(lo),
    ];
    let mut t = Vec::new();
    for l in tcp {
        t.push(l.and_then(|l| l.local_addr()).map_err(err())?.port());
    }
    let mut u = Vec::new();
    for s in udp {
        u.push(s.and_then(|s| s.local_addr()).map_err(err())?.port());
    }
    Ok(UserPorts {
        http: t[0],
        status: t[1],
        dhcp: u[0],
        pxe: u[1],
        tftp: u[2],
    })
}

fn install_signal_handler() {
    SIGNAL_HANDLER.call_once(|| {
        let res = ctrlc::set_handler(|| {
            eprintln!("\nironpxe lab: interrupted; tearing down");
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
            eprintln!(
                "ironpxe lab: cannot install the Ctrl-C handler ({e}); labs are still removed on drop"
            );
        }
    });
}

/// Output root of labs without [`LabBuilder::out_dir`]: `$IRONPXE_LAB_OUT`, else
/// `<source tree>/lab-out`.
pub fn out_root() -> PathBuf {
    match std::env::var_os("IRONPXE_LAB_OUT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::assets::workspace_dir().join("lab-out"),
    }
}

/// A name made safe for a file or directory: letters, digits, `-` and `_`.
pub fn sanitize(name: &str) -> String {
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
    fn names_fit_interface_limit() {
        let id = format!("{}fffff", netns::NAME_PREFIX);
        for suffix in [
            "-br", "-vs", "-vp", "-site", "-pxe", "-t250", "-vc99", "-c99",
        ] {
            assert!(format!("{id}{suffix}").len() <= 15, "{suffix}");
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports().unwrap();
        assert_ne!(p.http, p.status);
        assert!(p.http > 0 && p.dhcp > 0 && p.pxe > 0 && p.tftp > 0);
    }

    #[test]
    fn sanitized_names() {
        assert_eq!(sanitize("node-01 (bios)"), "node-01__bios_");
    }
}
