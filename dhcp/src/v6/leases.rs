//! The stateful mode's leases: which client (DUID and IAID) holds which address of
//! the configured range, until when.
//!
//! [`Leases`] is pure data: allocation, renewal, release and expiry take the time
//! as a parameter (seconds since the Unix epoch), so every rule is a unit test.
//! [`LeaseFile`] keeps it across restarts: the whole table is written to a
//! temporary file, flushed to disk (`fsync`), renamed over the old one and the
//! directory flushed, so a crash leaves either the old or the new table, never a
//! torn one. Tables are small (one line per machine that booted within a lease
//! time) and change once per boot, so a full rewrite per change is cheap.
//!
//! File format, one lease per line after a `ironpxe-dhcp6-leases 1` header:
//! `ADDRESS DUID-HEX IAID EXPIRES-UNIX MAC`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use ironpxe_core::net6::Ipv6Range;
use ironpxe_core::MacAddr;

/// A client's identity association: its DUID and the IAID of its IA_NA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// Client DUID.
    pub duid: Vec<u8>,
    /// IAID.
    pub iaid: u32,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub addr: Ipv6Addr,
    /// Until when (seconds since the Unix epoch).
    pub expires: u64,
    /// The machine, for the status page and logs.
    pub mac: MacAddr,
}

/// The leases of one range.
#[derive(Clone, Debug)]
pub struct Leases {
    range: Ipv6Range,
    by_key: HashMap<LeaseKey, Lease>,
    by_addr: HashMap<Ipv6Addr, LeaseKey>,
}

/// How far allocation searches for a free address before giving up: a range
/// this full needs a larger range, not a longer search per packet.
const PROBES: u64 = 4096;

impl Leases {
    /// No leases yet.
    pub fn new(range: Ipv6Range) -> Self {
        Leases {
            range,
            by_key: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }

    /// The range.
    pub fn range(&self) -> Ipv6Range {
        self.range
    }

    /// Number of leases held (expired ones included until they are reused).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no lease is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The lease of `key`, if it holds one that has not expired.
    pub fn get(&self, key: &LeaseKey, now: u64) -> Option<&Lease> {
        self.by_key.get(key).filter(|l| l.expires > now)
    }

    /// Every lease, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&LeaseKey, &Lease)> {
        self.by_key.iter()
    }

    /// Gives `key` an address until `now + valid`: its current one (also after it
    /// expired, if nobody took it), else a free one chosen from a hash of the DUID,
    /// so a machine tends to get the same address again. `None` when the range has
    /// no free address within reach.
    pub fn bind(&mut self, key: &LeaseKey, mac: MacAddr, now: u64, valid: u64) -> Option<Ipv6Addr> {
        let expires = now.saturating_add(valid);
        if let Some(l) = self.by_key.get_mut(key) {
            if self.range.contains(l.addr) {
                l.expires = expires;
                l.mac = mac;
                return Some(l.addr);
            }
            let old = l.addr;
            self.by_key.remove(key);
            self.by_addr.remove(&old);
        }
        let start = fnv1a(&key.duid) ^ u64::from(key.iaid);
        let n = self.range.len().min(PROBES);
        for i in 0..n {
            let addr = self.range.nth(start.wrapping_add(i));
            let free = match self.by_addr.get(&addr) {
                None => true,
                Some(other) => !matches!(self.by_key.get(other), Some(l) if l.expires > now),
            };
            if free {
                if let Some(other) = self.by_addr.remove(&addr) {
                    self.by_key.remove(&other);
                }
                self.by_addr.insert(addr, key.clone());
                self.by_key
                    .insert(key.clone(), Lease { addr, expires, mac });
                return Some(addr);
            }
        }
        None
    }

    /// Extends `key`'s lease of `addr`; `false` if it holds no such lease.
    pub fn renew(&mut self, key: &LeaseKey, addr: Ipv6Addr, now: u64, valid: u64) -> bool {
        match self.by_key.get_mut(key) {
            Some(l) if l.addr == addr && self.range.contains(addr) => {
                l.expires = now.saturating_add(valid);
                true
            }
            _ => false,
        }
    }

    /// Ends `key`'s lease of `addr`; `false` if it held none.
    pub fn release(&mut self, key: &LeaseKey, addr: Ipv6Addr) -> bool {
        match self.by_key.get(key) {
            Some(l) if l.addr == addr => {
                self.by_key.remove(key);
                self.by_addr.remove(&addr);
                true
            }
            _ => false,
        }
    }

    /// Drops leases that expired before `now` (the file need not keep them).
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.by_key.len();
        self.by_key.retain(|_, l| l.expires > now);
        let keys = &self.by_key;
        self.by_addr.retain(|_, k| keys.contains_key(k));
        before - self.by_key.len()
    }

    fn insert(&mut self, key: LeaseKey, lease: Lease) {
        if let Some(old) = self.by_addr.insert(lease.addr, key.clone()) {
            self.by_key.remove(&old);
        }
        if let Some(prev) = self.by_key.insert(key, lease.clone()) {
            if prev.addr != lease.addr {
                self.by_addr.remove(&prev.addr);
            }
        }
    }
}

/// 64-bit FNV-1a: a stable spread of DUIDs over the range (not for security).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const HEADER: &str = "ironpxe-dhcp6-leases 1";

