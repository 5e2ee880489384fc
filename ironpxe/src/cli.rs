//! Command-line interface. Flag names follow pixiecore so existing command lines
//! keep working.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ironpxe_core::config::{LoaderPaths, StatefulFor};
use ironpxe_core::ipxe_role::{IpxeRole, RoleMap};
use ironpxe_core::net6::Ipv6Range;
use ironpxe_core::{parse_duration, Loader, LoaderBinary};

#[derive(Parser, Debug)]
#[command(
    name = "ironpxe",
    version,
    about = "Network boot server: ProxyDHCP, TFTP and HTTP, per machine MAC",
    long_about = "ironpxe network-boots machines next to your existing DHCP server.\n\n\
It answers PXE clients with ProxyDHCP (it never hands out addresses), chainloads iPXE \
over TFTP, and delivers kernel, initrds and command line over HTTP.\n\n\
Run it as root (or with CAP_NET_BIND_SERVICE) on the machine attached to the data \
network, usually with --interface set to the data NIC.",
    after_help = "Example:\n  ironpxe boot /srv/vmlinuz /srv/initrd.img --cmdline 'console=ttyS0 root=/dev/sda1' --interface eth1"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct LogArgs {
    /// Log packet-level decisions (every DHCP packet, including ignored ones).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    /// Prefix log lines with timestamps.
    #[arg(short = 't', long = "log-timestamps", global = true)]
    pub log_timestamps: bool,

    /// Log format: `text` for people, `json` (one object per line, with timestamps)
    /// for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// The format of log lines on stderr.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// `LEVEL target: message key=value ...`
    Text,
    /// One JSON object per line: timestamp, level, target, fields, spans.
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Boot every PXE client with one kernel, initrds and command line (pixiecore's `boot` mode).
    #[command(
        long_about = "Boot every PXE client that asks with KERNEL and INITRDs.\n\n\
KERNEL and INITRD are local paths, file:// URLs, or http(s):// URLs; remote files are \
streamed through ironpxe, so clients only ever talk to ironpxe."
    )]
    Boot(BootArgs),

    /// Boot machines by MAC as described in a TOML configuration file; reloads it on
    /// SIGHUP and when the file changes.
    #[command(
        long_about = "Boot machines by MAC as described in a TOML configuration file.\n\n\
The file has [server], [ipxe], [profiles.NAME] and [[machines]] sections (see \
examples/cluster.toml). A flag given on the command line wins over the file's [server] \
and [ipxe] values, even when it names the default value (-p 80 beats http_port = 8080).\n\n\
The file is reloaded on SIGHUP and when it changes. A new file with problems is refused, \
each problem is logged, and the previous configuration keeps serving.",
        after_help = "Example:\n  ironpxe check --config /etc/ironpxe.toml && ironpxe serve --config /etc/ironpxe.toml"
    )]
    Serve(ServeArgs),

    /// Check a configuration file without serving: prints every problem as
    /// FILE:LINE: key: message and exits 1 if there is any.
    Check(CheckArgs),

    /// Ask an HTTP API (pixiecore's protocol) or a directory of JSON files what each
    /// machine boots (pixiecore's `api` mode).
    #[command(
        long_about = "Ask an API what each machine boots: GET <URL>/v1/boot/<mac> returns JSON \
with kernel, initrd (list), cmdline (string, or the older object form), message, or \
ipxe-script. Any non-200 answer, bad JSON or timeout means the machine is not answered.\n\n\
URL may be file:///DIR: then DIR/v1/boot/<mac> is read directly (a static tree of JSON \
files such as a Nix linkFarm; <mac> is lowercase aa:bb:cc:dd:ee:ff).\n\n\
Answers are cached for 30 s (refreshed in the background after 15 s, and used while the \
refresh runs), and the API is called off the DHCP path: a machine whose answer is not \
cached yet is answered on its next DHCP retry. \"Don't boot\" answers are kept for \
--api-negative-ttl.\n\n\
Lookups are queued fairly: machines the API told to boot before go first, then new \
machines that retransmitted, then first packets, within --api-rate and \
--api-mac-interval, so a flood of invented MACs cannot lock real machines out."
    )]
    Api(ApiArgs),

    /// List the machines of a running ironpxe: install state, boot phase, last boot
    /// (through its status API).
    #[command(
        long_about = "List the machines of a running ironpxe with their install state \
(install or installed), whether they install once, their boot phase, last boot and \
address, through its status API (GET /api/v1/installs).\n\n\
The server is --server URL, or else the status port of the configuration file \
(--config, default /etc/ironpxe/ironpxe.toml) on this host.",
        after_help = "Example:\n  ironpxe machines --server http://127.0.0.1:8081"
    )]
    Machines(MachinesArgs),

    /// Set a machine back to install, so it netboots its spec again; with
    /// --power-cycle, also set its next boot to PXE and power-cycle it through its BMC.
    #[command(
        long_about = "Set a machine (by name or MAC) back to install: a machine with \
once = true netboots its spec again at its next boot, until its installer reports \
success again.\n\n\
With --power-cycle, the server then sets the machine's next boot device to PXE and \
power-cycles it (powers it on if it is off) with ipmitool over the LAN, using the \
machine's bmc = { address, user, password_file } from the configuration.\n\n\
This calls POST /api/v1/machines/<name or mac>/reinstall on the running server with \
Authorization: Bearer <token>; the token is read from --token-file, or else from the \
configuration's [server] admin_token_file.",
        after_help = "Example:\n  ironpxe reinstall node-03 --power-cycle"
    )]
    Reinstall(ReinstallArgs),

    /// PXE-boot QEMU guests against this ironpxe in a private lab network and check
    /// their serial console (for testing boot images, e.g. in CI).
    #[command(
        long_about = crate::lab_cmd::LAB_LONG_ABOUT,
        after_long_help = crate::lab_cmd::LAB_AFTER_HELP
    )]
    Lab(crate::lab_cmd::LabArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The TOML configuration file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub config: PathBuf,

    /// With [dhcp] mode = "server": start even when another DHCP server answers on
    /// the data NIC (by default ironpxe probes for one and refuses to start).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// How `machines` and `reinstall` reach the running server.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// The running ironpxe's status server, e.g. http://127.0.0.1:8081 [default: the
    /// status port of --config on this host].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// The configuration file the server runs with, for its status port and admin
    /// token file.
    #[arg(
        short = 'f',
        long,
        value_name = "FILE",
        default_value = "/etc/ironpxe/ironpxe.toml"
    )]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct MachinesArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ReinstallArgs {
    /// The machine: its name in the configuration, or its MAC.
    #[arg(value_name = "NAME|MAC")]
    pub machine: String,

    /// Also set the next boot device to PXE and power-cycle the machine through its
    /// BMC (IPMI over LAN).
    #[arg(long)]
    pub power_cycle: bool,

    /// A file holding the admin token [default: the configuration's [server]
    /// admin_token_file].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The TOML configuration file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub config: PathBuf,

    /// Do not check that kernels, initrds and iPXE binaries exist (for a file written
    /// for another machine, e.g. one whose paths live in that machine's /nix/store).
    #[arg(long)]
    pub no_file_checks: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ApiArgs {
    /// The API's base URL (http:// or https://), or file:///DIR for a tree of files.
    #[arg(value_name = "URL")]
    pub url: String,

    /// How long one API request may take, e.g. 5s, 500ms, 1m.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub api_request_timeout: std::time::Duration,

    /// Serve the local files (file:// URLs, paths) that API answers name only when
    /// they lie inside DIR, symlinks resolved. A machine whose answer names a file
    /// outside it is not booted, with one log line naming the machine and the file.
    /// [default: any file ironpxe can read, as pixiecore does]
    #[arg(long, value_name = "DIR")]
    pub api_file_root: Option<PathBuf>,

    /// At most N API requests per second, all machines together (a burst of N is
    /// allowed).
    #[arg(long, value_name = "N", default_value_t = ironpxe_api::Limits::DEFAULT_RATE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub api_rate: u32,

    /// At most one API request per machine per DURATION, e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub api_mac_interval: std::time::Duration,

    /// How long a "don't boot" answer (any non-200) is kept before the API is asked
    /// about that machine again, e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub api_negative_ttl: std::time::Duration,

    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct BootArgs {
    /// Kernel image: a local path or an http(s):// URL.
    #[arg(value_name = "KERNEL")]
    pub kernel: String,

    /// Initrds, loaded in order: local paths or http(s):// URLs.
    #[arg(value_name = "INITRD")]
    pub initrds: Vec<String>,

    /// Kernel command line, passed to the kernel exactly as written.
    #[arg(short = 'c', long, default_value = "")]
    pub cmdline: String,

    /// Message printed on the client console before it boots.
    #[arg(long)]
    pub bootmsg: Option<String>,

    /// How clients load the kernel: `ipxe` (chainloaded iPXE, then HTTP), `shim`
    /// (signed shim, then signed GRUB over TFTP: the Secure Boot path) or `grub`
    /// (GRUB alone). BIOS clients boot with iPXE whatever this says.
    #[arg(long, value_name = "LOADER", default_value = "ipxe", value_parser = parse_loader)]
    pub loader: Loader,

    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// Address the HTTP and TFTP servers listen on, and that ProxyDHCP announces when
    /// not 0.0.0.0 (by default each reply names our address on the receiving NIC)
    /// [default: 0.0.0.0].
    #[arg(short = 'l', long = "listen-addr", value_name = "LISTEN_ADDR")]
    pub listen_addr: Option<Ipv4Addr>,

    /// HTTP port for boot scripts, kernels and initrds [default: 80].
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Serve the boot status page (/), its JSON API (/api/v1/machines, /api/v1/log,
    /// /api/v1/events) and Prometheus metrics (/metrics) on this port. They show
    /// every machine's MAC, address and files, so put them on a management address
    /// (-l) or firewall the port. A port equal to --port serves them on the boot
    /// port, to every PXE client. [default: not served]
    #[arg(long, value_name = "PORT")]
    pub status_port: Option<u16>,

    /// Address the --status-port server listens on, e.g. the management network's
    /// address [default: the --listen-addr address].
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<Ipv4Addr>,

    /// Keep the boot status (every machine's timeline) in DIR/status.json, so a
    /// restart keeps history.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The status page marks a machine stuck after this long in one boot phase,
    /// e.g. 120s or 5m.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub stuck_after: std::time::Duration,

    /// On SIGTERM or SIGINT ironpxe stops answering DHCP and takes no new TFTP
    /// request or HTTP connection; downloads and TFTP transfers in flight get this
    /// long to finish, then it exits 0. A second signal exits at once. E.g. 30s, 2m,
    /// 0 [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<std::time::Duration>,

    /// HTTP connections open at once; more are answered 503 and closed at once
    /// [default: a quarter of the open-file limit, between 64 and 16384].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: Option<u64>,

    /// HTTP connections one client address may always hold; it gets more only while
    /// fewer than half of --http-max-connections are open, so one address cannot
    /// take the connections others need [default: 1/32 of --http-max-connections,
    /// at least 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections_per_addr: Option<u64>,

    /// Answer DHCP only on this network interface (the data NIC).
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,

    /// Started as root: become this user (with its groups, and no capabilities) once
    /// every port is bound. Kernels, initrds, the configuration and --tftp-root must
    /// be readable by it, and --state-dir writable. `root` stays root without the
    /// warning. Under systemd use User= or DynamicUser= instead. Given twice, the
    /// last one counts.
    #[arg(long, value_name = "NAME", overrides_with = "user")]
    pub user: Option<String>,

    // The iPXE flags: one field per role of the table in ironpxe_core::ipxe_role,
    // which holds their names and help (`ipxe_flags_match_the_role_table` checks).
    #[arg(long, value_name = "FILE", help = IpxeRole::Bios.spec().help)]
    pub ipxe_bios: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = IpxeRole::Efi32.spec().help)]
    pub ipxe_efi32: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = IpxeRole::Efi64.spec().help)]
    pub ipxe_efi64: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = IpxeRole::Ipxe.spec().help)]
    pub ipxe_ipxe: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = IpxeRole::Arm64.spec().help)]
    pub ipxe_arm64: Option<PathBuf>,

    #[arg(long, help = IpxeRole::Snponly.spec().help)]
    pub ipxe_snponly: bool,

    // The shim and GRUB flags: one field per slot of the table in
    // ironpxe_core::loader (`loader_flags_match_the_table` checks).
    #[arg(long, value_name = "FILE", help = LoaderBinary::ShimX64.spec().help)]
    pub shim_x64: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = LoaderBinary::GrubX64.spec().help)]
    pub grub_x64: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = LoaderBinary::ShimArm64.spec().help)]
    pub shim_arm64: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = LoaderBinary::GrubArm64.spec().help)]
    pub grub_arm64: Option<PathBuf>,

    /// Receive DHCP without binding UDP 67 (through a packet socket), so ironpxe can
    /// run on the same host as a DHCP server that holds the port. Needs CAP_NET_RAW.
    #[arg(long)]
    pub dhcp_no_bind: bool,

    /// Chainload our iPXE binary even into clients that already run iPXE (for
    /// example to replace an old NIC ROM). Each MAC is chainloaded once per boot.
    #[arg(long)]
    pub force_chainload: bool,

    /// How long a DHCP packet may wait for a slow boot source (the API in `api`
    /// mode) before it goes unanswered, e.g. 1s or 500ms. Within it, a machine's
    /// first DISCOVER gets its offer; past it, the answer is kept for the client's
    /// retransmit, so a slow API never breaks PXE timing. Other machines are answered
    /// meanwhile. 0s never waits.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub dhcp_lookup_wait: std::time::Duration,

    /// Also serve the files under DIR over TFTP (GRUB, shim, pxelinux trees), next to
    /// the iPXE binaries, which keep their names. Read-only; paths cannot leave DIR,
    /// not even through symlinks. Small files are cached in memory and re-read when
    /// changed; large ones are streamed from disk.
    #[arg(long, value_name = "DIR")]
    pub tftp_root: Option<PathBuf>,

    /// Also boot over IPv6: answer DHCPv6 PXE and UEFI HTTP Boot clients on the data
    /// NIC (boot information only, next to the site's DHCPv6 server and router
    /// advertisements), and serve TFTP and HTTP on IPv6 [default: off].
    #[arg(long)]
    pub ipv6: bool,

    /// IPv6 address to listen on and announce in IPv6 boot URLs (a global or
    /// unique-local address; never link-local) [default: the data NIC's own].
    #[arg(long, value_name = "ADDR6", requires = "ipv6")]
    pub listen_addr6: Option<Ipv6Addr>,

    /// Stateful DHCPv6: hand addresses from START-END (one /64) to iPXE, which
    /// ignores an answer without one (needed on IPv6-only segments). Leases are kept
    /// in --state-dir.
    #[arg(long, value_name = "START-END", requires = "ipv6")]
    pub ipv6_range: Option<Ipv6Range>,

    /// Who gets an address from --ipv6-range: `ipxe` (firmware takes its address
    /// from the site's server) or `all` boot clients (no other DHCPv6 server)
    /// [default: ipxe].
    #[arg(long, value_name = "WHO", requires = "ipv6_range")]
    pub ipv6_stateful: Option<StatefulFor>,

    /// A DHCPv6 preference in ADVERTISEs without an address (for measuring
    /// clients only).
    #[arg(long, value_name = "N", hide = true, requires = "ipv6")]
    pub dhcp6_proxy_preference: Option<u8>,

    /// TFTP transfers one client address may run at once; its further requests get
    /// "server busy", so one host cannot take every transfer slot [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tftp_per_address: Option<u32>,

    /// UDP port for ProxyDHCP offers (change only for testing).
    #[arg(long, default_value_t = 67, hide = true)]
    pub dhcp_port: u16,

    /// UDP port for PXE boot-server requests (change only for testing).
    #[arg(long, default_value_t = 4011, hide = true)]
    pub pxe_port: u16,

    /// UDP port for TFTP (change only for testing).
    #[arg(long, default_value_t = 69, hide = true)]
    pub tftp_port: u16,
}

