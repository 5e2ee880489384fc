//! QEMU guests that network-boot on the lab bridge, or on a QEMU user network.
//!
//! A BIOS guest is SeaBIOS with iPXE as the virtio-net option ROM; SeaBIOS's serial
//! console (`etc/sercon-port`) puts the BIOS and iPXE screens on the serial port. A
//! UEFI guest is OVMF (read-only code, a private copy of the variable store) with the
//! iPXE EFI ROM, or without it, booting through EDK2's own PXE or HTTP client. A
//! Secure Boot guest is OVMF with Microsoft's keys enrolled and Secure Boot on (SMM, a
//! secure flash); an ARM64 guest is AAVMF on QEMU's `virt` machine (always TCG), with
//! or without Secure Boot, its serial port the PL011 (`ttyAMA0`). Either way the
//! serial port is QEMU's stdout, read line by line with timestamps, and QEMU
//! is killed by PID when the [`Guest`] is dropped.
//!
//! With user networking ([`crate::Network::User`]) the guest's NIC is on its own QEMU
//! user network, whose DHCP server gives the NIC's iPXE ROM (QEMU's default one) the
//! URL of the guest's boot script on ironpxe as its boot file. With `pcap`, QEMU
//! writes everything the guest's NIC sends and receives to `<guest>.pcap`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironpxe_core::{ClientArch, MacAddr};

use crate::assets::MARKER_PREFIX;
use crate::error::{io_err, Error, Result, WaitEnd};
use crate::lab::Lab;
use crate::netns::exec_in;
use crate::preflight::{
    program, AAVMF_CODE, AAVMF_VARS, AAVMF_VARS_MS, EFI_VIRTIO_ROM, OVMF_CODE_MS, OVMF_VARS_MS,
    PXE_VIRTIO_ROM, QEMU_AARCH64, QEMU_X86_64,
};
use crate::proc::{LineMode, LogLine, Proc, Stop};

/// How long a guest may take to print the marker by default.
pub const DEFAULT_MARKER_TIMEOUT: Duration = Duration::from_secs(180);

/// The firmware a guest's machine runs (see [`GuestConfig`] for the network boot
/// client, and [`crate::GuestFirmware`] for the combinations `ironpxe lab` offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS on QEMU's `pc` machine.
    Bios,
    /// OVMF (EDK2) on QEMU's `q35` machine.
    Uefi,
    /// OVMF with Secure Boot on and Microsoft's keys enrolled
    /// (`OVMF_CODE_4M.ms.fd`, `OVMF_VARS_4M.ms.fd`), on `q35` with SMM.
    UefiSecureBoot,
    /// AAVMF (EDK2 for ARM64) on QEMU's `virt` machine, Secure Boot off.
    Arm64,
    /// AAVMF with Secure Boot on and Microsoft's keys enrolled (`AAVMF_VARS.ms.fd`).
    Arm64SecureBoot,
}

impl Firmware {
    /// The option 93 architecture this firmware's iPXE announces: what a
    /// user-network guest's script URL names.
    pub fn ipxe_arch(self) -> ClientArch {
        match self {
            Firmware::Bios => ClientArch::Bios,
            Firmware::Uefi | Firmware::UefiSecureBoot => ClientArch::EfiX64,
            Firmware::Arm64 | Firmware::Arm64SecureBoot => ClientArch::EfiArm64,
        }
    }

    /// Whether the guest is an ARM64 machine.
    pub fn is_arm64(self) -> bool {
        matches!(self, Firmware::Arm64 | Firmware::Arm64SecureBoot)
    }

    /// Whether the firmware enforces Secure Boot.
    pub fn secure_boot(self) -> bool {
        matches!(self, Firmware::UefiSecureBoot | Firmware::Arm64SecureBoot)
    }

    /// The CPU of the guest, for its initrd.
    pub fn arch(self) -> crate::assets::GuestArch {
        if self.is_arm64() {
            crate::assets::GuestArch::Arm64
        } else {
            crate::assets::GuestArch::X86_64
        }
    }
}

