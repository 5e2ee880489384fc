//! The machines an operator manages: who they are (from the configuration), where
//! they are in their install cycle, and how to reach their BMCs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ironpxe_core::config::{BmcSettings, ConfigBooter, MachineBoot};
use ironpxe_core::MacAddr;

use crate::bmc::{BmcError, IpmiTool, PowerAction};
use crate::install::{InstallRecord, Installs, OncePolicy};
use crate::StateError;

/// One configured machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetMachine {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its `name`.
    pub name: Option<String>,
    /// `once = true`.
    pub once: bool,
    /// `netboot`, `local` or `ignore`.
    pub boot: &'static str,
    /// Its BMC.
    pub bmc: Option<BmcSettings>,
}

/// The configured machines, by MAC, and which install once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    machines: BTreeMap<MacAddr, FleetMachine>,
    default_once: bool,
}

impl Directory {
    /// The machines of a validated configuration.
    pub fn from_config(booter: &ConfigBooter) -> Directory {
        let machines = booter
            .machines()
            .map(|(mac, m)| {
                (
                    *mac,
                    FleetMachine {
                        mac: *mac,
                        name: m.name.clone(),
                        once: m.once,
                        boot: match m.boot {
                            MachineBoot::Netboot(_) => "netboot",
                            MachineBoot::Local => "local",
                            MachineBoot::Ignore => "ignore",
                        },
                        bmc: m.bmc.clone(),
                    },
                )
            })
            .collect();
        Directory {
            machines,
            default_once: booter.default_once(),
        }
    }

    /// Which machines install once.
    pub fn once_policy(&self) -> OncePolicy {
        OncePolicy::new(
            self.machines.iter().map(|(mac, m)| (*mac, m.once)),
            self.default_once,
        )
    }

    /// A machine by MAC.
    pub fn get(&self, mac: &MacAddr) -> Option<&FleetMachine> {
        self.machines.get(mac)
    }

    /// Every machine, in MAC order.
    pub fn machines(&self) -> impl Iterator<Item = &FleetMachine> {
        self.machines.values()
    }

    /// Whether machines that are not listed install once.
    pub fn default_once(&self) -> bool {
        self.default_once
    }
}

/// What a reinstall did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReinstallOutcome {
    /// The new record (state `install`).
    pub record: InstallRecord,
    /// The power step, when one was asked for.
    pub power: Option<PowerAction>,
}

/// Why a reinstall or an installed report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReinstallError {
    /// ironpxe runs without a state directory.
    #[error("install state is not kept: ironpxe runs without --state-dir")]
    NoStateDir,
    /// `--power-cycle` for a machine without `bmc = { ... }`.
    #[error("{machine} has no bmc = {{ address, user, password_file }} in the configuration; it was set to install, but not power-cycled")]
    NoBmc {
        /// Its name or MAC.
        machine: String,
    },
    /// The BMC step failed; the machine is set to install all the same.
    #[error("{machine} was set to install, but the power cycle failed: {source}")]
    Bmc {
        /// Its name or MAC.
        machine: String,
        /// What went wrong.
        source: BmcError,
    },
    /// The database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The machines, their install states and their BMCs. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<FleetInner>,
}

struct FleetInner {
    installs: Option<Installs>,
    directory: RwLock<Arc<Directory>>,
    ipmitool: IpmiTool,
}

impl Fleet {
    /// `installs` is `None` without a state directory: then nothing is recorded.
    pub fn new(installs: Option<Installs>, directory: Directory, ipmitool: IpmiTool) -> Fleet {
        Fleet {
            inner: Arc::new(FleetInner {
                installs,
                directory: RwLock::new(Arc::new(directory)),
                ipmitool,
            }),
        }
    }

    /// The install states, if kept.
    pub fn installs(&self) -> Option<&Installs> {
        self.inner.installs.as_ref()
    }

    /// The configured machines now.
    pub fn directory(&self) -> Arc<Directory> {
        self.inner
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the configured machines (a configuration reload).
    pub fn set_directory(&self, d: Directory) {
        *self
            .inner
            .directory
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
    }

    /// A machine's name, or its MAC when it has none.
    pub fn label(&self, mac: &MacAddr) -> String {
        self.directory()
            .get(mac)
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| mac.to_string())
    }

    /// The installer of `mac` reports success. On disk when this returns.
    pub fn installed(
        &self,
        mac: MacAddr,
        now_ms: u64,
        by: Option<String>,
    ) -> Result<InstallRecord, ReinstallError> {
        let installs = self.installs().ok_or(ReinstallError::NoStateDir)?;
        Ok(installs.mark_installed(mac, now_ms, by)?)
    }

