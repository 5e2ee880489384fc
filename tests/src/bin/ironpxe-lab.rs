//! `ironpxe-lab`: PXE-boot one QEMU guest through ironpxe in a private lab network
//! and print the boot timeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ironpxe_lab::{boot_once, GuestConfig, Lab};

/// The ironpxe QEMU lab.
///
/// Builds a private network out of network namespaces (a bridge, a site DHCP server
/// that only hands out addresses and IPv6 router advertisements, and ironpxe on its own
/// interface), PXE-boots a QEMU guest (SeaBIOS + iPXE, or OVMF) through ironpxe, and
/// prints the boot timeline and the kernel command line the guest reported. Nothing
/// is connected to the host's network; everything is removed at exit, also on Ctrl-C.
///
/// Needs root, /dev/net/tun and the Debian packages that scripts/setup-debian
/// installs. Logs go to <workspace>/lab-out/<name>/.
#[derive(Parser)]
#[command(name = "ironpxe-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot one guest through ironpxe and print its timeline. Exits 0 when the guest's
    /// initrd reports the expected kernel command line.
    Boot(BootArgs),
    /// Fetch the test kernel into the cache (apt-get download) and print its path.
    Kernel,
    /// Check the machine for everything the lab needs.
    Preflight,
    /// Remove namespaces of labs whose process was killed before it could clean up.
    Cleanup,
}

#[derive(clap::Args)]
struct BootArgs {
    /// Boot with UEFI (OVMF) instead of BIOS (SeaBIOS + iPXE ROM).
    #[arg(long)]
    uefi: bool,
    /// With --uefi: disable OVMF's PXE so the guest uses UEFI HTTP Boot.
    #[arg(long, requires = "uefi")]
    http_boot: bool,
    /// Kernel command line to boot with.
    #[arg(
        long,
        default_value = "console=ttyS0 ironpxe.test=a=b quiet note=hello world"
    )]
    cmdline: String,
    /// Seconds to wait for the guest's marker line.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Pass --force-chainload to ironpxe (TFTP chainload of iPXE even for iPXE clients).
    #[arg(long)]
    force_chainload: bool,
    /// Pass --debug to ironpxe.
    #[arg(long)]
    debug: bool,
    /// More arguments for `ironpxe boot` (repeatable), e.g. --ironpxe-arg=--bootmsg=hi.
    #[arg(long = "ironpxe-arg", allow_hyphen_values = true)]
    ironpxe_args: Vec<String>,
    /// Kernel to boot (default: the cached Debian cloud kernel).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Lab name, i.e. the output directory under lab-out/.
    #[arg(long, default_value = "cli-boot")]
    name: String,
    /// Do not send IPv6 router advertisements from the site (iPXE then waits ~16 s
    /// for one; useful to measure that wait).
    #[arg(long)]
    no_ra: bool,
    /// Boot without starting ironpxe (the guest should then not reach the marker).
    #[arg(long)]
    no_ironpxe: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Cmd::Boot(args) => boot(args),
        Cmd::Kernel => ironpxe_lab::kernel().map(|k| {
            println!("{}", k.display());
            true
        }),
        Cmd::Preflight => {
            let missing = ironpxe_lab::preflight::check();
            for m in &missing {
                println!("missing: {}: {}", m.what, m.fix);
            }
            if missing.is_empty() {
                println!("preflight ok");
            }
            Ok(missing.is_empty())
        }
        Cmd::Cleanup => {
            for ns in ironpxe_lab::cleanup_stale() {
                println!("removed {ns}");
            }
            Ok(true)
        }
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ironpxe-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn boot(args: BootArgs) -> Result<bool> {
    let kernel = match args.kernel {
        Some(k) => k,
        None => ironpxe_lab::kernel().context("cannot get the test kernel")?,
    };
    let lab = Lab::builder(&args.name)
        .router_advertisements(!args.no_ra)
        .build()?;
    println!(
        "lab {} up: site {} (DHCP {}-{}), ironpxe {} on {}",
        lab.id(),
        lab.site_addr(),
        lab.dhcp_range().0,
        lab.dhcp_range().1,
        lab.pxe_addr(),
        lab.pxe_ifname()
    );
    let initrd = lab.initrd()?;
    let _ironpxe = if args.no_ironpxe {
        None
    } else {
        let mut ipx = lab.ironpxe_boot_args(&kernel, &[&initrd], &args.cmdline);
        if args.force_chainload {
            ipx.push("--force-chainload".into());
        }
        if args.debug {
            ipx.push("--debug".into());
        }
        ipx.extend(args.ironpxe_args.iter().map(Into::into));
        Some(lab.start_ironpxe(&ipx)?)
    };
    let config = if args.uefi {
        GuestConfig {
            uefi_http_only: args.http_boot,
            ipxe_rom: !args.http_boot,
            ..GuestConfig::uefi()
        }
    } else {
        GuestConfig::bios()
    };
    let outcome = boot_once(&lab, config, Duration::from_secs(args.timeout))?;
    match outcome.marker {
        Ok(marker) => {
            println!("marker: {}", marker.line);
            let secs = outcome.timeline.marker_at().unwrap_or_default();
            let image = kernel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // BIOS passes the command line as is; UEFI adds the image name in front
            // and ironpxe adds initrd= words, which are not the user's.
            let got = match args.uefi {
                false => marker.cmdline.as_str(),
                true => marker.user_cmdline_for_image(&image),
            };
            if got == args.cmdline {
                println!("OK: booted in {secs:.1} s with the expected command line");
                Ok(true)
            } else {
                println!(
                    "FAIL: command line differs\n  expected: [{}]\n  got:      [{}]",
                    args.cmdline, marker.cmdline
                );
                Ok(false)
            }
        }
        Err(e) => {
            println!("FAIL: {e:#}");
            Ok(false)
        }
    }
}
