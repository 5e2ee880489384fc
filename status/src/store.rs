//! The bounded in-memory store: machines by MAC, and which machine an event without
//! a MAC belongs to.
//!
//! DHCP and iPXE's HTTP requests name the MAC. TFTP transfers and HTTP file requests
//! only have the client's address, so [`Store::ingest`] attributes them, most sound
//! first:
//!
//! 0. a TFTP transfer of a GRUB path that names its machine (a configuration, kernel
//!    or initrd of `grub/m/<mac>/...`) belongs to that machine, and teaches the
//!    store its address;
//! 1. a TFTP transfer's later events go where its `tftp.start` went (same peer
//!    address and port);
//! 2. the IP address a machine used for its script or boot callback (or its 4011
//!    request), or the one the DHCP side saw it request from the site server
//!    (`dhcp.address`), in the last [`StoreConfig::ip_valid_ms`];
//! 3. the server's neighbour (ARP) table, accepted only when it names a machine we
//!    already know (a relayed client's entry is its router's MAC, which is not one);
//! 4. for `tftp.start` only: the one machine that was offered this boot file over
//!    TFTP in the last [`StoreConfig::tftp_offer_window_ms`], if exactly one was.
//!
//! Anything left waits in a bounded "unattributed" list. When a machine later shows
//! up from the same IP (its script request), those events move to its timeline.
//!
//! # Bounds
//!
//! Everything the store holds is bounded, so a flood of invented MACs costs a fixed
//! amount of memory ([`StoreConfig`]): at most `max_machines` machines (a full store
//! drops machines never seen past DHCP first, least recently seen first, then the
//! others), at most `max_events` events per machine, at most `max_total_events`
//! events in all (beyond it the longest timelines are cut first, so the short
//! timelines of real boots keep their events while a flooded machine's ring
//! shrinks), `max_unattributed` unplaced events, and each event's text fields are
//! cut at 512 characters ([`crate::record`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use ironpxe_core::loader::GrubPath;
use ironpxe_core::{BootSpec, MacAddr};
use serde::{Deserialize, Serialize};

use crate::machine::{Applied, Expected, Machine, Phase};
use std::sync::Arc;

use crate::record::Record;

/// Limits and thresholds of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Machines kept; the least recently seen is dropped beyond this.
    pub max_machines: usize,
    /// Events kept per machine (a ring: the oldest go first).
    pub max_events: usize,
    /// Events kept over all machines; beyond it the longest timelines are cut.
    pub max_total_events: usize,
    /// Events kept that no machine could be found for.
    pub max_unattributed: usize,
    /// A machine in an unfinished phase for longer than this is stuck.
    pub stuck_after_ms: u64,
    /// An offer after this long without events starts a new boot.
    pub idle_restart_ms: u64,
    /// How long an IP address learned from a machine's request stays trusted.
    pub ip_valid_ms: u64,
    /// How long after a TFTP offer a transfer of that file may be attributed to it.
    pub tftp_offer_window_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_machines: 1024,
            max_events: 200,
            max_total_events: 65_536,
            max_unattributed: 256,
            stuck_after_ms: 120_000,
            idle_restart_ms: 600_000,
            ip_valid_ms: 600_000,
            tftp_offer_window_ms: 60_000,
        }
    }
}

/// Maps a client IP address to a MAC address from layer-2 knowledge.
pub trait Neighbors: Send + Sync {
    /// The MAC address the host's neighbour table has for `ip`, if any.
    fn mac_of(&self, ip: IpAddr) -> Option<MacAddr>;
}

/// No neighbour table (tests, or hosts without `/proc/net/arp`).
pub struct NoNeighbors;

impl Neighbors for NoNeighbors {
    fn mac_of(&self, _: IpAddr) -> Option<MacAddr> {
        None
    }
}

/// The kernel's IPv4 neighbour table, `/proc/net/arp`, in the server's network
/// namespace.
pub struct ProcNetArp;

impl Neighbors for ProcNetArp {
    fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        let text = std::fs::read_to_string("/proc/net/arp").ok()?;
        arp_lookup(&text, ip)
    }
}

