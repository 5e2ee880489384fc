//! The servers' runtime configuration: the command line, the config file's
//! `[server]` and `[ipxe]` sections, and the defaults, merged once into a
//! [`ServerConfig`] that [`crate::run::serve`] runs.
//!
//! A flag counts as given when it is on the command line, whatever its value: the
//! server flags the file can also set are `Option`s without a clap default, and the
//! defaults below are applied only after the file had its say. So `-p 80` beats
//! `http_port = 8080`, although 80 is the default.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironpxe_core::config::{IpxePaths, LoaderPaths, ServerSettings};
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
    /// A port of its own for the status page; `None`: next to the boot files.
    pub status_port: Option<u16>,
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
    /// After SIGTERM or SIGINT, how long transfers in flight may take to finish.
    pub shutdown_timeout: Duration,
    /// How long a DHCP packet may wait for a slow boot source.
    pub dhcp_lookup_wait: Duration,
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
        ServerConfig {
            listen_addr: args
                .listen_addr
                .or(file.listen_addr)
                .unwrap_or(DEFAULT_LISTEN_ADDR),
            interface: args.interface.clone().or_else(|| file.interface.clone()),
            interface_origin: match (&args.interface, &file.interface) {
                (None, Some(_)) => format!("{}: server.interface", path.display()),
                _ => "--interface".to_string(),
            },
            http_port,
            // The status port equal to the HTTP port means one server for both.
            status_port: args
                .status_port
                .or(file.status_port)
                .filter(|p| *p != http_port),
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
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            dhcp_lookup_wait: args.dhcp_lookup_wait,
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
            shutdown_timeout: Some(Duration::from_secs(5)),
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
        assert_eq!(m.status_port, Some(8081));
        assert_eq!(m.shutdown_timeout, Duration::from_secs(5));
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
        assert_eq!(m.listen_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(
            m.ipxe.paths.get(IpxeRole::Bios),
            Some(&PathBuf::from("/flag.kpxe"))
        );
        let m = ServerConfig::merge(
            &serve_args(&["--status-port", "9100", "--interface", "eth2"]),
            Path::new("f.toml"),
            &file(),
            &i,
            &LoaderPaths::default(),
        );
        assert_eq!(m.status_port, Some(9100));
        assert_eq!(m.interface.as_deref(), Some("eth2"));
        assert_eq!(m.interface_origin, "--interface");
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
        assert_eq!(m.status_port, None);
        assert_eq!(m.interface, None);
        assert_eq!(m.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!((m.dhcp_port, m.pxe_port, m.tftp_port), (67, 4011, 69));
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
        assert_eq!(m.status_port, None);
        let m = ServerConfig::merge(
            &serve_args(&["-p", "8081"]),
            Path::new("f.toml"),
            &s,
            &IpxePaths::default(),
            &LoaderPaths::default(),
        );
        assert_eq!(m.status_port, Some(8080));
    }
}
