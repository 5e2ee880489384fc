//! The API booter's memory and lookup queue: which answer a machine gets now, which
//! machine the API is asked about next, and when.
//!
//! Pure and deterministic: every method takes the current time, and nothing here
//! touches a socket, a thread or the clock, so a flood of a hundred thousand packets
//! against a slow API is a unit test on virtual time. [`crate::ApiBooter`] wraps it
//! in a mutex and runs the lookups it hands out.
//!
//! # What a machine is answered
//!
//! - A boot answer is used for [`CACHE_TTL`]. After half of that it is refreshed:
//!   the lookup is queued and the old answer keeps being used while it is pending
//!   (stale-while-revalidate), for at most [`MAX_STALE`].
//! - A "don't boot" answer (any non-200) is kept for [`Limits::negative_ttl`], so a
//!   machine the API does not know costs one request per TTL, however often it asks.
//! - A failed lookup (timeout, bad JSON, unreachable API) is kept until the machine
//!   may be asked about again ([`Limits::mac_interval`]).
//!
//! # The queue
//!
//! Three tiers, each first come, first served:
//! 1. **known** machines: ones the API told to boot before (refreshes, and lookups
//!    after their answer expired);
//! 2. **retries**: machines never answered that asked again at least
//!    [`REPEAT_GAP`] after their first packet, as real firmware does (PXE clients
//!    retransmit after about 4 s; an invented MAC of a flood is usually seen once);
//! 3. **first asks** of never-seen machines.
//!
//! Known machines go first, but one turn in [`NEW_TURN_EVERY`] goes to a waiting
//! never-seen machine, so neither class can starve the other. The two never-seen
//! tiers share [`MAX_QUEUED_NEW`] places; when they are full, a newcomer pushes out
//! the oldest first ask, which is remembered, so that machine's retransmit queues as
//! a retry. A flood of never-seen MACs thus only ever competes with itself, and a
//! real new machine is looked up within a few turns of its first retransmit.
//!
//! Every lookup respects two limits: at most one request per machine per
//! [`Limits::mac_interval`], and at most [`Limits::rate`] requests per second in
//! all (with a burst of as many), at most [`Limits::concurrent`] at once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ironpxe_core::{BootDecision, MacAddr};

/// How long a boot answer is used without a pending refresh.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// A boot answer this old is refreshed in the background while still used.
pub const REFRESH_AFTER: Duration = Duration::from_secs(15);

/// The oldest boot answer used while its refresh is pending. Older answers are not
/// used at all, so a machine that comes back after a long time gets what the API
/// says now.
pub const MAX_STALE: Duration = Duration::from_secs(120);

/// A never-answered machine that asks again at least this long after its first
/// packet is a retry (a DHCP retransmit), not the same packet seen twice.
pub const REPEAT_GAP: Duration = Duration::from_secs(2);

/// Places shared by the two tiers of never-seen machines.
pub const MAX_QUEUED_NEW: usize = 256;

/// Places for known machines.
pub const MAX_QUEUED_KNOWN: usize = 1024;

/// Machines remembered at most (answers, retries, known machines). Past this, the
/// least recently seen idle machines are forgotten, never-answered ones first.
pub const MAX_MACHINES: usize = 8192;

/// Of every this many lookups started, one goes to a never-seen machine when one
/// waits.
pub const NEW_TURN_EVERY: u64 = 4;

/// How hard ironpxe may press the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// API requests per second, all machines together (at least 1). Bursts of as
    /// many requests are allowed.
    pub rate: u32,
    /// At most one request per machine per this interval.
    pub mac_interval: Duration,
    /// How long a "don't boot" answer (non-200) is kept.
    pub negative_ttl: Duration,
    /// How many requests run at once.
    pub concurrent: usize,
}

impl Limits {
    /// Default of [`Limits::rate`].
    pub const DEFAULT_RATE: u32 = 20;
    /// Default of [`Limits::mac_interval`].
    pub const DEFAULT_MAC_INTERVAL: Duration = Duration::from_secs(5);
    /// Default of [`Limits::negative_ttl`].
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
    /// Default of [`Limits::concurrent`].
    pub const DEFAULT_CONCURRENT: usize = 16;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: Self::DEFAULT_RATE,
            mac_interval: Self::DEFAULT_MAC_INTERVAL,
            negative_ttl: Self::DEFAULT_NEGATIVE_TTL,
            concurrent: Self::DEFAULT_CONCURRENT,
        }
    }
}

/// What kind of answer a lookup produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// Boot this machine (netboot, or an iPXE script).
    Boot,
    /// The API said no (non-200, or no file).
    Declined,
    /// No usable answer (timeout, bad JSON, unreachable).
    Failed,
}

