//! `ironpxe-bench boot`: guest power-on to the kernel's marker, booted by ironpxe and
//! by the classic stack it replaces, side by side in one run.
//!
//! The classic stack is dnsmasq in proxy mode with its own TFTP server (for the
//! firmware's iPXE) plus nginx serving an iPXE script, the kernel and the initrd. Both
//! stacks run in the lab's ironpxe namespace on the same address, one at a time, next
//! to the same site dnsmasq (addresses and router advertisements), and serve the same
//! kernel, initrd, command line and the same Debian iPXE binaries. Every boot builds a
//! fresh lab, so no ARP, lease or cache state carries over; rounds alternate which
//! stack goes first.
//!
//! Firmware: SeaBIOS with QEMU's iPXE NIC ROM (which chainloads nothing: the ROM is
//! iPXE and fetches the script over HTTP), and OVMF with EDK2's own PXE client (TFTP of
//! the EFI iPXE, which then fetches the script over HTTP).
//!
//! The time of each phase is read from the guest's serial log and the servers' logs
//! in the boot timeline, which the lab writes next to each run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ironpxe_lab::preflight::{IPXE_EFI, SNPONLY_EFI, UNDIONLY_KPXE};
use ironpxe_lab::{GuestConfig, Lab, DEFAULT_HTTP_PORT};

use crate::env::{machine_notes, median, version_of};
use crate::http::nginx;

/// The kernel command line every boot asks for.
const CMDLINE: &str = "console=ttyS0 ironpxe.bench=boot";

/// Flags of `ironpxe-bench boot`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each boots every firmware once through each stack.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Firmware to boot, comma-separated: `bios`, `uefi-pxe`.
    #[arg(long, value_delimiter = ',', default_value = "bios,uefi-pxe")]
    firmware: Vec<String>,
    /// The EFI iPXE both stacks hand to OVMF: `ipxe.efi` (Debian's default, also
    /// ironpxe's) or `snponly.efi`.
    #[arg(long, default_value = "ipxe.efi")]
    efi_binary: String,
    /// Give up on a boot after this many seconds.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
}

/// The two stacks compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    Ironpxe,
    DnsmasqNginx,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Ironpxe => "ironpxe",
            Stack::DnsmasqNginx => "dnsmasq+nginx",
        }
    }
}

/// Processes of the classic stack, killed by PID on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `program args` in namespace `ns`, logging to `log`.
fn spawn_in(ns: &str, program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

/// dnsmasq (proxy DHCP + TFTP) and nginx serving what ironpxe would serve.
fn classic_stack(lab: &Lab, kernel: &Path, initrd: &Path, efi_binary: &str) -> Result<Procs> {
    let dir = lab.tmp_dir().join("classic");
    let tftp = dir.join("tftp");
    let www = dir.join("www");
    std::fs::create_dir_all(&tftp)?;
    std::fs::create_dir_all(&www)?;
    // dnsmasq's pxe-service names a basename and the firmware asks for
    // `<basename>.0`.
    std::fs::copy(UNDIONLY_KPXE, tftp.join("undionly.0"))?;
    let efi = if efi_binary == "snponly.efi" {
        SNPONLY_EFI
    } else {
        IPXE_EFI
    };
    std::fs::copy(efi, tftp.join("ipxe-efi.0"))?;
    std::fs::copy(kernel, www.join("vmlinuz"))?;
    std::fs::copy(initrd, www.join("initrd.img"))?;
    let addr = lab.pxe_addr();
    let base = format!("http://{addr}:{DEFAULT_HTTP_PORT}");
    // The same script shape ironpxe renders: named images, `initrd=` for EFI stubs.
    let script = format!(
        "#!ipxe\nkernel --name vmlinuz {base}/vmlinuz initrd=initrd.img {CMDLINE}\n\
         initrd --name initrd.img {base}/initrd.img\nboot\n"
    );
    // dnsmasq may append `.0` to a menu item's basename; both names exist.
    std::fs::write(www.join("boot.ipxe"), &script)?;
    std::fs::write(www.join("boot.ipxe.0"), &script)?;
    for p in [&dir, &tftp, &www] {
        crate::env::set_mode(p, 0o755)?;
    }

    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log {d}/nginx-access.log; sendfile on; tcp_nopush on;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {addr}:{DEFAULT_HTTP_PORT}; root {www}; }} }}\n",
            www = www.display()
        ),
    )?;
    let ns = lab.pxe_ns();
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn_in(
        &ns,
        &nginx()?,
        &["-c".into(), conf.display().to_string()],
        &lab.out_dir().join("nginx.log"),
    )?);
    let o = addr.octets();
    let subnet = format!("{}.{}.{}.0", o[0], o[1], o[2]);
    let args: Vec<String> = vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--pid-file=".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--log-facility=-".into(),
        "--log-dhcp".into(),
        format!("--interface={}", lab.pxe_ifname()),
        format!("--dhcp-range={subnet},proxy"),
        "--enable-tftp".into(),
        format!("--tftp-root={}", tftp.display()),
        "--dhcp-userclass=set:ipxe,iPXE".into(),
        // iPXE (the BIOS NIC ROM, or the EFI iPXE after its chainload) gets the
        // script URL; firmware PXE clients get iPXE over TFTP.
        format!("--pxe-service=tag:ipxe,x86PC,iPXE,{base}/boot.ipxe"),
        format!("--pxe-service=tag:ipxe,X86-64_EFI,iPXE,{base}/boot.ipxe"),
        format!("--pxe-service=tag:ipxe,BC_EFI,iPXE,{base}/boot.ipxe"),
        "--pxe-service=tag:!ipxe,x86PC,PXE,undionly".into(),
        "--pxe-service=tag:!ipxe,X86-64_EFI,PXE,ipxe-efi".into(),
        "--pxe-service=tag:!ipxe,BC_EFI,PXE,ipxe-efi".into(),
    ];
    procs.0.push(spawn_in(
        &ns,
        Path::new("dnsmasq"),
        &args,
        &lab.out_dir().join("classic-dnsmasq.log"),
    )?);
    // nginx and dnsmasq bind at once; a short pause lets them.
    std::thread::sleep(Duration::from_millis(500));
    for c in &mut procs.0 {
        if let Some(st) = c.try_wait()? {
            bail!(
                "the classic stack exited ({st}); see {}",
                lab.out_dir().display()
            );
        }
    }
    Ok(procs)
}