/// Finds `ip` in the text of `/proc/net/arp`; incomplete entries have no MAC.
pub fn arp_lookup(text: &str, ip: IpAddr) -> Option<MacAddr> {
    let want = ip.to_string();
    text.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 4 || cols[0] != want {
            return None;
        }
        let mac: MacAddr = cols[3].parse().ok()?;
        (mac != MacAddr([0; 6])).then_some(mac)
    })
}

/// The IP address in a `peer` field (`ip:port` or a bare IP); `None` for `-`, the
/// unspecified and the broadcast address.
pub fn peer_ip(peer: &str) -> Option<IpAddr> {
    let ip = peer
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| peer.parse::<IpAddr>())
        .ok()?;
    let bad = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified(),
    };
    (!bad).then_some(ip)
}

/// An event that no machine could be found for yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unattributed {
    /// The client's IP address, if the event had one.
    pub ip: Option<String>,
    /// The event.
    pub record: Record,
}

/// One event after attribution.
#[derive(Debug)]
pub struct Ingested {
    /// The machine it went to, if any.
    pub mac: Option<MacAddr>,
    /// The event, with the details the store adds (`kind`, `bytes_per_s`); shared
    /// with the machine's timeline and the log.
    pub record: Arc<Record>,
    /// What it changed in the machine's state.
    pub applied: Applied,
    /// `false` for an event seen before that has only now found its machine.
    pub fresh: bool,
}

/// The part of the store that is saved and restored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Data {
    machines: HashMap<MacAddr, Machine>,
    /// Client IP -> (MAC, learned at).
    ip_macs: HashMap<String, (MacAddr, u64)>,
    /// TFTP peer `ip:port` -> MAC, for the events after `tftp.start`.
    tftp_peers: HashMap<String, MacAddr>,
    /// File id -> kind, from every boot spec seen.
    kinds: HashMap<String, String>,
    unattributed: VecDeque<Unattributed>,
    /// Events that are about the server, not a machine (e.g. configuration reloads).
    server: VecDeque<Record>,
}

/// Bounded maps that are simply cleared when they overflow: their entries are
/// short-lived hints.
const MAX_HINTS: usize = 8192;

/// The status store. Not thread-safe by itself; [`crate::Status`] wraps it.
#[derive(Debug, Default)]
pub struct Store {
    cfg: StoreConfig,
    data: Data,
    /// Events over all machines' timelines.
    total_events: usize,
}

/// One page of machines, copied out of the store so it can be serialised without
/// holding it: the events are shared, not copied.
#[derive(Debug, Clone)]
pub struct Page {
    /// The machines of this page, in MAC order.
    pub machines: Vec<Machine>,
    /// How many machines the store holds.
    pub total: usize,
    /// The last MAC of this page when more machines follow (the `after` of the next
    /// page).
    pub next: Option<MacAddr>,
}

impl Store {
    /// An empty store.
    pub fn new(cfg: StoreConfig) -> Self {
        Store {
            cfg,
            data: Data::default(),
            total_events: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Changes the stuck threshold.
    pub fn set_stuck_after_ms(&mut self, ms: u64) {
        self.cfg.stuck_after_ms = ms;
    }

    /// The saved form of the store.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Replaces the contents with saved data, trimmed to the current limits.
    pub fn restore(&mut self, data: Data) {
        self.data = data;
        let max_events = self.cfg.max_events;
        for m in self.data.machines.values_mut() {
            while m.events.len() > max_events {
                m.events.pop_front();
            }
        }
        while self.data.machines.len() > self.cfg.max_machines {
            self.evict_one();
        }
        while self.data.unattributed.len() > self.cfg.max_unattributed {
            self.data.unattributed.pop_front();
        }
        self.total_events = self.data.machines.values().map(|m| m.events.len()).sum();
        self.trim_events();
    }

    /// Events over all machines' timelines.
    pub fn total_events(&self) -> usize {
        self.total_events
    }

    /// Up to `limit` machines with MACs above `after` (all, without it), in MAC
    /// order, copied out of the store.
    pub fn page(&self, after: Option<MacAddr>, limit: usize) -> Page {
        let mut macs: Vec<MacAddr> = self
            .data
            .machines
            .keys()
            .filter(|m| after.is_none_or(|a| **m > a))
            .copied()
            .collect();
        let limit = limit.max(1);
        let more = macs.len() > limit;
        if more {
            macs.select_nth_unstable(limit - 1);
            macs.truncate(limit);
        }
        macs.sort_unstable();
        Page {
            machines: macs
                .iter()
                .filter_map(|m| self.data.machines.get(m).cloned())
                .collect(),
            total: self.data.machines.len(),
            next: if more { macs.last().copied() } else { None },
        }
    }

    /// Each machine's state and whether it is stuck at `now_ms`, for metrics.
    pub fn states(&self, now_ms: u64) -> Vec<(Option<Phase>, bool)> {
        let after = self.cfg.stuck_after_ms;
        self.data
            .machines
            .values()
            .map(|m| (m.state, m.is_stuck(now_ms, after)))
            .collect()
    }

    /// A machine by MAC.
    pub fn machine(&self, mac: &MacAddr) -> Option<&Machine> {
        self.data.machines.get(mac)
    }

    /// Every machine, in MAC order.
    pub fn machines(&self) -> Vec<&Machine> {
        let mut v: Vec<&Machine> = self.data.machines.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.mac.cmp(&b.mac)));
        v
    }