/// What [`Lookups::ask`] says about a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Use this answer now.
    Use(BootDecision),
    /// No usable answer; a lookup is queued or running.
    Pending,
    /// No usable answer, and no place in the queue.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Known = 0,
    Retry = 1,
    First = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    Idle,
    Queued(Tier),
    Running,
}

#[derive(Debug)]
struct Answer {
    decision: BootDecision,
    kind: AnswerKind,
    at: Instant,
}

#[derive(Debug)]
struct Machine {
    answer: Option<Answer>,
    /// The API told it to boot at some point.
    known: bool,
    lookup: Lookup,
    /// When its last lookup started (the per-machine limit).
    started: Option<Instant>,
    /// Its first packet since it last had an answer (retry detection).
    first_ask: Option<Instant>,
    /// Its last packet (who is forgotten first).
    used: Instant,
}

/// The answers, the queue and the limits. See the module documentation.
#[derive(Debug)]
pub struct Lookups {
    limits: Limits,
    machines: HashMap<MacAddr, Machine>,
    queues: [VecDeque<MacAddr>; 3],
    running: usize,
    turns: u64,
    /// The rate limit as a generic cell rate algorithm: the theoretical time of the
    /// next request.
    next_at: Option<Instant>,
}

impl Lookups {
    /// Empty, with these limits (a rate of 0 counts as 1).
    pub fn new(limits: Limits) -> Lookups {
        Lookups {
            limits: Limits {
                rate: limits.rate.max(1),
                concurrent: limits.concurrent.max(1),
                ..limits
            },
            machines: HashMap::new(),
            queues: Default::default(),
            running: 0,
            turns: 0,
            next_at: None,
        }
    }

    /// A packet (or a script request) of `mac` at `now`: what it is answered, and
    /// whether a lookup was queued for it (the caller then wakes the lookup runner).
    pub fn ask(&mut self, mac: MacAddr, now: Instant) -> (Asked, bool) {
        if !self.machines.contains_key(&mac) && !self.make_room() {
            return (Asked::Full, false);
        }
        let limits = self.limits;
        let m = self.machines.entry(mac).or_insert(Machine {
            answer: None,
            known: false,
            lookup: Lookup::Idle,
            started: None,
            first_ask: None,
            used: now,
        });
        m.used = now;
        if m.answer.is_none() && m.first_ask.is_none() {
            m.first_ask = Some(now);
        }
        let wanted = match &m.answer {
            None => true,
            Some(a) => {
                let age = now.saturating_duration_since(a.at);
                match a.kind {
                    AnswerKind::Boot => age >= REFRESH_AFTER,
                    AnswerKind::Declined => age >= limits.negative_ttl,
                    AnswerKind::Failed => age >= limits.mac_interval,
                }
            }
        };
        let allowed = m
            .started
            .is_none_or(|t| now.saturating_duration_since(t) >= limits.mac_interval);
        let retry = m.answer.is_none()
            && m.first_ask
                .is_some_and(|t| now.saturating_duration_since(t) >= REPEAT_GAP);
        let tier = if m.known {
            Tier::Known
        } else if retry {
            Tier::Retry
        } else {
            Tier::First
        };
        let mut queued = false;
        match m.lookup {
            Lookup::Idle if wanted && allowed => queued = self.enqueue(mac, tier),
            Lookup::Queued(Tier::First) if tier == Tier::Retry => self.promote(mac),
            _ => {}
        }
        let m = &self.machines[&mac];
        let pending = m.lookup != Lookup::Idle;
        if let Some(a) = &m.answer {
            let age = now.saturating_duration_since(a.at);
            let usable = match a.kind {
                AnswerKind::Boot => age < CACHE_TTL || (pending && age < MAX_STALE),
                AnswerKind::Declined => age < limits.negative_ttl,
                AnswerKind::Failed => age < limits.mac_interval,
            };
            // Until the machine may be asked about again, its last answer stands.
            if usable || !allowed {
                return (Asked::Use(a.decision.clone()), queued);
            }
        }
        let asked = if pending { Asked::Pending } else { Asked::Full };
        (asked, queued)
    }

    /// The next machine to look up at `now`, if the limits allow one; it is then
    /// running until [`Lookups::complete`].
    pub fn next(&mut self, now: Instant) -> Option<MacAddr> {
        if self.running >= self.limits.concurrent || !self.rate_allows(now) {
            return None;
        }
        let new_turn = self.turns % NEW_TURN_EVERY == NEW_TURN_EVERY - 1;
        let order = if new_turn {
            [Tier::Retry, Tier::First, Tier::Known]
        } else {
            [Tier::Known, Tier::Retry, Tier::First]
        };
        let mac = order
            .into_iter()
            .find_map(|t| self.queues[t as usize].pop_front())?;
        self.take_rate(now);
        self.turns += 1;
        self.running += 1;
        if let Some(m) = self.machines.get_mut(&mac) {
            m.lookup = Lookup::Running;
            m.started = Some(now);
        }
        Some(mac)
    }

