//! QEMU guests that network-boot on the lab bridge.
//!
//! A BIOS guest is SeaBIOS with iPXE as the virtio-net option ROM; SeaBIOS's serial
//! console (`etc/sercon-port`) puts the BIOS and iPXE screens on the serial port. A
//! UEFI guest is OVMF (read-only code, a private copy of the variable store) with the
//! iPXE EFI ROM, booting through EDK2's own PXE or HTTP client. Either way the serial
//! port is QEMU's stdout, read line by line with timestamps, and QEMU is killed by
//! PID when the [`Guest`] is dropped.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ironpxe_core::MacAddr;

use crate::assets::MARKER_PREFIX;
use crate::lab::Lab;
use crate::preflight::{EFI_VIRTIO_ROM, OVMF_CODE, OVMF_VARS, PXE_VIRTIO_ROM};
use crate::proc::{LineMode, LogLine, Proc, WaitEnd};

/// How long a guest may take to print the marker by default.
pub const DEFAULT_MARKER_TIMEOUT: Duration = Duration::from_secs(180);

/// The firmware a guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the iPXE virtio-net ROM (`pxe-virtio.rom`).
    Bios,
    /// OVMF (EDK2) with the iPXE EFI virtio-net ROM (`efi-virtio.rom`).
    Uefi,
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
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
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
            extra_args: Vec::new(),
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

pub(crate) fn start(
    lab: &Lab,
    config: GuestConfig,
    name: String,
    mac: MacAddr,
    tap: &str,
) -> Result<Guest> {
    let uuid = random_uuid()?;
    let tmp = lab.tmp_dir();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.switch_ns(), "qemu-system-x86_64"])
        .args(["-name", &name, "-accel", "tcg", "-smp", "1"])
        .args(["-m", &config.memory_mib.to_string()])
        .args(["-uuid", &uuid])
        .args(["-nodefaults", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-netdev")
        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    // The iPXE ROMs carry the PCI id of a modern (virtio 1.0) device. QEMU patches
    // the id only into its default ROM, so with an explicit romfile= the device must
    // be modern-only or the firmware skips the ROM.
    let rom = match (config.ipxe_rom, config.firmware) {
        (false, _) => "",
        (true, Firmware::Bios) => PXE_VIRTIO_ROM,
        (true, Firmware::Uefi) => EFI_VIRTIO_ROM,
    };
    cmd.arg("-device").arg(format!(
        "virtio-net-pci,netdev=n0,mac={mac},romfile={rom},disable-legacy=on,bootindex=1"
    ));
    match config.firmware {
        Firmware::Bios => {
            // SeaBIOS reads the serial console port as a little-endian integer.
            let sercon = tmp.join("sercon-port");
            fs::write(&sercon, 0x3f8u16.to_le_bytes())?;
            cmd.args(["-machine", "pc", "-boot", "n"])
                .arg("-fw_cfg")
                .arg(format!("name=etc/sercon-port,file={}", sercon.display()));
        }
        Firmware::Uefi => {
            let vars = tmp.join(format!("{name}-OVMF_VARS.fd"));
            fs::copy(OVMF_VARS, &vars)
                .with_context(|| format!("cannot copy {OVMF_VARS} to {}", vars.display()))?;
            cmd.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
            if config.uefi_http_only {
                cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"])
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]);
            }
        }
    }
    cmd.args(&config.extra_args);

    let out = lab.out_dir();
    let serial_log = out.join(format!("{name}.serial.log"));
    let _ = fs::write(
        out.join(format!("{name}.cmd.txt")),
        format!("{cmd:?}\nmac={mac} uuid={uuid} tap={tap}\n"),
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
        tap: tap.to_string(),
        proc,
        serial_log,
    })
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

    /// Its tap device in the switch namespace.
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
        self.proc
            .log
            .wait_for(Instant::now() + timeout, |lines| {
                lines.iter().find(|l| l.text.contains(needle)).cloned()
            })
            .map_err(|end| self.wait_error(end, &format!("a serial line with {needle:?}"), timeout))
    }

    /// Waits for the initrd's marker and returns the command line it reported.
    pub fn wait_for_marker(&self, timeout: Duration) -> Result<Marker> {
        self.proc
            .log
            .wait_for(Instant::now() + timeout, |lines| {
                lines.iter().find_map(|l| {
                    parse_marker(&l.text).map(|cmdline| Marker {
                        cmdline,
                        at: l.at,
                        line: l.text.clone(),
                    })
                })
            })
            .map_err(|end| self.wait_error(end, "the IRONPXE-MARKER line", timeout))
    }

    fn wait_error(&self, end: WaitEnd, what: &str, timeout: Duration) -> anyhow::Error {
        let why = match end {
            WaitEnd::Timeout => format!("{what} did not appear within {timeout:?}"),
            WaitEnd::Closed => format!("QEMU exited before {what}"),
        };
        anyhow!(
            "{}: {why}; serial log {}; last lines:\n{}",
            self.name,
            self.serial_log.display(),
            self.proc.tail(25)
        )
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

fn random_uuid() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
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
