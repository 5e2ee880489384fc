//! Prometheus metrics (prometheus-client), counted from the same events as the
//! timelines.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::machine::Phase;
use crate::store::Ingested;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhcpLabels {
    arch: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Time to boot: from a few seconds (iPXE ROM with an RA) to long installs.
const BOOT_BUCKETS: [f64; 12] = [
    2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Phases: from milliseconds (a script) to minutes (a large initrd).
const PHASE_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// Every metric ironpxe exports.
pub(crate) struct Metrics {
    registry: Registry,
    offers: Family<DhcpLabels, Counter>,
    acks: Family<DhcpLabels, Counter>,
    ignored: Family<StageLabels, Counter>,
    dropped: Counter,
    tftp_transfers: Family<OutcomeLabels, Counter>,
    tftp_bytes: Counter,
    http_scripts: Counter,
    http_files: Family<FileLabels, Counter>,
    http_bytes: Family<KindLabels, Counter>,
    boots: Counter,
    boot_seconds: Histogram,
    phase_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    machines: Family<StateLabels, Gauge>,
    stuck: Gauge,
    tftp_active: Gauge,
    http_active: Gauge,
    /// The transfers running now, by [`Metrics::transfer_key`]: a start event adds
    /// one, its end event takes it away. Ends without a start (a request refused
    /// before its transfer began) change nothing.
    active: Mutex<HashMap<String, u32>>,
    by_family: Family<FamilyLabels, Counter>,
}

impl Metrics {
    /// One DHCP packet dropped for want of a lookup slot.
    pub(crate) fn dhcp_dropped(&self) {
        self.dropped.inc();
    }

    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            offers: Family::default(),
            acks: Family::default(),
            ignored: Family::default(),
            dropped: Counter::default(),
            tftp_transfers: Family::default(),
            tftp_bytes: Counter::default(),
            http_scripts: Counter::default(),
            http_files: Family::default(),
            http_bytes: Family::default(),
            boots: Counter::default(),
            boot_seconds: Histogram::new(BOOT_BUCKETS),
            phase_seconds: Family::new_with_constructor(phase_histogram),
            machines: Family::default(),
            stuck: Gauge::default(),
            tftp_active: Gauge::default(),
            http_active: Gauge::default(),
            active: Mutex::new(HashMap::new()),
            by_family: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ironpxe_dhcp_offers",
            "ProxyDHCP offers sent (UDP 67), by client architecture and boot path",
            m.offers.clone(),
        );
        registry.register(
            "ironpxe_dhcp_acks",
            "PXE boot-server ACKs sent (UDP 4011), by client architecture and boot path",
            m.acks.clone(),
        );
        registry.register(
            "ironpxe_ignored",
            "Machines not booted, by the stage that decided (dhcp, http)",
            m.ignored.clone(),
        );
        registry.register(
            "ironpxe_dhcp_dropped",
            "DHCP packets dropped because every booter lookup slot was busy (API mode)",
            m.dropped.clone(),
        );
        registry.register(
            "ironpxe_tftp_transfers",
            "TFTP transfers that ended, by outcome (done, failed, aborted)",
            m.tftp_transfers.clone(),
        );
        registry.register(
            "ironpxe_tftp_bytes",
            "Bytes delivered by completed TFTP transfers",
            m.tftp_bytes.clone(),
        );
        registry.register(
            "ironpxe_http_scripts",
            "iPXE boot scripts served",
            m.http_scripts.clone(),
        );
        registry.register(
            "ironpxe_http_files",
            "HTTP boot file transfers that ended, by kind (kernel, initrd, other) and outcome (done, failed)",
            m.http_files.clone(),
        );
        registry.register(
            "ironpxe_http_bytes",
            "Bytes sent over HTTP, by kind (script, kernel, initrd, other)",
            m.http_bytes.clone(),
        );
        registry.register(
            "ironpxe_boots",
            "Boots completed: iPXE called /_/booting and started the kernel",
            m.boots.clone(),
        );
        registry.register(
            "ironpxe_boot_duration_seconds",
            "Time from a machine's first offer to its booting callback",
            m.boot_seconds.clone(),
        );
        registry.register(
            "ironpxe_boot_phase_duration_seconds",
            "Time spent in each boot phase (offered, chainloading, chainloaded, script, kernel, initrd)",
            m.phase_seconds.clone(),
        );
        registry.register(
            "ironpxe_machines",
            "Machines known to the status store, by current state",
            m.machines.clone(),
        );
        registry.register(
            "ironpxe_machines_stuck",
            "Machines in an unfinished phase for longer than the stuck threshold",
            m.stuck.clone(),
        );
        registry.register(
            "ironpxe_tftp_transfers_active",
            "TFTP transfers running now (started, not yet done, failed or aborted)",
            m.tftp_active.clone(),
        );
        registry.register(
            "ironpxe_http_files_active",
            "HTTP file downloads running now (started, not yet done or failed)",
            m.http_active.clone(),
        );
        registry.register(
            "ironpxe_answers_by_family",
            "DHCP answers, completed TFTP transfers and HTTP answers (scripts, files, iPXE binaries), by the client's address family (ipv4, ipv6) and protocol (dhcp, tftp, http)",
            m.by_family.clone(),
        );
        Metrics { registry, ..m }
    }

    /// What pairs a transfer's start with its end: the protocol, the client's
    /// address and port, and the file (TFTP: its name; HTTP: its id). A client port
    /// runs one transfer of a file at a time.
    fn transfer_key(r: &crate::record::Record, tftp: bool) -> Option<String> {
        let peer = r.text("peer")?;
        let what = if tftp { r.text("file") } else { r.text("id") }?;
        Some(format!(
            "{} {peer} {what}",
            if tftp { "tftp" } else { "http" }
        ))
    }

    /// Counts a transfer in (`start`) or out, and sets its protocol's gauge.
    fn track(&self, r: &crate::record::Record, tftp: bool, start: bool) {
        let Some(key) = Self::transfer_key(r, tftp) else {
            return;
        };
        let gauge = if tftp {
            &self.tftp_active
        } else {
            &self.http_active
        };
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if start {
            *active.entry(key).or_insert(0) += 1;
            gauge.inc();
            return;
        }
        match active.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                active.remove(&key);
            }
            None => return,
        }
        gauge.dec();
    }

    /// Counts one applied event: counters only for fresh events (a late attribution
    /// was counted when it first arrived), histograms for every state change.
    pub(crate) fn observe(&self, ing: &Ingested) {
        if let Some((phase, ms)) = ing.applied.ended {
            self.phase_seconds
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str().into(),
                })
                .observe(ms as f64 / 1000.0);
        }
        if let Some(ms) = ing.applied.booted_ms {
            self.boot_seconds.observe(ms as f64 / 1000.0);
        }
        if !ing.fresh {
            return;
        }
        let r = &ing.record;
        let protocol = match r.event.as_str() {
            "dhcp.offer" | "dhcp.ack" => Some("dhcp"),
            "tftp.done" => Some("tftp"),
            "http.script" | "http.file.done" | "http.bin" => Some("http"),
            _ => None,
        };
        let family = r.text("peer").as_deref().and_then(crate::store::peer_ip);
        if let (Some(protocol), Some(ip)) = (protocol, family) {
            self.by_family
                .get_or_create(&FamilyLabels {
                    family: ironpxe_core::net6::AddrFamily::of(ip).as_str().into(),
                    protocol: protocol.into(),
                })
                .inc();
        }
        let text = |k: &str| r.text(k).unwrap_or_else(|| "unknown".into());
        let kind = || r.text("kind").unwrap_or_else(|| "other".into());
        match r.event.as_str() {
            "dhcp.offer" | "dhcp.ack" => {
                let family = if r.event == "dhcp.offer" {
                    &self.offers
                } else {
                    &self.acks
                };
                family
                    .get_or_create(&DhcpLabels {
                        arch: text("arch"),
                        path: text("path"),
                    })
                    .inc();
            }
            "dhcp.ignore" | "http.ignored" => {
                let stage = r.event.split('.').next().unwrap_or("dhcp").to_string();
                self.ignored.get_or_create(&StageLabels { stage }).inc();
            }
            "tftp.start" => self.track(r, true, true),
            "http.file.start" => self.track(r, false, true),
            "tftp.done" | "tftp.failed" | "tftp.aborted" => {
                self.track(r, true, false);
                let outcome = r.event.trim_start_matches("tftp.").to_string();
                self.tftp_transfers
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
                if r.event == "tftp.done" {
                    self.tftp_bytes.inc_by(r.number("bytes").unwrap_or(0));
                }
            }
            "http.script" => {
                self.http_scripts.inc();
                if let Some(b) = r.number("bytes") {
                    self.http_bytes
                        .get_or_create(&KindLabels {
                            kind: "script".into(),
                        })
                        .inc_by(b);
                }
            }
            "http.file.done" | "http.file.failed" => {
                self.track(r, false, false);
                let outcome = r.event.trim_start_matches("http.file.").to_string();
                self.http_files
                    .get_or_create(&FileLabels {
                        kind: kind(),
                        outcome,
                    })
                    .inc();
                self.http_bytes
                    .get_or_create(&KindLabels { kind: kind() })
                    .inc_by(r.number("bytes").unwrap_or(0));
            }
            "http.booting" | "grub.booting" => {
                self.boots.inc();
            }
            _ => {}
        }
    }

    /// The text exposition, with the machine gauges brought up to date.
    /// The exposition, with the machine gauges set from `machines`: each one's
    /// state and whether it is stuck.
    pub(crate) fn encode(&self, machines: &[(Option<Phase>, bool)]) -> String {
        self.machines.clear();
        for p in Phase::ALL {
            self.machines
                .get_or_create(&StateLabels {
                    state: p.as_str().into(),
                })
                .set(0);
        }
        let mut stuck = 0;
        for &(state, is_stuck) in machines {
            let state = state.map(Phase::as_str).unwrap_or("unknown");
            self.machines
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .inc();
            if is_stuck {
                stuck += 1;
            }
        }
        self.stuck.set(stuck);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
