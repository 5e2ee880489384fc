//! The limits [`crate::serve`] applies to hostile or broken clients, as pure
//! bookkeeping with no sockets, so they are tested without a network.
//!
//! - [`Admission`] decides whether a read request starts a transfer: at most
//!   [`TftpConfig::max_transfers`](crate::TftpConfig::max_transfers) in all, at most
//!   [`TftpConfig::max_per_address`](crate::TftpConfig::max_per_address) per client
//!   address, and one per (client address and port, file name).
//! - [`TokenBucket`] limits how often a transfer socket answers packets that are not
//!   from its client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What to do with a read request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start a transfer; it is counted until [`Admission::release`].
    Start,
    /// The same client port already has a transfer of this file running: this is a
    /// retransmitted request, and that transfer answers it.
    Duplicate,
    /// Every transfer slot is taken.
    ServerFull,
    /// The client's address has its share of transfers running.
    AddressFull,
}

impl Verdict {
    /// The message of the ERROR answering a refusal. A full server sends none: the
    /// request goes unanswered, the client sends it again after its timeout (every
    /// PXE ROM and iPXE does), and it starts once a slot is free. An ERROR would end
    /// that client's boot attempt instead of delaying it.
    pub(crate) fn busy_message(self) -> Option<&'static str> {
        match self {
            Verdict::AddressFull => {
                Some("server busy: too many transfers from this address, retry later")
            }
            Verdict::ServerFull | Verdict::Start | Verdict::Duplicate => None,
        }
    }
}

/// The running transfers, counted in all and by client address, and keyed by client
/// and file name.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_address: usize,
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    /// File names running per client address and port (nearly always one).
    running: HashMap<SocketAddr, Vec<String>>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Admission {
        Admission {
            max_total,
            max_per_address,
            total: 0,
            per_address: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Decides on a request for `file` from `peer`, and counts it when it starts.
    ///
    /// A repeated request from the same address and port for the same file joins the
    /// running transfer rather than starting a second one or restarting it. Firmware
    /// repeats its request when the first answer (OACK or block 1) is lost; the
    /// running transfer retransmits that answer on its own timer, from the transfer
    /// ID the client will lock onto. A second transfer would answer from a second
    /// ID, which the client refuses with ERROR 5 once it follows the first, and it
    /// would take a slot; a restart would make the same confusion and throw away the
    /// round trip measured so far. Answering the repeat at once is not done either,
    /// so a stream of repeats cannot make the server send more than its own timer
    /// does.
    pub(crate) fn admit(&mut self, peer: SocketAddr, file: &str) -> Verdict {
        if self
            .running
            .get(&peer)
            .is_some_and(|files| files.iter().any(|f| f == file))
        {
            return Verdict::Duplicate;
        }
        if self.total >= self.max_total {
            return Verdict::ServerFull;
        }
        let n = self.per_address.entry(peer.ip()).or_insert(0);
        if *n >= self.max_per_address {
            return Verdict::AddressFull;
        }
        *n += 1;
        self.total += 1;
        self.running.entry(peer).or_default().push(file.to_string());
        Verdict::Start
    }

    /// Forgets a transfer started by [`Admission::admit`].
    pub(crate) fn release(&mut self, peer: SocketAddr, file: &str) {
        let Some(files) = self.running.get_mut(&peer) else {
            return;
        };
        let Some(i) = files.iter().position(|f| f == file) else {
            return;
        };
        files.swap_remove(i);
        if files.is_empty() {
            self.running.remove(&peer);
        }
        self.total -= 1;
        if let Some(n) = self.per_address.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&peer.ip());
            }
        }
    }

    /// Transfers counted now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.total
    }
}

/// A transfer's place in the shared [`Admission`], given up when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Mutex<Admission>>,
    peer: SocketAddr,
    file: String,
}

impl Ticket {
    /// Admits a request for `file` from `peer`; a ticket when it may start.
    pub(crate) fn take(
        admission: &Arc<Mutex<Admission>>,
        peer: SocketAddr,
        file: &str,
    ) -> Result<Ticket, Verdict> {
        let mut a = admission.lock().unwrap_or_else(PoisonError::into_inner);
        match a.admit(peer, file) {
            Verdict::Start => Ok(Ticket {
                admission: admission.clone(),
                peer,
                file: file.to_string(),
            }),
            refused => Err(refused),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.peer, &self.file);
    }
}

