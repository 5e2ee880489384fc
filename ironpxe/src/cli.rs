//! Command-line interface. Flag names follow pixiecore so existing command lines
//! keep working.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log packet-level decisions (every DHCP packet, including ignored ones).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    /// Prefix log lines with timestamps.
    #[arg(short = 't', long = "log-timestamps", global = true)]
    pub log_timestamps: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot every PXE client with one kernel, initrds and command line (pixiecore's `boot` mode).
    #[command(
        long_about = "Boot every PXE client that asks with KERNEL and INITRDs.\n\n\
KERNEL and INITRD are local paths, file:// URLs, or http(s):// URLs; remote files are \
streamed through ironpxe, so clients only ever talk to ironpxe."
    )]
    Boot(BootArgs),
}

#[derive(Args, Debug)]
pub struct BootArgs {
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

    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address the HTTP and TFTP servers listen on, and that ProxyDHCP announces when
    /// not 0.0.0.0 (by default each reply names our address on the receiving NIC).
    #[arg(short = 'l', long = "listen-addr", default_value = "0.0.0.0")]
    pub listen_addr: Ipv4Addr,

    /// HTTP port for boot scripts, kernels and initrds.
    #[arg(short = 'p', long, default_value_t = 80)]
    pub port: u16,

    /// Answer DHCP only on this network interface (the data NIC).
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,

    /// iPXE binary for x86 BIOS clients [default: undionly.kpxe from /usr/lib/ipxe or /usr/share/ipxe].
    #[arg(long, value_name = "FILE")]
    pub ipxe_bios: Option<PathBuf>,

    /// iPXE binary for 32-bit EFI clients.
    #[arg(long, value_name = "FILE")]
    pub ipxe_efi32: Option<PathBuf>,

    /// iPXE binary for 64-bit EFI clients [default: ipxe.efi from the same places].
    #[arg(long, value_name = "FILE")]
    pub ipxe_efi64: Option<PathBuf>,

    /// iPXE binary chainloaded into BIOS clients that already run an iPXE without HTTP
    /// support [default: ipxe.pxe].
    #[arg(long, value_name = "FILE")]
    pub ipxe_ipxe: Option<PathBuf>,

    /// Chainload our iPXE binary even into clients that already run iPXE (for
    /// example to replace an old NIC ROM). Each MAC is chainloaded once per boot.
    #[arg(long)]
    pub force_chainload: bool,

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
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
        let Command::Boot(b) = cli.command;
        assert_eq!(b.kernel, "/k");
        assert_eq!(b.initrds, ["/i1", "/i2"]);
        assert_eq!(b.cmdline, "a=b c");
        assert_eq!(b.bootmsg.as_deref(), Some("hi"));
        assert_eq!(b.server.listen_addr, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(b.server.port, 8080);
        assert_eq!(b.server.ipxe_bios, Some(PathBuf::from("/u.kpxe")));
    }
}
