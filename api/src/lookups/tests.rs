//! The lookup queue on virtual time, against a simulated API.

use std::collections::HashMap;
use std::sync::Arc;

use ironpxe_core::{BootSpec, FileRef};

use super::*;

fn mac(tag: u8, n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, tag, b[0], b[1], b[2], b[3]])
}

fn netboot(cmdline: &str) -> BootDecision {
    BootDecision::Netboot(Arc::new(BootSpec {
        kernel: FileRef::parse("/k").unwrap(),
        initrds: vec![],
        cmdline: cmdline.into(),
        message: None,
        loader: Default::default(),
    }))
}

/// A simulated API behind the queue: every request takes `latency`; the machines in
/// `boots` are told to boot, every other one gets a 404.
struct Sim {
    l: Lookups,
    t0: Instant,
    now: Instant,
    latency: Duration,
    boots: HashMap<MacAddr, BootDecision>,
    failing: Vec<MacAddr>,
    /// Requests in flight: (when they end, machine).
    flight: Vec<(Instant, MacAddr)>,
    /// Every request, as (start, machine), in order.
    requests: Vec<(Instant, MacAddr)>,
    peak_running: usize,
}

impl Sim {
    fn new(limits: Limits, latency: Duration) -> Sim {
        let t0 = Instant::now();
        Sim {
            l: Lookups::new(limits),
            t0,
            now: t0,
            latency,
            boots: HashMap::new(),
            failing: Vec::new(),
            flight: Vec::new(),
            requests: Vec::new(),
            peak_running: 0,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// Starts what the queue hands out now, as the lookup thread does.
    fn dispatch(&mut self) {
        while let Some(m) = self.l.next(self.now) {
            self.requests.push((self.now, m));
            self.flight.push((self.now + self.latency, m));
        }
        self.peak_running = self.peak_running.max(self.l.running());
        assert_eq!(self.l.running(), self.flight.len());
    }

    /// Runs the API and the queue until `secs`.
    fn run_to(&mut self, secs: f64) {
        let end = self.at(secs);
        loop {
            self.dispatch();
            let done = self.flight.iter().map(|(t, _)| *t).min();
            let timer = self.l.poll_timeout(self.now);
            let Some(next) = [done, timer]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= end)
            else {
                break;
            };
            self.now = next;
            let (ended, rest): (Vec<_>, Vec<_>) =
                self.flight.drain(..).partition(|(t, _)| *t <= next);
            self.flight = rest;
            for (_, m) in ended {
                let (kind, d) = if self.failing.contains(&m) {
                    (AnswerKind::Failed, BootDecision::Ignore("timeout".into()))
                } else {
                    match self.boots.get(&m) {
                        Some(d) => (AnswerKind::Boot, d.clone()),
                        None => (AnswerKind::Declined, BootDecision::Ignore("404".into())),
                    }
                };
                self.l.complete(m, kind, d, next);
            }
        }
        self.now = end;
        self.dispatch();
    }

    /// A packet of `m` at `secs`.
    fn ask(&mut self, m: MacAddr, secs: f64) -> Asked {
        self.run_to(secs);
        let (a, _) = self.l.ask(m, self.now);
        self.dispatch();
        a
    }

    fn requests_for(&self, m: MacAddr) -> Vec<f64> {
        self.requests
            .iter()
            .filter(|(_, x)| *x == m)
            .map(|(t, _)| t.duration_since(self.t0).as_secs_f64())
            .collect()
    }
}

/// The audit's flood, on virtual time: an API taking 4 s per answer, 50 invented
/// MACs a second for 90 s. A machine answered before the flood is answered at
/// once on every packet, its refreshes included; a new real machine (PXE
/// retransmits at 4, 8, 16, 32 s) is looked up within two turns of its first
/// retransmit and booted on its next one; a 404 is not asked again within its TTL.
#[test]
fn a_flood_of_invented_macs_locks_out_no_real_machine() {
    let mut s = Sim::new(Limits::default(), Duration::from_secs(4));
    let cached = mac(1, 1);
    let real = mac(1, 2);
    s.boots.insert(cached, netboot("cached"));
    s.boots.insert(real, netboot("real"));
    assert_eq!(s.ask(cached, 0.0), Asked::Pending);
    assert_eq!(s.ask(cached, 4.5), Asked::Use(netboot("cached")));

    let real_asks = [20.0, 24.0, 32.0, 48.0, 80.0];
    let mut real_answers = Vec::new();
    let mut fake = 0u32;
    let mut tick = 0u32;
    // Every 20 ms a new invented MAC; every second the cached machine; the real one
    // on its retransmit schedule.
    while tick < 90 * 50 {
        let t = 5.0 + f64::from(tick) * 0.02;
        s.ask(mac(9, fake), t);
        fake += 1;
        if tick.is_multiple_of(50) {
            assert_eq!(
                s.ask(cached, t),
                Asked::Use(netboot("cached")),
                "the cached machine at {t:.2} s"
            );
        }
        if let Some(&rt) = real_asks.get(real_answers.len()) {
            if t >= rt {
                real_answers.push((rt, s.ask(real, rt)));
            }
        }
        tick += 1;
    }
    // The real machine: its first DISCOVER is one of thousands; its retransmit at
    // 24 s queues as a retry, which is started within two turns (only the cached
    // machine's refresh can go first), and the DISCOVER at 32 s is answered. (Its
    // later requests are refreshes.)
    let real_requests = s.requests_for(real);
    assert!(
        !real_requests.is_empty(),
        "the real machine was never looked up"
    );
    assert!(real_requests[0] >= 24.0, "{real_requests:?}");
    let turns = s
        .requests
        .iter()
        .filter(|(t, _)| t.duration_since(s.t0).as_secs_f64() >= 24.0)
        .take_while(|(_, m)| *m != real)
        .count();
    assert!(
        turns < 2,
        "{turns} lookups started between the retransmit and the real machine's"
    );
    assert!(real_requests[0] < 32.0, "{real_requests:?}");
    eprintln!(
        "flood: {} requests in all; the real machine's first at {:.2} s after {turns} other turns; the cached machine's at {:?}",
        s.requests.len(),
        real_requests[0],
        s.requests_for(cached)
    );
    assert_eq!(real_answers[2], (32.0, Asked::Use(netboot("real"))));
    assert_eq!(real_answers[3], (48.0, Asked::Use(netboot("real"))));
    // The cached machine was refreshed all along, about every 15-20 s.
    let refreshes = s.requests_for(cached);
    assert!(refreshes.len() >= 5, "{refreshes:?}");
    // The API saw each invented MAC at most once, and a 404 is not asked again
    // within its TTL: every invented MAC answered in the last 25 s is asked again now.
    let before = s.requests.len();
    let end = s.now;
    let recent: Vec<MacAddr> = s
        .requests
        .iter()
        .filter(|(t, m)| m.0[1] == 9 && end.duration_since(*t) < Duration::from_secs(25))
        .map(|(_, m)| *m)
        .collect();
    assert!(recent.len() > 50, "{} recent", recent.len());
    s.run_to(96.0);
    let done = s.requests.len();
    for m in &recent {
        if !s.l.is_pending(*m) {
            assert_eq!(
                s.l.ask(*m, s.now).0,
                Asked::Use(BootDecision::Ignore("404".into()))
            );
        }
    }
    s.dispatch();
    assert_eq!(s.requests.len(), done, "a declined MAC was asked again");
    assert!(done >= before);
    let mut per_mac: HashMap<MacAddr, usize> = HashMap::new();
    for (_, m) in &s.requests {
        *per_mac.entry(*m).or_default() += 1;
    }
    assert!(per_mac
        .iter()
        .all(|(m, n)| *n == 1 || *m == cached || *m == real));
    // Bounded: at most 16 requests at once, and the memory.
    assert!(s.peak_running <= Limits::DEFAULT_CONCURRENT);
    assert!(s.l.remembered() <= MAX_MACHINES);
    assert!(s.l.queued() <= MAX_QUEUED_NEW + MAX_QUEUED_KNOWN);
}

/// "Don't boot" answers are kept for the negative TTL, failed lookups until the
/// machine may be asked about again.
#[test]
fn declined_and_failed_answers_are_not_asked_again_too_soon() {
    let limits = Limits {
        negative_ttl: Duration::from_secs(30),
        mac_interval: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut s = Sim::new(limits, Duration::from_millis(100));
    let declined = mac(2, 1);
    assert_eq!(s.ask(declined, 0.0), Asked::Pending);
    for t in 1..30 {
        assert_eq!(
            s.ask(declined, f64::from(t)),
            Asked::Use(BootDecision::Ignore("404".into())),
            "at {t} s"
        );
    }
    assert_eq!(s.requests_for(declined), [0.0]);
    // Past the TTL: asked again (the old answer is no longer used).
    assert_eq!(s.ask(declined, 30.2), Asked::Pending);
    assert_eq!(s.requests_for(declined), [0.0, 30.2]);

    let failing = mac(2, 2);
    s.failing.push(failing);
    assert_eq!(s.ask(failing, 40.0), Asked::Pending);
    // It failed at 40.1 s.
    for t in [41.0, 42.0, 45.0] {
        assert_eq!(
            s.ask(failing, t),
            Asked::Use(BootDecision::Ignore("timeout".into()))
        );
    }
    assert_eq!(s.ask(failing, 45.2), Asked::Pending);
    assert_eq!(s.requests_for(failing), [40.0, 45.2]);

    // A negative TTL shorter than the per-machine interval: the interval wins.
    let mut s = Sim::new(
        Limits {
            negative_ttl: Duration::from_secs(1),
            ..limits
        },
        Duration::from_millis(100),
    );
    s.ask(declined, 0.0);
    assert_eq!(
        s.ask(declined, 2.0),
        Asked::Use(BootDecision::Ignore("404".into()))
    );
    assert_eq!(s.ask(declined, 5.0), Asked::Pending);
    assert_eq!(s.requests_for(declined), [0.0, 5.0]);
}

/// A boot answer is used while its refresh is pending, however slow the API has
/// become, up to MAX_STALE; one that old is not used, and its lookup goes first.
#[test]
fn stale_answers_are_used_while_their_refresh_is_pending() {
    let mut s = Sim::new(Limits::default(), Duration::from_millis(100));
    let m = mac(3, 1);
    s.boots.insert(m, netboot("v1"));
    s.ask(m, 0.0);
    assert_eq!(s.ask(m, 1.0), Asked::Use(netboot("v1")));
    assert_eq!(s.ask(m, 14.0), Asked::Use(netboot("v1")));
    assert_eq!(s.requests_for(m), [0.0]);
    // The API becomes slow, and answers differently.
    s.latency = Duration::from_secs(60);
    s.boots.insert(m, netboot("v2"));
    assert_eq!(s.ask(m, 16.0), Asked::Use(netboot("v1")));
    assert_eq!(s.requests_for(m), [0.0, 16.0]);
    for t in [20.0, 31.0, 60.0, 75.9] {
        assert_eq!(s.ask(m, t), Asked::Use(netboot("v1")), "at {t} s");
    }
    assert_eq!(s.ask(m, 76.1), Asked::Use(netboot("v2")));
    assert_eq!(s.requests_for(m), [0.0, 16.0]);

    // Idle far past MAX_STALE: not used; queued ahead of never-seen machines.
    let mut s = Sim::new(
        Limits {
            concurrent: 1,
            ..Limits::default()
        },
        Duration::from_secs(1),
    );
    s.boots.insert(m, netboot("v1"));
    s.ask(m, 0.0);
    s.run_to(2.0);
    s.ask(mac(3, 100), 300.0); // running: occupies the one slot
    for n in 0..10 {
        s.ask(mac(3, 200 + n), 300.0);
    }
    assert_eq!(s.ask(m, 300.0), Asked::Pending);
    s.run_to(301.5);
    assert_eq!(s.requests.last().map(|r| r.1), Some(m));
    assert_eq!(s.ask(m, 302.5), Asked::Use(netboot("v1")));
}

/// Known machines go first, but every fourth turn goes to a never-seen one.
#[test]
fn known_machines_go_first_without_starving_new_ones() {
    let mut s = Sim::new(
        Limits {
            concurrent: 1,
            rate: 1000,
            ..Limits::default()
        },
        Duration::from_millis(10),
    );
    let known: Vec<MacAddr> = (0..8).map(|n| mac(4, n)).collect();
    for (i, k) in known.iter().enumerate() {
        s.boots.insert(*k, netboot("k"));
        s.ask(*k, i as f64 * 0.1);
    }
    s.run_to(1.0);
    // All eight due for a refresh, and eight new machines, at once; one more
    // lookup holds the single slot while they queue.
    s.latency = Duration::from_secs(1);
    s.ask(mac(4, 99), 20.0);
    s.latency = Duration::from_millis(10);
    for n in 0..8 {
        s.ask(mac(5, n), 20.0);
    }
    for k in &known {
        s.ask(*k, 20.0);
    }
    s.run_to(30.0);
    let order: String = s
        .requests
        .iter()
        .filter(|(t, _)| t.duration_since(s.t0) > Duration::from_secs(20))
        .map(|(_, m)| if m.0[1] == 4 { 'K' } else { 'N' })
        .collect();
    // Nine lookups ran before, so the fourth turn falls on the third of these.
    assert_eq!(s.requests.len(), 9 + 16);
    assert_eq!(order, "KKNKKKNKKKNNNNNN");
}

/// Lookups start at most `rate` a second, after a burst of as many.
#[test]
fn the_global_rate_limit_holds() {
    let mut s = Sim::new(
        Limits {
            rate: 20,
            concurrent: 1000,
            ..Limits::default()
        },
        Duration::from_millis(1),
    );
    for n in 0..100 {
        s.ask(mac(6, n), 0.0);
    }
    s.run_to(10.0);
    let within = |a: f64, b: f64| {
        s.requests
            .iter()
            .filter(|(t, _)| {
                let x = t.duration_since(s.t0).as_secs_f64();
                x >= a && x < b
            })
            .count()
    };
    assert_eq!(within(0.0, 0.001), 20);
    assert_eq!(within(0.001, 1.001), 20);
    assert_eq!(within(1.001, 2.001), 20);
    assert_eq!(s.requests.len(), 100);
    // Spaced 50 ms apart after the burst.
    let gaps: Vec<Duration> = s.requests[20..]
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .collect();
    assert!(
        gaps.iter().all(|g| *g == Duration::from_millis(50)),
        "{gaps:?}"
    );
}

/// When the places for never-seen machines are full, the oldest first ask gives
/// way; that machine's retransmit queues as a retry, ahead of every first ask.
#[test]
fn a_pushed_out_machine_comes_back_as_a_retry() {
    let mut s = Sim::new(
        Limits {
            concurrent: 1,
            ..Limits::default()
        },
        Duration::from_secs(10),
    );
    let hold = mac(7, 9999);
    s.ask(hold, 0.0);
    let first = mac(7, 0);
    s.ask(first, 0.0);
    for n in 1..=MAX_QUEUED_NEW as u32 {
        s.ask(mac(7, n), 0.5);
    }
    assert_eq!(s.l.queued(), MAX_QUEUED_NEW);
    assert!(!s.l.is_pending(first));
    // Its retransmit: a retry, and the next lookup.
    assert_eq!(s.ask(first, 4.0), Asked::Pending);
    s.run_to(10.5);
    assert_eq!(s.requests.last().map(|r| r.1), Some(first));
    // A machine still queued that retransmits moves up too.
    let queued = mac(7, 200);
    assert!(s.l.is_pending(queued));
    s.ask(queued, 12.0);
    s.run_to(20.5);
    assert_eq!(s.requests.last().map(|r| r.1), Some(queued));
    // Places full of retries turn away further first asks.
    let mut s = Sim::new(
        Limits {
            concurrent: 1,
            ..Limits::default()
        },
        Duration::from_secs(100),
    );
    s.ask(hold, 0.0);
    for n in 0..MAX_QUEUED_NEW as u32 {
        s.ask(mac(8, n), 0.0);
    }
    for n in 0..MAX_QUEUED_NEW as u32 {
        assert_eq!(s.ask(mac(8, n), 3.0), Asked::Pending);
    }
    assert_eq!(s.ask(mac(8, 5000), 3.0), Asked::Full);
}

/// The memory is bounded under a long flood, and a known machine outlives it.
#[test]
fn memory_is_bounded_and_keeps_known_machines() {
    let mut s = Sim::new(
        Limits {
            rate: 1000,
            concurrent: 64,
            ..Limits::default()
        },
        Duration::from_millis(5),
    );
    let known = mac(10, 1);
    s.boots.insert(known, netboot("k"));
    s.ask(known, 0.0);
    s.run_to(0.1);
    for n in 0..40_000u32 {
        s.ask(mac(11, n), 1.0 + f64::from(n) * 0.001);
        assert!(s.l.remembered() <= MAX_MACHINES);
    }
    // Idle for the whole flood, yet still remembered as known: its answer is used
    // while a refresh runs.
    assert!(s.l.machines[&known].known);
    assert_eq!(s.ask(known, 41.5), Asked::Use(netboot("k")));
    assert_eq!(s.l.machines[&known].lookup, Lookup::Running);
}
