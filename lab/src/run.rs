//! Running guests to a verdict: what `ironpxe lab` does once ironpxe is up.
//!
//! A run takes [`GuestPlan`]s and an [`Expect`]ation, starts up to `jobs` guests at
//! once (never two with the same MAC), and watches each guest's serial console: a
//! line matching [`Expect::pass`] passes it, a line matching one of [`Expect::fail`],
//! QEMU exiting first, or the timeout fails it. Each [`GuestResult`] carries the
//! verdict, the time from power-on to the verdict, and the guest's timeline. A
//! [`RunReport`] renders the whole run as JSON and as a JUnit XML file.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ironpxe_core::MacAddr;
use regex::Regex;

use crate::accel::AccelChoice;
use crate::firmware::GuestFirmware;
use crate::lab::{Lab, Network};
use crate::timeline::{Entry, Source, Timeline};

/// The default pass pattern: the marker line of the lab's own initrd.
pub const DEFAULT_EXPECT: &str = r"IRONPXE-MARKER cmdline=\[";

/// Serial lines that fail a guest at once by default.
pub const DEFAULT_FAIL: &[&str] = &[r"Kernel panic - not syncing"];

/// How long a passed guest may take to power off before it is stopped.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

/// What decides a guest's verdict.
#[derive(Debug, Clone)]
pub struct Expect {
    /// A serial line matching this passes the guest.
    pub pass: Regex,
    /// A serial line matching any of these fails it at once.
    pub fail: Vec<Regex>,
    /// Without a verdict this long after power-on, it fails.
    pub timeout: Duration,
}

impl Expect {
    /// The lab initrd's marker, a kernel panic fails, and `timeout`.
    pub fn marker(timeout: Duration) -> Self {
        Expect {
            pass: Regex::new(DEFAULT_EXPECT).expect("the default pattern compiles"),
            fail: DEFAULT_FAIL
                .iter()
                .filter_map(|p| Regex::new(p).ok())
                .collect(),
            timeout,
        }
    }
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// Its name in output and file names.
    pub name: String,
    /// How it boots.
    pub firmware: GuestFirmware,
    /// Its MAC (default: one the lab makes up).
    pub mac: Option<MacAddr>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Record its NIC's traffic to `<name>.pcap`.
    pub pcap: bool,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A serial line matched the pass pattern.
    Pass {
        /// The line.
        line: String,
    },
    /// It failed, and why.
    Fail {
        /// One line: the fail pattern's line, QEMU exiting, or the timeout.
        reason: String,
    },
}

impl Verdict {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }
}

/// One guest's outcome.
#[derive(Debug, Clone)]
pub struct GuestResult {
    /// Its name.
    pub name: String,
    /// How it booted.
    pub firmware: GuestFirmware,
    /// Its MAC.
    pub mac: MacAddr,
    /// Pass or fail.
    pub verdict: Verdict,
    /// Seconds from power-on to the verdict.
    pub seconds: f64,
    /// Its serial log.
    pub serial_log: PathBuf,
    /// Its last serial lines.
    pub serial_tail: String,
    /// Its boot, from power-on.
    pub timeline: Timeline,
}

/// A progress note from [`run_guests`], for printing as the run goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A guest was powered on.
    Started {
        /// Its name.
        name: &'a str,
        /// Its MAC.
        mac: MacAddr,
        /// How it boots.
        firmware: GuestFirmware,
    },
    /// A guest has its verdict.
    Finished(&'a GuestResult),
}

struct Queue {
    pending: Vec<(usize, GuestPlan)>,
    running: HashSet<Option<MacAddr>>,
}

