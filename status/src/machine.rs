//! One machine's boot: its timeline, and the state derived from it.
//!
//! [`Machine::apply`] is a pure state machine over [`Record`]s; time comes from the
//! records, so tests drive it with made-up timestamps.

use std::collections::VecDeque;
use std::sync::Arc;

use ironpxe_core::loader::{is_optional_probe, loader_step, GrubPath, LoaderStep};
use ironpxe_core::MacAddr;
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Where a machine is in its boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Got our DHCP offer (or 4011 ACK); next it fetches what the offer names.
    Offered,
    /// Fetching iPXE over TFTP.
    Chainloading,
    /// iPXE arrived; it starts and asks DHCP again.
    Chainloaded,
    /// The iPXE script was served; the kernel comes next.
    Script,
    /// Fetching the kernel.
    Kernel,
    /// Fetching initrds.
    Initrd,
    /// iPXE called `/_/booting` and started the kernel, or GRUB received the last
    /// byte of its last file: done, as far as we can see.
    Booted,
    /// A transfer failed; the machine may retry.
    Failed,
    /// We do not boot this machine.
    Ignored,
}

impl Phase {
    /// Every phase, in boot order; the terminal ones last.
    pub const ALL: [Phase; 9] = [
        Phase::Offered,
        Phase::Chainloading,
        Phase::Chainloaded,
        Phase::Script,
        Phase::Kernel,
        Phase::Initrd,
        Phase::Booted,
        Phase::Failed,
        Phase::Ignored,
    ];

    /// The lowercase name used in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Offered => "offered",
            Phase::Chainloading => "chainloading",
            Phase::Chainloaded => "chainloaded",
            Phase::Script => "script",
            Phase::Kernel => "kernel",
            Phase::Initrd => "initrd",
            Phase::Booted => "booted",
            Phase::Failed => "failed",
            Phase::Ignored => "ignored",
        }
    }

    /// Whether nothing more is expected from the machine in this boot.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Booted | Phase::Failed | Phase::Ignored)
    }
}

/// One phase of the current boot: when it began and, once left, when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpan {
    /// The phase.
    pub phase: Phase,
    /// Entered, Unix ms.
    pub start_ms: u64,
    /// Left, Unix ms; `None` while current.
    pub end_ms: Option<u64>,
}

/// What a machine is expected to fetch, from the boot spec the booter chose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// File id of the kernel.
    pub kernel: String,
    /// File ids of the initrds, in order.
    pub initrds: Vec<String>,
}

impl Expected {
    /// The file ids of `spec`'s kernel and initrds.
    pub fn of(spec: &ironpxe_core::BootSpec) -> Expected {
        Expected {
            kernel: spec.kernel.id().to_string(),
            initrds: spec.initrds.iter().map(|f| f.id().to_string()).collect(),
        }
    }
}

/// What [`Machine::apply`] changed, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// A phase that just ended and how long it lasted (ms).
    pub ended: Option<(Phase, u64)>,
    /// The boot completed, taking this long from the first offer (ms).
    pub booted_ms: Option<u64>,
}

/// One machine: identity, the state of its current boot and its recent events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// The MAC address.
    pub mac: MacAddr,
    /// A configured name; none until configuration names machines.
    pub name: Option<String>,
    /// Firmware architecture from the last DHCP exchange (e.g. `bios`, `efi-x64`).
    pub arch: Option<String>,
    /// The IP address the machine last used to reach us.
    pub ip: Option<String>,
    /// Its address family, `ipv4` or `ipv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// The current phase; `None` before any state-changing event.
    pub state: Option<Phase>,
    /// When the current phase began, Unix ms.
    pub since_ms: u64,
    /// When the current boot began (its first offer), Unix ms.
    pub boot_started_ms: Option<u64>,
    /// How long the last completed boot took, ms.
    pub boot_ms: Option<u64>,
    /// How far the current boot is, 0-100.
    pub progress: u8,
    /// The phases of the current boot, oldest first.
    pub phases: Vec<PhaseSpan>,
    /// Boots completed since this machine was first seen.
    pub boots: u64,
    /// Why the machine failed or was ignored, when it did.
    pub reason: Option<String>,
    /// Last event, Unix ms.
    pub last_seen_ms: u64,
    /// The boot files the booter chose for this machine, once known.
    pub expected: Option<Expected>,
    /// Boot files fetched completely in the current boot (ids).
    pub files_done: Vec<String>,
    /// The last TFTP boot file offered, and when (for attributing TFTP transfers).
    pub tftp_offer: Option<(u64, String)>,
    /// Recent events, oldest first, at most the store's per-machine limit. Shared,
    /// so a snapshot of the machine for the JSON API copies pointers, not events.
    #[serde(with = "shared_records")]
    pub events: VecDeque<Arc<Record>>,
}

/// Saves and restores shared records as plain ones.
mod shared_records {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::record::Record;

    pub(super) fn serialize<S: Serializer>(
        v: &VecDeque<Arc<Record>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|r| &**r))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<VecDeque<Arc<Record>>, D::Error> {
        let v = VecDeque::<Record>::deserialize(d)?;
        Ok(v.into_iter().map(Arc::new).collect())
    }
}