/// How to start a guest.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Name for logs (default `guest<N>`).
    pub name: Option<String>,
    /// MAC address (default `52:54:00:<lab>:<N>`).
    pub mac: Option<MacAddr>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// UEFI only: turn off OVMF's PXE so it goes straight to UEFI HTTP Boot.
    pub uefi_http_only: bool,
    /// Load the iPXE option ROM on the NIC (default). Off (`romfile=`), a UEFI guest
    /// uses OVMF's own virtio-net driver and EDK2's PXE or HTTP Boot client.
    pub ipxe_rom: bool,
    /// Record the NIC's traffic to `<out_dir>/<name>.pcap` (QEMU's `filter-dump`).
    pub pcap: bool,
    /// A local disk, after the NIC in the boot order ([`crate::disk`]).
    pub disk: Option<crate::disk::GuestDisk>,
    /// Let the guest reboot (a reset restarts the firmware). Off (the default), QEMU
    /// exits when the guest resets, as after a power-off.
    pub reboot: bool,
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
    /// Faults on the guest's link (loss, a rate limit), set up on its tap device
    /// before QEMU starts; namespaces only. See [`crate::Lab::link`] for the counters.
    pub link: crate::link::LinkFaults,
}

impl GuestConfig {
    /// A BIOS guest with 512 MiB.
    pub fn bios() -> Self {
        GuestConfig {
            firmware: Firmware::Bios,
            name: None,
            mac: None,
            memory_mib: 512,
            uefi_http_only: false,
            ipxe_rom: true,
            pcap: false,
            disk: None,
            reboot: false,
            extra_args: Vec::new(),
            link: crate::link::LinkFaults::default(),
        }
    }

    /// A UEFI guest with 512 MiB that tries PXE first.
    pub fn uefi() -> Self {
        GuestConfig {
            firmware: Firmware::Uefi,
            ..Self::bios()
        }
    }

    /// A UEFI guest without the iPXE ROM: EDK2's own PXE client (PXEv4) boots it.
    pub fn uefi_native_pxe() -> Self {
        GuestConfig {
            ipxe_rom: false,
            ..Self::uefi()
        }
    }

    /// A UEFI guest without the iPXE ROM and with PXE turned off: EDK2's UEFI HTTP
    /// Boot client (HTTPv4) boots it.
    pub fn uefi_http_boot() -> Self {
        GuestConfig {
            ipxe_rom: false,
            uefi_http_only: true,
            ..Self::uefi()
        }
    }

    /// An x86-64 Secure Boot guest (OVMF with Microsoft's keys) booting with EDK2's
    /// own PXE client: only signed images (shim) start.
    pub fn uefi_secure_boot() -> Self {
        GuestConfig {
            firmware: Firmware::UefiSecureBoot,
            ..Self::uefi_native_pxe()
        }
    }

    /// An ARM64 guest (AAVMF) with 1 GiB, booting with EDK2's own PXE client.
    pub fn arm64() -> Self {
        GuestConfig {
            firmware: Firmware::Arm64,
            memory_mib: 1024,
            ..Self::uefi_native_pxe()
        }
    }

    /// An ARM64 Secure Boot guest (AAVMF with Microsoft's keys).
    pub fn arm64_secure_boot() -> Self {
        GuestConfig {
            firmware: Firmware::Arm64SecureBoot,
            ..Self::arm64()
        }
    }

    /// An ARM64 guest with PXE turned off: AAVMF's UEFI HTTP Boot client (option 93 =
    /// 19) boots it.
    pub fn arm64_http_boot() -> Self {
        GuestConfig {
            uefi_http_only: true,
            ..Self::arm64()
        }
    }
}

/// What the lab initrd printed: the kernel command line the guest booted with.
#[derive(Debug, Clone)]
pub struct Marker {
    /// The contents of `/proc/cmdline`, exactly.
    pub cmdline: String,
    /// When the line arrived.
    pub at: Instant,
    /// The serial line.
    pub line: String,
}

impl Marker {
    /// The command line without `initrd=NAME` words that the boot server put at its
    /// start or end (EFI-stub kernels need them; they are not part of what the user
    /// asked for). Everything else is left byte for byte.
    pub fn user_cmdline(&self) -> &str {
        strip_initrd_words(&self.cmdline)
    }

    /// The command line after the `BOOT_IMAGE=<kernel path>` word GRUB's `linux`
    /// puts first, and that path; `None` when the command line does not start so.
    pub fn after_boot_image(&self) -> Option<(&str, &str)> {
        let rest = self.cmdline.strip_prefix("BOOT_IMAGE=")?;
        Some(match rest.split_once(' ') {
            Some((image, args)) => (image, args),
            None => (rest, ""),
        })
    }

