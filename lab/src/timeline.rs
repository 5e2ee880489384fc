//! One guest's boot as a list of moments from power-on to the marker.
//!
//! The entries come from four places, all stamped when their line was read: the lab
//! (power-on), the guest's serial port (firmware, iPXE, kernel and marker lines),
//! ironpxe's `ironpxe::event` lines and the site DHCP server's log.

use std::fmt;
use std::time::Instant;

use crate::guest::{parse_marker, Guest};
use crate::lab::Lab;

/// Where a timeline entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The lab itself (power-on).
    Lab,
    /// The guest's serial console.
    Serial,
    /// The initrd's marker line.
    Marker,
    /// An ironpxe boot event.
    Ironpxe,
    /// ironpxe's warnings and errors.
    IronpxeLog,
    /// The site DHCP server.
    SiteDhcp,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Lab => "lab",
            Source::Serial => "serial",
            Source::Marker => "MARKER",
            Source::Ironpxe => "ironpxe",
            Source::IronpxeLog => "ironpxe-log",
            Source::SiteDhcp => "site-dhcp",
        })
    }
}

/// One moment of a boot.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Seconds since the guest's power-on (negative: before it).
    pub at: f64,
    /// Where it came from.
    pub source: Source,
    /// What happened. For [`Source::Ironpxe`] this starts with the event name.
    pub text: String,
}

/// A guest's boot, in time order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The entries, sorted by time.
    pub entries: Vec<Entry>,
}

impl Timeline {
    /// The first ironpxe event with this name.
    pub fn event(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.source == Source::Ironpxe && e.text.split_whitespace().next() == Some(name))
    }

    /// Whether an ironpxe event with this name happened.
    pub fn has_event(&self, name: &str) -> bool {
        self.event(name).is_some()
    }

    /// The names of the ironpxe events, in order.
    pub fn event_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.source == Source::Ironpxe)
            .filter_map(|e| e.text.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// When the marker arrived, in seconds since power-on.
    pub fn marker_at(&self) -> Option<f64> {
        self.entries
            .iter()
            .find(|e| e.source == Source::Marker)
            .map(|e| e.at)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>9}  {:<11}  what", "t (s)", "source")?;
        for e in &self.entries {
            writeln!(
                f,
                "{:>+9.3}  {:<11}  {}",
                e.at,
                e.source.to_string(),
                e.text
            )?;
        }
        Ok(())
    }
}

/// Serial lines worth showing in a timeline; the rest stay in the serial log.
/// `IRONPXE_LAB_VERBOSE=1` shows every line.
fn interesting_serial(line: &str) -> bool {
    const KEYS: &[&str] = &[
        "iPXE",
        "net0",
        "Configuring",
        "http://",
        "https://",
        "tftp://",
        "PXE",
        "Boot",
        "No bootable",
        "Nothing to boot",
        "Linux version",
        "Kernel panic",
        "IRONPXE",
        "Station IP",
        "NBP",
        "Start HTTP",
        "Downloading",
        "rror",
        "ok",
        "Run /init",
        "reboot: ",
        "Power down",
    ];
    KEYS.iter().any(|k| line.contains(k))
}

pub(crate) fn build(lab: &Lab, guest: &Guest) -> Timeline {
    let zero = guest.powered_on();
    let rel = |t: Instant| -> f64 {
        if t >= zero {
            (t - zero).as_secs_f64()
        } else {
            -(zero - t).as_secs_f64()
        }
    };
    let verbose = std::env::var_os("IRONPXE_LAB_VERBOSE").is_some_and(|v| v != "0");
    let mac = guest.mac().to_string();
    let mut entries = vec![Entry {
        at: 0.0,
        source: Source::Lab,
        text: format!(
            "{} powered on ({:?}, mac {mac}, uuid {})",
            guest.name(),
            guest.firmware(),
            guest.uuid()
        ),
    }];
    for l in guest.serial_lines() {
        if l.stream == crate::Stream::Stderr {
            continue;
        }
        let source = if parse_marker(&l.text).is_some() {
            Source::Marker
        } else if verbose || interesting_serial(&l.text) {
            Source::Serial
        } else {
            continue;
        };
        entries.push(Entry {
            at: rel(l.at),
            source,
            text: l.text.trim().to_string(),
        });
    }
    let events = lab.ironpxe_events();
    let site = lab.site_lines();
    let addrs = guest_addresses(&events, &site, &mac);
    let others = other_guests_connections(&events, &mac);
    for e in &events {
        if !belongs_to(e, &mac, &addrs, &others) {
            continue;
        }
        entries.push(Entry {
            at: rel(e.at),
            source: Source::Ironpxe,
            text: e.summary(),
        });
    }
    if let Some(p) = lab.ironpxe_proc() {
        for l in p.lines() {
            if l.text.contains(crate::events::EVENT_TARGET) {
                continue;
            }
            if l.text.contains("WARN") || l.text.contains("ERROR") || l.text.contains("panicked") {
                entries.push(Entry {
                    at: rel(l.at),
                    source: Source::IronpxeLog,
                    text: l.text.trim().to_string(),
                });
            }
        }
    }
    for l in site {
        let t = &l.text;
        let dhcp_msg = [
            "DHCPDISCOVER(",
            "DHCPOFFER(",
            "DHCPREQUEST(",
            "DHCPACK(",
            "DHCPNAK(",
        ]
        .iter()
        .any(|k| t.contains(k));
        if dhcp_msg && t.to_lowercase().contains(&mac) {
            let text = t.split_once("]: ").map(|(_, r)| r).unwrap_or(t);
            entries.push(Entry {
                at: rel(l.at),
                source: Source::SiteDhcp,
                text: text.to_string(),
            });
        }
    }
    entries.sort_by(|a, b| a.at.total_cmp(&b.at));
    Timeline { entries }
}

