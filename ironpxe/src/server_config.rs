//! The servers' runtime configuration: the command line, the config file's
//! `[server]` and `[ipxe]` sections, and the defaults, merged once into a
//! [`ServerConfig`] that [`crate::run::serve`] runs.
//!
//! A flag counts as given when it is on the command line, whatever its value: the
//! server flags the file can also set are `Option`s without a clap default, and the
//! defaults below are applied only after the file had its say. So `-p 80` beats
//! `http_port = 8080`, although 80 is the default.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironpxe_core::config::{Ipv6Settings, IpxePaths, LoaderPaths, ServerSettings, StatefulFor};
use ironpxe_core::net6::Ipv6Range;
use ironpxe_core::{IpxeRole, LoaderBinary};

use crate::cli::ServerArgs;
use crate::ipxe_files::Overrides;

/// The address listened on when neither `-l` nor `listen_addr` is given.
pub(crate) const DEFAULT_LISTEN_ADDR: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// The HTTP port when neither `-p` nor `http_port` is given.
pub(crate) const DEFAULT_HTTP_PORT: u16 = 80;

/// How long transfers in flight may take to finish after SIGTERM or SIGINT, when
/// neither `--shutdown-timeout` nor `shutdown_timeout` is given.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the boot status (page, JSON API, metrics) is served. It names every
/// machine's MAC, address and files, so it is served only where the operator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusPlace {
    /// Nowhere (no `--status-port`, no `status_port`).
    Off,
    /// On the boot HTTP port, to every PXE client (`--status-port` equal to `--port`).
    BootPort,
    /// On a listener of its own.
    Own(SocketAddrV4),
}

/// What the DHCP, TFTP, HTTP and status servers run with.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// Address the HTTP and TFTP servers listen on; announced when not 0.0.0.0.
    pub listen_addr: Ipv4Addr,
    /// The data NIC DHCP is answered on.
    pub interface: Option<String>,
    /// Where `interface` was set, for messages: `--interface`, or the file and key.
    pub interface_origin: String,
    /// Port of the boot script, kernel and initrd server.
    pub http_port: u16,
    /// Where the status page, its JSON API and the metrics are served.
    pub status: StatusPlace,
    /// HTTP connections open at once; `None`: derived from the open-file limit.
    pub http_max_connections: Option<usize>,
    /// HTTP connections one address may always hold; `None`: derived.
    pub http_max_connections_per_addr: Option<usize>,
    /// Where the boot status is kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// How long in one boot phase before the status page calls a machine stuck.
    pub stuck_after: Duration,
    /// The iPXE binaries chosen by role.
    pub ipxe: Overrides,
    /// The shim and GRUB binaries given (flags over the file's `[loaders]`); the
    /// other slots are searched for.
    pub loaders: LoaderPaths,
    /// The loaders other than iPXE the boot specs use, as far as the mode knows
    /// (`boot --loader`, the config file); the API may name others later.
    pub loaders_used: Vec<ironpxe_core::Loader>,
    /// Receive DHCP through a packet socket instead of binding UDP 67.
    pub dhcp_no_bind: bool,
    /// Chainload iPXE even into clients already running iPXE.
    pub force_chainload: bool,
    /// A directory served over TFTP next to the iPXE binaries.
    pub tftp_root: Option<PathBuf>,
    /// UDP port of ProxyDHCP offers.
    pub dhcp_port: u16,
    /// UDP port of PXE boot-server requests.
    pub pxe_port: u16,
    /// UDP port of TFTP.
    pub tftp_port: u16,
    /// TFTP transfers one client address may run at once.
    pub tftp_per_address: usize,
    /// After SIGTERM or SIGINT, how long transfers in flight may take to finish.
    pub shutdown_timeout: Duration,
    /// How long a DHCP packet may wait for a slow boot source.
    pub dhcp_lookup_wait: Duration,
    /// The user to become once the ports are bound (when started as root).
    pub user: Option<String>,
    /// Where `user` was set, for messages: `--user`, or the file and key.
    pub user_origin: String,
    /// Files and directories read after start (kernels, the configuration file, an
    /// API directory), checked as `user` once ironpxe has become it.
    pub read_after_start: Vec<PathBuf>,
    /// DHCPv6, TFTP and HTTP on IPv6, when on.
    pub ipv6: Option<Ipv6Config>,
}