    /// Like [`Marker::user_cmdline`], and also without a first word equal to
    /// `image_name`: under UEFI, iPXE passes the kernel image's name as the first word
    /// of the EFI load options, and the kernel keeps it in `/proc/cmdline`.
    pub fn user_cmdline_for_image(&self, image_name: &str) -> &str {
        let s = self.user_cmdline();
        match s.strip_prefix(image_name) {
            Some(rest) if !image_name.is_empty() && (rest.is_empty() || rest.starts_with(' ')) => {
                rest.strip_prefix(' ').unwrap_or(rest)
            }
            _ => s,
        }
    }
}

/// Strips leading and trailing `initrd=...` words.
pub fn strip_initrd_words(cmdline: &str) -> &str {
    let mut s = cmdline;
    loop {
        let t = s.trim_start_matches(' ');
        match t.strip_prefix("initrd=") {
            Some(rest) => {
                s = match rest.find(' ') {
                    Some(i) => &rest[i + 1..],
                    None => "",
                };
            }
            None => break,
        }
    }
    loop {
        let t = s.trim_end_matches(' ');
        match t.rfind(' ') {
            Some(i) if t[i + 1..].starts_with("initrd=") => s = &t[..i],
            None if t.starts_with("initrd=") => s = "",
            _ => break,
        }
    }
    s
}

/// Parses the initrd's Secure Boot line: what is between the brackets.
pub fn parse_secure_boot(line: &str) -> Option<String> {
    let prefix = crate::assets::SECURE_BOOT_PREFIX;
    let rest = &line[line.find(prefix)? + prefix.len()..];
    Some(rest[..rest.rfind(']')?].to_string())
}

/// Parses a serial line carrying the marker.
pub fn parse_marker(line: &str) -> Option<String> {
    let start = line.find(MARKER_PREFIX)? + MARKER_PREFIX.len();
    let rest = &line[start..];
    let end = rest.rfind(']')?;
    Some(rest[..end].to_string())
}

/// A running QEMU guest.
pub struct Guest {
    name: String,
    mac: MacAddr,
    uuid: String,
    firmware: Firmware,
    tap: String,
    proc: Arc<Proc>,
    serial_log: PathBuf,
}

/// Starts QEMU for a guest: on tap device `tap` in the switch namespace, or without
/// one on a QEMU user network.
pub(crate) fn start(
    lab: &Lab,
    config: GuestConfig,
    name: String,
    mac: MacAddr,
    tap: Option<&str>,
) -> Result<Guest> {
    let uuid = random_uuid()?;
    let cmd = qemu_command(lab, &config, &name, mac, &uuid, tap, tap.is_some())?;
    let out = lab.out_dir();
    let serial_log = out.join(format!("{name}.serial.log"));
    let _ = fs::write(
        out.join(format!("{name}.cmd.txt")),
        format!(
            "{}\nmac={mac} uuid={uuid} tap={}\n",
            crate::proc::show_command(&cmd),
            tap.unwrap_or("-")
        ),
    );
    let proc = lab.spawn_proc(
        &name,
        cmd,
        &serial_log,
        LineMode::Terminal,
        Some(&out.join(format!("{name}.serial.raw"))),
    )?;
    Ok(Guest {
        name,
        mac,
        uuid,
        firmware: config.firmware,
        tap: tap.unwrap_or_default().to_string(),
        proc,
        serial_log,
    })
}