    /// Sets `mac` back to install (on disk before anything else happens); with
    /// `power_cycle`, then sets its next boot device to PXE and power-cycles it
    /// through its BMC.
    pub fn reinstall(
        &self,
        mac: MacAddr,
        power_cycle: bool,
        now_ms: u64,
        by: Option<String>,
    ) -> Result<ReinstallOutcome, ReinstallError> {
        let installs = self.installs().ok_or(ReinstallError::NoStateDir)?;
        let record = installs.mark_install(mac, now_ms, by)?;
        if !power_cycle {
            return Ok(ReinstallOutcome {
                record,
                power: None,
            });
        }
        let machine = self.label(&mac);
        let bmc = self
            .directory()
            .get(&mac)
            .and_then(|m| m.bmc.clone())
            .ok_or_else(|| ReinstallError::NoBmc {
                machine: machine.clone(),
            })?;
        let power = self
            .inner
            .ipmitool
            .pxe_and_power_cycle(&bmc)
            .map_err(|source| ReinstallError::Bmc { machine, source })?;
        Ok(ReinstallOutcome {
            record,
            power: Some(power),
        })
    }

    /// Every configured machine and every machine with a record, in MAC order.
    pub fn list(&self) -> Vec<(MacAddr, Option<FleetMachine>, Option<InstallRecord>)> {
        let dir = self.directory();
        let mut out: BTreeMap<MacAddr, (Option<FleetMachine>, Option<InstallRecord>)> = dir
            .machines()
            .map(|m| (m.mac, (Some(m.clone()), None)))
            .collect();
        for (mac, rec) in self.installs().map(|i| i.all()).unwrap_or_default() {
            out.entry(mac).or_default().1 = Some(rec);
        }
        out.into_iter().map(|(m, (f, r))| (m, f, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstallState, StateDb};
    use ironpxe_core::config::{Config, NoChecks};
    use std::path::Path;
    use std::time::Duration;

    const CONFIG: &str = r#"
[profiles.installer]
kernel = "/k"
once = true

[[machines]]
mac = "52:54:00:00:00:01"
name = "node-01"
profile = "installer"
bmc = { address = "127.0.0.1:6230", user = "admin", password_file = "/pw" }

[[machines]]
mac = "52:54:00:00:00:02"
name = "node-02"
profile = "installer"
once = false
"#;

    fn fleet(dir: &Path, ipmitool: &str) -> Fleet {
        let cfg = Config::parse(CONFIG, Path::new("/etc/x.toml"), &NoChecks).unwrap();
        let installs = StateDb::open(dir).unwrap().installs().unwrap();
        Fleet::new(
            Some(installs),
            Directory::from_config(&cfg.booter),
            IpmiTool::new(ipmitool, Duration::from_secs(5)),
        )
    }

    const N1: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const N2: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    #[test]
    fn the_directory_knows_once_and_bmcs_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), "ipmitool");
        let d = f.directory();
        assert!(d.get(&N1).unwrap().once);
        assert!(
            !d.get(&N2).unwrap().once,
            "the machine's own once = false wins"
        );
        assert_eq!(d.get(&N1).unwrap().bmc.as_ref().unwrap().port, Some(6230));
        let p = d.once_policy();
        assert!(p.applies(&N1) && !p.applies(&N2));
        assert_eq!(f.label(&N1), "node-01");
    }

    #[test]
    fn reinstall_without_a_bmc_sets_the_state_and_says_why_it_did_not_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), "ipmitool");
        f.installed(N2, 1, None).unwrap();
        let e = f.reinstall(N2, true, 2, None).unwrap_err();
        assert!(e.to_string().starts_with("node-02 has no bmc"), "{e}");
        assert_eq!(
            f.installs().unwrap().get(&N2).unwrap().state,
            InstallState::Install
        );
        let ok = f.reinstall(N2, false, 3, None).unwrap();
        assert_eq!(ok.power, None);
        let listed: Vec<MacAddr> = f.list().into_iter().map(|(m, _, _)| m).collect();
        assert_eq!(listed, [N1, N2]);
    }

    #[test]
    fn without_a_state_dir_nothing_is_recorded() {
        let f = Fleet::new(None, Directory::default(), IpmiTool::default());
        assert!(matches!(
            f.installed(N1, 1, None),
            Err(ReinstallError::NoStateDir)
        ));
    }
}