impl ServerArgs {
    /// The field of `role`'s path flag; `None` for a role without one.
    pub(crate) fn ipxe_path_mut(&mut self, role: IpxeRole) -> Option<&mut Option<PathBuf>> {
        match role {
            IpxeRole::Bios => Some(&mut self.ipxe_bios),
            IpxeRole::Efi32 => Some(&mut self.ipxe_efi32),
            IpxeRole::Efi64 => Some(&mut self.ipxe_efi64),
            IpxeRole::Ipxe => Some(&mut self.ipxe_ipxe),
            IpxeRole::Arm64 => Some(&mut self.ipxe_arm64),
            IpxeRole::Snponly => None,
        }
    }

    /// The shim and GRUB paths given as flags, by slot.
    pub(crate) fn loader_paths(&self) -> LoaderPaths {
        LoaderBinary::ALL
            .into_iter()
            .filter_map(|b| {
                let p = match b {
                    LoaderBinary::ShimX64 => &self.shim_x64,
                    LoaderBinary::GrubX64 => &self.grub_x64,
                    LoaderBinary::ShimArm64 => &self.shim_arm64,
                    LoaderBinary::GrubArm64 => &self.grub_arm64,
                };
                Some((b, p.clone()?))
            })
            .collect()
    }

    /// The iPXE paths given as flags, by role.
    pub(crate) fn ipxe_paths(&self) -> RoleMap<PathBuf> {
        let mut args = self.clone();
        IpxeRole::ALL
            .into_iter()
            .filter_map(|r| Some((r, args.ipxe_path_mut(r)?.take()?)))
            .collect()
    }
}

