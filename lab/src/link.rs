//! Faults on a guest's link: random packet loss, a rate limit towards the guest, and
//! a blocked TCP port, all applied to the guest's tap device in the switch namespace.
//!
//! This kernel has no `netem` qdisc, so loss is an nftables table of the `netdev`
//! family on the tap: its `ingress` hook sees every frame the guest sends, its
//! `egress` hook every frame the bridge sends to the guest. `numgen random mod N 0
//! drop` drops one frame in N in each direction, whatever the protocol, so DHCP,
//! TFTP and HTTP all lose packets, as on a bad cable. Counters per direction and per
//! traffic class ([`Class`]) say how many frames crossed the link and how many were
//! dropped. The rate limit is a `tbf` qdisc on the tap (traffic towards the guest),
//! which makes a download last long enough to do something in the middle of it.
//!
//! ```text
//!   table netdev <tap>
//!     chain from_guest  (hook ingress)  jump seen_from; [numgen random mod N 0 jump lost_from]; [tcp dport P counter drop]
//!     chain to_guest    (hook egress)   jump seen_to;   [numgen random mod N 0 jump lost_to]
//!     chain seen_*   one counter per class, then return
//!     chain lost_*   one counter per class, then drop
//! ```
//!
//! The table disappears with the switch namespace; nothing is left on the host.

use std::fmt;
use std::process::Output;

use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::lab::Lab;
use crate::preflight::{find_program, Missing, Report};

/// Faults put on a guest's link before QEMU starts (see [`crate::GuestConfig::link`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Drop one frame in N at random, in each direction (`numgen random mod N`).
    pub loss_one_in: Option<u32>,
    /// Limit traffic towards the guest to this `tc` rate, e.g. `16mbit`.
    pub rate_to_guest: Option<String>,
    /// Drop what the guest sends to this TCP port from its first frame on, until
    /// [`Link::unblock_all`] (see [`Link::block_tcp_from_guest`]).
    pub blocked_tcp_port: Option<u16>,
}

impl LinkFaults {
    /// Whether there is anything to set up.
    pub fn is_empty(&self) -> bool {
        self.loss_one_in.is_none()
            && self.rate_to_guest.is_none()
            && self.blocked_tcp_port.is_none()
    }
}

/// What kind of traffic a frame is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// UDP to or from port 67, 68 or 4011 (ProxyDHCP, the site server, PXE).
    Dhcp,
    /// Any other UDP: in the lab, TFTP (port 69 and the transfer ports).
    Tftp,
    /// TCP: in the lab, ironpxe's HTTP.
    Http,
    /// Everything else: ARP, ICMP, IPv6 neighbour discovery and router adverts.
    Other,
}

impl Class {
    /// Every class, in the order of the counters.
    pub const ALL: [Class; 4] = [Class::Dhcp, Class::Tftp, Class::Http, Class::Other];

    /// Its name, as in the rules' comments.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Dhcp => "dhcp",
            Class::Tftp => "tftp",
            Class::Http => "http",
            Class::Other => "other",
        }
    }

    /// The nftables match of the rules of this class (before the counter).
    fn matches(self) -> &'static [&'static str] {
        match self {
            Class::Dhcp => &[
                "meta l4proto udp udp dport { 67, 68, 4011 }",
                "meta l4proto udp udp sport { 67, 68, 4011 }",
            ],
            Class::Tftp => &["meta l4proto udp"],
            Class::Http => &["meta l4proto tcp"],
            Class::Other => &[""],
        }
    }
}

/// Frames counted on one direction of a link, by [`Class`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames that reached the filter, by class (in [`Class::ALL`] order).
    pub seen: [u64; 4],
    /// Frames the random loss dropped, by class.
    pub dropped: [u64; 4],
    /// Frames dropped by [`Link::block_tcp_from_guest`] rules.
    pub blocked: u64,
}

impl Counts {
    /// Frames of `class` that reached the filter.
    pub fn seen(&self, class: Class) -> u64 {
        self.seen[class as usize]
    }

    /// Frames of `class` dropped at random.
    pub fn dropped(&self, class: Class) -> u64 {
        self.dropped[class as usize]
    }