/// At most this many phase spans per boot (a machine looping between phases).
const MAX_PHASES: usize = 32;

impl Machine {
    /// A machine not seen before.
    pub fn new(mac: MacAddr, t_ms: u64) -> Self {
        Machine {
            mac,
            name: None,
            arch: None,
            ip: None,
            family: None,
            state: None,
            since_ms: t_ms,
            boot_started_ms: None,
            boot_ms: None,
            progress: 0,
            phases: Vec::new(),
            boots: 0,
            reason: None,
            last_seen_ms: t_ms,
            expected: None,
            files_done: Vec::new(),
            tftp_offer: None,
            events: VecDeque::new(),
        }
    }

    /// Whether this machine was never seen past DHCP: it never booted, and its
    /// current boot is at most offered (or ignored). A flood of invented MACs makes
    /// only such machines, so a full store drops them first.
    pub fn is_dhcp_only(&self) -> bool {
        self.boots == 0
            && self
                .phases
                .iter()
                .all(|p| matches!(p.phase, Phase::Offered | Phase::Ignored))
    }

    /// Whether the machine has been in an unfinished phase for longer than
    /// `stuck_after_ms` at `now_ms`.
    pub fn is_stuck(&self, now_ms: u64, stuck_after_ms: u64) -> bool {
        match self.state {
            Some(p) if !p.is_terminal() => now_ms.saturating_sub(self.since_ms) > stuck_after_ms,
            _ => false,
        }
    }

