//! `ironpxe lab`: network-boot QEMU guests against this very ironpxe, in a private
//! lab network, and report whether each reached the expected serial line.
//!
//! The library ([`ironpxe_lab`]) builds the network, runs ironpxe (this binary,
//! re-executed) and the guests, and judges them; this module reads the command
//! line, lists the guests, and prints the timelines, a summary, JSON and JUnit XML.
//! Exit codes: 0 every guest passed, 1 a guest failed, 2 the lab could not start.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ironpxe_core::config::{Config, LoaderPaths, MachineBoot, NoChecks};
use ironpxe_core::{parse_duration, FileRef, Loader, LoaderBinary, MacAddr};
use ironpxe_lab::assets::{self, GuestArch};
use ironpxe_lab::run::{run_guests, Expect, GuestPlan, Progress, RunReport, Verdict};
use ironpxe_lab::{Accel, GuestFirmware, Lab, Needs, Network};
use regex::Regex;

/// Exit code: the lab could not start (missing QEMU, no root, no firmware, a bad
/// input file).
const EXIT_CANNOT_START: u8 = 2;
/// Exit code: a guest failed.
const EXIT_FAILED: u8 = 1;

/// `ironpxe lab --help`.
pub(crate) const LAB_LONG_ABOUT: &str = "\
PXE-boot QEMU guests against ironpxe in a private lab network and check their serial console.

As root, the lab builds network namespaces joined by a bridge, with dnsmasq as the site's \
DHCP server (addresses only) and this ironpxe on its own NIC: the whole ProxyDHCP, TFTP and \
HTTP boot path, exactly as ironpxe's own tests run it. Nothing is connected to the host's \
network, and everything is removed at exit, also on Ctrl-C.

With --user-net, no privileges are needed: ironpxe listens on loopback and each guest gets \
QEMU's user networking, whose DHCP server hands the guest's iPXE ROM its script URL. This \
tests the image and ironpxe's HTTP and iPXE script path, not ProxyDHCP or TFTP.

What boots:
  ironpxe lab boot [KERNEL [INITRD...]] --cmdline ...   one kernel for every guest
                                                        (no KERNEL: the lab's own test
                                                        kernel and marker initrd)
  ironpxe lab --config ironpxe.toml                     every [[machines]] entry, by MAC
  ironpxe lab --api URL --mac MAC...                    pixiecore's API mode