    /// All frames that reached the filter.
    pub fn seen_total(&self) -> u64 {
        self.seen.iter().sum()
    }

    /// All frames dropped at random.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} dropped",
            self.dropped_total(),
            self.seen_total()
        )?;
        for c in Class::ALL {
            write!(f, ", {} {}/{}", c.as_str(), self.dropped(c), self.seen(c))?;
        }
        if self.blocked > 0 {
            write!(f, ", {} blocked", self.blocked)?;
        }
        Ok(())
    }
}

/// The counters of both directions of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// What the guest sent.
    pub from_guest: Counts,
    /// What was sent to the guest.
    pub to_guest: Counts,
}

impl LinkCounters {
    /// Frames of `class` dropped at random, both directions.
    pub fn dropped(&self, class: Class) -> u64 {
        self.from_guest.dropped(class) + self.to_guest.dropped(class)
    }

    /// Frames of `class` seen, both directions.
    pub fn seen(&self, class: Class) -> u64 {
        self.from_guest.seen(class) + self.to_guest.seen(class)
    }
}

impl fmt::Display for LinkCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from the guest: {}; to the guest: {}",
            self.from_guest, self.to_guest
        )
    }
}

/// A rule added by [`Link::block_tcp_from_guest`], to remove with [`Link::unblock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    handle: u64,
}

/// The link of one guest: its tap device in the switch namespace, with an nftables
/// table of its own.
#[derive(Debug, Clone)]
pub struct Link {
    ns: String,
    tap: String,
    table: String,
}

impl Lab {
    /// The link of `guest`, with its filter table (created now if the guest was
    /// started without [`LinkFaults`]). Needs `nft` (Debian package nftables).
    pub fn link(&self, guest: &Guest) -> Result<Link> {
        self.require_namespaces("a link filter")?;
        if guest.tap().is_empty() {
            return Err(Error::Invalid(format!(
                "{} has no tap device to filter",
                guest.name()
            )));
        }
        let link = Link::new(self.switch_ns(), guest.tap());
        if !link.exists() {
            link.create(None)?;
        }
        Ok(link)
    }
}

impl Link {
    fn new(ns: String, tap: &str) -> Self {
        Link {
            ns,
            tap: tap.to_string(),
            table: tap.replace('-', "_"),
        }
    }

    /// Sets up `faults` on `tap` (in switch namespace `ns`) before its guest starts.
    pub(crate) fn apply(ns: String, tap: &str, faults: &LinkFaults) -> Result<Link> {
        let link = Link::new(ns, tap);
        link.create(faults.loss_one_in)?;
        if let Some(rate) = &faults.rate_to_guest {
            link.set_rate_to_guest(Some(rate))?;
        }
        if let Some(port) = faults.blocked_tcp_port {
            link.block_tcp_from_guest(port)?;
        }
        Ok(link)
    }