    /// Records `rec` in the timeline (keeping at most `max_events`) and advances the
    /// state. `idle_restart_ms`: an offer after this long without events starts a new
    /// boot even mid-way (the machine was reset).
    pub fn apply(&mut self, rec: Arc<Record>, max_events: usize, idle_restart_ms: u64) -> Applied {
        let t = rec.t_ms;
        let idle = t.saturating_sub(self.last_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(t);
        let mut out = Applied::default();
        if let Some(a) = rec.text("arch") {
            self.arch = Some(a);
        }
        match rec.event.as_str() {
            "dhcp.offer" | "dhcp.ack" => {
                // A machine that is past the DHCP stage, or was quiet for long, and
                // asks again has restarted: a new boot. iPXE asking after its own
                // chainload is the same boot.
                let restarted = match self.state {
                    None => true,
                    Some(p) => {
                        p.is_terminal()
                            || matches!(p, Phase::Script | Phase::Kernel | Phase::Initrd)
                            || idle > idle_restart_ms
                    }
                };
                if restarted {
                    self.start_boot(t, &mut out);
                }
                // TFTP boot files: iPXE's, or the first of the shim or GRUB chain.
                if matches!(rec.text("path").as_deref(), Some("tftp" | "shim" | "grub")) {
                    // Over IPv6 the boot file is a URL (`tftp://[addr]/name`); TFTP
                    // requests name only the file.
                    self.tftp_offer = rec.text("boot").map(|b| {
                        let name = b
                            .strip_prefix("tftp://")
                            .and_then(|r| r.split_once('/'))
                            .map(|(_, f)| f.to_string());
                        (t, name.unwrap_or(b))
                    });
                }
                // The family of the server address the answer announced is the one
                // the boot goes on with.
                if let Some(ip) = rec.text("server").and_then(|s| s.parse().ok()) {
                    self.family = Some(ironpxe_core::net6::AddrFamily::of(ip).as_str().into());
                }
                self.enter(Phase::Offered, t, 10, &mut out);
            }
            "dhcp.ignore" | "http.ignored" => {
                self.reason = rec.text("reason");
                self.enter(Phase::Ignored, t, 0, &mut out);
            }
            "tftp.start" | "http.grub" => {
                if rec.event == "http.grub" {
                    self.set_ip(&rec);
                }
                match rec.text("file").as_deref().and_then(loader_step) {
                    // GRUB's configuration is its script.
                    Some(LoaderStep::Config) => self.enter(Phase::Script, t, 40, &mut out),
                    Some(LoaderStep::File(step)) if step.kind() == "kernel" => {
                        self.enter(Phase::Kernel, t, 45, &mut out)
                    }
                    Some(LoaderStep::File(_)) => {
                        let p = self.initrd_progress(false);
                        self.enter(Phase::Initrd, t, p, &mut out);
                    }
                    // iPXE, shim or GRUB itself.
                    Some(LoaderStep::Binary(_)) | None => {
                        self.enter(Phase::Chainloading, t, 20, &mut out)
                    }
                }
                if rec.event == "http.grub" {
                    self.loader_file_done(&rec);
                }
            }
            "tftp.done" => match rec.text("file").as_deref().and_then(loader_step) {
                Some(LoaderStep::Config) => {}
                Some(LoaderStep::File(_)) => self.loader_file_done(&rec),
                Some(LoaderStep::Binary(_)) | None => {
                    self.enter(Phase::Chainloaded, t, 30, &mut out)
                }
            },
            // shim and GRUB ask for files they do without on every boot.
            "tftp.failed" if rec.text("file").as_deref().is_some_and(is_optional_probe) => {}
            // GRUB boots the kernel once it has the last byte; the ACK of that byte can
            // be lost as the machine leaves its firmware, and the transfer then fails.
            "tftp.failed"
                if self.state == Some(Phase::Booted)
                    && rec
                        .text("file")
                        .as_deref()
                        .and_then(GrubPath::parse)
                        .is_some() => {}
            "tftp.failed" | "http.file.failed" => {
                self.reason = rec.text("reason");
                self.enter(Phase::Failed, t, 0, &mut out);
            }
            "http.script" => {
                self.set_ip(&rec);
                // An iPXE that found us without our DHCP (its own config, or a
                // restart we did not see) starts its boot here.
                if !matches!(self.state, Some(p) if !p.is_terminal()) {
                    self.start_boot(t, &mut out);
                }
                self.enter(Phase::Script, t, 40, &mut out);
            }
            "http.file.start" => {
                self.set_ip(&rec);
                if rec.text("kind").as_deref() == Some("kernel") {
                    self.enter(Phase::Kernel, t, 45, &mut out);
                } else {
                    let p = self.initrd_progress(false);
                    self.enter(Phase::Initrd, t, p, &mut out);
                }
            }
            "http.file.done" => {
                if let Some(id) = rec.text("id") {
                    if !self.files_done.contains(&id) {
                        self.files_done.push(id);
                    }
                }
                let p = if rec.text("kind").as_deref() == Some("kernel") {
                    70
                } else {
                    self.initrd_progress(true)
                };
                self.progress = self.progress.max(p);
            }
            "http.booting" | "grub.booting" => {
                self.set_ip(&rec);
                self.enter(Phase::Booted, t, 100, &mut out);
                self.boots += 1;
                self.reason = None;
                if let Some(start) = self.boot_started_ms {
                    let ms = t.saturating_sub(start);
                    self.boot_ms = Some(ms);
                    out.booted_ms = Some(ms);
                }
            }
            // tftp.aborted is EDK2's size probe (or a client giving up, which a new
            // request or a timeout will show); other events only join the timeline.
            _ => {}
        }
        self.events.push_back(rec);
        while self.events.len() > max_events {
            self.events.pop_front();
        }
        out
    }

    /// A kernel or initrd sent to GRUB: counted like an HTTP download.
    fn loader_file_done(&mut self, rec: &Record) {
        let Some(GrubPath::File { id, step, .. }) =
            rec.text("file").as_deref().and_then(GrubPath::parse)
        else {
            return;
        };
        let id = id.to_string();
        if !self.files_done.contains(&id) {
            self.files_done.push(id);
        }
        let p = if step.kind() == "kernel" {
            70
        } else {
            self.initrd_progress(true)
        };
        self.progress = self.progress.max(p);
    }

    fn set_ip(&mut self, rec: &Record) {
        if let Some(ip) = rec.text("peer").as_deref().and_then(crate::store::peer_ip) {
            self.ip = Some(ip.to_string());
            self.family = Some(ironpxe_core::net6::AddrFamily::of(ip).as_str().to_string());
        }
    }

    /// Progress while fetching initrds: 70 after the kernel, 95 with all of them.
    fn initrd_progress(&self, just_done: bool) -> u8 {
        let total = self
            .expected
            .as_ref()
            .map(|e| e.initrds.len())
            .filter(|n| *n > 0);
        let done = self
            .expected
            .as_ref()
            .map(|e| {
                e.initrds
                    .iter()
                    .filter(|i| self.files_done.contains(i))
                    .count()
            })
            .unwrap_or(self.files_done.len().saturating_sub(1));
        match total {
            Some(n) => 70 + (25 * done.min(n) / n) as u8,
            None if just_done => 90,
            None => 75,
        }
    }

    fn start_boot(&mut self, t: u64, out: &mut Applied) {
        self.close_phase(t, out);
        self.boot_started_ms = Some(t);
        self.phases.clear();
        self.progress = 0;
        self.files_done.clear();
        self.reason = None;
        self.tftp_offer = None;
        self.state = None;
    }

    fn close_phase(&mut self, t: u64, out: &mut Applied) {
        if let Some(last) = self.phases.last_mut() {
            if last.end_ms.is_none() {
                last.end_ms = Some(t);
                if !last.phase.is_terminal() {
                    out.ended = Some((last.phase, t.saturating_sub(last.start_ms)));
                }
            }
        }
    }

    fn enter(&mut self, phase: Phase, t: u64, progress: u8, out: &mut Applied) {
        self.progress = self.progress.max(progress);
        if self.state == Some(phase) {
            return;
        }
        self.close_phase(t, out);
        self.state = Some(phase);
        self.since_ms = t;
        if self.phases.len() >= MAX_PHASES {
            self.phases.remove(0);
        }
        self.phases.push(PhaseSpan {
            phase,
            start_ms: t,
            end_ms: None,
        });
    }
}