A guest passes when a serial line matches --expect (default: the marker line of the lab's \
own initrd), and fails on a line matching --fail-on, when QEMU exits first, or at \
--timeout. Your kernel must log to the serial port: put console=ttyS0 on its command line.

Exit status: 0 every guest passed, 1 a guest failed, 2 the lab could not start (the line \
printed names what is missing and the Debian package that has it).";

/// The end of `ironpxe lab --help`.
pub(crate) const LAB_AFTER_HELP: &str = "\
Examples:
  ironpxe lab boot                                    # self-test with the lab's kernel
  ironpxe lab boot ./bzImage ./initrd --cmdline 'console=ttyS0' --expect 'login:'
  ironpxe lab boot ./bzImage ./initrd --firmware bios,uefi --jobs 2 --junit report.xml
  ironpxe lab --config cluster.toml --mac 52:54:00:c1:00:30 --firmware uefi
  ironpxe lab --user-net boot ./bzImage ./initrd --expect 'Welcome'

Firmware (--firmware, comma-separated; one guest per firmware and machine):
  bios        SeaBIOS with the iPXE NIC ROM
  uefi        OVMF: EDK2's PXE client chainloads ipxe.efi over TFTP
              (with --user-net: QEMU's iPXE NIC ROM)
  uefi-http   OVMF UEFI HTTP Boot: snponly.efi over HTTP, no TFTP (not with --user-net)
  uefi6       OVMF PXE over IPv6: DHCPv6, the iPXE binary over TFTP on IPv6
              (ironpxe runs with --ipv6; not with --user-net)
  uefi-http6  OVMF UEFI HTTP Boot over IPv6: snponly.efi over HTTP on IPv6
              (ironpxe runs with --ipv6; not with --user-net)
  uefi-sb     OVMF with Secure Boot (Microsoft's keys): signed shim, signed GRUB, kernel
              over TFTP (loader shim)
  arm64       AAVMF (ARM64), EDK2's PXE client: shim, GRUB over TFTP (loader shim)
  arm64-sb    AAVMF with Secure Boot: signed shim and GRUB (loader shim)
  arm64-http  AAVMF UEFI HTTP Boot: the lab's GRUB with http, everything over HTTP
              (loader grub)
The shim, Secure Boot and ARM64 paths run only in namespaces; there the site DHCP server
names ironpxe as next-server, as Debian's signed GRUB needs. In `boot` mode without a
KERNEL, ARM64 guests boot the lab's ARM64 kernel and initrd (not together with x86
guests: one kernel serves them all); `--loader` defaults to what the firmwares need.";

/// `ironpxe lab`.
#[derive(Args, Debug)]
pub(crate) struct LabArgs {
    #[command(subcommand)]
    command: Option<LabCommand>,

    /// Boot the machines of this configuration file (`ironpxe serve --config`).
    #[arg(long, value_name = "FILE", conflicts_with = "api")]
    config: Option<PathBuf>,

    /// Boot through this API (`ironpxe api URL`); name the machines with --mac.
    #[arg(long, value_name = "URL")]
    api: Option<String>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Boot one kernel, initrds and command line on every guest (`ironpxe boot`).
    Boot(LabBootArgs),
    /// Fetch the lab's test kernel (a Debian cloud kernel) into the cache; print its
    /// path. With an ARM64 --firmware, also the lab's ARM64 files (kernel, busybox,
    /// shim, GRUB: downloaded with apt-get, unpacked into the cache, not installed).
    Kernel,
    /// Write the lab's marker initrd (busybox; prints the kernel command line, powers off).
    Initrd {
        /// Where to write it.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Check this machine for what the lab needs.
    Preflight,
    /// Remove the namespaces of labs that were killed before they could clean up.
    Cleanup,
}

#[derive(Args, Debug)]
struct LabBootArgs {
    /// Kernel: a path or http(s):// URL. Without it, the lab's own test kernel and
    /// marker initrd boot.
    #[arg(value_name = "KERNEL")]
    kernel: Option<String>,

    /// Initrds, in order: paths or http(s):// URLs.
    #[arg(value_name = "INITRD")]
    initrds: Vec<String>,

    /// Kernel command line [default: console=ttyS0, or console=ttyAMA0 for ARM64
    /// guests].
    #[arg(short = 'c', long)]
    cmdline: Option<String>,

    /// Message printed on the guest's console before it boots.
    #[arg(long)]
    bootmsg: Option<String>,

    /// Also load the lab's marker initrd, after yours.
    #[arg(long)]
    lab_initrd: bool,

    /// The loader ironpxe gives the guests (ipxe, grub, shim) [default: shim for
    /// uefi-sb, arm64 and arm64-sb guests, grub for arm64-http, else ipxe].
    #[arg(long, value_name = "LOADER", value_parser = parse_loader)]
    loader: Option<Loader>,
}

fn parse_loader(s: &str) -> Result<Loader, String> {
    s.parse()
        .map_err(|e: ironpxe_core::loader::UnknownLoader| e.to_string())
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Firmwares to boot, comma-separated: bios, uefi, uefi-http, uefi-sb, arm64,
    /// arm64-sb, arm64-http.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "bios",
        global = true
    )]
    firmware: Vec<GuestFirmware>,

    /// Machines (MAC addresses) to boot; with --config, only these of its machines.
    #[arg(long = "mac", value_name = "MAC", global = true)]
    macs: Vec<MacAddr>,

    /// How many guests run at once.
    #[arg(short = 'j', long, default_value_t = 1, global = true)]
    jobs: usize,

    /// A guest passes when a serial line matches this regular expression
    /// [default: the lab initrd's marker line].
    #[arg(long, value_name = "REGEX", global = true)]
    expect: Option<Regex>,

    /// A serial line matching this fails the guest at once (repeatable)
    /// [default: "Kernel panic - not syncing"].
    #[arg(long = "fail-on", value_name = "REGEX", global = true)]
    fail_on: Vec<Regex>,

    /// How long a guest may take from power-on to the expected line, e.g. 90s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, global = true)]
    timeout: Duration,

    /// Unprivileged: QEMU user networking, ironpxe on loopback. Tests the image and
    /// ironpxe's HTTP and iPXE script path, not ProxyDHCP or TFTP.
    #[arg(long, global = true)]
    user_net: bool,

    /// Print the result as JSON on stdout (the human report goes to stderr).
    #[arg(long, global = true)]
    json: bool,

    /// Write a JUnit XML report (one test case per guest) to FILE.
    #[arg(long, value_name = "FILE", global = true)]
    junit: Option<PathBuf>,

    /// Directory for the artefacts: serial logs, timelines, ironpxe's log, captures
    /// [default: ./ironpxe-lab-<date>-<time>].
    #[arg(long, value_name = "DIR", global = true)]
    out: Option<PathBuf>,

    /// Record each guest's network traffic to <out>/<guest>.pcap.
    #[arg(long, global = true)]
    pcap: bool,

    /// Print each guest's whole serial log (failed guests always get its end).
    #[arg(long, global = true)]
    serial: bool,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024, global = true)]
    memory: u32,

    /// KVM or TCG [default: KVM when a KVM guest starts, else TCG].
    #[arg(long, value_enum, global = true)]
    accel: Option<AccelArg>,

    /// Download cache for the lab's test kernel [default: $IRONPXE_LAB_CACHE, else
    /// $XDG_CACHE_HOME/ironpxe, else ~/.cache/ironpxe].
    #[arg(long, value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,

    /// One more argument for the ironpxe under test (repeatable), e.g.
    /// --ironpxe-arg=--force-chainload.
    #[arg(
        long = "ironpxe-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        global = true
    )]
    ironpxe_args: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum AccelArg {
    Kvm,
    Tcg,
}

