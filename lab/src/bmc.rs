//! A BMC for a lab guest: OpenIPMI's `ipmi_sim` (Debian package openipmi) speaking
//! IPMI over LAN on a management network, with the guest's power in its hands.
//!
//! ```text
//!   <id>-sw ns                                              <id>-pxe ns
//!   ipmi_sim  LAN 10.79.N.1:623 <id>-mb ── veth ── <id>-mp 10.79.N.2   ironpxe, ipmitool
//!     │ chassis control program: power on = start QEMU, off = kill it,
//!     │   boot = remember the next boot device
//!     └─ VM interface 127.0.0.1:<port> ── QEMU -device ipmi-bmc-extern + isa-ipmi-kcs
//! ```
//!
//! ipmi_sim runs in the switch namespace, where the guests' tap devices are, and
//! starts the guest's QEMU there through its chassis control program, so `chassis
//! power on/off/cycle/reset` really powers the machine. The QEMU has the IPMI KCS
//! interface of a real server, connected to ipmi_sim (`-device ipmi-bmc-extern`).
//! ironpxe reaches the BMC over a point-to-point management link from its own
//! namespace, as it would reach BMCs on a management network. The serial console
//! of every power-on is appended to `<out>/<guest>.serial.log`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::guest::{qemu_command, random_uuid, GuestConfig};
use crate::lab::Lab;
use crate::netns::exec_in;
use crate::proc::{LineMode, Proc};

/// The IPMI user of lab BMCs (an administrator).
pub const BMC_USER: &str = "admin";

/// The UDP port of IPMI over LAN.
pub const IPMI_PORT: u16 = 623;

/// How long ipmi_sim may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running lab BMC and the guest it powers. Powers the guest off when dropped.
pub struct Bmc {
    name: String,
    mac: ironpxe_core::MacAddr,
    host: Ipv4Addr,
    dir: PathBuf,
    serial_log: PathBuf,
    sim: Arc<Proc>,
}

