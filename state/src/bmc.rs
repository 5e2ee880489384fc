//! IPMI over LAN through `ipmitool`: set a machine's next boot device to PXE and
//! power-cycle it (`ironpxe reinstall --power-cycle`).
//!
//! The command lines are built by [`IpmiTool::command_line`] (pure, tested), and run
//! with a deadline. The password never appears on a command line: ipmitool reads it
//! from the machine's `password_file` (`-f`). A BMC that does not answer is one
//! [`BmcError::NoAnswer`], which names its address.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironpxe_core::config::BmcSettings;

/// What the power step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// The machine was on: `chassis power cycle`.
    Cycle,
    /// The machine was off: `chassis power on`.
    On,
}

impl PowerAction {
    /// `cycle` or `on`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Cycle => "cycle",
            PowerAction::On => "on",
        }
    }
}

/// Why a BMC step failed.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// No session could be established: the BMC did not answer, or refused the
    /// credentials.
    #[error("BMC {address} does not answer (ipmitool {command}: {detail})")]
    NoAnswer {
        /// `host` or `host:port`.
        address: String,
        /// The ipmitool subcommand, e.g. `chassis bootdev pxe`.
        command: String,
        /// What ipmitool said.
        detail: String,
    },
    /// ipmitool ran longer than allowed and was killed.
    #[error("BMC {address} does not answer within {} s (ipmitool {command})", .timeout.as_secs())]
    Timeout {
        /// `host` or `host:port`.
        address: String,
        /// The subcommand.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// ipmitool answered with an error.
    #[error("BMC {address}: ipmitool {command} failed: {detail}")]
    Failed {
        /// `host` or `host:port`.
        address: String,
        /// The subcommand.
        command: String,
        /// Its output.
        detail: String,
    },
    /// ipmitool could not be started.
    #[error("cannot run {program}: {source} (install ipmitool, e.g. apt-get install ipmitool)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The `ipmitool` program and how long one call may take.
#[derive(Clone, Debug)]
pub struct IpmiTool {
    program: PathBuf,
    timeout: Duration,
}

impl Default for IpmiTool {
    /// `ipmitool` from `PATH`, 30 s per call.
    fn default() -> Self {
        IpmiTool {
            program: PathBuf::from("ipmitool"),
            timeout: Duration::from_secs(30),
        }
    }
}

impl IpmiTool {
    /// A given program (for packagers, and for tests).
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        IpmiTool {
            program: program.into(),
            timeout,
        }
    }

    /// The arguments for `command` against `bmc`: IPMI v2.0 over LAN (`lanplus`),
    /// the password read from the file, 2 s per attempt and 2 retries, so a BMC that
    /// is down is reported within seconds.
    pub fn command_line(bmc: &BmcSettings, command: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["-I".into(), "lanplus".into(), "-H".into()];
        a.push(bmc.host.clone().into());
        if let Some(p) = bmc.port {
            a.push("-p".into());
            a.push(p.to_string().into());
        }
        a.push("-U".into());
        a.push(bmc.user.clone().into());
        a.push("-f".into());
        a.push(bmc.password_file.clone().into());
        if let Some(c) = bmc.cipher_suite {
            a.push("-C".into());
            a.push(c.to_string().into());
        }
        for x in ["-N", "2", "-R", "2"] {
            a.push(x.into());
        }
        a.extend(command.iter().map(OsString::from));
        a
    }

    /// Next boot from the network, then power: a cycle if the machine is on, else
    /// on. Stops at the first step that fails.
    pub fn pxe_and_power_cycle(&self, bmc: &BmcSettings) -> Result<PowerAction, BmcError> {
        self.run(bmc, &["chassis", "bootdev", "pxe"])?;
        let status = self.run(bmc, &["chassis", "power", "status"])?;
        let on = parse_power_status(&status).ok_or_else(|| BmcError::Failed {
            address: bmc.address(),
            command: "chassis power status".into(),
            detail: format!("unexpected answer {:?}", status.trim()),
        })?;
        if on {
            self.run(bmc, &["chassis", "power", "cycle"])?;
            Ok(PowerAction::Cycle)
        } else {
            self.run(bmc, &["chassis", "power", "on"])?;
            Ok(PowerAction::On)
        }
    }

    /// Runs one command; its stdout on success.
    fn run(&self, bmc: &BmcSettings, command: &[&str]) -> Result<String, BmcError> {
        let shown = command.join(" ");
        let mut child = Command::new(&self.program)
            .args(Self::command_line(bmc, command))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BmcError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        // Drain both pipes on threads, so a chatty ipmitool cannot block on a full one.
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = out_pipe.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = err_pipe.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(BmcError::Timeout {
                address: bmc.address(),
                command: shown,
                timeout: self.timeout,
            });
        };
        if status.success() {
            return Ok(stdout);
        }
        let detail = first_line(&stderr)
            .or_else(|| first_line(&stdout))
            .unwrap_or_else(|| status.to_string());
        if is_no_answer(&stderr) {
            Err(BmcError::NoAnswer {
                address: bmc.address(),
                command: shown,
                detail,
            })
        } else {
            Err(BmcError::Failed {
                address: bmc.address(),
                command: shown,
                detail,
            })
        }
    }
}