/// One argument of the ironpxe under test.
#[derive(Debug, Clone, PartialEq)]
enum ModeArg {
    /// As it is.
    Text(OsString),
    /// The lab's marker initrd, whose path exists only once the lab does.
    LabInitrd,
    /// The lab's test kernel, fetched into the cache once the machine has passed
    /// the preflight check.
    LabKernel,
    /// The lab's ARM64 test kernel (from the cache).
    LabKernelArm64,
    /// The lab's ARM64 marker initrd.
    LabInitrdArm64,
    /// Debian's signed ARM64 shim (from the cache).
    LabShimArm64,
    /// Debian's signed ARM64 netboot GRUB (from the cache).
    LabGrubArm64,
    /// The lab's ARM64 GRUB with the http module, built once the lab exists.
    LabGrubHttpArm64,
}

impl<T: Into<OsString>> From<T> for ModeArg {
    fn from(t: T) -> Self {
        ModeArg::Text(t.into())
    }
}

/// What ironpxe serves and which guests boot.
struct Setup {
    /// `boot ...`, `serve --config ...` or `api ...` (without the lab's network
    /// arguments).
    mode_args: Vec<ModeArg>,
    /// URLs ironpxe fetches from the host's side.
    remote_urls: Vec<String>,
    guests: Vec<GuestPlan>,
    /// Machines of the configuration that boot nothing, with why.
    skipped: Vec<String>,
    /// One line on what boots.
    what: String,
}