/// The IPv6 side of the servers (`--ipv6`, `[server] ipv6 = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ipv6Config {
    /// The address to listen on and announce; `::` for the data NIC's own.
    pub listen: Ipv6Addr,
    /// Where `listen` was set, for messages.
    pub listen_origin: String,
    /// The stateful mode's range.
    pub range: Option<Ipv6Range>,
    /// Who gets an address from it.
    pub stateful: StatefulFor,
    /// `--dhcp6-proxy-preference` (hidden, for measurements).
    pub proxy_preference: Option<u8>,
}

impl Ipv6Config {
    /// `--ipv6` wins; `[server] ipv6` fills in; off by default. The other keys the
    /// same way, each on its own.
    fn merge(args: &ServerArgs, path: &Path, file: &Ipv6Settings) -> Option<Ipv6Config> {
        if !args.ipv6 && file.enabled != Some(true) {
            return None;
        }
        Some(Ipv6Config {
            listen: args
                .listen_addr6
                .or(file.listen_addr6)
                .unwrap_or(Ipv6Addr::UNSPECIFIED),
            listen_origin: match (&args.listen_addr6, &file.listen_addr6) {
                (None, Some(_)) => format!("{}: server.listen_addr6", path.display()),
                _ => "--listen-addr6".to_string(),
            },
            range: args.ipv6_range.or(file.range),
            stateful: args
                .ipv6_stateful
                .or(file.stateful)
                .unwrap_or(StatefulFor::Ipxe),
            proxy_preference: args.dhcp6_proxy_preference,
        })
    }
}

impl ServerConfig {
    /// The command line alone (`boot` and `api` modes).
    pub(crate) fn from_args(args: &ServerArgs) -> ServerConfig {
        ServerConfig::merge(
            args,
            Path::new(""),
            &ServerSettings::default(),
            &IpxePaths::default(),
            &LoaderPaths::default(),
        )
    }

