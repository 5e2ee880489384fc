//! ironpxe's boot status: what every machine is doing, for people and for Prometheus.
//!
//! The protocol crates describe each step of a boot as a typed
//! [`BootEvent`](ironpxe_core::BootEvent) (`dhcp.offer`, `tftp.done`,
//! `http.file.start`, `http.booting`, ...). This crate consumes them:
//!
//! - [`Status`] is an [`EventSink`]: the binary installs it with
//!   [`ironpxe_core::event::set_sink`], and each event becomes a [`Record`] handed to
//!   [`Status::record`], whatever the log level.
//! - The [`Store`] attributes records to machines by MAC (TFTP and HTTP file events
//!   carry only an address; see [`store`] for how they are matched), keeps a bounded
//!   timeline per machine (a ring of events, at most [`StoreConfig::max_machines`]
//!   machines, least recently seen dropped first), and derives each machine's
//!   [`Phase`], progress, time in phase and whether it is stuck ([`Machine`]).
//! - [`Status::observe_booter`] wraps the [`Booter`] so the store learns which file
//!   id is a machine's kernel and which are its initrds.
//! - [`Status::router`] serves `GET /` (a live HTML page), `GET /api/v1/machines`
//!   (JSON, in pages: [`PageQuery`]), `GET /api/v1/events` (server-sent events),
//!   `GET /api/v1/log` (every recent event in order, JSON, in pages, for tools and
//!   the lab) and `GET /metrics` (Prometheus text, [`prometheus_client`]).
//! - No answer is built while holding the store: a page is copied out under the
//!   lock (machines whose events are shared [`Arc`]s), and serialised after it is
//!   released, so a boot event is never kept waiting by a reader of the status.
//! - [`InstallApi`] ([`install`]) serves the install API: installers report
//!   success, operators ask for reinstalls, `GET /api/v1/installs` lists install
//!   states with each machine's phase.
//! - [`Status::open_state_dir`] restores a saved store and [`StateDir::run`] saves it
//!   every few seconds when it changed, so a restart keeps history.

pub mod install;
pub mod machine;
mod metrics;
pub mod record;
pub mod store;
mod web;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironpxe_core::{BootDecision, BootSpec, Booter, ClientArch, FileId, FileRef, MacAddr};
use ironpxe_core::{BootEvent, EventSink};
use serde_json::{json, Value};
use tokio::sync::broadcast;

pub use install::InstallApi;
pub use machine::{Expected, Machine, Phase, PhaseSpan};
pub use record::{Record, EVENT_TARGET};
pub use store::{Neighbors, NoNeighbors, Page, ProcNetArp, Store, StoreConfig};
pub use web::{LogQuery, PageQuery, DEFAULT_LOG_PAGE, DEFAULT_PAGE, MAX_LOG_PAGE, MAX_PAGE};

use metrics::Metrics;

/// Errors of the status crate.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The state directory cannot be created or written.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The saved state is not what this version writes.
    #[error("{path} is not a valid ironpxe state file ({reason}); move it away to start afresh")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shared status: store, metrics and live subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Status {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    metrics: Metrics,
    live: broadcast::Sender<Arc<str>>,
    /// Set once the server shuts down: live streams end.
    closing: tokio::sync::watch::Sender<bool>,
    neighbors: Box<dyn Neighbors>,
    /// Bumped on every change; the saver compares it with what it last wrote.
    generation: AtomicU64,
    /// Every event in arrival order, the last [`FEED_LEN`], for `GET /api/v1/log`.
    feed: Mutex<Feed>,
}

/// How many events `GET /api/v1/log` keeps.
pub const FEED_LEN: usize = 8192;

/// The recent events, numbered from 1 in arrival order.
#[derive(Default)]
struct Feed {
    next: u64,
    records: std::collections::VecDeque<(u64, Arc<Record>)>,
}