/// At most `rate` events per second on average, in bursts of at most `burst`.
/// Integer nanoseconds, so virtual-time tests are exact.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    /// Time that earns one event.
    interval: u64,
    /// Most credit kept: `burst` events.
    cap: u64,
    credit: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> TokenBucket {
        let interval = 1_000_000_000 / u64::from(rate.max(1));
        let cap = interval * u64::from(burst.max(1));
        TokenBucket {
            interval,
            cap,
            credit: cap,
            last: None,
        }
    }

    /// Whether one more event may happen at `now` (and counts it if so).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        let earned = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.credit = self.credit.saturating_add(earned).min(self.cap);
        if self.credit >= self.interval {
            self.credit -= self.interval;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let mut a = Admission::new(10, 3);
        let attacker = [10, 0, 0, 66];
        let verdicts: Vec<_> = (0..6)
            .map(|i| a.admit(peer(attacker, 1000 + i), "ipxe.efi"))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Start,
                Verdict::Start,
                Verdict::Start,
                Verdict::AddressFull,
                Verdict::AddressFull,
                Verdict::AddressFull
            ]
        );
        assert_eq!(a.running(), 3);
        // Another machine is not affected.
        assert_eq!(
            a.admit(peer([10, 0, 0, 7], 2000), "ipxe.efi"),
            Verdict::Start
        );
        // A finished transfer gives its place back.
        a.release(peer(attacker, 1001), "ipxe.efi");
        assert_eq!(a.admit(peer(attacker, 1010), "ipxe.efi"), Verdict::Start);
        assert_eq!(a.running(), 4);
    }

    #[test]
    fn the_global_cap_holds_across_addresses() {
        let mut a = Admission::new(4, 2);
        let mut started = 0;
        for host in 1..=5u8 {
            for port in 0..2 {
                if a.admit(peer([10, 0, 0, host], 3000 + port), "f") == Verdict::Start {
                    started += 1;
                }
            }
        }
        assert_eq!(started, 4);
        assert_eq!(a.admit(peer([10, 0, 0, 9], 1), "f"), Verdict::ServerFull);
        for port in 0..2 {
            a.release(peer([10, 0, 0, 1], 3000 + port), "f");
        }
        assert_eq!(a.admit(peer([10, 0, 0, 9], 1), "f"), Verdict::Start);
    }

    #[test]
    fn a_repeated_request_joins_the_running_transfer() {
        let mut a = Admission::new(100, 8);
        let client = peer([10, 0, 0, 5], 2070);
        assert_eq!(a.admit(client, "undionly.kpxe"), Verdict::Start);
        for _ in 0..30 {
            assert_eq!(a.admit(client, "undionly.kpxe"), Verdict::Duplicate);
        }
        assert_eq!(a.running(), 1);
        // Another file, or another port, is another transfer.
        assert_eq!(a.admit(client, "ipxe.efi"), Verdict::Start);
        assert_eq!(
            a.admit(peer([10, 0, 0, 5], 2071), "undionly.kpxe"),
            Verdict::Start
        );
        // Once the transfer ended, the same request starts a new one.
        a.release(client, "undionly.kpxe");
        assert_eq!(a.admit(client, "undionly.kpxe"), Verdict::Start);
        // Releasing something never admitted changes nothing.
        a.release(peer([1, 2, 3, 4], 5), "x");
        assert_eq!(a.running(), 3);
    }

    #[test]
    fn tickets_release_on_drop() {
        let a = Arc::new(Mutex::new(Admission::new(2, 1)));
        let p = peer([10, 0, 0, 5], 2070);
        let t = Ticket::take(&a, p, "f").unwrap();
        assert_eq!(Ticket::take(&a, p, "f").unwrap_err(), Verdict::Duplicate);
        assert_eq!(
            Ticket::take(&a, peer([10, 0, 0, 5], 9), "g").unwrap_err(),
            Verdict::AddressFull
        );
        drop(t);
        assert_eq!(a.lock().unwrap().running(), 0);
        assert!(Ticket::take(&a, peer([10, 0, 0, 5], 9), "g").is_ok());
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 10);
        let burst = (0..100).filter(|_| b.allow(t0)).count();
        assert_eq!(burst, 10);
        // One second of a steady flood, one packet per millisecond: ten more.
        let later = (1..=1000)
            .filter(|ms| b.allow(t0 + Duration::from_millis(*ms)))
            .count();
        assert_eq!(later, 10);
        // Quiet for a long time: the burst comes back, no more.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| b.allow(t1)).count(), 10);
        // A clock that goes backwards does not mint tokens.
        assert!(!b.allow(t0));
    }
}