/// Boots every plan (up to `jobs` at once, never two guests with the same MAC at
/// once) and returns the results in the order of `plans`. `progress` is called from
/// the worker threads.
pub fn run_guests(
    lab: &Lab,
    plans: Vec<GuestPlan>,
    expect: &Expect,
    jobs: usize,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Vec<GuestResult> {
    let count = plans.len();
    let queue = Mutex::new(Queue {
        pending: plans.into_iter().enumerate().rev().collect(),
        running: HashSet::new(),
    });
    let wake = Condvar::new();
    let results: Mutex<Vec<Option<GuestResult>>> = Mutex::new(vec![None; count]);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, count.max(1)) {
            s.spawn(|| loop {
                let (index, plan) = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if q.pending.is_empty() {
                            return;
                        }
                        // Guests without a MAC get distinct ones from the lab.
                        let free = q
                            .pending
                            .iter()
                            .rposition(|(_, p)| p.mac.is_none() || !q.running.contains(&p.mac));
                        if let Some(i) = free {
                            let item = q.pending.remove(i);
                            if item.1.mac.is_some() {
                                q.running.insert(item.1.mac);
                            }
                            break item;
                        }
                        q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let mac = plan.mac;
                let result = run_one(lab, plan, expect, progress);
                progress(Progress::Finished(&result));
                results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(result);
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                q.running.remove(&mac);
                wake.notify_all();
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

fn run_one(
    lab: &Lab,
    plan: GuestPlan,
    expect: &Expect,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> GuestResult {
    let mut config = plan.firmware.guest_config(lab.network());
    config.name = Some(plan.name.clone());
    config.mac = plan.mac;
    config.memory_mib = plan.memory_mib;
    config.pcap = plan.pcap;
    let not_started = |reason: String| GuestResult {
        name: plan.name.clone(),
        firmware: plan.firmware,
        mac: plan.mac.unwrap_or(MacAddr([0; 6])),
        verdict: Verdict::Fail { reason },
        seconds: 0.0,
        serial_log: lab.out_dir().join(format!("{}.serial.log", plan.name)),
        serial_tail: String::new(),
        timeline: Timeline::default(),
    };
    if let Some(why) = plan.firmware.unsupported_on(lab.network()) {
        return not_started(format!("{} cannot run here: {why}", plan.firmware));
    }
    let guest = match lab.start_guest(config) {
        Ok(g) => g,
        Err(e) => return not_started(format!("QEMU did not start: {e}")),
    };
    progress(Progress::Started {
        name: guest.name(),
        mac: guest.mac(),
        firmware: plan.firmware,
    });
    let watched = guest.wait_for_line("a line matching --expect", expect.timeout, |l| {
        if l.stream != crate::Stream::Stdout {
            return None;
        }
        if expect.pass.is_match(&l.text) {
            return Some((true, l.text.clone(), l.at));
        }
        expect
            .fail
            .iter()
            .any(|f| f.is_match(&l.text))
            .then(|| (false, l.text.clone(), l.at))
    });
    let since = |t: Instant| {
        t.saturating_duration_since(guest.powered_on())
            .as_secs_f64()
    };
    let (verdict, seconds) = match watched {
        Ok((true, line, at)) => {
            // Let a guest that powers off after its marker finish its output.
            guest.wait_exit(POWER_OFF_GRACE);
            (Verdict::Pass { line }, since(at))
        }
        Ok((false, line, at)) => (
            Verdict::Fail {
                reason: format!("a serial line matched a fail pattern: {line}"),
            },
            since(at),
        ),
        Err(crate::Error::Guest { end, .. }) => (
            Verdict::Fail {
                reason: match end {
                    crate::WaitEnd::Timeout(t) => format!(
                        "no serial line matched {:?} within {} s",
                        expect.pass.as_str(),
                        t.as_secs()
                    ),
                    crate::WaitEnd::Exited => format!(
                        "QEMU exited (the guest powered off or reset) before a serial line \
                         matched {:?}",
                        expect.pass.as_str()
                    ),
                },
            },
            since(Instant::now()),
        ),
        Err(e) => (
            Verdict::Fail {
                reason: e.to_string(),
            },
            since(Instant::now()),
        ),
    };
    guest.kill();
    let mut timeline = lab.timeline(&guest);
    if let Verdict::Pass { line } = &verdict {
        if !timeline.entries.iter().any(|e| e.source == Source::Marker) {
            timeline.entries.push(Entry {
                at: seconds,
                source: Source::Marker,
                text: line.clone(),
            });
            timeline.entries.sort_by(|a, b| a.at.total_cmp(&b.at));
        }
    }
    let _ = std::fs::write(
        lab.out_dir().join(format!("timeline-{}.txt", guest.name())),
        timeline.to_string(),
    );
    GuestResult {
        name: guest.name().to_string(),
        firmware: plan.firmware,
        mac: guest.mac(),
        verdict,
        seconds,
        serial_log: guest.serial_log().to_path_buf(),
        serial_tail: guest.tail(25),
        timeline,
    }
}

/// A whole run, for JSON and JUnit output.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Namespaces or user networking.
    pub network: Network,
    /// The accelerator, and why.
    pub accel: AccelChoice,
    /// Where the logs are.
    pub out_dir: PathBuf,
    /// The pass pattern.
    pub expect: String,
    /// The guests, in plan order.
    pub guests: Vec<GuestResult>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

impl RunReport {
    /// Whether every guest passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.guests.is_empty() && self.guests.iter().all(|g| g.verdict.passed())
    }

    /// The run as a JSON value: `result`, `network`, `accel`, `artefacts`,
    /// `expect`, `seconds`, and per guest `name`, `firmware`, `mac`, `result`,
    /// `reason` or `line`, `seconds`, `serial_log` and `timeline`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let guests: Vec<serde_json::Value> = self
            .guests
            .iter()
            .map(|g| {
                let mut v = json!({
                    "name": g.name,
                    "firmware": g.firmware.name(),
                    "mac": g.mac.to_string(),
                    "result": if g.verdict.passed() { "pass" } else { "fail" },
                    "seconds": round3(g.seconds),
                    "serial_log": g.serial_log.display().to_string(),
                    "timeline": g.timeline.entries.iter().map(|e| json!({
                        "t": round3(e.at),
                        "source": e.source.to_string(),
                        "text": e.text,
                    })).collect::<Vec<_>>(),
                });
                match &g.verdict {
                    Verdict::Pass { line } => v["line"] = json!(line),
                    Verdict::Fail { reason } => v["reason"] = json!(reason),
                }
                v
            })
            .collect();
        json!({
            "result": if self.passed() { "pass" } else { "fail" },
            "network": match self.network {
                Network::Namespaces => "namespaces",
                Network::User => "user",
            },
            "accel": self.accel.accel.qemu_name(),
            "accel_reason": self.accel.reason,
            "artefacts": self.out_dir.display().to_string(),
            "expect": self.expect,
            "seconds": round3(self.seconds),
            "guests": guests,
        })
    }

    /// The run as a JUnit XML document: one `testsuite` named `ironpxe lab`, one
    /// `testcase` per guest (class `ironpxe.lab.<firmware>`), a `failure` with the
    /// reason and the last serial lines for each failed guest, and the timeline as
    /// `system-out`.
    pub fn to_junit(&self) -> String {
        let failures = self.guests.iter().filter(|g| !g.verdict.passed()).count();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"ironpxe lab\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            self.guests.len(),
            self.seconds
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"ironpxe lab\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" \
             skipped=\"0\" time=\"{:.3}\">",
            self.guests.len(),
            self.seconds
        );
        for g in &self.guests {
            let _ = write!(
                x,
                "    <testcase classname=\"ironpxe.lab.{}\" name=\"{}\" time=\"{:.3}\">",
                xml_escape(g.firmware.name()),
                xml_escape(&g.name),
                g.seconds
            );
            if let Verdict::Fail { reason } = &g.verdict {
                let _ = write!(
                    x,
                    "\n      <failure message=\"{}\">{}</failure>",
                    xml_escape(reason),
                    xml_escape(&g.serial_tail)
                );
            }
            let _ = write!(
                x,
                "\n      <system-out>{}</system-out>\n    </testcase>\n",
                xml_escape(&g.timeline.to_string())
            );
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Escapes text for XML content and attribute values; characters XML 1.0 cannot
/// carry (most control characters) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, verdict: Verdict) -> GuestResult {
        GuestResult {
            name: name.into(),
            firmware: GuestFirmware::Bios,
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            verdict,
            seconds: 4.25,
            serial_log: PathBuf::from("/out/g.serial.log"),
            serial_tail: "    boot <failed> & \u{1b}".into(),
            timeline: Timeline {
                entries: vec![Entry {
                    at: 0.0,
                    source: Source::Lab,
                    text: "powered on".into(),
                }],
            },
        }
    }

    fn report(guests: Vec<GuestResult>) -> RunReport {
        RunReport {
            network: Network::User,
            accel: AccelChoice {
                accel: crate::Accel::Tcg,
                reason: "test".into(),
            },
            out_dir: PathBuf::from("/out"),
            expect: DEFAULT_EXPECT.into(),
            guests,
            seconds: 9.0,
        }
    }

    #[test]
    fn junit_counts_and_escapes() {
        let r = report(vec![
            result("node \"a\"", Verdict::Pass { line: "x".into() }),
            result(
                "b",
                Verdict::Fail {
                    reason: "no <marker>".into(),
                },
            ),
        ]);
        let x = r.to_junit();
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("name=\"node &quot;a&quot;\""), "{x}");
        assert!(x.contains("<failure message=\"no &lt;marker&gt;\">"), "{x}");
        assert!(x.contains("boot &lt;failed&gt; &amp; \u{fffd}"), "{x}");
        assert!(!r.passed());
    }

    #[test]
    fn json_names_results() {
        let r = report(vec![result("a", Verdict::Pass { line: "m".into() })]);
        let v = r.to_json();
        assert_eq!(v["result"], "pass");
        assert_eq!(v["network"], "user");
        assert_eq!(v["guests"][0]["result"], "pass");
        assert_eq!(v["guests"][0]["line"], "m");
        assert_eq!(v["guests"][0]["seconds"], 4.25);
        assert_eq!(v["guests"][0]["timeline"][0]["source"], "lab");
        assert!(!report(vec![]).passed(), "no guest is no pass");
    }

    #[test]
    fn default_expectation_compiles() {
        let e = Expect::marker(Duration::from_secs(1));
        assert!(e.pass.is_match("IRONPXE-MARKER cmdline=[console=ttyS0]"));
        assert!(e.fail[0].is_match("Kernel panic - not syncing: VFS"));
    }
}