impl Status {
    /// A status store that reads the host's ARP table to attribute TFTP transfers.
    pub fn new(cfg: StoreConfig) -> Self {
        Self::with_neighbors(cfg, Box::new(ProcNetArp))
    }

    /// A status store with a given neighbour table (tests use [`NoNeighbors`]).
    pub fn with_neighbors(cfg: StoreConfig, neighbors: Box<dyn Neighbors>) -> Self {
        let (live, _) = broadcast::channel(1024);
        Status {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(cfg)),
                metrics: Metrics::new(),
                live,
                closing: tokio::sync::watch::Sender::new(false),
                feed: Mutex::new(Feed {
                    next: 1,
                    records: Default::default(),
                }),
                neighbors,
                generation: AtomicU64::new(0),
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the stuck threshold ([`StoreConfig::stuck_after_ms`]).
    pub fn set_stuck_after(&self, after: Duration) {
        self.store().set_stuck_after_ms(after.as_millis() as u64);
    }

    /// Records one event: attributes it, updates the machine, counts it, and sends
    /// it to live subscribers.
    pub fn record(&self, rec: Record) {
        let rec = Arc::new(rec);
        {
            let mut feed = self.inner.feed.lock().unwrap_or_else(|p| p.into_inner());
            let seq = feed.next;
            feed.next += 1;
            if feed.records.len() >= FEED_LEN {
                feed.records.pop_front();
            }
            feed.records.push_back((seq, rec.clone()));
        }
        let (ingested, payloads) = {
            let mut store = self.store();
            let ingested = store.ingest(rec, self.inner.neighbors.as_ref());
            let now = now_ms();
            let stuck_after = store.config().stuck_after_ms;
            // The live payloads are only built for someone listening: under a DHCP
            // flood with no status page open, each answer costs no JSON.
            let listening = self.inner.live.receiver_count() > 0;
            let payloads: Vec<String> = ingested
                .iter()
                .filter(|_| listening)
                .map(|i| {
                    let machine = i
                        .mac
                        .and_then(|m| store.machine(&m))
                        .map(|m| web::machine_json(m, now, stuck_after, false));
                    json!({
                        "mac": i.mac,
                        "event": web::event_json(&i.record),
                        "machine": machine,
                    })
                    .to_string()
                })
                .collect();
            (ingested, payloads)
        };
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        for i in &ingested {
            self.inner.metrics.observe(i);
        }
        for p in payloads {
            // No subscribers is fine.
            let _ = self.inner.live.send(p.into());
        }
    }

    /// Wraps `booter` so the store learns each machine's kernel and initrd file ids.
    pub fn observe_booter(&self, booter: Arc<dyn Booter>) -> Arc<dyn Booter> {
        Arc::new(ObservedBooter {
            inner: booter,
            status: self.clone(),
            ids: Default::default(),
        })
    }

    /// The first page of `GET /api/v1/machines` (the default [`PageQuery`]) as JSON
    /// at `now_ms`.
    pub fn machines_json(&self, now_ms: u64) -> Value {
        self.machines_page(&PageQuery::default(), now_ms)
    }

    /// One page of `GET /api/v1/machines` as JSON at `now_ms`: the machines after
    /// `q.after` in MAC order, at most `q.limit` of them, `total` (machines in the
    /// store) and `next` (the `after` of the next page, `null` on the last one). The
    /// first page (no `after`) also carries the unattributed events.
    pub fn machines_page(&self, q: &PageQuery, now_ms: u64) -> Value {
        self.machines_page_with(q, now_ms, &mut || {})
    }

    /// [`Status::machines_page`], calling `between` after each machine is
    /// serialised (tests use it to act while a page is being built).
    fn machines_page_with(&self, q: &PageQuery, now_ms: u64, between: &mut dyn FnMut()) -> Value {
        // Copied under the lock; everything below runs without it.
        let (page, unattributed, stuck_after) = {
            let store = self.store();
            let unattributed: Vec<Record> = if q.after.is_none() {
                store.unattributed().map(|u| u.record.clone()).collect()
            } else {
                Vec::new()
            };
            (
                store.page(q.after, q.limit),
                unattributed,
                store.config().stuck_after_ms,
            )
        };
        let machines: Vec<Value> = page
            .machines
            .iter()
            .map(|m| {
                let v = web::machine_json(m, now_ms, stuck_after, q.events);
                between();
                v
            })
            .collect();
        let unattributed: Vec<Value> = unattributed.iter().map(web::event_json).collect();
        json!({
            "now_ms": now_ms,
            "stuck_after_ms": stuck_after,
            "total": page.total,
            "next": page.next,
            "machines": machines,
            "unattributed": unattributed,
        })
    }

    /// `GET /api/v1/log?after=N`: the events numbered above `after`, in arrival
    /// order, as they were recorded (before attribution), at most
    /// [`DEFAULT_LOG_PAGE`], and the number to ask after next time minus one
    /// (`next`). Poll with `after` set to `next - 1`.
    pub fn log_json(&self, after: u64) -> Value {
        self.log_page(&LogQuery {
            after,
            limit: DEFAULT_LOG_PAGE,
        })
    }

    /// One page of `GET /api/v1/log`: at most `q.limit` events numbered above
    /// `q.after`, and `next`, one more than the last event returned (or than the
    /// last event recorded, when none is returned).
    pub fn log_page(&self, q: &LogQuery) -> Value {
        let (records, next) = {
            let feed = self.inner.feed.lock().unwrap_or_else(|p| p.into_inner());
            // Sequence numbers are consecutive, so the first wanted is found by
            // arithmetic.
            let first = feed.records.front().map_or(feed.next, |(seq, _)| *seq);
            let skip = q.after.saturating_add(1).saturating_sub(first) as usize;
            let records: Vec<(u64, Arc<Record>)> = feed
                .records
                .iter()
                .skip(skip)
                .take(q.limit.max(1))
                .cloned()
                .collect();
            let next = records.last().map_or(feed.next, |(seq, _)| seq + 1);
            (records, next)
        };
        let events: Vec<Value> = records
            .iter()
            .map(|(seq, r)| {
                let mut v = web::event_json(r);
                v["seq"] = json!(seq);
                v
            })
            .collect();
        json!({ "next": next, "events": events })
    }

    /// One machine as JSON, if known.
    pub fn machine_json(&self, mac: &MacAddr, now_ms: u64) -> Option<Value> {
        let (m, stuck_after) = {
            let store = self.store();
            (store.machine(mac).cloned(), store.config().stuck_after_ms)
        };
        m.map(|m| web::machine_json(&m, now_ms, stuck_after, true))
    }

    /// The Prometheus text exposition at `now_ms`.
    pub fn metrics_text(&self, now_ms: u64) -> String {
        let states = self.store().states(now_ms);
        self.inner.metrics.encode(&states)
    }

    /// A receiver of live updates (JSON text, one per applied event).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.live.subscribe()
    }

