//! The leases the built-in DHCP server knows, in memory, and where they are kept.
//!
//! [`LeaseTable`] is the server core's view: every stored lease by MAC and by
//! address, the offers made and not yet taken up, and addresses clients declined.
//! [`LeaseStore`] is where leases live across restarts: the state database
//! (`ironpxe_state::LeaseDb`, an fsync per change) in the server, memory in tests.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ironpxe_core::MacAddr;
pub use ironpxe_state::Lease;

/// Where leases are kept. `put` and `remove` return once the change is durable: a
/// lease is acknowledged to a client only after `put` returned `Ok`.
pub trait LeaseStore: Send + Sync {
    /// Every stored lease.
    fn load(&self) -> Result<Vec<Lease>, String>;
    /// Stores a lease, replacing the MAC's previous one.
    fn put(&self, lease: &Lease) -> Result<(), String>;
    /// Removes the MAC's lease.
    fn remove(&self, mac: MacAddr) -> Result<(), String>;
}

impl LeaseStore for ironpxe_state::LeaseDb {
    fn load(&self) -> Result<Vec<Lease>, String> {
        self.all().map_err(|e| e.to_string())
    }

    fn put(&self, lease: &Lease) -> Result<(), String> {
        ironpxe_state::LeaseDb::put(self, lease).map_err(|e| e.to_string())
    }

    fn remove(&self, mac: MacAddr) -> Result<(), String> {
        ironpxe_state::LeaseDb::remove(self, mac).map_err(|e| e.to_string())
    }
}

/// Leases in memory only, for tests.
#[derive(Default)]
pub struct MemoryLeases(Mutex<HashMap<MacAddr, Lease>>);

impl LeaseStore for MemoryLeases {
    fn load(&self) -> Result<Vec<Lease>, String> {
        let mut v: Vec<Lease> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|l| l.mac);
        Ok(v)
    }

    fn put(&self, lease: &Lease) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease.mac, lease.clone());
        Ok(())
    }

    fn remove(&self, mac: MacAddr) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&mac);
        Ok(())
    }
}

/// How long an offer holds its address for the client it was made to.
pub const OFFER_HOLD_MS: u64 = 60_000;

/// How long an address a client declined (it found it in use) is not handed out.
pub const DECLINE_HOLD_MS: u64 = 600_000;

/// The server's leases and pending offers.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    offers: HashMap<MacAddr, (Ipv4Addr, u64)>,
    offered_ips: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
}

impl LeaseTable {
    /// A table holding `leases` (as loaded from the store).
    pub fn new(leases: impl IntoIterator<Item = Lease>) -> Self {
        let mut t = LeaseTable::default();
        for l in leases {
            t.insert(l);
        }
        t
    }

    /// The stored lease of `mac`, expired or not.
    pub fn lease(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// Records a stored lease.
    pub fn insert(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.get(&lease.mac) {
            if self.by_ip.get(&old.ip) == Some(&lease.mac) {
                self.by_ip.remove(&old.ip);
            }
        }
        self.by_ip.insert(lease.ip, lease.mac);
        self.drop_offer(&lease.mac);
        self.by_mac.insert(lease.mac, lease);
    }

    /// Forgets `mac`'s lease and offer.
    pub fn remove(&mut self, mac: &MacAddr) -> Option<Lease> {
        self.drop_offer(mac);
        let old = self.by_mac.remove(mac)?;
        if self.by_ip.get(&old.ip) == Some(mac) {
            self.by_ip.remove(&old.ip);
        }
        Some(old)
    }

    /// Remembers that `ip` was offered to `mac` until `now_ms + OFFER_HOLD_MS`.
    pub fn offer(&mut self, mac: MacAddr, ip: Ipv4Addr, now_ms: u64) {
        self.drop_offer(&mac);
        self.offers.insert(mac, (ip, now_ms + OFFER_HOLD_MS));
        self.offered_ips.insert(ip, mac);
    }

    /// The address offered to `mac`, if the offer still holds.
    pub fn offered(&self, mac: &MacAddr, now_ms: u64) -> Option<Ipv4Addr> {
        self.offers
            .get(mac)
            .filter(|(_, until)| *until > now_ms)
            .map(|(ip, _)| *ip)
    }

    /// Forgets the offer made to `mac` (it took another server's).
    pub fn drop_offer(&mut self, mac: &MacAddr) {
        if let Some((ip, _)) = self.offers.remove(mac) {
            if self.offered_ips.get(&ip) == Some(mac) {
                self.offered_ips.remove(&ip);
            }
        }
    }

    /// Keeps `ip` from anyone for [`DECLINE_HOLD_MS`].
    pub fn decline(&mut self, ip: Ipv4Addr, now_ms: u64) {
        self.declined.insert(ip, now_ms + DECLINE_HOLD_MS);
    }

    /// Who holds `ip` at `now_ms` other than `mac`: an unexpired lease, a standing
    /// offer, or a decline. `None` if `mac` may have it.
    pub fn held_by_other(&self, ip: Ipv4Addr, mac: &MacAddr, now_ms: u64) -> Option<Holder> {
        if self.declined.get(&ip).is_some_and(|until| *until > now_ms) {
            return Some(Holder::Declined);
        }
        if let Some(owner) = self.by_ip.get(&ip) {
            if owner != mac
                && self
                    .by_mac
                    .get(owner)
                    .is_some_and(|l| l.expires_ms > now_ms)
            {
                return Some(Holder::Lease(*owner));
            }
        }
        if let Some(owner) = self.offered_ips.get(&ip) {
            if owner != mac && self.offered(owner, now_ms) == Some(ip) {
                return Some(Holder::Offer(*owner));
            }
        }
        None
    }

    /// When `ip`'s lease (to whoever) expired, if it has an expired one: the older,
    /// the better to reuse.
    pub fn expired_at(&self, ip: Ipv4Addr, now_ms: u64) -> Option<u64> {
        let owner = self.by_ip.get(&ip)?;
        self.by_mac
            .get(owner)
            .map(|l| l.expires_ms)
            .filter(|e| *e <= now_ms)
    }

    /// How many leases are stored.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether no lease is stored.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Bounds the offers and declines a flood of invented MACs could grow: expired
    /// ones are dropped.
    pub fn prune(&mut self, now_ms: u64) {
        if self.offers.len() > 4096 {
            let stale: Vec<MacAddr> = self
                .offers
                .iter()
                .filter(|(_, (_, until))| *until <= now_ms)
                .map(|(m, _)| *m)
                .collect();
            for m in stale {
                self.drop_offer(&m);
            }
        }
        self.declined.retain(|_, until| *until > now_ms);
    }
}

/// Who holds an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// An unexpired lease of this MAC.
    Lease(MacAddr),
    /// A standing offer to this MAC.
    Offer(MacAddr),
    /// A client declined it lately.
    Declined,
}
