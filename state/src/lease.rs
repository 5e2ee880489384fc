//! DHCP leases of the built-in DHCP server, one per MAC.
//!
//! The server acknowledges an address only after [`LeaseDb::put`] returned, so an
//! address a client holds is never handed to another machine after a crash.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ironpxe_core::MacAddr;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::install::mac_from_key;
use crate::{Db, StateError};

/// MAC (6 bytes) → JSON of a [`Lease`].
pub(crate) const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leases_v1");

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The client.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// When the lease ends (Unix ms).
    pub expires_ms: u64,
    /// The host name handed out with it, if any.
    pub hostname: Option<String>,
    /// A reservation from the configuration (not a pool address).
    pub reserved: bool,
}

/// The lease table. Cheap to clone.
#[derive(Clone)]
pub struct LeaseDb {
    db: Arc<Db>,
}

impl LeaseDb {
    pub(crate) fn new(db: Arc<Db>) -> LeaseDb {
        LeaseDb { db }
    }

    /// Every stored lease, expired ones included, in MAC order.
    pub fn all(&self) -> Result<Vec<Lease>, StateError> {
        let db = &self.db;
        let txn = db
            .db
            .begin_read()
            .map_err(|e| db.err("begin a read")(e.into()))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|e| db.err("open the lease table")(e.into()))?;
        let mut out = Vec::new();
        for item in table
            .iter()
            .map_err(|e| db.err("read the lease table")(e.into()))?
        {
            let (k, v) = item.map_err(|e| db.err("read the lease table")(e.into()))?;
            let bad = |reason: String| StateError::BadRecord {
                path: db.path.clone(),
                table: "leases",
                key: format!("{:02x?}", k.value()),
                reason,
            };
            let mac = mac_from_key(k.value()).ok_or_else(|| bad("not a MAC".into()))?;
            let lease: Lease = serde_json::from_slice(v.value()).map_err(|e| bad(e.to_string()))?;
            if lease.mac != mac {
                return Err(bad(format!("holds the lease of {}", lease.mac)));
            }
            out.push(lease);
        }
        Ok(out)
    }

    /// Stores `lease` (replacing the MAC's previous one); on disk when this returns.
    pub fn put(&self, lease: &Lease) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(lease).map_err(|e| StateError::BadRecord {
            path: self.db.path.clone(),
            table: "leases",
            key: lease.mac.to_string(),
            reason: e.to_string(),
        })?;
        self.write(|t| t.insert(&lease.mac.octets()[..], &bytes[..]).map(|_| ()))
    }

    /// Removes `mac`'s lease (a RELEASE); on disk when this returns.
    pub fn remove(&self, mac: MacAddr) -> Result<(), StateError> {
        self.write(|t| t.remove(&mac.octets()[..]).map(|_| ()))
    }

    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StateError> {
        let db = &self.db;
        let txn = db
            .db
            .begin_write()
            .map_err(|e| db.err("begin a write")(e.into()))?;
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|e| db.err("open the lease table")(e.into()))?;
            f(&mut table).map_err(|e| db.err("write a lease")(e.into()))?;
        }
        txn.commit().map_err(|e| db.err("commit a lease")(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateDb;

    #[test]
    fn leases_survive_reopening_and_removal_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(10, 0, 0, 10),
            expires_ms: 1000,
            hostname: Some("node-01".into()),
            reserved: true,
        };
        let b = Lease {
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
            ip: Ipv4Addr::new(10, 0, 0, 100),
            expires_ms: 2000,
            hostname: None,
            reserved: false,
        };
        {
            let db = StateDb::open(dir.path()).unwrap();
            let l = db.leases();
            l.put(&a).unwrap();
            l.put(&b).unwrap();
            l.remove(b.mac).unwrap();
            l.put(&b).unwrap();
            l.remove(a.mac).unwrap();
            l.put(&a).unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        assert_eq!(db.leases().all().unwrap(), vec![a.clone(), b]);
        db.leases().remove(a.mac).unwrap();
        assert_eq!(db.leases().all().unwrap().len(), 1);
    }
}