    /// Ends every live stream (`/api/v1/events`), now and from now on, so that a
    /// graceful HTTP shutdown does not wait for open status pages.
    pub fn end_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once [`Status::end_streams`] was called.
    pub(crate) fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closing.subscribe();
        async move {
            // The sender lives as long as the store; an error cannot happen then.
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// The HTTP routes: `/`, `/api/v1/machines`, `/api/v1/machines/{mac}`,
    /// `/api/v1/events`, `/api/v1/log` and `/metrics`.
    pub fn router(&self) -> axum::Router {
        web::router(self.clone())
    }

    /// Opens (creating it if needed) a state directory and restores the store from
    /// its `status.json`, if there is one. Run the returned [`StateDir`] to keep
    /// saving.
    pub fn open_state_dir(&self, dir: &Path) -> Result<StateDir, StatusError> {
        std::fs::create_dir_all(dir).map_err(|source| StatusError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let file = dir.join(STATE_FILE);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|e| StatusError::BadState {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                if saved.version != STATE_VERSION {
                    return Err(StatusError::BadState {
                        path: file,
                        reason: format!("version {}, expected {STATE_VERSION}", saved.version),
                    });
                }
                self.store().restore(saved.data);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StatusError::Dir { path: file, source }),
        }
        let st = StateDir {
            status: self.clone(),
            file,
            saved: Arc::new(AtomicU64::new(u64::MAX)),
        };
        // Prove now that the directory is writable, not at the first change.
        st.save()?;
        Ok(st)
    }
}

/// The file in the state directory.
const STATE_FILE: &str = "status.json";
const STATE_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    saved_ms: u64,
    data: store::Data,
}