    /// Events no machine was found for, oldest first.
    pub fn unattributed(&self) -> impl Iterator<Item = &Unattributed> {
        self.data.unattributed.iter()
    }

    /// Notes what the booter chose for `mac`, so HTTP file events can be told apart
    /// as kernel or initrd and progress can count initrds.
    pub fn expect(&mut self, mac: MacAddr, spec: &BootSpec, t_ms: u64) {
        self.expect_files(mac, &Expected::of(spec), t_ms);
    }

    /// [`Store::expect`] with the spec's file ids already computed (the booter
    /// computes them once per spec, not once per DHCP packet).
    pub fn expect_files(&mut self, mac: MacAddr, expected: &Expected, t_ms: u64) {
        // The kind hints are written only when they are missing, so a machine that
        // asks again costs lookups, not allocations.
        if !self.data.kinds.contains_key(&expected.kernel)
            || expected
                .initrds
                .iter()
                .any(|i| !self.data.kinds.contains_key(i))
        {
            if self.data.kinds.len() > MAX_HINTS {
                self.data.kinds.clear();
            }
            self.data
                .kinds
                .insert(expected.kernel.clone(), "kernel".into());
            for i in &expected.initrds {
                self.data.kinds.insert(i.clone(), "initrd".into());
            }
        }
        let m = self.machine_mut(mac, t_ms);
        if m.expected.as_ref() != Some(expected) {
            m.expected = Some(expected.clone());
        }
    }

    /// Attributes `rec` to a machine, enriches it, and applies it. Returns the
    /// events applied, oldest first: `rec` itself, preceded by earlier unattributed
    /// events that `rec` has now placed.
    pub fn ingest(&mut self, rec: Arc<Record>, neighbors: &dyn Neighbors) -> Vec<Ingested> {
        let t = rec.t_ms;
        let peer = rec.str("peer").map(str::to_owned);
        let ip = peer.as_deref().and_then(peer_ip);
        let is_client_event = rec.event.starts_with("tftp.") || rec.event.starts_with("http.");
        // A TFTP path of GRUB's that names the machine is as good as a MAC field, and
        // comes from the machine's own address.
        let grub_mac = rec
            .event
            .starts_with("tftp.")
            .then(|| rec.str("file"))
            .flatten()
            .and_then(GrubPath::parse)
            .and_then(|p| p.mac());
        let named = rec
            .str("mac")
            .and_then(|m| m.parse::<MacAddr>().ok())
            .or(grub_mac);

        let mut out = Vec::new();
        let mac = match named {
            Some(mac) => {
                // Only these come from the client's own address; a DISCOVER comes
                // from 0.0.0.0 or a relay.
                let from_client =
                    rec.event.starts_with("http.") || rec.event == "dhcp.ack" || grub_mac.is_some();
                if let (Some(ip), true) = (ip, from_client) {
                    self.learn_ip(ip, mac, t, &mut out);
                }
                // The DHCP side saw the address the machine is taking.
                if rec.event == "dhcp.address" {
                    if let Some(ip) = rec.text("ip").and_then(|i| i.parse().ok()) {
                        self.learn_ip(ip, mac, t, &mut out);
                    }
                }
                Some(mac)
            }
            None if is_client_event => self.attribute(&rec, ip, peer.as_deref(), neighbors),
            None => None,
        };
        match mac {
            Some(mac) => {
                if rec.event == "tftp.start" {
                    if let Some(p) = &peer {
                        if self.data.tftp_peers.len() > MAX_HINTS {
                            self.data.tftp_peers.clear();
                        }
                        self.data.tftp_peers.insert(p.clone(), mac);
                    }
                }
                out.push(self.apply(mac, rec, true));
            }
            None if is_client_event => {
                let rec = enrich_rate(rec);
                self.data.unattributed.push_back(Unattributed {
                    ip: ip.map(|i| i.to_string()),
                    record: Record::clone(&rec),
                });
                while self.data.unattributed.len() > self.cfg.max_unattributed {
                    self.data.unattributed.pop_front();
                }
                out.push(Ingested {
                    mac: None,
                    record: rec,
                    applied: Applied::default(),
                    fresh: true,
                });
            }
            None => {
                self.data.server.push_back(Record::clone(&rec));
                while self.data.server.len() > self.cfg.max_unattributed {
                    self.data.server.pop_front();
                }
                out.push(Ingested {
                    mac: None,
                    record: rec,
                    applied: Applied::default(),
                    fresh: true,
                });
            }
        }
        out
    }