/// The QEMU command of a guest (its serial port is QEMU's stdout). With `tap`, its
/// NIC is that tap device of the switch namespace, and with `in_switch_ns` the
/// command enters that namespace itself (`ip netns exec`); without `tap`, a QEMU
/// user network.
pub(crate) fn qemu_command(
    lab: &Lab,
    config: &GuestConfig,
    name: &str,
    mac: MacAddr,
    uuid: &str,
    tap: Option<&str>,
    in_switch_ns: bool,
) -> Result<Command> {
    let tmp = lab.tmp_dir();
    let qemu = program(if config.firmware.is_arm64() {
        QEMU_AARCH64
    } else {
        QEMU_X86_64
    });
    let mut cmd = if in_switch_ns {
        exec_in(&lab.switch_ns(), qemu)
    } else {
        Command::new(qemu)
    };
    // An x86 host's KVM cannot run an ARM64 guest.
    let accel = if config.firmware.is_arm64() {
        "tcg"
    } else {
        lab.accel().accel.qemu_name()
    };
    cmd.args(["-name", name, "-accel", accel, "-smp", "1"])
        .args(["-m", &config.memory_mib.to_string()])
        .args(["-uuid", uuid])
        .args(["-nodefaults", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio"]);
    if !config.reboot {
        cmd.arg("-no-reboot");
    }
    cmd.arg("-netdev");
    match tap {
        Some(tap) => {
            // With a virtio-net header on the tap, filter-dump writes that header in
            // front of every frame; a capture must hold plain Ethernet frames.
            let vnet = if config.pcap { ",vnet_hdr=off" } else { "" };
            cmd.arg(format!(
                "tap,id=n0,ifname={tap},script=no,downscript=no{vnet}"
            ));
            // The iPXE ROMs carry the PCI id of a modern (virtio 1.0) device. QEMU
            // patches the id only into its default ROM, so with an explicit romfile=
            // the device must be modern-only or the firmware skips the ROM.
            let rom = match (config.ipxe_rom, config.firmware) {
                (false, _) => "",
                (true, Firmware::Bios) => PXE_VIRTIO_ROM,
                (true, _) => EFI_VIRTIO_ROM,
            };
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n0,mac={mac},romfile={rom},disable-legacy=on,bootindex=1"
            ));
        }
        None => {
            // QEMU's DHCP server hands the NIC's iPXE ROM (QEMU's default ROM, which
            // speaks HTTP under SeaBIOS and OVMF alike) the script URL as its boot
            // file. QEMU splits its options at commas; a boot URL has none.
            let script = lab
                .guest_boot_urls()
                .script(mac, config.firmware.ipxe_arch());
            cmd.arg(format!("user,id=n0,bootfile={script}"));
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"));
        }
    }
    if let Some(disk) = &config.disk {
        // After the NIC: the firmware reaches it when the network boot returns.
        cmd.arg("-drive")
            .arg(disk.drive("disk0"))
            .arg("-device")
            .arg("virtio-blk-pci,drive=disk0,bootindex=2");
    }
    if config.pcap {
        let pcap = lab.out_dir().join(format!("{name}.pcap"));
        cmd.arg("-object").arg(format!(
            "filter-dump,id=dump0,netdev=n0,file={}",
            pcap.display()
        ));
    }
    match config.firmware {
        Firmware::Bios => {
            // SeaBIOS reads the serial console port as a little-endian integer.
            let sercon = tmp.join("sercon-port");
            fs::write(&sercon, 0x3f8u16.to_le_bytes()).map_err(io_err("write", &sercon))?;
            cmd.args(["-machine", "pc", "-boot", "n"])
                .arg("-fw_cfg")
                .arg(format!("name=etc/sercon-port,file={}", sercon.display()));
        }
        efi => {
            let (code, template) = match efi {
                Firmware::UefiSecureBoot => {
                    (PathBuf::from(OVMF_CODE_MS), PathBuf::from(OVMF_VARS_MS))
                }
                Firmware::Arm64 => (PathBuf::from(AAVMF_CODE), PathBuf::from(AAVMF_VARS)),
                Firmware::Arm64SecureBoot => {
                    (PathBuf::from(AAVMF_CODE), PathBuf::from(AAVMF_VARS_MS))
                }
                _ => (crate::preflight::ovmf_code(), crate::preflight::ovmf_vars()),
            };
            let vars = tmp.join(format!("{name}-VARS.fd"));
            fs::copy(&template, &vars).map_err(io_err("copy the EFI variables to", &vars))?;
            // A read-only template stays read-only in its copy; QEMU writes to it.
            let _ = set_writable(&vars);
            match efi {
                Firmware::UefiSecureBoot => {
                    // The Secure Boot build keeps its variables in SMM-protected flash.
                    cmd.args(["-machine", "q35,smm=on"])
                        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                }
                Firmware::Arm64 | Firmware::Arm64SecureBoot => {
                    cmd.args(["-machine", "virt", "-cpu", "cortex-a57"]);
                }
                _ => {
                    cmd.args(["-machine", "q35"]);
                }
            }
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
            if config.uefi_http_only {
                // OVMF and AAVMF both read these: only HTTP Boot is left to try.
                cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"])
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]);
            }
        }
    }
    cmd.args(&config.extra_args);
    Ok(cmd)
}

impl Guest {
    /// The guest's name in logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its NIC's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Its SMBIOS UUID (PXE option 97).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Its firmware.
    pub fn firmware(&self) -> Firmware {
        self.firmware
    }