/// A state directory the store is saved to.
#[derive(Clone)]
pub struct StateDir {
    status: Status,
    file: PathBuf,
    saved: Arc<AtomicU64>,
}

impl StateDir {
    /// The state file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Writes the store now (to a temporary file, then renamed over the old one, so
    /// a crash never leaves half a file), unless nothing changed since the last save.
    pub fn save(&self) -> Result<(), StatusError> {
        let generation = self.status.inner.generation.load(Ordering::Relaxed);
        if self.saved.load(Ordering::Relaxed) == generation {
            return Ok(());
        }
        // Copied under the lock (the events are shared), written after it.
        let data = self.status.store().data().clone();
        let bytes = serde_json::to_vec(&Saved {
            version: STATE_VERSION,
            saved_ms: now_ms(),
            data,
        })
        .map_err(|e| StatusError::BadState {
            path: self.file.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.file.with_extension("json.tmp");
        let io = |source| StatusError::Dir {
            path: tmp.clone(),
            source,
        };
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)?;
        self.saved.store(generation, Ordering::Relaxed);
        Ok(())
    }

    /// Saves every `interval` while changed, forever.
    pub async fn run(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.save()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the boot status"),
                Err(e) => tracing::warn!(error = %e, "status saver failed"),
            }
        }
    }
}

impl EventSink for Status {
    fn event(&self, event: &BootEvent) {
        if let BootEvent::DhcpDropped { .. } = event {
            // One per packet under a flood of lookups: counted, not kept, so a flood
            // of invented MACs cannot push real machines out of the store.
            self.inner.metrics.dhcp_dropped();
            return;
        }
        self.record(Record::from_event(now_ms(), event));
    }
}

/// A booter that tells the status store what it decided.
struct ObservedBooter {
    inner: Arc<dyn Booter>,
    status: Status,
    /// The file ids of the specs decided lately, by spec: a spec's ids are hashes of
    /// its file names, computed once per spec rather than once per DHCP packet.
    /// Each entry holds its spec, so an address is never reused while cached.
    ids: std::sync::Mutex<Vec<(Arc<BootSpec>, Arc<Expected>)>>,
}

/// Specs whose file ids [`ObservedBooter`] keeps; a booter with more distinct specs
/// in rotation computes the rest each time.
const CACHED_SPECS: usize = 64;

impl ObservedBooter {
    fn expected(&self, spec: &Arc<BootSpec>) -> Arc<Expected> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, e)) = ids.iter().find(|(s, _)| Arc::ptr_eq(s, spec)) {
            return e.clone();
        }
        let e = Arc::new(Expected::of(spec));
        if ids.len() >= CACHED_SPECS {
            ids.remove(0);
        }
        ids.push((spec.clone(), e.clone()));
        e
    }
}

impl Booter for ObservedBooter {
    fn decide(&self, mac: MacAddr, arch: ClientArch, wait: std::time::Duration) -> BootDecision {
        let d = self.inner.decide(mac, arch, wait);
        if let BootDecision::Netboot(spec) = &d {
            let expected = self.expected(spec);
            self.status.store().expect_files(mac, &expected, now_ms());
        }
        d
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        self.inner.file(id)
    }
}

#[cfg(test)]
mod tests;