impl Lab {
    /// The management link: `<id>-mb` (10.79.N.1) in the switch namespace and
    /// `<id>-mp` (10.79.N.2) in ironpxe's. Created on first use.
    fn management_link(&self) -> Result<Ipv4Addr> {
        let n = self.subnet();
        let bmc_if = format!("{}-mb", self.id());
        let pxe_if = format!("{}-mp", self.id());
        let host = Ipv4Addr::new(10, 79, n, 1);
        let (sw, pxe) = (self.switch_ns(), self.pxe_ns());
        let exists = self
            .run_in(&sw, "ip", &["link", "show", &bmc_if])
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            self.ip(&[
                "-n", &sw, "link", "add", &bmc_if, "type", "veth", "peer", "name", &pxe_if,
                "netns", &pxe,
            ])?;
            self.ip(&[
                "-n",
                &sw,
                "addr",
                "add",
                &format!("{host}/24"),
                "dev",
                &bmc_if,
            ])?;
            self.ip(&["-n", &sw, "link", "set", &bmc_if, "up"])?;
            self.ip(&[
                "-n",
                &pxe,
                "addr",
                "add",
                &format!("10.79.{n}.2/24"),
                "dev",
                &pxe_if,
            ])?;
            self.ip(&["-n", &pxe, "link", "set", &pxe_if, "up"])?;
        }
        Ok(host)
    }

    /// Starts a BMC for a guest described by `config` (on the lab bridge, with the
    /// IPMI KCS device added), powered on if `power_on`. The guest's QEMU is started
    /// and stopped by the BMC, never by the lab directly.
    pub fn start_bmc(&self, config: GuestConfig, power_on: bool) -> Result<Bmc> {
        crate::preflight::find_program("ipmi_sim").ok_or_else(|| {
            Error::Invalid(
                "ipmi_sim not found: install the Debian package openipmi (apt-get install openipmi)"
                    .into(),
            )
        })?;
        let host = self.management_link()?;
        let (mac, name, tap) = self.guest_tap(&self.bridge(), &config)?;
        let index = self.bmc_index();
        let vm_port = 9002 + index * 2;
        let ipmi_port = IPMI_PORT + index;
        let dir = self.tmp_dir().join(format!("bmc-{name}"));
        fs::create_dir_all(dir.join("state")).map_err(io_err("create", &dir))?;
        let password_file = dir.join("password");
        fs::write(&password_file, "lab-bmc-secret\n").map_err(io_err("write", &password_file))?;

        let mut cfg = config.clone();
        cfg.extra_args.extend([
            "-chardev".to_string(),
            format!("socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=1"),
            "-device".into(),
            "ipmi-bmc-extern,id=bmc0,chardev=ipmi0".into(),
            "-device".into(),
            "isa-ipmi-kcs,bmc=bmc0".into(),
        ]);
        let uuid = random_uuid()?;
        let qemu = qemu_command(self, &cfg, &name, mac, &uuid, Some(&tap), false)?;
        let qemu_line = std::iter::once(qemu.get_program())
            .chain(qemu.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let serial_log = self.out_dir().join(format!("{name}.serial.log"));
        let _ = fs::write(
            self.out_dir().join(format!("{name}.cmd.txt")),
            format!("{qemu_line}\nmac={mac} uuid={uuid} tap={tap} (powered by its BMC)\n"),
        );
        let chassis = dir.join("chassis");
        fs::write(
            &chassis,
            chassis_script(
                &dir,
                &qemu_line,
                &serial_log,
                &self.out_dir().join(format!("{name}.bmc.log")),
            ),
        )
        .map_err(io_err("write", &chassis))?;
        set_executable(&chassis)?;
        let lan = dir.join("lan.conf");
        fs::write(&lan, lan_conf(host, ipmi_port, vm_port, &chassis))
            .map_err(io_err("write", &lan))?;
        let emu = dir.join("bmc.emu");
        fs::write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )
        .map_err(io_err("write", &emu))?;
        self.kill_at_teardown(dir.join("qemu.pid"));

        let mut cmd = exec_in(&self.switch_ns(), "ipmi_sim");
        cmd.arg("-c")
            .arg(&lan)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n");
        let log = self.out_dir().join(format!("{name}.ipmi_sim.log"));
        let sim = self.spawn_proc(
            &format!("{name}-ipmi_sim"),
            cmd,
            &log,
            LineMode::Plain,
            None,
        )?;
        let bmc = Bmc {
            name,
            mac,
            host,
            dir,
            serial_log,
            sim,
        };
        bmc.wait_listening(self, ipmi_port)?;
        if power_on {
            bmc.chassis(&["set", "power", "1"])?;
        }
        Ok(bmc)
    }

    fn bmc_index(&self) -> u16 {
        (self.next_bmc_index() % 100) as u16
    }
}

impl Bmc {
    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's MAC.
    pub fn mac(&self) -> ironpxe_core::MacAddr {
        self.mac
    }