/// `Chassis Power is on` / `off`.
fn parse_power_status(out: &str) -> Option<bool> {
    let l = out.to_ascii_lowercase();
    if l.contains("power is on") {
        Some(true)
    } else if l.contains("power is off") {
        Some(false)
    } else {
        None
    }
}

/// What ipmitool prints when no session comes up.
fn is_no_answer(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("unable to establish") || s.contains("no response") || s.contains("timeout")
}

fn first_line(s: &str) -> Option<String> {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("Error: ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bmc(port: Option<u16>) -> BmcSettings {
        BmcSettings {
            host: "10.1.0.30".into(),
            port,
            user: "admin".into(),
            password_file: "/run/secrets/bmc".into(),
            cipher_suite: None,
        }
    }

    #[test]
    fn command_lines_read_the_password_from_the_file() {
        let a = IpmiTool::command_line(&bmc(None), &["chassis", "bootdev", "pxe"]);
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a.join(" "),
            "-I lanplus -H 10.1.0.30 -U admin -f /run/secrets/bmc -N 2 -R 2 chassis bootdev pxe"
        );
        let b = BmcSettings {
            cipher_suite: Some(3),
            ..bmc(Some(6230))
        };
        let a = IpmiTool::command_line(&b, &["chassis", "power", "cycle"]);
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a.join(" "),
            "-I lanplus -H 10.1.0.30 -p 6230 -U admin -f /run/secrets/bmc -C 3 -N 2 -R 2 chassis power cycle"
        );
    }

    #[test]
    fn power_status_and_errors_are_read() {
        assert_eq!(parse_power_status("Chassis Power is on\n"), Some(true));
        assert_eq!(parse_power_status("Chassis Power is off\n"), Some(false));
        assert_eq!(parse_power_status("what\n"), None);
        assert!(is_no_answer(
            "Error: Unable to establish IPMI v2 / RMCP+ session\n"
        ));
        assert!(!is_no_answer("Error: Invalid user name\n"));
        assert_eq!(
            first_line("\nError: Unable to establish IPMI v2 / RMCP+ session\n").as_deref(),
            Some("Unable to establish IPMI v2 / RMCP+ session")
        );
    }

    #[test]
    fn a_missing_ipmitool_is_one_line_naming_the_package() {
        let t = IpmiTool::new("/nonexistent/ipmitool", Duration::from_secs(1));
        let e = t.pxe_and_power_cycle(&bmc(None)).unwrap_err();
        assert!(matches!(e, BmcError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("apt-get install ipmitool"), "{e}");
    }
}
