//! Machine install state and DHCP leases, kept in one crash-safe embedded database.
//!
//! ironpxe remembers two things across restarts that must never be lost once a
//! client was told about them:
//!
//! - **Install state** ([`install`]): a machine with `once = true` netboots its spec
//!   until its installer reports success (`POST /api/v1/machines/<mac>/installed`);
//!   from then on it gets the `local` answer, until someone asks for a reinstall.
//!   [`Installs`] holds the states, [`OnceBooter`] turns them into boot decisions.
//! - **Leases** ([`lease`]) of the built-in DHCP server (`[dhcp] mode = "server"`):
//!   an address is acknowledged to a client only after its lease is stored.
//!
//! Both live in `<state-dir>/state.redb`, a [redb](https://www.redb.org) database:
//! copy-on-write B-trees with checksummed commits, each commit fsynced before it
//! returns ([`redb::Durability::Immediate`], redb's default). A `kill -9` or a
//! power loss in the middle of a write leaves the previous commit intact, and every
//! change whose commit returned is there after the restart. Reads on the hot paths
//! (every DHCP packet, every script) come from an in-memory copy that is updated
//! only after the commit returned.
//!
//! [`bmc`] runs `ipmitool` against a machine's BMC (IPMI over LAN): next boot device
//! PXE, then a power cycle, for `ironpxe reinstall --power-cycle`. [`Fleet`] ties the
//! three together for the HTTP API and the commands: which machines exist (from the
//! configuration, replaced on reload), their install state, and their BMCs.
//!
//! The database file is opened by one process at a time; `ironpxe machines` and
//! `ironpxe reinstall` talk to the running server through its API instead.

pub mod bmc;
mod fleet;
pub mod install;
pub mod lease;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bmc::{BmcError, IpmiTool, PowerAction};
pub use fleet::{Directory, Fleet, FleetMachine, ReinstallError, ReinstallOutcome};
pub use install::{InstallRecord, InstallState, Installs, OnceBooter, OncePolicy};
pub use lease::{Lease, LeaseDb};

/// The database file in the state directory.
pub const STATE_FILE: &str = "state.redb";

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory cannot be created.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another ironpxe holds the database.
    #[error("{path} is in use by another ironpxe process; one server per state directory")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database cannot be opened.
    #[error("{path}: cannot open the state database: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        reason: String,
    },
    /// A read or write failed.
    #[error("state database {path}: {what}: {reason}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What redb said.
        reason: String,
    },
    /// A stored record is not what this version writes.
    #[error("state database {path}: {table} record for {key} is not valid: {reason}")]
    BadRecord {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The key, shown.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The state database of one ironpxe server. Cheap to clone.
#[derive(Clone)]
pub struct StateDb {
    inner: Arc<Db>,
}

pub(crate) struct Db {
    pub(crate) db: redb::Database,
    pub(crate) path: PathBuf,
}

impl Db {
    pub(crate) fn err(&self, what: &'static str) -> impl Fn(redb::Error) -> StateError + '_ {
        move |e| StateError::Io {
            path: self.path.clone(),
            what,
            reason: e.to_string(),
        }
    }
}

impl StateDb {
    /// Opens (creating them if needed) `dir` and `dir/state.redb`.
    pub fn open(dir: &Path) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STATE_FILE);
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::InUse { path: path.clone() },
            other => StateError::Open {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let inner = Db { db, path };
        // Create the tables now, so that readers never meet a missing one.
        let txn = inner
            .db
            .begin_write()
            .map_err(|e| inner.err("begin a write")(e.into()))?;
        {
            txn.open_table(install::TABLE)
                .map_err(|e| inner.err("create the install table")(e.into()))?;
            txn.open_table(lease::TABLE)
                .map_err(|e| inner.err("create the lease table")(e.into()))?;
        }
        txn.commit()
            .map_err(|e| inner.err("commit the tables")(e.into()))?;
        Ok(StateDb {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The install states, loaded into memory.
    pub fn installs(&self) -> Result<Installs, StateError> {
        Installs::load(self.inner.clone())
    }

    /// The DHCP lease table.
    pub fn leases(&self) -> LeaseDb {
        LeaseDb::new(self.inner.clone())
    }
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let _a = StateDb::open(dir.path()).unwrap();
        let e = StateDb::open(dir.path())
            .err()
            .expect("a second open fails");
        assert!(matches!(e, StateError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("in use by another ironpxe"), "{e}");
    }

    #[test]
    fn an_unusable_directory_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = StateDb::open(&file.join("sub")).err().unwrap();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }
}