    /// When [`Lookups::next`] can hand out a lookup that the rate limit holds back
    /// now; `None` when nothing waits on the clock (only on an ask or a completion).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.running >= self.limits.concurrent || self.queues.iter().all(VecDeque::is_empty) {
            return None;
        }
        let at = self.rate_free_at()?;
        (at > now).then_some(at)
    }

    /// The lookup of `mac` ended with `decision`.
    pub fn complete(
        &mut self,
        mac: MacAddr,
        kind: AnswerKind,
        decision: BootDecision,
        now: Instant,
    ) {
        self.running = self.running.saturating_sub(1);
        if let Some(m) = self.machines.get_mut(&mac) {
            m.answer = Some(Answer {
                decision,
                kind,
                at: now,
            });
            m.lookup = Lookup::Idle;
            m.first_ask = None;
            m.known |= kind == AnswerKind::Boot;
        }
    }

    /// The answer about `mac` that arrived at or after `since`, if any.
    pub fn answered_since(&self, mac: MacAddr, since: Instant) -> Option<BootDecision> {
        self.machines
            .get(&mac)?
            .answer
            .as_ref()
            .filter(|a| a.at >= since)
            .map(|a| a.decision.clone())
    }

    /// True while a lookup of `mac` is queued or running.
    pub fn is_pending(&self, mac: MacAddr) -> bool {
        self.machines
            .get(&mac)
            .is_some_and(|m| m.lookup != Lookup::Idle)
    }

    /// Lookups waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Lookups running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Machines remembered.
    pub fn remembered(&self) -> usize {
        self.machines.len()
    }

    fn enqueue(&mut self, mac: MacAddr, tier: Tier) -> bool {
        let full = match tier {
            Tier::Known => self.queues[Tier::Known as usize].len() >= MAX_QUEUED_KNOWN,
            Tier::Retry | Tier::First => {
                self.queues[Tier::Retry as usize].len() + self.queues[Tier::First as usize].len()
                    >= MAX_QUEUED_NEW
            }
        };
        if full {
            // Only a first ask gives way, and only to a never-seen machine: it is
            // remembered, and its retransmit queues as a retry.
            if tier == Tier::Known {
                return false;
            }
            let Some(old) = self.queues[Tier::First as usize].pop_front() else {
                return false;
            };
            if let Some(m) = self.machines.get_mut(&old) {
                m.lookup = Lookup::Idle;
            }
        }
        self.queues[tier as usize].push_back(mac);
        if let Some(m) = self.machines.get_mut(&mac) {
            m.lookup = Lookup::Queued(tier);
        }
        true
    }

    fn promote(&mut self, mac: MacAddr) {
        let first = &mut self.queues[Tier::First as usize];
        if let Some(i) = first.iter().position(|&m| m == mac) {
            first.remove(i);
            self.queues[Tier::Retry as usize].push_back(mac);
            if let Some(m) = self.machines.get_mut(&mac) {
                m.lookup = Lookup::Queued(Tier::Retry);
            }
        }
    }

    /// Makes room for one more machine: forgets the least recently seen eighth of
    /// the idle ones, never-answered and declined machines before known ones. False
    /// when every machine is in the queue.
    fn make_room(&mut self) -> bool {
        if self.machines.len() < MAX_MACHINES {
            return true;
        }
        let mut idle: Vec<(bool, Instant, MacAddr)> = self
            .machines
            .iter()
            .filter(|(_, m)| m.lookup == Lookup::Idle)
            .map(|(mac, m)| (m.known, m.used, *mac))
            .collect();
        if idle.is_empty() {
            return false;
        }
        let cut = (MAX_MACHINES / 8).min(idle.len());
        idle.select_nth_unstable(cut - 1);
        for (_, _, mac) in &idle[..cut] {
            self.machines.remove(mac);
        }
        true
    }

    /// The spacing of requests under the rate limit.
    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.limits.rate
    }

    /// How far ahead of the spacing a burst may run.
    fn burst(&self) -> Duration {
        self.interval() * (self.limits.rate - 1)
    }

    fn rate_free_at(&self) -> Option<Instant> {
        let next = self.next_at?;
        Some(next.checked_sub(self.burst()).unwrap_or(next))
    }

    fn rate_allows(&self, now: Instant) -> bool {
        self.rate_free_at().is_none_or(|t| t <= now)
    }

    fn take_rate(&mut self, now: Instant) {
        let base = self.next_at.map_or(now, |t| t.max(now));
        self.next_at = Some(base + self.interval());
    }
}

#[cfg(test)]
mod tests;