    /// The tap device.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    fn exists(&self) -> bool {
        self.nft(&["list", "table", "netdev", &self.table])
            .is_ok_and(|o| o.status.success())
    }

    fn create(&self, loss_one_in: Option<u32>) -> Result<()> {
        if loss_one_in == Some(0) {
            return Err(Error::Invalid("loss of one frame in 0".into()));
        }
        let (t, tap) = (&self.table, &self.tap);
        let mut s = format!("table netdev {t} {{\n");
        for (dir, lost) in [("from", "lost_from"), ("to", "lost_to")] {
            for (chain, verdict) in [(format!("seen_{dir}"), "return"), (lost.into(), "drop")] {
                s.push_str(&format!("  chain {chain} {{\n"));
                for class in Class::ALL {
                    for m in class.matches() {
                        s.push_str(&format!(
                            "    {m} counter {verdict} comment \"{}\"\n",
                            class.as_str()
                        ));
                    }
                }
                s.push_str("  }\n");
            }
        }
        let loss = |lost: &str| match loss_one_in {
            Some(n) => format!("    numgen random mod {n} 0 jump {lost}\n"),
            None => String::new(),
        };
        s.push_str(&format!(
            "  chain from_guest {{\n    type filter hook ingress device \"{tap}\" priority 0; policy accept;\n    jump seen_from\n{}  }}\n",
            loss("lost_from")
        ));
        s.push_str(&format!(
            "  chain to_guest {{\n    type filter hook egress device \"{tap}\" priority 0; policy accept;\n    jump seen_to\n{}  }}\n",
            loss("lost_to")
        ));
        s.push_str("}\n");
        let path = std::env::temp_dir().join(format!("{}.nft", self.table));
        std::fs::write(&path, &s).map_err(crate::error::io_err("write", &path))?;
        let out = self.nft(&["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        check(out?, &format!("nft -f (link filter of {tap})"))
    }

    /// Limits traffic towards the guest to `rate` (a `tc` rate such as `16mbit`), or
    /// lifts the limit (`None`).
    pub fn set_rate_to_guest(&self, rate: Option<&str>) -> Result<()> {
        let mut cmd = crate::netns::exec_in(&self.ns, crate::preflight::program("tc"));
        match rate {
            Some(rate) => cmd.args([
                "qdisc", "replace", "dev", &self.tap, "root", "tbf", "rate", rate, "burst",
                "32kbit", "latency", "400ms",
            ]),
            None => cmd.args(["qdisc", "del", "dev", &self.tap, "root"]),
        };
        let out = cmd.output().map_err(|source| Error::Spawn {
            program: format!("tc in namespace {}", self.ns),
            hint: Some("install Debian's iproute2".into()),
            source,
        })?;
        check(out, &format!("tc qdisc on {}", self.tap))
    }

    /// Drops every TCP segment the guest sends to `port` until [`Link::unblock`]: its
    /// connection attempts go unanswered and it retries, as when a server is slow to
    /// come up. Counted in [`Counts::blocked`].
    pub fn block_tcp_from_guest(&self, port: u16) -> Result<Block> {
        let out = self.nft(&[
            "--echo",
            "--handle",
            "add",
            "rule",
            "netdev",
            &self.table,
            "from_guest",
            "tcp",
            "dport",
            &port.to_string(),
            "counter",
            "drop",
            "comment",
            "\"blocked\"",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        check(out, &format!("nft add rule (block tcp {port})"))?;
        let handle = rule_handle(&text)
            .ok_or_else(|| Error::Invalid(format!("nft printed no rule handle: {text:?}")))?;
        Ok(Block { handle })
    }

    /// Removes a rule of [`Link::block_tcp_from_guest`].
    pub fn unblock(&self, block: Block) -> Result<()> {
        let out = self.nft(&[
            "delete",
            "rule",
            "netdev",
            &self.table,
            "from_guest",
            "handle",
            &block.handle.to_string(),
        ])?;
        check(out, "nft delete rule")
    }

    /// Removes every rule of [`Link::block_tcp_from_guest`] and
    /// [`LinkFaults::blocked_tcp_port`].
    pub fn unblock_all(&self) -> Result<()> {
        let out = self.nft(&["-j", "list", "chain", "netdev", &self.table, "from_guest"])?;
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        check(out, "nft -j list chain")?;
        for handle in blocked_handles(&json) {
            self.unblock(Block { handle })?;
        }
        Ok(())
    }

    /// The counters so far.
    pub fn counters(&self) -> Result<LinkCounters> {
        let out = self.nft(&["-j", "list", "table", "netdev", &self.table])?;
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        check(out, "nft -j list table")?;
        parse_counters(&json)
            .ok_or_else(|| Error::Invalid(format!("cannot read the nft counters of {}", self.tap)))
    }

    fn nft(&self, args: &[&str]) -> Result<Output> {
        let Some(nft) = find_program("nft") else {
            return Err(Error::Preflight(Report {
                missing: vec![Missing {
                    what: "nft in PATH (packet loss on a guest's link)".into(),
                    package: Some("nftables"),
                    fix: None,
                }],
            }));
        };
        crate::netns::exec_in(&self.ns, nft)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                program: format!("nft in namespace {}", self.ns),
                hint: Some("install Debian's nftables".into()),
                source,
            })
    }
}

fn check(out: Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: what.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        hint: None,
    })
}

