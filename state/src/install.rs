//! Install state: has a machine's installer reported success?
//!
//! A machine with `once = true` netboots its spec while its state is
//! [`InstallState::Install`] (also when nothing is recorded), and boots from its
//! local disk once it is [`InstallState::Installed`]. The installer reports success
//! with `POST /api/v1/machines/<mac>/installed`; `ironpxe reinstall` (or `POST
//! .../reinstall`) sets it back to `Install`.
//!
//! [`Installs`] keeps every record in memory for the hot paths and writes each
//! change to the database before it is visible or acknowledged. [`OnceBooter`] wraps
//! the configured booter and answers [`BootDecision::Local`] for installed `once`
//! machines.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ironpxe_core::{BootDecision, Booter, ClientArch, FileId, FileRef, MacAddr};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Db, StateError};

/// MAC (6 bytes) → JSON of an [`InstallRecord`].
pub(crate) const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("install_v1");

/// Where a machine is in its install cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    /// Not installed (or a reinstall was asked for): it netboots its spec.
    #[default]
    Install,
    /// Its installer reported success: a `once` machine boots from its disk.
    Installed,
}

impl InstallState {
    /// `install` or `installed`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Install => "install",
            InstallState::Installed => "installed",
        }
    }
}

impl fmt::Display for InstallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is stored for one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// The state.
    pub state: InstallState,
    /// When it last changed (Unix ms).
    pub changed_ms: u64,
    /// When the installer last reported success (Unix ms).
    pub installed_ms: Option<u64>,
    /// Who made the last change: the installer's address, or `api` / the command.
    pub by: Option<String>,
    /// How many times the installer reported success.
    pub installs: u64,
}

/// The install states of every machine that has one, in memory and in the database.
/// Cheap to clone.
#[derive(Clone)]
pub struct Installs {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    records: RwLock<HashMap<MacAddr, InstallRecord>>,
    /// Held across commit and the in-memory update, so memory follows the commit
    /// order.
    write: Mutex<()>,
}

impl Installs {
    pub(crate) fn load(db: Arc<Db>) -> Result<Installs, StateError> {
        let mut records = HashMap::new();
        {
            let txn = db
                .db
                .begin_read()
                .map_err(|e| db.err("begin a read")(e.into()))?;
            let table = txn
                .open_table(TABLE)
                .map_err(|e| db.err("open the install table")(e.into()))?;
            let iter = table
                .iter()
                .map_err(|e| db.err("read the install table")(e.into()))?;
            for item in iter {
                let (k, v) = item.map_err(|e| db.err("read the install table")(e.into()))?;
                let mac = mac_from_key(k.value()).ok_or_else(|| StateError::BadRecord {
                    path: db.path.clone(),
                    table: "install",
                    key: format!("{:02x?}", k.value()),
                    reason: "the key is not a MAC address".into(),
                })?;
                let rec: InstallRecord =
                    serde_json::from_slice(v.value()).map_err(|e| StateError::BadRecord {
                        path: db.path.clone(),
                        table: "install",
                        key: mac.to_string(),
                        reason: e.to_string(),
                    })?;
                records.insert(mac, rec);
            }
        }
        Ok(Installs {
            inner: Arc::new(Inner {
                db,
                records: RwLock::new(records),
                write: Mutex::new(()),
            }),
        })
    }

    /// The record of `mac`, if it has one.
    pub fn get(&self, mac: &MacAddr) -> Option<InstallRecord> {
        self.read().get(mac).cloned()
    }

    /// Whether `mac`'s installer reported success and no reinstall was asked since.
    pub fn is_installed(&self, mac: &MacAddr) -> bool {
        self.read()
            .get(mac)
            .is_some_and(|r| r.state == InstallState::Installed)
    }

    /// Every record, by MAC.
    pub fn all(&self) -> Vec<(MacAddr, InstallRecord)> {
        let mut v: Vec<_> = self.read().iter().map(|(m, r)| (*m, r.clone())).collect();
        v.sort_by_key(|(m, _)| *m);
        v
    }

    /// Records that `mac`'s installer reported success. Returns once the change is
    /// on disk.
    pub fn mark_installed(
        &self,
        mac: MacAddr,
        now_ms: u64,
        by: Option<String>,
    ) -> Result<InstallRecord, StateError> {
        self.change(mac, |old| InstallRecord {
            state: InstallState::Installed,
            changed_ms: now_ms,
            installed_ms: Some(now_ms),
            by,
            installs: old.map_or(0, |o| o.installs) + 1,
        })
    }

    /// Sets `mac` back to [`InstallState::Install`], so it netboots its spec again.
    /// Returns once the change is on disk.
    pub fn mark_install(
        &self,
        mac: MacAddr,
        now_ms: u64,
        by: Option<String>,
    ) -> Result<InstallRecord, StateError> {
        self.change(mac, |old| InstallRecord {
            state: InstallState::Install,
            changed_ms: now_ms,
            installed_ms: old.and_then(|o| o.installed_ms),
            by,
            installs: old.map_or(0, |o| o.installs),
        })
    }