    /// Its tap device in the switch namespace (empty with user networking).
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The moment QEMU was started: the guest's power-on.
    pub fn powered_on(&self) -> Instant {
        self.proc.started()
    }

    /// The serial log file (cleaned lines with timestamps since lab start).
    pub fn serial_log(&self) -> &std::path::Path {
        &self.serial_log
    }

    /// Serial lines (and QEMU's stderr) so far.
    pub fn serial_lines(&self) -> Vec<LogLine> {
        self.proc.lines()
    }

    /// Whether QEMU still runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Waits until a serial line contains `needle`.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> Result<LogLine> {
        self.wait_for_line(&format!("a serial line with {needle:?}"), timeout, |l| {
            l.text.contains(needle).then(|| l.clone())
        })
    }

    /// The kernel's Secure Boot line as the lab initrd printed it (see
    /// [`crate::assets::SECURE_BOOT_PREFIX`]), e.g. `secureboot: Secure boot enabled`,
    /// if it has printed it by now (it comes just before the marker).
    pub fn secure_boot_line(&self) -> Option<String> {
        self.proc
            .lines()
            .iter()
            .find_map(|l| parse_secure_boot(&l.text))
    }

    /// Waits for the initrd's marker and returns the command line it reported.
    pub fn wait_for_marker(&self, timeout: Duration) -> Result<Marker> {
        self.wait_for_line("the IRONPXE-MARKER line", timeout, |l| {
            parse_marker(&l.text).map(|cmdline| Marker {
                cmdline,
                at: l.at,
                line: l.text.clone(),
            })
        })
    }

    /// Waits until `check` returns something for a line of the guest's serial port
    /// or of QEMU's stderr (earliest line first; [`LogLine::stream`] tells them
    /// apart); `what` names what is waited for in the error.
    pub fn wait_for_line<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&LogLine) -> Option<T>,
    ) -> Result<T> {
        self.proc
            .log
            .wait_for(Instant::now() + timeout, |lines| {
                lines.iter().find_map(&mut check)
            })
            .map_err(|stop| self.wait_error(stop, what, timeout))
    }

    fn wait_error(&self, stop: Stop, what: &str, timeout: Duration) -> Error {
        Error::Guest {
            guest: self.name.clone(),
            what: what.to_string(),
            end: match stop {
                Stop::Timeout => WaitEnd::Timeout(timeout),
                Stop::Closed => WaitEnd::Exited,
            },
            serial_log: self.serial_log.clone(),
            tail: self.proc.tail(25),
        }
    }

    /// The last `n` serial lines, for messages.
    pub fn tail(&self, n: usize) -> String {
        self.proc.tail(n)
    }

    /// Waits up to `timeout` for QEMU to exit on its own (after the guest powered
    /// off); whether it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        self.proc.wait_exit(timeout).is_some()
    }

    /// Kills QEMU (by PID).
    pub fn kill(&self) {
        self.proc.kill();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

fn set_writable(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = fs::metadata(path)?.permissions();
    perm.set_mode(perm.mode() | 0o600);
    fs::set_permissions(path, perm)
}

pub(crate) fn random_uuid() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("read", "/dev/urandom"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_parses_brackets_inside() {
        assert_eq!(
            parse_marker("IRONPXE-MARKER cmdline=[a=[b] c]").as_deref(),
            Some("a=[b] c")
        );
        assert_eq!(parse_marker("something else"), None);
    }

    #[test]
    fn uefi_image_name_is_stripped() {
        let m = Marker {
            cmdline: "vmlinuz-6.1 console=ttyS0 a=b initrd=x.cpio".into(),
            at: Instant::now(),
            line: String::new(),
        };
        assert_eq!(m.user_cmdline_for_image("vmlinuz-6.1"), "console=ttyS0 a=b");
        assert_eq!(
            m.user_cmdline_for_image("vmlinuz"),
            "vmlinuz-6.1 console=ttyS0 a=b"
        );
    }

    #[test]
    fn initrd_words_are_stripped_only_at_the_edges() {
        assert_eq!(strip_initrd_words("initrd=initrd0 a=b c"), "a=b c");
        assert_eq!(strip_initrd_words("a=b c initrd=x"), "a=b c");
        assert_eq!(strip_initrd_words("a initrd=x b"), "a initrd=x b");
        assert_eq!(strip_initrd_words("a  b"), "a  b");
        assert_eq!(strip_initrd_words("initrd=x"), "");
    }
}