/// Why the lease file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    /// An I/O error on the file or its directory.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a lease file.
    #[error("{path}:{line}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// The file that keeps [`Leases`] across restarts.
#[derive(Clone, Debug)]
pub struct LeaseFile {
    path: PathBuf,
}

impl LeaseFile {
    /// The lease file at `path` (created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LeaseFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the leases of `range`; a missing file is an empty table. Leases outside
    /// the range (it was changed) and expired ones are dropped.
    pub fn load(&self, range: Ipv6Range, now: u64) -> Result<Leases, LeaseFileError> {
        let mut leases = Leases::new(range);
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(leases),
            Err(source) => {
                return Err(LeaseFileError::Io {
                    path: self.path.clone(),
                    op: "read",
                    source,
                })
            }
        };
        let bad = |line: usize, what: String| LeaseFileError::Format {
            path: self.path.clone(),
            line,
            what,
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(bad(1, format!("not a lease file (expected {HEADER:?})"))),
        }
        for (i, line) in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            let parsed = (|| {
                let [addr, duid, iaid, expires, mac] = f[..] else {
                    return None;
                };
                Some((
                    addr.parse::<Ipv6Addr>().ok()?,
                    unhex(duid)?,
                    iaid.parse::<u32>().ok()?,
                    expires.parse::<u64>().ok()?,
                    mac.parse::<MacAddr>().ok()?,
                ))
            })();
            let Some((addr, duid, iaid, expires, mac)) = parsed else {
                return Err(bad(i + 1, format!("not a lease: {line:?}")));
            };
            if expires > now && range.contains(addr) {
                leases.insert(LeaseKey { duid, iaid }, Lease { addr, expires, mac });
            }
        }
        Ok(leases)
    }

    /// Replaces the file with `leases`, crash-safe (see the module documentation).
    pub fn save(&self, leases: &Leases) -> Result<(), LeaseFileError> {
        let io = |op: &'static str| {
            let path = self.path.clone();
            move |source| LeaseFileError::Io { path, op, source }
        };
        let mut text = String::with_capacity(64 + leases.len() * 96);
        text.push_str(HEADER);
        text.push('\n');
        let mut rows: Vec<_> = leases.iter().collect();
        rows.sort_by_key(|(_, l)| u128::from(l.addr));
        for (k, l) in rows {
            let duid: String = k.duid.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!(
                "{} {duid} {} {} {}\n",
                l.addr, k.iaid, l.expires, l.mac
            ));
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(io("create a temporary file for"))?;
        f.write_all(text.as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("flush"))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io("rename the temporary file over"))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("flush the directory of"))?;
        Ok(())
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Ipv6Range {
        "fd77:1::1000-fd77:1::1003".parse().unwrap()
    }

    fn key(n: u8) -> LeaseKey {
        LeaseKey {
            duid: vec![0, 4, n, n, n],
            iaid: 7,
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    #[test]
    fn a_client_keeps_its_address_and_a_full_range_says_so() {
        let mut l = Leases::new(range());
        let a = l.bind(&key(1), MAC, 100, 60).unwrap();
        assert_eq!(l.bind(&key(1), MAC, 110, 60), Some(a));
        assert_eq!(l.get(&key(1), 150).map(|l| l.expires), Some(170));
        let mut taken = vec![a];
        for n in 2..=4 {
            let b = l.bind(&key(n), MAC, 100, 60).unwrap();
            assert!(!taken.contains(&b));
            taken.push(b);
        }
        assert_eq!(l.bind(&key(5), MAC, 100, 60), None, "the range is full");
        // Once a lease expires its address is free again.
        assert!(l.bind(&key(5), MAC, 161, 60).is_some());
        assert!(l.release(&key(5), l.get(&key(5), 161).unwrap().addr));
        assert!(!l.renew(&key(5), a, 162, 60));
        assert!(l.renew(&key(1), a, 162, 60));
        assert_eq!(l.expire(300), 3);
        assert!(l.is_empty());
    }

    #[test]
    fn the_file_survives_a_restart_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = LeaseFile::new(dir.path().join("dhcp6-leases"));
        assert!(file.load(range(), 0).unwrap().is_empty());
        let mut l = Leases::new(range());
        let a = l.bind(&key(1), MAC, 100, 60).unwrap();
        let b = l.bind(&key(2), MAC, 100, 10).unwrap();
        file.save(&l).unwrap();
        assert!(!dir.path().join("dhcp6-leases.tmp").exists());
        let back = file.load(range(), 120).unwrap();
        assert_eq!(back.get(&key(1), 120).map(|l| l.addr), Some(a));
        assert!(
            back.get(&key(2), 120).is_none(),
            "expired lease {b} dropped"
        );
        // Another range keeps none of them.
        let other: Ipv6Range = "fd77:2::1-fd77:2::9".parse().unwrap();
        assert!(file.load(other, 120).unwrap().is_empty());
        fs::write(
            file.path(),
            "ironpxe-dhcp6-leases 1\nfd77:1::1000 zz 1 2 x\n",
        )
        .unwrap();
        let e = file.load(range(), 0).unwrap_err().to_string();
        assert!(
            e.ends_with(":2: not a lease: \"fd77:1::1000 zz 1 2 x\""),
            "{e}"
        );
        fs::write(file.path(), "hello\n").unwrap();
        assert!(file.load(range(), 0).is_err());
    }
}