    fn attribute(
        &mut self,
        rec: &Record,
        ip: Option<IpAddr>,
        peer: Option<&str>,
        neighbors: &dyn Neighbors,
    ) -> Option<MacAddr> {
        let t = rec.t_ms;
        if rec.event.starts_with("tftp.") && rec.event != "tftp.start" {
            if let Some(mac) = peer.and_then(|p| self.data.tftp_peers.get(p)) {
                return Some(*mac);
            }
        }
        let ip = ip?;
        if let Some((mac, at)) = self.data.ip_macs.get(&ip.to_string()) {
            if t.saturating_sub(*at) <= self.cfg.ip_valid_ms {
                return Some(*mac);
            }
        }
        if let Some(mac) = neighbors.mac_of(ip) {
            if self.data.machines.contains_key(&mac) {
                self.data.ip_macs.insert(ip.to_string(), (mac, t));
                return Some(mac);
            }
        }
        if rec.event == "tftp.start" {
            let file = rec.text("file")?;
            let window = self.cfg.tftp_offer_window_ms;
            let mut candidates = self.data.machines.values().filter(|m| {
                m.tftp_offer
                    .as_ref()
                    .is_some_and(|(at, f)| *f == file && t >= *at && t - *at <= window)
            });
            let first = candidates.next()?;
            if candidates.next().is_none() {
                return Some(first.mac);
            }
        }
        None
    }