    /// The BMC's address on the management network, as ironpxe's `bmc.address`
    /// takes it: `10.79.N.1:PORT`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port())
    }

    fn port(&self) -> u16 {
        fs::read_to_string(self.dir.join("port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(IPMI_PORT)
    }

    /// The file holding the IPMI password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// Whether the guest is powered on (its QEMU runs).
    pub fn is_on(&self) -> bool {
        qemu_pid(&self.dir).is_some_and(alive)
    }

    /// How many times the guest was powered on.
    pub fn power_ons(&self) -> usize {
        fs::read_to_string(self.dir.join("power-ons"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The next boot device the BMC was told (`pxe`, `default`, ...), if any.
    pub fn boot_device(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("bootdev"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The serial console of every power-on so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }

    /// The serial log file.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Waits until `needle` has appeared `count` times on the serial console.
    pub fn wait_for_serial(&self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().matches(needle).count() >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let text = self.serial();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n    ");
                return Err(Error::Timeout {
                    what: format!(
                        "{needle:?} {count} time(s) on the serial console of {} (BMC-powered; log {}); last lines:\n    {tail}",
                        self.name,
                        self.serial_log.display()
                    ),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the chassis program as ipmi_sim would.
    fn chassis(&self, args: &[&str]) -> Result<()> {
        let out = std::process::Command::new(self.dir.join("chassis"))
            .arg("0x20")
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                program: "the lab BMC's chassis program".into(),
                hint: None,
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "chassis {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
        Ok(())
    }

    fn wait_listening(&self, lab: &Lab, port: u16) -> Result<()> {
        fs::write(self.dir.join("port"), port.to_string())
            .map_err(io_err("write", self.dir.join("port")))?;
        let hex = format!(":{port:04X} ");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listening = lab
                .run_in(&lab.switch_ns(), "cat", &["/proc/net/udp"])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&hex))
                .unwrap_or(false);
            if listening {
                return Ok(());
            }
            if !self.sim.is_running() || Instant::now() >= deadline {
                return Err(Error::Startup {
                    process: "ipmi_sim".into(),
                    why: if self.sim.is_running() {
                        format!(
                            "does not listen on UDP {port} after {} s",
                            START_TIMEOUT.as_secs()
                        )
                    } else {
                        "exited during start-up".into()
                    },
                    tail: self.sim.tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.sim.kill();
        kill_qemu(&self.dir.join("qemu.pid"));
    }
}

/// Kills the QEMU whose PID is in `pid_file` (the lab started it, through a BMC).
pub(crate) fn kill_qemu(pid_file: &Path) {
    let pid = fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if pid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn qemu_pid(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name in parentheses.
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", path))
}

/// `'...'` with embedded quotes escaped, for /bin/sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// ipmi_sim's configuration: one LAN channel, the VM interface for QEMU, users, and
/// the chassis control program.
fn lan_conf(host: Ipv4Addr, ipmi_port: u16, vm_port: u16, chassis: &Path) -> String {
    format!(
        r#"name "ironpxe-lab-bmc"
set_working_mc 0x20
  startlan 1
    addr {host} {ipmi_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis} 0x20"
  serial 15 127.0.0.1 {vm_port} codec VM
  user 2 true  "{BMC_USER}" "lab-bmc-secret" admin 10 none md2 md5 straight
"#,
        chassis = chassis.display()
    )
}

/// The chassis control program: `chassis DEVICE get PARM...` prints `PARM:VALUE`
/// lines; `chassis DEVICE set PARM VALUE...` powers QEMU on or off, resets it, or
/// remembers the boot device. Every set is logged to `bmc_log`.
fn chassis_script(dir: &Path, qemu: &str, serial: &Path, bmc_log: &Path) -> String {
    format!(
        r#"#!/bin/sh
# The lab BMC's chassis: power is whether the guest's QEMU runs.
dir='{dir}'
pidfile="$dir/qemu.pid"
running() {{ [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }}
start() {{
    {qemu} >> '{serial}' 2>&1 < /dev/null &
    echo $! > "$pidfile"
    date +%s >> "$dir/power-ons"
}}
stop() {{
    if running; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null
        for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}}
device="$1"; op="$2"; shift 2
case "$op" in
get)
    for p in "$@"; do
        case "$p" in
            power) if running; then echo power:1; else echo power:0; fi ;;
            boot) echo "boot:$(cat "$dir/bootdev" 2>/dev/null || echo default)" ;;
            *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        p="$1"; v="$2"; shift 2
        echo "$(date +%T) $device set $p $v" >> '{bmc_log}'
        case "$p" in
            power) if [ "$v" = 1 ]; then running || start; else stop; fi ;;
            reset) stop; start ;;
            boot) echo "$v" > "$dir/bootdev" ;;
            identify) [ $# -ge 1 ] && shift ;;
            *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done
    ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
exit 0
"#,
        dir = dir.display(),
        serial = serial.display(),
        bmc_log = bmc_log.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_chassis_program_powers_and_remembers_the_boot_device() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("chassis");
        fs::write(
            &script,
            chassis_script(
                dir.path(),
                "sleep 30",
                &dir.path().join("serial"),
                &dir.path().join("log"),
            ),
        )
        .unwrap();
        set_executable(&script).unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new(&script)
                .arg("0x20")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        assert_eq!(run(&["get", "power"]), "power:0\n");
        run(&["set", "boot", "pxe"]);
        assert_eq!(run(&["get", "boot"]), "boot:pxe\n");
        run(&["set", "power", "1"]);
        assert_eq!(run(&["get", "power"]), "power:1\n");
        let first = qemu_pid(dir.path()).unwrap();
        run(&["set", "reset", "1"]);
        let second = qemu_pid(dir.path()).unwrap();
        assert_ne!(first, second);
        run(&["set", "power", "0"]);
        assert_eq!(run(&["get", "power"]), "power:0\n");
        assert!(!alive(second));
        let ons = fs::read_to_string(dir.path().join("power-ons")).unwrap();
        assert_eq!(ons.lines().count(), 2);
    }
}