    /// Flags given on the command line win; the file `path` (its `[server]`,
    /// `[ipxe]` and `[loaders]`) fills in the flags not given; the defaults fill in
    /// the rest.
    pub(crate) fn merge(
        args: &ServerArgs,
        path: &Path,
        file: &ServerSettings,
        ipxe: &IpxePaths,
        loaders: &LoaderPaths,
    ) -> ServerConfig {
        let http_port = args.port.or(file.http_port).unwrap_or(DEFAULT_HTTP_PORT);
        let listen_addr = args
            .listen_addr
            .or(file.listen_addr)
            .unwrap_or(DEFAULT_LISTEN_ADDR);
        let status_addr = args.status_addr.or(file.status_addr).unwrap_or(listen_addr);
        ServerConfig {
            listen_addr,
            interface: args.interface.clone().or_else(|| file.interface.clone()),
            interface_origin: match (&args.interface, &file.interface) {
                (None, Some(_)) => format!("{}: server.interface", path.display()),
                _ => "--interface".to_string(),
            },
            http_port,
            // The status port equal to the HTTP port means one server for both.
            status: match args.status_port.or(file.status_port) {
                None => StatusPlace::Off,
                Some(p) if p == http_port && status_addr == listen_addr => StatusPlace::BootPort,
                Some(p) => StatusPlace::Own(SocketAddrV4::new(status_addr, p)),
            },
            http_max_connections: args
                .http_max_connections
                .map(|n| n as usize)
                .or(file.http_max_connections),
            http_max_connections_per_addr: args
                .http_max_connections_per_addr
                .map(|n| n as usize)
                .or(file.http_max_connections_per_addr),
            state_dir: args.state_dir.clone(),
            stuck_after: args.stuck_after,
            ipxe: Overrides {
                // Per role: the flag if given, else the file's key.
                paths: {
                    let flags = args.ipxe_paths();
                    IpxeRole::ALL
                        .into_iter()
                        .filter_map(|r| Some((r, flags.get(r).or(ipxe.get(r))?.clone())))
                        .collect()
                },
                snponly: args.ipxe_snponly,
            },
            loaders: {
                let flags = args.loader_paths();
                LoaderBinary::ALL
                    .into_iter()
                    .filter_map(|b| Some((b, flags.get(b).or(loaders.get(b))?.clone())))
                    .collect()
            },
            loaders_used: Vec::new(),
            dhcp_no_bind: args.dhcp_no_bind,
            force_chainload: args.force_chainload,
            tftp_root: args.tftp_root.clone(),
            dhcp_port: args.dhcp_port,
            pxe_port: args.pxe_port,
            tftp_port: args.tftp_port,
            tftp_per_address: args
                .tftp_per_address
                .map(|n| n as usize)
                .or(file.tftp_per_address)
                .unwrap_or(ironpxe_tftp::DEFAULT_MAX_PER_ADDRESS),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            dhcp_lookup_wait: args.dhcp_lookup_wait,
            user: args.user.clone().or_else(|| file.user.clone()),
            user_origin: match (&args.user, &file.user) {
                (None, Some(_)) => format!("{}: server.user", path.display()),
                _ => "--user".to_string(),
            },
            read_after_start: Vec::new(),
            ipv6: Ipv6Config::merge(args, path, &file.ipv6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve_args(flags: &[&str]) -> ServerArgs {
        let argv = ["ironpxe", "serve", "--config", "x"]
            .iter()
            .chain(flags)
            .copied();
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        a.server
    }

    fn file() -> ServerSettings {
        ServerSettings {
            interface: Some("eth1".into()),
            listen_addr: Some(Ipv4Addr::new(10, 0, 0, 2)),
            http_port: Some(8080),
            status_port: Some(8081),
            status_addr: None,
            shutdown_timeout: Some(Duration::from_secs(5)),
            http_max_connections: Some(100),
            http_max_connections_per_addr: Some(10),
            user: Some("ironpxe".into()),
            ipv6: Ipv6Settings::default(),
            tftp_per_address: Some(3),
        }
    }

    #[test]
    fn file_values_fill_flags_not_given() {
        let i = IpxePaths::default().with(IpxeRole::Bios, "/b");
        let m = ServerConfig::merge(
            &serve_args(&["-p", "9090"]),
            Path::new("f.toml"),
            &file(),
            &i,
            &LoaderPaths::default(),
        );
        assert_eq!(m.interface.as_deref(), Some("eth1"));
        assert_eq!(m.interface_origin, "f.toml: server.interface");
        assert_eq!(m.listen_addr, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(m.http_port, 9090);
        assert_eq!(
            m.status,
            StatusPlace::Own(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 8081))
        );
        assert_eq!(m.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(m.http_max_connections, Some(100));
        assert_eq!(m.http_max_connections_per_addr, Some(10));
        assert_eq!(m.user.as_deref(), Some("ironpxe"));
        assert_eq!(m.user_origin, "f.toml: server.user");
        assert_eq!(m.tftp_per_address, 3);
        assert_eq!(m.ipxe.paths.get(IpxeRole::Bios), Some(&PathBuf::from("/b")));
        assert_eq!(m.ipxe.paths.get(IpxeRole::Efi64), None);
    }

    #[test]
    fn a_flag_given_with_its_default_value_still_beats_the_file() {
        let args = serve_args(&[
            "-p",
            "80",
            "-l",
            "0.0.0.0",
            "--shutdown-timeout",
            "30s",
            "--ipxe-bios",
            "/flag.kpxe",
            "--tftp-per-address",
            "8",
        ]);
        let i = IpxePaths::default().with(IpxeRole::Bios, "/file.kpxe");
        let m = ServerConfig::merge(
            &args,
            Path::new("f.toml"),
            &file(),
            &i,
            &LoaderPaths::default(),
        );
        assert_eq!(m.http_port, 80);
        assert_eq!(m.tftp_per_address, 8);
        assert_eq!(m.listen_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(
            m.ipxe.paths.get(IpxeRole::Bios),
            Some(&PathBuf::from("/flag.kpxe"))
        );
        let m = ServerConfig::merge(
            &serve_args(&[
                "--status-port",
                "9100",
                "--interface",
                "eth2",
                "--http-max-connections",
                "7",
            ]),
            Path::new("f.toml"),
            &file(),
            &i,
            &LoaderPaths::default(),
        );
        assert_eq!(
            m.status,
            StatusPlace::Own(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 9100))
        );
        assert_eq!(m.http_max_connections, Some(7));
        assert_eq!(m.interface.as_deref(), Some("eth2"));
        assert_eq!(m.interface_origin, "--interface");
        let m = ServerConfig::merge(
            &serve_args(&["--user", "nobody"]),
            Path::new("f.toml"),
            &file(),
            &i,
            &LoaderPaths::default(),
        );
        assert_eq!(m.user.as_deref(), Some("nobody"));
        assert_eq!(m.user_origin, "--user");
    }

    #[test]
    fn loader_flags_beat_the_files_loaders() {
        let file_loaders = LoaderPaths::default()
            .with(LoaderBinary::ShimX64, "/file/shim.efi")
            .with(LoaderBinary::GrubArm64, "/file/grubaa64.efi");
        let m = ServerConfig::merge(
            &serve_args(&["--shim-x64", "/flag/shim.efi"]),
            Path::new("f.toml"),
            &file(),
            &IpxePaths::default(),
            &file_loaders,
        );
        assert_eq!(
            m.loaders.get(LoaderBinary::ShimX64),
            Some(&PathBuf::from("/flag/shim.efi"))
        );
        assert_eq!(
            m.loaders.get(LoaderBinary::GrubArm64),
            Some(&PathBuf::from("/file/grubaa64.efi"))
        );
        assert_eq!(m.loaders.get(LoaderBinary::GrubX64), None);
    }

    #[test]
    fn defaults_apply_when_neither_flag_nor_file_says() {
        let m = ServerConfig::from_args(&serve_args(&[]));
        assert_eq!(m.http_port, DEFAULT_HTTP_PORT);
        assert_eq!(m.listen_addr, DEFAULT_LISTEN_ADDR);
        assert_eq!(m.status, StatusPlace::Off);
        assert_eq!(m.http_max_connections, None);
        assert_eq!(m.interface, None);
        assert_eq!(m.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(m.tftp_per_address, ironpxe_tftp::DEFAULT_MAX_PER_ADDRESS);
        assert_eq!((m.dhcp_port, m.pxe_port, m.tftp_port), (67, 4011, 69));
    }

    #[test]
    fn ipv6_is_off_unless_a_flag_or_the_file_says_on() {
        let none = ServerConfig::from_args(&serve_args(&[]));
        assert_eq!(none.ipv6, None);
        let on = ServerConfig::from_args(&serve_args(&["--ipv6"]))
            .ipv6
            .unwrap();
        assert_eq!(on.listen, Ipv6Addr::UNSPECIFIED);
        assert_eq!((on.range, on.stateful), (None, StatefulFor::Ipxe));
        let file = ServerSettings {
            ipv6: Ipv6Settings {
                enabled: Some(true),
                listen_addr6: Some("fd00::2".parse().unwrap()),
                range: Some("fd00::1000-fd00::10ff".parse().unwrap()),
                stateful: Some(StatefulFor::All),
            },
            ..ServerSettings::default()
        };
        let i = IpxePaths::default();
        let m = ServerConfig::merge(
            &serve_args(&[]),
            Path::new("f.toml"),
            &file,
            &i,
            &LoaderPaths::default(),
        );
        let v6 = m.ipv6.unwrap();
        assert_eq!(v6.listen, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.listen_origin, "f.toml: server.listen_addr6");
        assert_eq!(v6.stateful, StatefulFor::All);
        let m = ServerConfig::merge(
            &serve_args(&[
                "--ipv6",
                "--listen-addr6",
                "fd00::3",
                "--ipv6-range",
                "fd00::2000-fd00::20ff",
                "--ipv6-stateful",
                "ipxe",
            ]),
            Path::new("f.toml"),
            &file,
            &i,
            &LoaderPaths::default(),
        );
        let v6 = m.ipv6.unwrap();
        assert_eq!(v6.listen, "fd00::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.range.unwrap().to_string(), "fd00::2000-fd00::20ff");
        assert_eq!(v6.stateful, StatefulFor::Ipxe);
        // The IPv6 flags mean nothing without --ipv6 (or the file's ipv6 = true).
        let cli =
            crate::cli::Cli::try_parse_from(["ironpxe", "boot", "/k", "--listen-addr6", "fd00::3"]);
        assert!(cli.is_err());
    }

    #[test]
    fn a_status_port_equal_to_the_http_port_shares_its_server() {
        let s = ServerSettings {
            http_port: Some(8080),
            status_port: Some(8080),
            ..ServerSettings::default()
        };
        let m = ServerConfig::merge(
            &serve_args(&[]),
            Path::new("f.toml"),
            &s,
            &IpxePaths::default(),
            &LoaderPaths::default(),
        );
        assert_eq!(m.status, StatusPlace::BootPort);
        let m = ServerConfig::merge(
            &serve_args(&["-p", "8081"]),
            Path::new("f.toml"),
            &s,
            &IpxePaths::default(),
            &LoaderPaths::default(),
        );
        assert_eq!(
            m.status,
            StatusPlace::Own(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080))
        );
        // On an address of its own, even the boot port number is a server of its own.
        let m = ServerConfig::merge(
            &serve_args(&["--status-addr", "192.168.1.2", "--status-port", "8080"]),
            Path::new("f.toml"),
            &s,
            &IpxePaths::default(),
            &LoaderPaths::default(),
        );
        assert_eq!(
            m.status,
            StatusPlace::Own(SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 8080))
        );
    }
}