/// One boot: a fresh lab, the stack, the guest; power-on to marker.
fn boot(
    name: &str,
    stack: Stack,
    firmware: &str,
    kernel: &Path,
    efi_binary: &str,
    timeout: Duration,
) -> Result<(Duration, PathBuf)> {
    let lab = Lab::new(name)?;
    let initrd = lab.initrd()?;
    let config = match firmware {
        "bios" => GuestConfig::bios(),
        "uefi-pxe" => GuestConfig::uefi_native_pxe(),
        other => bail!("unknown firmware {other:?} (bios, uefi-pxe)"),
    };
    let _ironpxe;
    let _classic;
    match stack {
        Stack::Ironpxe => {
            let mut args = lab.ironpxe_boot_args(kernel, &[&initrd], CMDLINE);
            if efi_binary == "snponly.efi" {
                args.push("--ipxe-snponly".into());
            }
            _ironpxe = lab.start_ironpxe(&args)?;
        }
        Stack::DnsmasqNginx => _classic = classic_stack(&lab, kernel, &initrd, efi_binary)?,
    }
    let guest = lab.start_guest(config)?;
    let marker = guest.wait_for_marker(timeout);
    let timeline = lab.write_timeline(&guest);
    let out = lab.out_dir().to_path_buf();
    let marker = marker.with_context(|| format!("{name}: no marker; logs in {}", out.display()))?;
    // Under EFI, iPXE puts the image name first, and each stack adds `initrd=`.
    if marker.user_cmdline() != CMDLINE && !marker.cmdline.contains(&format!(" {CMDLINE}")) {
        bail!("{name}: booted with {:?}, not {CMDLINE:?}", marker.cmdline);
    }
    let took = marker.at.saturating_duration_since(guest.powered_on());
    drop(timeline);
    Ok((took, out))
}

/// `ironpxe-bench boot`.
pub fn run(a: Args) -> Result<()> {
    ironpxe_lab::preflight()?;
    let kernel = ironpxe_lab::kernel()?;
    let timeout = Duration::from_secs(a.timeout_secs);
    let mut report = String::new();
    writeln!(
        report,
        "## Boot time: ironpxe against dnsmasq (proxy + TFTP) + nginx\n"
    )?;
    writeln!(report, "Machine: {}", machine_notes())?;
    writeln!(
        report,
        "ironpxe: {}; {}; nginx from Debian's package (unpacked, sendfile on)",
        ironpxe_lab::ironpxe_bin()?.display(),
        version_of("dnsmasq", &["--version"], &[])
    )?;
    writeln!(
        report,
        "Kernel: {}; EFI iPXE for both stacks: {}; QEMU under TCG, power-on to the \
         initrd's marker line on the serial console.\n",
        kernel.display(),
        a.efi_binary
    )?;
    writeln!(
        report,
        "| round | firmware | stack | power-on → marker | logs |\n|---|---|---|---|---|"
    )?;
    let mut times: Vec<(String, Stack, f64)> = Vec::new();
    for round in 0..a.rounds {
        for fw in &a.firmware {
            let order = if round % 2 == 0 {
                [Stack::Ironpxe, Stack::DnsmasqNginx]
            } else {
                [Stack::DnsmasqNginx, Stack::Ironpxe]
            };
            for stack in order {
                let name = format!("bench-boot-{fw}-{}-{round}", stack.name().replace('+', "-"));
                let (took, out) = boot(&name, stack, fw, &kernel, &a.efi_binary, timeout)?;
                let line = format!(
                    "| {} | {fw} | {} | {:.2} s | {} |",
                    round + 1,
                    stack.name(),
                    took.as_secs_f64(),
                    out.display()
                );
                eprintln!("{line}");
                writeln!(report, "{line}")?;
                times.push((fw.clone(), stack, took.as_secs_f64()));
            }
        }
    }
    writeln!(
        report,
        "\n| firmware | ironpxe median | dnsmasq+nginx median | ratio (ironpxe / classic) |\n|---|---|---|---|"
    )?;
    for fw in &a.firmware {
        let pick = |s: Stack| -> Vec<f64> {
            times
                .iter()
                .filter(|(f, st, _)| f == fw && *st == s)
                .map(|(_, _, t)| *t)
                .collect()
        };
        let (i, c) = (
            median(&pick(Stack::Ironpxe)),
            median(&pick(Stack::DnsmasqNginx)),
        );
        writeln!(report, "| {fw} | {i:.2} s | {c:.2} s | {:.2} |", i / c)?;
    }
    print!("{report}");
    Ok(())
}