    /// Remembers that `ip` is `mac`, and moves events waiting for that IP to it.
    fn learn_ip(&mut self, ip: IpAddr, mac: MacAddr, t: u64, out: &mut Vec<Ingested>) {
        let key = ip.to_string();
        if self.data.ip_macs.len() > MAX_HINTS {
            self.data.ip_macs.clear();
        }
        self.data.ip_macs.insert(key.clone(), (mac, t));
        let window = self.cfg.ip_valid_ms;
        let (waiting, rest): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.data.unattributed)
                .into_iter()
                .partition(|u| {
                    u.ip.as_deref() == Some(key.as_str())
                        && t.saturating_sub(u.record.t_ms) <= window
                });
        self.data.unattributed = rest;
        for u in waiting {
            let rec = Arc::new(u.record);
            if rec.event == "tftp.start" {
                if let Some(p) = rec.text("peer") {
                    self.data.tftp_peers.insert(p, mac);
                }
            }
            out.push(self.apply(mac, rec, false));
        }
    }

    fn apply(&mut self, mac: MacAddr, rec: Arc<Record>, fresh: bool) -> Ingested {
        let mut rec = enrich_rate(rec);
        if rec.event.starts_with("http.file.") {
            if let Some(kind) = self.kind_of(mac, &rec) {
                Arc::make_mut(&mut rec)
                    .details
                    .insert("kind".into(), kind.into());
            }
        }
        let max_events = self.cfg.max_events;
        let idle = self.cfg.idle_restart_ms;
        let m = self.machine_mut(mac, rec.t_ms);
        let before = m.events.len();
        let applied = m.apply(rec.clone(), max_events, idle);
        let after = m.events.len();
        self.total_events = (self.total_events + after).saturating_sub(before);
        if self.total_events > self.cfg.max_total_events {
            self.trim_events();
        }
        Ingested {
            mac: Some(mac),
            record: rec,
            applied,
            fresh,
        }
    }

    /// Kernel or initrd: from this machine's spec, any spec, the start event of the
    /// same file, or, failing all, order (the first file after the script is the
    /// kernel).
    fn kind_of(&self, mac: MacAddr, rec: &Record) -> Option<String> {
        if let Some(k) = rec.text("kind") {
            return Some(k);
        }
        let id = rec.text("id")?;
        let m = self.data.machines.get(&mac);
        if let Some(e) = m.and_then(|m| m.expected.as_ref()) {
            if e.kernel == id {
                return Some("kernel".into());
            }
            if e.initrds.contains(&id) {
                return Some("initrd".into());
            }
        }
        if let Some(k) = self.data.kinds.get(&id) {
            return Some(k.clone());
        }
        let m = m?;
        let earlier = m
            .events
            .iter()
            .rev()
            .find(|e| e.event == "http.file.start" && e.text("id").as_deref() == Some(id.as_str()))
            .and_then(|e| e.text("kind"));
        if earlier.is_some() || rec.event != "http.file.start" {
            return earlier;
        }
        let kernel_seen = m.phases.iter().any(|p| p.phase == Phase::Kernel);
        Some(if kernel_seen { "initrd" } else { "kernel" }.into())
    }

    fn machine_mut(&mut self, mac: MacAddr, t: u64) -> &mut Machine {
        if !self.data.machines.contains_key(&mac)
            && self.data.machines.len() >= self.cfg.max_machines
        {
            self.evict_one();
        }
        self.data
            .machines
            .entry(mac)
            .or_insert_with(|| Machine::new(mac, t))
    }

    /// Drops the least recently seen machine, and with it, when the store is large,
    /// the next least recently seen eighth: a flood of new MACs then costs one scan
    /// of the store per eighth of it, not one per packet. Machines never seen past
    /// DHCP go before any machine that fetched something.
    fn evict_one(&mut self) {
        let batch = (self.cfg.max_machines / 8).max(1);
        let mut ages: Vec<(bool, u64, MacAddr)> = self
            .data
            .machines
            .values()
            .map(|m| (!m.is_dhcp_only(), m.last_seen_ms, m.mac))
            .collect();
        let batch = batch.min(ages.len());
        if batch == 0 {
            return;
        }
        ages.select_nth_unstable(batch - 1);
        for (_, _, mac) in &ages[..batch] {
            if let Some(m) = self.data.machines.remove(mac) {
                self.total_events = self.total_events.saturating_sub(m.events.len());
            }
        }
    }

    /// Cuts the longest timelines (their oldest events) until the store holds at
    /// most seven eighths of [`StoreConfig::max_total_events`], so this runs once
    /// per eighth of the budget, not once per event. Every timeline is cut to the
    /// same length `cap`, the largest that fits; shorter ones are untouched.
    fn trim_events(&mut self) {
        let budget = self.cfg.max_total_events.max(1);
        if self.total_events <= budget {
            return;
        }
        let target = budget - budget / 8;
        let mut lens: Vec<usize> = self
            .data
            .machines
            .values()
            .map(|m| m.events.len())
            .collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        // Find the largest cap with sum(min(len, cap)) <= target.
        let (mut lo, mut hi) = (0usize, lens.first().copied().unwrap_or(0));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let sum: usize = lens.iter().map(|&l| l.min(mid)).sum();
            if sum <= target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let cap = lo;
        let mut total = 0;
        for m in self.data.machines.values_mut() {
            while m.events.len() > cap {
                m.events.pop_front();
            }
            total += m.events.len();
        }
        self.total_events = total;
    }
}

/// Adds `bytes_per_s` to transfer-done events that have bytes and a duration.
fn enrich_rate(mut rec: Arc<Record>) -> Arc<Record> {
    if rec.event.ends_with(".done") {
        if let (Some(bytes), Some(ms)) = (rec.number("bytes"), rec.number("duration_ms")) {
            let rate = bytes.saturating_mul(1000) / ms.max(1);
            Arc::make_mut(&mut rec)
                .details
                .insert("bytes_per_s".into(), rate.into());
        }
    }
    rec
}