/// The IPv4 addresses `mac` was given: by ironpxe's `dhcp.address` events and the
/// site server's DHCPACKs.
fn guest_addresses(
    events: &[crate::Event],
    site: &[crate::LogLine],
    mac: &str,
) -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<std::net::Ipv4Addr> = events
        .iter()
        .filter(|e| e.field("mac").is_some_and(|m| m.eq_ignore_ascii_case(mac)))
        .filter_map(|e| e.field("ip")?.parse().ok())
        .collect();
    out.extend(
        site.iter()
            .filter_map(|l| crate::site::parse_site_ack(&l.text, mac)),
    );
    out
}

/// The connections (`peer` as `addr:port`) that events of other MACs name: on them,
/// events without a MAC are another guest's, even where all peers share an address.
fn other_guests_connections<'a>(events: &'a [crate::Event], mac: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.field("mac").is_some_and(|m| !m.eq_ignore_ascii_case(mac)))
        .filter_map(|e| e.field("peer"))
        .collect()
}

/// Whether an event is part of the boot of the guest with `mac` and `addrs`: its
/// `mac` is the guest's, or it has none, its `peer` is no connection of another
/// guest (`others`), and it is one of the guest's addresses. When the guest's
/// addresses are unknown (user networking, where every peer is QEMU on loopback),
/// such events are kept.
fn belongs_to(e: &crate::Event, mac: &str, addrs: &[std::net::Ipv4Addr], others: &[&str]) -> bool {
    if let Some(m) = e.field("mac") {
        return m.eq_ignore_ascii_case(mac);
    }
    if e.field("peer").is_some_and(|p| others.contains(&p)) {
        return false;
    }
    let peer = e
        .field("peer")
        .and_then(|p| p.parse::<std::net::SocketAddr>().ok());
    match peer {
        Some(std::net::SocketAddr::V4(p)) if !addrs.is_empty() => addrs.contains(p.ip()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_other_guests_are_left_out() {
        let ev = |name: &str, fields: &[(&str, &str)]| crate::Event {
            at: Instant::now(),
            name: name.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            line: String::new(),
        };
        let me = "52:54:00:00:00:01";
        let events = vec![
            ev("dhcp.address", &[("ip", "10.0.0.5"), ("mac", me)]),
            ev(
                "dhcp.address",
                &[("ip", "10.0.0.6"), ("mac", "52:54:00:00:00:02")],
            ),
        ];
        let addrs = guest_addresses(&events, &[], me);
        assert_eq!(addrs, [std::net::Ipv4Addr::new(10, 0, 0, 5)]);
        assert!(belongs_to(&events[0], me, &addrs, &[]));
        assert!(!belongs_to(&events[1], me, &addrs, &[]));
        let tftp = |peer: &str| ev("tftp.done", &[("peer", peer)]);
        assert!(belongs_to(&tftp("10.0.0.5:1850"), me, &addrs, &[]));
        assert!(!belongs_to(&tftp("10.0.0.6:1850"), me, &addrs, &[]));
        assert!(belongs_to(&tftp("127.0.0.1:1"), me, &[], &[]));
        assert!(belongs_to(&ev("x", &[]), me, &addrs, &[]));
        let shared = vec![
            ev("http.script", &[("mac", me), ("peer", "127.0.0.1:5")]),
            ev(
                "http.script",
                &[("mac", "52:54:00:00:00:02"), ("peer", "127.0.0.1:6")],
            ),
        ];
        let others = other_guests_connections(&shared, me);
        assert_eq!(others, ["127.0.0.1:6"]);
        // A guest's own events stay, whatever their peer.
        let offer = |m: &str| ev("dhcp.offer", &[("mac", m), ("peer", "0.0.0.0:68")]);
        let both = [offer(me), offer("52:54:00:00:00:02")];
        let others = other_guests_connections(&both, me);
        assert!(belongs_to(&both[0], me, &[], &others));
        assert!(!belongs_to(&both[1], me, &[], &others));
        let file = |peer: &str| ev("http.file.done", &[("peer", peer)]);
        let others = other_guests_connections(&shared, me);
        assert!(belongs_to(&file("127.0.0.1:5"), me, &[], &others));
        assert!(!belongs_to(&file("127.0.0.1:6"), me, &[], &others));
    }

    #[test]
    fn timeline_queries() {
        let t = Timeline {
            entries: vec![
                Entry {
                    at: 0.0,
                    source: Source::Lab,
                    text: "on".into(),
                },
                Entry {
                    at: 2.5,
                    source: Source::Ironpxe,
                    text: "dhcp.offer mac=x".into(),
                },
                Entry {
                    at: 9.0,
                    source: Source::Marker,
                    text: "IRONPXE-MARKER cmdline=[a]".into(),
                },
            ],
        };
        assert!(t.has_event("dhcp.offer"));
        assert!(!t.has_event("dhcp"));
        assert_eq!(t.marker_at(), Some(9.0));
        let shown = t.to_string();
        assert!(shown.contains("+2.500  ironpxe"));
    }
}
