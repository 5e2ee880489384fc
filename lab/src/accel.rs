//! KVM or TCG: which accelerator QEMU guests run with.
//!
//! KVM is used when it works, which an open `/dev/kvm` does not prove: nested
//! virtualization can accept the device and then hang every guest. [`detect`]
//! therefore starts SeaBIOS under KVM and waits up to three seconds for it to reach
//! its "no bootable device" screen (a fraction of a second where KVM works). The
//! answer is kept in `/run/ironpxe-lab.accel` (when writable) until the next reboot.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::preflight::{find_program, QEMU_X86_64};

/// How long a KVM guest may take to reach SeaBIOS's boot failure screen.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's own translator: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why, e.g. `/dev/kvm: Permission denied`.
    pub reason: String,
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (no KVM)",
        };
        write!(f, "{name}: {}", self.reason)
    }
}

/// Next to the lab registry (`/run/ironpxe-lab/`), whose entries are all labs.
const CACHE_FILE: &str = "/run/ironpxe-lab.accel";

/// Chooses KVM if a KVM guest starts, else TCG. `tmp` is a scratch directory.
pub fn detect(tmp: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm: {e}"));
    }
    if let Some(cached) = fs::read_to_string(CACHE_FILE)
        .ok()
        .and_then(|s| parse_cache(&s))
    {
        return cached;
    }
    let choice = match probe(tmp) {
        Ok(()) => AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm works".into(),
        },
        Err(why) => tcg(why),
    };
    let _ = fs::write(CACHE_FILE, format_cache(&choice));
    choice
}

fn format_cache(c: &AccelChoice) -> String {
    format!("{} {}\n", c.accel.qemu_name(), c.reason)
}

fn parse_cache(s: &str) -> Option<AccelChoice> {
    let line = s.lines().next()?;
    let (name, reason) = line.split_once(' ')?;
    let accel = match name {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(AccelChoice {
        accel,
        reason: reason.to_string(),
    })
}

/// Boots SeaBIOS under KVM with nothing to boot; `Ok` if it gets that far in time.
fn probe(tmp: &Path) -> Result<(), String> {
    let qemu = find_program(QEMU_X86_64).ok_or_else(|| format!("{QEMU_X86_64} not found"))?;
    let sercon = tmp.join("accel-probe-sercon");
    fs::write(&sercon, 0x3f8u16.to_le_bytes()).map_err(|e| e.to_string())?;
    let mut child = Command::new(qemu)
        .args(["-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-fw_cfg"])
        .arg(format!("name=etc/sercon-port,file={}", sercon.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {QEMU_X86_64}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line);
                if text.contains("Boot failed") || text.contains("No bootable device") {
                    let _ = tx.send(());
                    return;
                }
            }
        });
    }
    let got = rx.recv_timeout(PROBE_TIMEOUT).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    if got {
        Ok(())
    } else {
        Err(format!(
            "/dev/kvm opens, but a KVM guest did not start within {} s",
            PROBE_TIMEOUT.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip() {
        let c = AccelChoice {
            accel: Accel::Tcg,
            reason: "/dev/kvm opens, but a KVM guest did not start within 3 s".into(),
        };
        assert_eq!(parse_cache(&format_cache(&c)), Some(c));
        assert_eq!(parse_cache("xen because"), None);
        assert_eq!(parse_cache(""), None);
    }

    #[test]
    fn the_line_names_the_accelerator() {
        let c = AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm works".into(),
        };
        assert_eq!(c.to_string(), "KVM: /dev/kvm works");
    }
}