fn parse_loader(s: &str) -> Result<Loader, String> {
    s.parse()
        .map_err(|e: ironpxe_core::loader::UnknownLoader| e.to_string())
}

#[cfg(test)]
mod ipxe_flag_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn ipxe_flags_match_the_role_table() {
        let cmd = Cli::command();
        let boot = cmd.find_subcommand("boot").unwrap();
        let help = |long: &str| {
            let arg = boot.get_arguments().find(|a| a.get_long() == Some(long));
            arg.and_then(|a| a.get_help()).map(|h| h.to_string())
        };
        for role in IpxeRole::ALL {
            let spec = role.spec();
            let Some(flag) = spec.flag else {
                continue;
            };
            assert_eq!(help(flag).as_deref(), Some(spec.help), "--{flag}");
            let path = format!("/srv/{}", spec.name);
            let cli = Cli::try_parse_from(["ironpxe", "boot", "/k", &format!("--{flag}"), &path])
                .unwrap();
            let Command::Boot(b) = cli.command else {
                panic!("not boot")
            };
            let paths = b.server.ipxe_paths();
            assert_eq!(paths.iter().count(), 1, "--{flag}");
            assert_eq!(paths.get(role), Some(&PathBuf::from(&path)), "--{flag}");
        }
        assert_eq!(
            help("ipxe-snponly").as_deref(),
            Some(IpxeRole::Snponly.spec().help)
        );
    }

    #[test]
    fn loader_flags_match_the_table() {
        let cmd = Cli::command();
        let boot = cmd.find_subcommand("boot").unwrap();
        for bin in LoaderBinary::ALL {
            let spec = bin.spec();
            let arg = boot
                .get_arguments()
                .find(|a| a.get_long() == Some(spec.flag))
                .unwrap_or_else(|| panic!("--{}", spec.flag));
            assert_eq!(
                arg.get_help().map(|h| h.to_string()).as_deref(),
                Some(spec.help)
            );
            let path = format!("/srv/{}", spec.served_as);
            let cli =
                Cli::try_parse_from(["ironpxe", "boot", "/k", &format!("--{}", spec.flag), &path])
                    .unwrap();
            let Command::Boot(b) = cli.command else {
                panic!("not boot")
            };
            let paths = b.server.loader_paths();
            assert_eq!(paths.iter().count(), 1);
            assert_eq!(paths.get(bin), Some(&PathBuf::from(&path)));
        }
    }

    #[test]
    fn the_loader_flag_parses() {
        let cli = Cli::try_parse_from(["ironpxe", "boot", "/k", "--loader", "shim"]).unwrap();
        let Command::Boot(b) = cli.command else {
            panic!("not boot")
        };
        assert_eq!(b.loader, Loader::Shim);
        let cli = Cli::try_parse_from(["ironpxe", "boot", "/k"]).unwrap();
        let Command::Boot(b) = cli.command else {
            panic!("not boot")
        };
        assert_eq!(b.loader, Loader::Ipxe);
        let e = Cli::try_parse_from(["ironpxe", "boot", "/k", "--loader", "pxelinux"]).unwrap_err();
        assert!(e.to_string().contains("unknown loader \"pxelinux\""), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_and_log_flags_parse() {
        let cli = Cli::try_parse_from([
            "ironpxe",
            "boot",
            "/k",
            "--status-port",
            "9090",
            "--state-dir",
            "/var/lib/ironpxe",
            "--stuck-after",
            "5m",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
        let Command::Boot(b) = cli.command else {
            panic!("not boot")
        };
        assert_eq!(b.server.status_port, Some(9090));
        assert_eq!(b.server.state_dir, Some(PathBuf::from("/var/lib/ironpxe")));
        assert_eq!(b.server.stuck_after, std::time::Duration::from_secs(300));
        let d = Cli::try_parse_from(["ironpxe", "boot", "/k"]).unwrap();
        assert_eq!(d.log.log_format, LogFormat::Text);
        let Command::Boot(b) = d.command else {
            panic!("not boot")
        };
        assert_eq!(b.server.status_port, None);
        assert_eq!(b.server.stuck_after, std::time::Duration::from_secs(120));
        assert!(Cli::try_parse_from(["ironpxe", "--log-format", "xml", "boot", "/k"]).is_err());
    }

    #[test]
    fn pixiecore_command_line_parses() {
        let cli = Cli::try_parse_from([
            "ironpxe",
            "-d",
            "boot",
            "/k",
            "/i1",
            "/i2",
            "--cmdline",
            "a=b c",
            "--bootmsg",
            "hi",
            "-l",
            "10.0.0.2",
            "-p",
            "8080",
            "--ipxe-bios",
            "/u.kpxe",
            "-t",
        ])
        .unwrap();
        assert!(cli.log.debug && cli.log.log_timestamps);
        let Command::Boot(b) = cli.command else {
            panic!("not the boot command")
        };
        assert_eq!(b.kernel, "/k");
        assert_eq!(b.initrds, ["/i1", "/i2"]);
        assert_eq!(b.cmdline, "a=b c");
        assert_eq!(b.bootmsg.as_deref(), Some("hi"));
        assert_eq!(b.server.listen_addr, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(b.server.port, Some(8080));
        assert_eq!(b.server.ipxe_bios, Some(PathBuf::from("/u.kpxe")));
    }

    #[test]
    fn serve_check_and_api_parse() {
        let cli =
            Cli::try_parse_from(["ironpxe", "serve", "--config", "/etc/i.toml", "-p", "8080"])
                .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(a.config, PathBuf::from("/etc/i.toml"));
        assert_eq!(a.server.port, Some(8080));
        let cli =
            Cli::try_parse_from(["ironpxe", "check", "-f", "x.toml", "--no-file-checks"]).unwrap();
        let Command::Check(c) = cli.command else {
            panic!("not check")
        };
        assert!(c.no_file_checks);
        let cli = Cli::try_parse_from([
            "ironpxe",
            "api",
            "http://boot.cluster/api",
            "--api-request-timeout",
            "1m30s",
        ])
        .unwrap();
        let Command::Api(a) = cli.command else {
            panic!("not api")
        };
        assert_eq!(a.url, "http://boot.cluster/api");
        assert_eq!(a.api_request_timeout, std::time::Duration::from_secs(90));
        // The flags' defaults are the API client's.
        let d = ironpxe_api::Limits::default();
        assert_eq!(
            (a.api_rate, a.api_mac_interval, a.api_negative_ttl),
            (d.rate, d.mac_interval, d.negative_ttl)
        );
        let cli = Cli::try_parse_from([
            "ironpxe",
            "api",
            "file:///srv/api",
            "--api-rate",
            "5",
            "--api-mac-interval",
            "10s",
            "--api-negative-ttl",
            "2m",
        ])
        .unwrap();
        let Command::Api(a) = cli.command else {
            panic!("not api")
        };
        assert_eq!(
            (a.api_rate, a.api_mac_interval, a.api_negative_ttl),
            (
                5,
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(120)
            )
        );
        assert!(Cli::try_parse_from(["ironpxe", "api", "x", "--api-rate", "0"]).is_err());
    }
}