/// The handle `nft --echo --handle add rule` printed: `... # handle 37`, maybe
/// followed by a `# new generation` line.
fn rule_handle(echo: &str) -> Option<u64> {
    let rest = echo.split("# handle ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The handles of the rules commented `blocked` in `nft -j list` output.
fn blocked_handles(json: &str) -> Vec<u64> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r.get("comment").and_then(|c| c.as_str()) == Some("blocked"))
        .filter_map(|r| r.get("handle")?.as_u64())
        .collect()
}

/// Sums the counters of `nft -j list table` by chain and comment.
fn parse_counters(json: &str) -> Option<LinkCounters> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut c = LinkCounters::default();
    for item in v.get("nftables")?.as_array()? {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let chain = rule.get("chain").and_then(|c| c.as_str()).unwrap_or("");
        let comment = rule.get("comment").and_then(|c| c.as_str()).unwrap_or("");
        let packets = rule
            .get("expr")
            .and_then(|e| e.as_array())
            .and_then(|e| {
                e.iter()
                    .find_map(|x| x.get("counter")?.get("packets")?.as_u64())
            })
            .unwrap_or(0);
        let dir = match chain {
            "seen_from" | "lost_from" | "from_guest" => &mut c.from_guest,
            "seen_to" | "lost_to" | "to_guest" => &mut c.to_guest,
            _ => continue,
        };
        if comment == "blocked" {
            dir.blocked += packets;
            continue;
        }
        let Some(class) = Class::ALL.into_iter().find(|k| k.as_str() == comment) else {
            continue;
        };
        match chain {
            "seen_from" | "seen_to" => dir.seen[class as usize] += packets,
            "lost_from" | "lost_to" => dir.dropped[class as usize] += packets,
            _ => {}
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_by_chain_and_comment() {
        let json = r#"{"nftables": [{"metainfo": {}},
          {"rule": {"family": "netdev", "table": "t", "chain": "seen_from", "comment": "dhcp", "expr": [{"counter": {"packets": 3, "bytes": 1}}, {"return": null}]}},
          {"rule": {"family": "netdev", "table": "t", "chain": "seen_from", "comment": "dhcp", "expr": [{"counter": {"packets": 2, "bytes": 1}}, {"return": null}]}},
          {"rule": {"family": "netdev", "table": "t", "chain": "lost_to", "comment": "http", "expr": [{"counter": {"packets": 7, "bytes": 1}}, {"drop": null}]}},
          {"rule": {"family": "netdev", "table": "t", "chain": "from_guest", "comment": "blocked", "expr": [{"counter": {"packets": 4, "bytes": 1}}, {"drop": null}]}},
          {"rule": {"family": "netdev", "table": "t", "chain": "from_guest", "expr": [{"jump": {"target": "seen_from"}}]}}
        ]}"#;
        let c = parse_counters(json).unwrap();
        assert_eq!(c.from_guest.seen(Class::Dhcp), 5);
        assert_eq!(c.to_guest.dropped(Class::Http), 7);
        assert_eq!(c.from_guest.blocked, 4);
        assert_eq!(c.dropped(Class::Http), 7);
        assert_eq!(c.from_guest.dropped_total(), 0);
        assert_eq!(parse_counters("not json"), None);
        let listing = r#"{"nftables": [{"rule": {"chain": "from_guest", "handle": 9, "comment": "blocked", "expr": []}},
          {"rule": {"chain": "from_guest", "handle": 3, "expr": []}}]}"#;
        assert_eq!(blocked_handles(listing), [9]);
        assert_eq!(
            rule_handle("add rule netdev t c tcp dport 80 drop # handle 37\n# new generation 3 by process 1 (nft)\n"),
            Some(37)
        );
        assert_eq!(rule_handle("no handle"), None);
    }

    #[test]
    fn table_names_avoid_dashes() {
        assert_eq!(Link::new("sw".into(), "ipxl1a2b3-t0").table, "ipxl1a2b3_t0");
    }
}