/// Runs `ironpxe lab`; `debug` is the global `--debug`.
pub(crate) fn main(args: LabArgs, debug: bool) -> ExitCode {
    match args.command {
        Some(LabCommand::Kernel) => return simple(fetch_kernel(&args.run)),
        Some(LabCommand::Initrd { file }) => return simple(write_initrd(&file)),
        Some(LabCommand::Cleanup) => {
            for ns in ironpxe_lab::cleanup_stale() {
                println!("removed {ns}");
            }
            return ExitCode::SUCCESS;
        }
        Some(LabCommand::Preflight) => {
            let report = ironpxe_lab::preflight::check(&Needs {
                namespaces: !args.run.user_net,
                cache_dir: args.run.cache_dir.clone(),
                ..Needs::everything()
            });
            if report.is_ok() {
                println!("ironpxe lab: preflight ok");
                return ExitCode::SUCCESS;
            }
            eprintln!("ironpxe lab: cannot start: {report}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
        _ => {}
    }
    let mut out = Output::new(args.run.json);
    let network = if args.run.user_net {
        Network::User
    } else {
        Network::Namespaces
    };
    let prepared = prepare(&args, network).and_then(|setup| {
        let lab = build_lab(&args.run, network, &setup)?;
        Ok((setup, lab))
    });
    let (setup, lab) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ironpxe lab: cannot start: {e:#}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    let started = Instant::now();
    let ironpxe = match start_ironpxe(&lab, &args.run, &setup, debug, &mut out) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ironpxe lab: cannot start: {e:#}");
            eprintln!(
                "ironpxe lab: artefacts in {} (ironpxe.log)",
                lab.out_dir().display()
            );
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    let expect = expectation(&args.run);
    let out = Mutex::new(out);
    let show_serial = args.run.serial;
    let results = run_guests(&lab, setup.guests.clone(), &expect, args.run.jobs, &|p| {
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Started {
                name,
                mac,
                firmware,
            } => o.line(format!(
                "ironpxe lab: {name}: powered on ({firmware}: {}, mac {mac})",
                firmware.describe()
            )),
            Progress::Finished(r) => o.guest(r, show_serial),
        }
    });
    drop(ironpxe);
    let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    let report = RunReport {
        network,
        accel: lab.accel().clone(),
        out_dir: lab.out_dir().to_path_buf(),
        expect: expect.pass.as_str().to_string(),
        guests: results,
        seconds: started.elapsed().as_secs_f64(),
    };
    out.summary(&report, &setup.skipped);
    if let Some(path) = &args.run.junit {
        match std::fs::write(path, report.to_junit()) {
            Ok(()) => out.line(format!("ironpxe lab: JUnit report: {}", path.display())),
            Err(e) => out.line(format!(
                "ironpxe lab: cannot write the JUnit report {}: {e}",
                path.display()
            )),
        }
    }
    let _ = std::fs::write(
        lab.out_dir().join("report.json"),
        serde_json::to_string_pretty(&report.to_json()).unwrap_or_default(),
    );
    out.line(format!(
        "ironpxe lab: artefacts in {} (serial logs, timelines, ironpxe.log{}, report.json)",
        lab.out_dir().display(),
        if args.run.pcap { ", pcaps" } else { "" }
    ));
    if args.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn simple(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironpxe lab: {e:#}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

fn fetch_kernel(run: &RunArgs) -> Result<()> {
    let cache = lab_cache(run);
    if run.firmware.iter().any(|f| !f.firmware().is_arm64()) {
        let kernel = ironpxe_lab::kernel_in(&cache)?;
        println!("{}", kernel.display());
    }
    if run.firmware.iter().any(|f| f.firmware().is_arm64()) {
        println!("{}", assets::arm64_kernel_in(&cache)?.display());
    }
    Ok(())
}

fn write_initrd(file: &Path) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let built = ironpxe_lab::initrd(dir.path())?;
    std::fs::copy(&built, file).with_context(|| format!("cannot write {}", file.display()))?;
    println!("{}", file.display());
    Ok(())
}

/// Works out the ironpxe mode and the guests from the command line.
fn prepare(args: &LabArgs, network: Network) -> Result<Setup> {
    let run = &args.run;
    if run.firmware.is_empty() {
        bail!("--firmware names no firmware");
    }
    for f in &run.firmware {
        if let Some(why) = f.unsupported_on(network) {
            bail!("--firmware {f} cannot run with --user-net: {why}");
        }
    }
    let mut skipped = Vec::new();
    let (mode_args, remote_urls, machines, what) = match (&args.command, &args.config, &args.api) {
        (Some(LabCommand::Boot(_)), Some(_), _) | (Some(LabCommand::Boot(_)), _, Some(_)) => {
            bail!("`boot` and --config/--api are different inputs: use one")
        }
        (Some(LabCommand::Boot(b)), None, None) => boot_mode(b, run)?,
        (_, Some(config), None) => {
            let (m, s) = config_mode(config, &run.macs)?;
            skipped = s;
            m
        }
        (_, None, Some(url)) => {
            if run.macs.is_empty() {
                bail!("--api needs the machines to boot: give --mac MAC (repeatable)");
            }
            let machines = run.macs.iter().map(|m| (m.to_string(), Some(*m))).collect();
            let mut remote = vec![url.clone()];
            remote.retain(|u| u.starts_with("http://") || u.starts_with("https://"));
            (
                vec!["api".into(), url.as_str().into()],
                remote,
                machines,
                format!("ironpxe api {url}"),
            )
        }
        _ => bail!(
            "nothing to boot: use `ironpxe lab boot [KERNEL [INITRD...]]`, \
             `ironpxe lab --config FILE` or `ironpxe lab --api URL --mac MAC` (see --help)"
        ),
    };
    let mut mode_args = mode_args;
    mode_args.extend(arm64_loader_args(
        &run.firmware,
        &args.command,
        args.config.as_deref(),
    )?);
    let mut guests = Vec::new();
    let several = run.firmware.len() > 1;
    // A machine named by its MAC gets `52-54-00-…` in file names.
    let machines: Vec<(String, Option<MacAddr>)> = machines
        .into_iter()
        .map(|(label, mac)| (label.replace(':', "-"), mac))
        .collect();
    for (label, mac) in &machines {
        for firmware in &run.firmware {
            let name = match (label.is_empty(), several) {
                (true, _) => firmware.name().to_string(),
                (false, true) => format!("{label}-{firmware}"),
                (false, false) => label.clone(),
            };
            guests.push(GuestPlan {
                name: ironpxe_lab::lab::sanitize(&name),
                firmware: *firmware,
                mac: *mac,
                memory_mib: run.memory,
                pcap: run.pcap,
            });
        }
    }
    if guests.is_empty() {
        bail!("no machine to boot ({})", skipped.join("; "));
    }
    Ok(Setup {
        mode_args,
        remote_urls,
        guests,
        skipped,
        what,
    })
}

type Mode = (
    Vec<ModeArg>,
    Vec<String>,
    Vec<(String, Option<MacAddr>)>,
    String,
);

/// The loader a set of firmwares needs: shim when any boots through shim (Secure
/// Boot, ARM64), else GRUB when any needs it (ARM64 HTTP Boot), else iPXE. shim serves
/// the others too: BIOS falls back to iPXE, and shim loads any GRUB without Secure
/// Boot.
fn loader_for(firmwares: &[GuestFirmware]) -> Loader {
    firmwares
        .iter()
        .map(|f| f.loader())
        .max_by_key(|l| match l {
            Loader::Ipxe => 0,
            Loader::Grub => 1,
            Loader::Shim => 2,
        })
        .unwrap_or_default()
}

/// The ARM64 shim and GRUB for ironpxe, from the lab's cache, when ARM64 guests boot
/// (distributions install no ARM64 binaries on an x86 host). A configuration that
/// names its own in `[loaders]` keeps them.
fn arm64_loader_args(
    firmwares: &[GuestFirmware],
    command: &Option<LabCommand>,
    config: Option<&Path>,
) -> Result<Vec<ModeArg>> {
    let has = |f: GuestFirmware| firmwares.contains(&f);
    let arm64 = firmwares.iter().any(|f| f.firmware().is_arm64());
    if !arm64 {
        return Ok(Vec::new());
    }
    if has(GuestFirmware::Arm64Http) && has(GuestFirmware::Arm64Sb) {
        bail!(
            "--firmware arm64-sb needs Debian's signed ARM64 GRUB and arm64-http a GRUB \
             with the http module, and ironpxe serves one ARM64 GRUB: run them separately"
        );
    }
    let own = match (command, config) {
        (Some(LabCommand::Boot(_)), _) | (_, None) => LoaderPaths::default(),
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::parse(&text, path, &NoChecks)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .loaders
        }
    };
    let mut out = Vec::new();
    if own.get(LoaderBinary::ShimArm64).is_none() {
        out.push("--shim-arm64".into());
        out.push(ModeArg::LabShimArm64);
    }
    if own.get(LoaderBinary::GrubArm64).is_none() {
        out.push("--grub-arm64".into());
        out.push(if has(GuestFirmware::Arm64Http) {
            ModeArg::LabGrubHttpArm64
        } else {
            ModeArg::LabGrubArm64
        });
    }
    Ok(out)
}

fn boot_mode(b: &LabBootArgs, run: &RunArgs) -> Result<Mode> {
    // The lab's own kernel, when it boots, is fetched after the preflight check.
    let mut args: Vec<ModeArg> = vec!["boot".into()];
    let mut remote = Vec::new();
    let arm64 = run
        .firmware
        .iter()
        .filter(|f| f.firmware().is_arm64())
        .count();
    let all_arm64 = arm64 == run.firmware.len();
    let what = match &b.kernel {
        Some(kernel) => {
            let files: Vec<&String> = std::iter::once(kernel).chain(&b.initrds).collect();
            for f in &files {
                if let Ok(FileRef::Remote(url)) = FileRef::parse(f) {
                    remote.push(url.to_string());
                }
                args.push(f.as_str().into());
            }
            if b.lab_initrd {
                if arm64 > 0 && !all_arm64 {
                    bail!(
                        "--lab-initrd: ARM64 and x86 guests need different initrds; \
                         run them separately"
                    );
                }
                args.push(if all_arm64 {
                    ModeArg::LabInitrdArm64
                } else {
                    ModeArg::LabInitrd
                });
            }
            format!(
                "ironpxe boot {}",
                files
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        None => {
            if !b.initrds.is_empty() {
                bail!("INITRD without KERNEL");
            }
            if arm64 > 0 && !all_arm64 {
                bail!(
                    "`boot` serves one kernel to every guest, and ARM64 and x86 guests need \
                     their own: run them separately, or use --config with a profile per \
                     architecture"
                );
            }
            if all_arm64 {
                args.push(ModeArg::LabKernelArm64);
                args.push(ModeArg::LabInitrdArm64);
                "ironpxe boot <the lab's ARM64 test kernel> <the lab's ARM64 marker initrd>"
                    .to_string()
            } else {
                args.push(ModeArg::LabKernel);
                args.push(ModeArg::LabInitrd);
                "ironpxe boot <the lab's test kernel> <the lab's marker initrd>".to_string()
            }
        }
    };
    let cmdline = match &b.cmdline {
        Some(c) => c.clone(),
        None if all_arm64 => "console=ttyAMA0".to_string(),
        None => "console=ttyS0".to_string(),
    };
    args.push("--cmdline".into());
    args.push(cmdline.into());
    let loader = b.loader.unwrap_or_else(|| loader_for(&run.firmware));
    if loader != Loader::Ipxe {
        args.push("--loader".into());
        args.push(loader.name().into());
    }
    if let Some(m) = &b.bootmsg {
        args.push("--bootmsg".into());
        args.push(m.as_str().into());
    }
    let machines = if run.macs.is_empty() {
        vec![(String::new(), None)]
    } else {
        run.macs.iter().map(|m| (m.to_string(), Some(*m))).collect()
    };
    Ok((args, remote, machines, what))
}

fn config_mode(path: &Path, only: &[MacAddr]) -> Result<(Mode, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = Config::parse(&text, path, &NoChecks).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut listed: Vec<(&MacAddr, &ironpxe_core::config::Machine)> =
        config.booter.machines().collect();
    listed.sort_by_key(|(_, m)| m.line);
    let mut machines = Vec::new();
    let mut skipped = Vec::new();
    let mut remote = Vec::new();
    for (mac, m) in listed {
        if !only.is_empty() && !only.contains(mac) {
            continue;
        }
        let label = m.name.clone().unwrap_or_else(|| mac.to_string());
        match &m.boot {
            MachineBoot::Netboot(spec) => {
                for f in spec.files() {
                    if let FileRef::Remote(url) = f {
                        remote.push(url.to_string());
                    }
                }
                machines.push((label, Some(*mac)));
            }
            MachineBoot::Local => skipped.push(format!("{label}: boot = \"local\"")),
            MachineBoot::Ignore => skipped.push(format!("{label}: boot = \"ignore\"")),
        }
    }
    for mac in only {
        if !config.booter.machines().any(|(m, _)| m == mac) {
            bail!(
                "--mac {mac}: not a [[machines]] entry of {}",
                path.display()
            );
        }
    }
    let args = vec!["serve".into(), "--config".into(), path.as_os_str().into()];
    let what = format!("ironpxe serve --config {}", path.display());
    Ok(((args, remote, machines, what), skipped))
}

fn build_lab(run: &RunArgs, network: Network, setup: &Setup) -> Result<Lab> {
    let mut needs = Needs {
        namespaces: network == Network::Namespaces,
        bios: false,
        uefi: false,
        lab_initrd: setup.mode_args.contains(&ModeArg::LabInitrd),
        test_kernel: setup.mode_args.contains(&ModeArg::LabKernel),
        grub_http: setup.mode_args.contains(&ModeArg::LabGrubHttpArm64),
        // ironpxe does not start without them, even when user networking never
        // chainloads one.
        ipxe_binaries: true,
        cache_dir: run.cache_dir.clone(),
        ..Needs::network_only()
    };
    for f in &run.firmware {
        f.add_needs(&mut needs);
    }
    let out_dir = match &run.out {
        Some(dir) => dir.clone(),
        None => PathBuf::from(format!("ironpxe-lab-{}", timestamp(SystemTime::now()))),
    };
    let out_dir = std::path::absolute(&out_dir).unwrap_or(out_dir);
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let site_v6 = if run.firmware.iter().any(|f| f.needs_ipv6()) {
        ironpxe_lab::SiteV6::Stateful
    } else {
        ironpxe_lab::SiteV6::RaOnly
    };
    // Debian's signed GRUB takes its TFTP server from the site's DHCPACK.
    let grub = run.firmware.iter().any(|f| f.loader().uses_grub());
    let mut builder = Lab::builder("ironpxe-lab")
        .site_next_server(grub)
        .network(network)
        .site_ipv6(site_v6)
        .needs(needs)
        .out_dir(&out_dir)
        .ironpxe_bin(exe)
        .quiet(run.json);
    if let Some(a) = run.accel {
        builder = builder.accel(match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        });
    }
    Ok(builder.build()?)
}

fn start_ironpxe(
    lab: &Lab,
    run: &RunArgs,
    setup: &Setup,
    debug: bool,
    out: &mut Output,
) -> Result<ironpxe_lab::Ironpxe> {
    match lab.network() {
        Network::Namespaces => out.line(format!(
            "ironpxe lab: lab {} in network namespaces: site DHCP {} (addresses only), \
             ironpxe {} on {}",
            lab.id(),
            lab.site_addr(),
            lab.pxe_addr(),
            lab.pxe_ifname()
        )),
        Network::User => {
            out.line(
                "ironpxe lab: QEMU user networking: this tests the image and ironpxe's HTTP \
                 and iPXE script path, not ProxyDHCP or TFTP (run as root without --user-net \
                 for those)"
                    .to_string(),
            );
        }
    }
    out.line(format!("ironpxe lab: accelerator {}", lab.accel()));
    let mut args: Vec<OsString> = Vec::new();
    for a in &setup.mode_args {
        match a {
            ModeArg::Text(t) => args.push(t.clone()),
            ModeArg::LabInitrd => args.push(lab.initrd()?.into_os_string()),
            ModeArg::LabKernel => {
                let cache = run.cache_dir.clone().unwrap_or_else(ironpxe_lab::cache_dir);
                if !ironpxe_lab::assets::kernel_is_cached_in(&cache) {
                    out.line(format!(
                        "ironpxe lab: fetching the lab's test kernel into {}",
                        cache.display()
                    ));
                }
                let kernel = ironpxe_lab::kernel_in(&cache).context("the lab's test kernel")?;
                args.push(kernel.into_os_string());
            }
            ModeArg::LabKernelArm64 => {
                let cache = lab_cache(run);
                args.push(assets::arm64_kernel_in(&cache)?.into_os_string());
            }
            ModeArg::LabInitrdArm64 => {
                let cache = lab_cache(run);
                args.push(
                    assets::initrd_in(lab.tmp_dir(), GuestArch::Arm64, &cache)?.into_os_string(),
                );
            }
            ModeArg::LabShimArm64 => {
                let cache = lab_cache(run);
                args.push(assets::arm64_shim_and_grub_in(&cache)?.0.into_os_string());
            }
            ModeArg::LabGrubArm64 => {
                let cache = lab_cache(run);
                args.push(assets::arm64_shim_and_grub_in(&cache)?.1.into_os_string());
            }
            ModeArg::LabGrubHttpArm64 => {
                let cache = lab_cache(run);
                args.push(assets::grub_http_arm64_in(lab.tmp_dir(), &cache)?.into_os_string());
            }
        }
    }
    // Given as flags, these win over a configuration's [server] values, which
    // describe the real data network.
    args.extend(lab.ironpxe_server_args());
    if run.firmware.iter().any(|f| f.needs_ipv6()) {
        args.extend(lab.ironpxe_ipv6_args().into_iter().map(OsString::from));
    }
    if debug {
        args.push("--debug".into());
    }
    args.extend(run.ironpxe_args.iter().map(OsString::from));
    for url in &setup.remote_urls {
        lab.relay_url(url)?;
    }
    let ironpxe = lab.start_ironpxe(&args)?;
    out.line(format!(
        "ironpxe lab: ironpxe (pid {}) serves {}",
        ironpxe.pid(),
        setup.what
    ));
    for s in &setup.skipped {
        out.line(format!("ironpxe lab: skipped {s}"));
    }
    Ok(ironpxe)
}

fn lab_cache(run: &RunArgs) -> PathBuf {
    run.cache_dir.clone().unwrap_or_else(ironpxe_lab::cache_dir)
}

fn expectation(run: &RunArgs) -> Expect {
    let mut e = Expect::marker(run.timeout);
    if let Some(pass) = &run.expect {
        e.pass = pass.clone();
    }
    if !run.fail_on.is_empty() {
        e.fail = run.fail_on.clone();
    }
    e
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The human report: on stdout, or on stderr when stdout carries JSON.
struct Output {
    to_stderr: bool,
}

impl Output {
    fn new(json: bool) -> Self {
        Output { to_stderr: json }
    }

    fn line(&mut self, text: String) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn guest(&mut self, r: &ironpxe_lab::run::GuestResult, show_serial: bool) {
        let mut text = format!(
            "--- {} ({}, mac {}): boot timeline ---\n{}",
            r.name, r.firmware, r.mac, r.timeline
        );
        let whole = show_serial
            .then(|| std::fs::read_to_string(&r.serial_log).ok())
            .flatten();
        match (&r.verdict, whole) {
            (_, Some(serial)) => {
                text.push_str(&format!("--- {} serial log ---\n{serial}", r.name));
            }
            (Verdict::Fail { .. }, None) => {
                text.push_str(&format!(
                    "--- {} serial log, last lines ({}) ---\n{}\n",
                    r.name,
                    r.serial_log.display(),
                    r.serial_tail
                ));
            }
            (Verdict::Pass { .. }, None) => {}
        }
        match &r.verdict {
            Verdict::Pass { line } => text.push_str(&format!(
                "PASS {}: {:.1} s from power-on to: {line}",
                r.name, r.seconds
            )),
            Verdict::Fail { reason } => text.push_str(&format!(
                "FAIL {} after {:.1} s: {reason}",
                r.name, r.seconds
            )),
        }
        self.line(text);
    }

    fn summary(&mut self, report: &RunReport, skipped: &[String]) {
        let passed = report.guests.iter().filter(|g| g.verdict.passed()).count();
        self.line(format!(
            "ironpxe lab: {passed} of {} guests passed in {:.1} s{}",
            report.guests.len(),
            report.seconds,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} machines skipped)", skipped.len())
            }
        ));
        for g in &report.guests {
            let verdict = match &g.verdict {
                Verdict::Pass { .. } => "PASS".to_string(),
                Verdict::Fail { reason } => format!("FAIL  {reason}"),
            };
            self.line(format!(
                "  {:<20} {:<9} {:>6.1} s  {verdict}",
                g.name,
                g.firmware.name(),
                g.seconds
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn lab_args(args: &[&str]) -> LabArgs {
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("ironpxe").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            crate::cli::Command::Lab(l) => l,
            other => panic!("not lab: {other:?}"),
        }
    }

    fn names(setup: &Setup) -> Vec<(String, GuestFirmware, Option<String>)> {
        setup
            .guests
            .iter()
            .map(|g| (g.name.clone(), g.firmware, g.mac.map(|m| m.to_string())))
            .collect()
    }

    #[test]
    fn boot_mode_makes_one_guest_per_firmware_and_mac() {
        let a = lab_args(&[
            "lab",
            "boot",
            "/k",
            "/i",
            "--firmware",
            "bios,uefi",
            "--jobs",
            "2",
        ]);
        assert_eq!(a.run.jobs, 2);
        let setup = prepare(&a, Network::Namespaces).unwrap();
        assert_eq!(
            names(&setup),
            [
                ("bios".to_string(), GuestFirmware::Bios, None),
                ("uefi".to_string(), GuestFirmware::Uefi, None)
            ]
        );
        assert_eq!(
            setup.mode_args,
            ["boot", "/k", "/i", "--cmdline", "console=ttyS0"]
                .map(ModeArg::from)
                .to_vec()
        );
        // Flags after `boot` and before it mean the same.
        let b = lab_args(&["lab", "--mac", "52:54:00:00:00:07", "boot", "/k"]);
        let setup = prepare(&b, Network::User).unwrap();
        assert_eq!(
            names(&setup),
            [(
                "52-54-00-00-00-07".to_string(),
                GuestFirmware::Bios,
                Some("52:54:00:00:00:07".to_string())
            )]
        );
    }

    #[test]
    fn shim_and_arm64_guests_get_their_loader_kernel_and_binaries() {
        let setup = prepare(
            &lab_args(&["lab", "boot", "--firmware", "arm64,arm64-sb"]),
            Network::Namespaces,
        )
        .unwrap();
        assert_eq!(
            setup.mode_args,
            vec![
                ModeArg::from("boot"),
                ModeArg::LabKernelArm64,
                ModeArg::LabInitrdArm64,
                "--cmdline".into(),
                "console=ttyAMA0".into(),
                "--loader".into(),
                "shim".into(),
                "--shim-arm64".into(),
                ModeArg::LabShimArm64,
                "--grub-arm64".into(),
                ModeArg::LabGrubArm64,
            ]
        );
        let setup = prepare(
            &lab_args(&["lab", "boot", "--firmware", "arm64-http"]),
            Network::Namespaces,
        )
        .unwrap();
        assert!(setup.mode_args.contains(&ModeArg::LabGrubHttpArm64));
        assert!(setup.mode_args.contains(&"grub".into()));
        // x86 Secure Boot next to BIOS: shim for the EFI guest, iPXE for BIOS.
        let setup = prepare(
            &lab_args(&["lab", "boot", "--firmware", "bios,uefi-sb"]),
            Network::Namespaces,
        )
        .unwrap();
        let text: Vec<String> = setup
            .mode_args
            .iter()
            .filter_map(|a| match a {
                ModeArg::Text(t) => Some(t.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            text,
            ["boot", "--cmdline", "console=ttyS0", "--loader", "shim"]
        );
        assert_eq!(loader_for(&[GuestFirmware::Bios]), Loader::Ipxe);
    }

    #[test]
    fn the_lab_kernel_and_initrd_are_placeholders_until_the_lab_exists() {
        let setup = prepare(&lab_args(&["lab", "boot"]), Network::Namespaces).unwrap();
        assert_eq!(setup.mode_args[1], ModeArg::LabKernel);
        assert_eq!(setup.mode_args[2], ModeArg::LabInitrd);
    }

    #[test]
    fn config_mode_boots_listed_netboot_machines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[profiles.p]\nkernel = \"/k\"\n\n\
             [[machines]]\nmac = \"52:54:00:00:00:02\"\nname = \"b\"\nprofile = \"p\"\n\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\nname = \"a\"\nprofile = \"p\"\n\n\
             [[machines]]\nmac = \"52:54:00:00:00:03\"\nboot = \"local\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let setup = prepare(&lab_args(&["lab", "--config", p]), Network::Namespaces).unwrap();
        // In file order; the local-boot machine is skipped, and said so.
        let got: Vec<String> = names(&setup).into_iter().map(|n| n.0).collect();
        assert_eq!(got, ["b", "a"]);
        assert_eq!(setup.skipped, ["52:54:00:00:00:03: boot = \"local\""]);
        let only = lab_args(&["lab", "--config", p, "--mac", "52:54:00:00:00:01"]);
        let got: Vec<String> = names(&prepare(&only, Network::Namespaces).unwrap())
            .into_iter()
            .map(|n| n.0)
            .collect();
        assert_eq!(got, ["a"]);
        let unknown = lab_args(&["lab", "--config", p, "--mac", "52:54:00:00:00:09"]);
        assert!(prepare(&unknown, Network::Namespaces).is_err());
    }

    #[test]
    fn inputs_that_cannot_work_are_refused() {
        for (args, net) in [
            (&["lab"][..], Network::Namespaces),
            (&["lab", "--api", "http://x"], Network::Namespaces),
            (
                &["lab", "boot", "/k", "--firmware", "uefi-http"],
                Network::User,
            ),
            (
                &[
                    "lab",
                    "--api",
                    "http://x",
                    "--mac",
                    "52:54:00:00:00:01",
                    "boot",
                ],
                Network::Namespaces,
            ),
        ] {
            assert!(prepare(&lab_args(args), net).is_err(), "{args:?}");
        }
        let cli =
            crate::cli::Cli::try_parse_from(["ironpxe", "lab", "boot", "--firmware", "riscv64"]);
        assert!(cli.is_err(), "an unknown firmware is refused when parsing");
        // One kernel cannot serve ARM64 and x86 guests; one ARM64 GRUB cannot be both
        // Debian's signed one and one with http; shim and GRUB need namespaces.
        for (args, net) in [
            (
                &["lab", "boot", "--firmware", "bios,arm64"][..],
                Network::Namespaces,
            ),
            (
                &["lab", "boot", "--firmware", "arm64-sb,arm64-http"],
                Network::Namespaces,
            ),
            (&["lab", "boot", "--firmware", "uefi-sb"], Network::User),
        ] {
            assert!(prepare(&lab_args(args), net).is_err(), "{args:?}");
        }
        let cli = crate::cli::Cli::try_parse_from(["ironpxe", "lab", "boot", "--expect", "("]);
        assert!(cli.is_err(), "a bad --expect is refused when parsing");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = |s: u64| timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "19700101-000000");
        assert_eq!(t(951_782_400), "20000229-000000");
        assert_eq!(t(1_764_979_199), "20251205-235959");
    }
}