    fn change(
        &self,
        mac: MacAddr,
        new: impl FnOnce(Option<&InstallRecord>) -> InstallRecord,
    ) -> Result<InstallRecord, StateError> {
        let db = &self.inner.db;
        let _order = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let rec = new(self.read().get(&mac));
        let bytes = serde_json::to_vec(&rec).map_err(|e| StateError::BadRecord {
            path: db.path.clone(),
            table: "install",
            key: mac.to_string(),
            reason: e.to_string(),
        })?;
        let txn = db
            .db
            .begin_write()
            .map_err(|e| db.err("begin a write")(e.into()))?;
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|e| db.err("open the install table")(e.into()))?;
            table
                .insert(&mac.octets()[..], &bytes[..])
                .map_err(|e| db.err("write an install record")(e.into()))?;
        }
        // Durability::Immediate (the default): on disk when this returns.
        txn.commit()
            .map_err(|e| db.err("commit an install record")(e.into()))?;
        self.inner
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac, rec.clone());
        Ok(rec)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<MacAddr, InstallRecord>> {
        self.inner.records.read().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn mac_from_key(k: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(k).ok().map(MacAddr)
}

/// Which machines install once: `once = true` on the machine (or its profile), and
/// for machines not listed, on the default profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OncePolicy {
    listed: HashMap<MacAddr, bool>,
    default: bool,
}

impl OncePolicy {
    /// `listed`: each listed machine and whether it installs once; `default`: whether
    /// machines that are not listed do.
    pub fn new(listed: impl IntoIterator<Item = (MacAddr, bool)>, default: bool) -> Self {
        OncePolicy {
            listed: listed.into_iter().collect(),
            default,
        }
    }

    /// Whether `mac` installs once.
    pub fn applies(&self, mac: &MacAddr) -> bool {
        self.listed.get(mac).copied().unwrap_or(self.default)
    }

    /// Whether any machine installs once.
    pub fn is_empty(&self) -> bool {
        !self.default && !self.listed.values().any(|&o| o)
    }
}

/// A booter whose `once` machines boot from their disk once installed.
///
/// A `Netboot` answer of the inner booter becomes `Local` for a machine that
/// installs once and whose state is [`InstallState::Installed`]; every other answer
/// passes through. The state is read from memory: no I/O per packet.
pub struct OnceBooter {
    inner: Arc<dyn Booter>,
    installs: Installs,
    policy: OncePolicy,
}

impl OnceBooter {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Booter>, installs: Installs, policy: OncePolicy) -> Self {
        OnceBooter {
            inner,
            installs,
            policy,
        }
    }
}

impl Booter for OnceBooter {
    fn decide(&self, mac: MacAddr, arch: ClientArch, wait: Duration) -> BootDecision {
        match self.inner.decide(mac, arch, wait) {
            BootDecision::Netboot(_)
                if self.policy.applies(&mac) && self.installs.is_installed(&mac) =>
            {
                BootDecision::Local
            }
            other => other,
        }
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        self.inner.file(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateDb;
    use ironpxe_core::{BootSpec, StaticBooter};

    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn spec() -> BootSpec {
        BootSpec {
            kernel: FileRef::parse("/k").unwrap(),
            initrds: vec![],
            cmdline: String::new(),
            message: None,
            loader: Default::default(),
        }
    }

    #[test]
    fn states_survive_reopening_and_count_installs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path()).unwrap();
            let i = db.installs().unwrap();
            assert_eq!(i.get(&A), None);
            assert!(!i.is_installed(&A));
            i.mark_installed(A, 10, Some("10.0.0.5".into())).unwrap();
            i.mark_install(A, 20, Some("api".into())).unwrap();
            let r = i.mark_installed(A, 30, None).unwrap();
            assert_eq!(r.installs, 2);
            i.mark_install(B, 40, None).unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        let i = db.installs().unwrap();
        let a = i.get(&A).unwrap();
        assert_eq!(
            (a.state, a.changed_ms, a.installed_ms, a.installs),
            (InstallState::Installed, 30, Some(30), 2)
        );
        let b = i.get(&B).unwrap();
        assert_eq!((b.state, b.installed_ms), (InstallState::Install, None));
        assert_eq!(i.all().len(), 2);
    }

    #[test]
    fn once_machines_boot_locally_only_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let installs = db.installs().unwrap();
        let inner: Arc<dyn Booter> = Arc::new(StaticBooter::new(spec()));
        // A installs once; B does not (listed false); others follow the default (off).
        let b = OnceBooter::new(
            inner,
            installs.clone(),
            OncePolicy::new([(A, true), (B, false)], false),
        );
        let netboots = |m| {
            matches!(
                b.decide(m, ClientArch::Bios, Duration::ZERO),
                BootDecision::Netboot(_)
            )
        };
        assert!(netboots(A));
        installs.mark_installed(A, 1, None).unwrap();
        installs.mark_installed(B, 1, None).unwrap();
        assert_eq!(
            b.decide(A, ClientArch::EfiX64, Duration::ZERO),
            BootDecision::Local
        );
        assert!(netboots(B), "B is not once: installed or not, it netboots");
        installs.mark_install(A, 2, None).unwrap();
        assert!(netboots(A), "a reinstall netboots again");
        assert_eq!(b.file(&spec().kernel.id()), Some(spec().kernel));
    }

    #[test]
    fn the_default_profile_decides_for_machines_not_listed() {
        let p = OncePolicy::new([(A, false)], true);
        assert!(!p.applies(&A));
        assert!(p.applies(&B));
        assert!(!p.is_empty());
        assert!(OncePolicy::new([(A, false)], false).is_empty());
    }

    #[test]
    fn a_booter_decline_is_never_turned_into_local() {
        struct No;
        impl Booter for No {
            fn decide(&self, _: MacAddr, _: ClientArch, _: Duration) -> BootDecision {
                BootDecision::Ignore("no".into())
            }
            fn file(&self, _: &FileId) -> Option<FileRef> {
                None
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let installs = StateDb::open(dir.path()).unwrap().installs().unwrap();
        installs.mark_installed(A, 1, None).unwrap();
        let b = OnceBooter::new(Arc::new(No), installs, OncePolicy::new([(A, true)], true));
        assert_eq!(
            b.decide(A, ClientArch::Bios, Duration::ZERO),
            BootDecision::Ignore("no".into())
        );
    }
}
