//! `[dhcp]`: ProxyDHCP (the default) or ironpxe's own DHCPv4 server, and the
//! reservations it hands out from the `[[machines]]` entries (`ip`, `hostname`).
//!
//! ```toml
//! [dhcp]
//! mode = "server"                    # default "proxy": never hand out addresses
//! subnet = "10.0.0.0/24"             # the data network
//! pool = "10.0.0.100-10.0.0.199"     # optional: addresses for machines without an ip
//! lease_time = "12h"                 # default 1h
//! router = "10.0.0.1"                # optional
//! dns = ["10.0.0.1"]                 # optional
//!
//! [[machines]]
//! mac = "3c:ec:ef:30:00:00"
//! name = "node-00"
//! ip = "10.0.0.30"                   # the reservation; hostname defaults to name
//! ```

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{RawMachine, Validator, S};
use crate::MacAddr;

/// The lease time when `lease_time` is not set.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);

/// The shortest `lease_time` accepted.
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(60);

/// What ironpxe does on UDP 67.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DhcpMode {
    /// ProxyDHCP next to the site's DHCP server: boot information only, never an
    /// address (the default).
    #[default]
    Proxy,
    /// ironpxe is the DHCP server of the data network, and adds boot information to
    /// the offers of PXE clients.
    Server(DhcpServerSettings),
}

/// `[dhcp] mode = "server"`: the data network and what is handed out on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpServerSettings {
    /// The network address of `subnet`.
    pub network: Ipv4Addr,
    /// Its prefix length (8 to 30).
    pub prefix_len: u8,
    /// Addresses for machines without a reservation, first to last inclusive.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// How long a lease lasts.
    pub lease_time: Duration,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// From `[[machines]]`: fixed addresses (and host names) by MAC.
    pub reservations: Vec<Reservation>,
}

impl DhcpServerSettings {
    /// Option 1.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// The subnet's broadcast address (option 28).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// Whether `ip` is a host address of the subnet (neither its network nor its
    /// broadcast address).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let m = mask(self.prefix_len);
        u32::from(ip) & m == u32::from(self.network) && ip != self.network && ip != self.broadcast()
    }
}

/// A fixed address for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The machine.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Option 12, if any (the machine's `hostname`, else its `name`).
    pub hostname: Option<String>,
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// `[dhcp]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDhcp {
    mode: Option<S>,
    subnet: Option<S>,
    pool: Option<S>,
    lease_time: Option<S>,
    router: Option<S>,
    dns: Option<Vec<S>>,
}

impl Validator<'_> {
    /// `[dhcp]`, and `ip` / `hostname` of every machine.
    pub(super) fn dhcp(
        &mut self,
        raw: Option<&Spanned<RawDhcp>>,
        machines: &[Spanned<RawMachine>],
    ) -> DhcpMode {
        let default = RawDhcp::default();
        let (d, at) = match raw {
            Some(r) => (r.get_ref(), r.span().start),
            None => (&default, 0),
        };
        let server = match d.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "proxy")) => false,
            Some((_, "server")) => true,
            Some((m, other)) => {
                self.problem(
                    m.span().start,
                    "dhcp.mode",
                    format!("{other:?} is not one of \"proxy\", \"server\""),
                );
                return DhcpMode::Proxy;
            }
        };
        if !server {
            let server_only = [
                ("subnet", d.subnet.as_ref().map(|v| v.span().start)),
                ("pool", d.pool.as_ref().map(|v| v.span().start)),
                ("lease_time", d.lease_time.as_ref().map(|v| v.span().start)),
                ("router", d.router.as_ref().map(|v| v.span().start)),
                ("dns", d.dns.as_ref().map(|_| at)),
            ];
            for (key, pos) in server_only {
                if let Some(pos) = pos {
                    self.problem(
                        pos,
                        format!("dhcp.{key}"),
                        "only used with mode = \"server\" (ProxyDHCP never hands out addresses)",
                    );
                }
            }
            for (n, m) in machines.iter().enumerate() {
                let m = m.get_ref();
                for (key, v) in [("ip", &m.ip), ("hostname", &m.hostname)] {
                    if let Some(v) = v {
                        self.problem(
                            v.span().start,
                            format!("machines[{n}].{key}"),
                            "only used with [dhcp] mode = \"server\"",
                        );
                    }
                }
            }
            return DhcpMode::Proxy;
        }

        let Some(subnet) = d.subnet.as_ref() else {
            self.problem(
                at,
                "dhcp.subnet",
                "mode = \"server\" needs the data network's subnet, e.g. subnet = \"10.0.0.0/24\"",
            );
            return DhcpMode::Proxy;
        };
        let Some((network, prefix_len)) = self.subnet_at(subnet) else {
            return DhcpMode::Proxy;
        };
        let mut s = DhcpServerSettings {
            network,
            prefix_len,
            pool: None,
            lease_time: DEFAULT_LEASE_TIME,
            router: None,
            dns: Vec::new(),
            reservations: Vec::new(),
        };
        if let Some(p) = &d.pool {
            s.pool = self.pool_at(p, &s);
        }
        if let Some(t) = &d.lease_time {
            match crate::parse_duration(t.get_ref()) {
                Ok(v) if v >= MIN_LEASE_TIME && v.as_secs() <= u64::from(u32::MAX) => {
                    s.lease_time = v
                }
                Ok(_) => self.problem(
                    t.span().start,
                    "dhcp.lease_time",
                    format!(
                        "{:?}: a lease lasts between 60 s and 136 years",
                        t.get_ref()
                    ),
                ),
                Err(e) => self.problem(t.span().start, "dhcp.lease_time", e.to_string()),
            }
        }
        if let Some(r) = &d.router {
            s.router = self.host_at(r, "dhcp.router", &s);
        }
        for (i, v) in d.dns.iter().flatten().enumerate() {
            match v.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) => s.dns.push(ip),
                Err(_) => self.problem(
                    v.span().start,
                    format!("dhcp.dns[{i}]"),
                    format!("{:?} is not an IPv4 address", v.get_ref()),
                ),
            }
        }
        s.reservations = self.reservations(machines, &s);
        DhcpMode::Server(s)
    }

    fn subnet_at(&mut self, v: &S) -> Option<(Ipv4Addr, u8)> {
        let text = v.get_ref();
        let parsed = text
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)));
        match parsed {
            Some((addr, len)) if (8..=30).contains(&len) => {
                let net = Ipv4Addr::from(u32::from(addr) & mask(len));
                if net != addr {
                    self.problem(
                        v.span().start,
                        "dhcp.subnet",
                        format!("{text:?} has host bits set; the network is {net}/{len}"),
                    );
                    return None;
                }
                Some((net, len))
            }
            _ => {
                self.problem(
                    v.span().start,
                    "dhcp.subnet",
                    format!("{text:?} is not an IPv4 subnet like \"10.0.0.0/24\" (prefix 8 to 30)"),
                );
                None
            }
        }
    }

    fn host_at(&mut self, v: &S, key: &str, s: &DhcpServerSettings) -> Option<Ipv4Addr> {
        let Ok(ip) = v.get_ref().parse::<Ipv4Addr>() else {
            self.problem(
                v.span().start,
                key,
                format!("{:?} is not an IPv4 address", v.get_ref()),
            );
            return None;
        };
        if !s.is_host(ip) {
            self.problem(
                v.span().start,
                key,
                format!(
                    "{ip} is not a host address of dhcp.subnet {}/{}",
                    s.network, s.prefix_len
                ),
            );
            return None;
        }
        Some(ip)
    }

    fn pool_at(&mut self, v: &S, s: &DhcpServerSettings) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let text = v.get_ref();
        let Some((a, b)) = text.split_once('-').and_then(|(a, b)| {
            Some((
                a.trim().parse::<Ipv4Addr>().ok()?,
                b.trim().parse::<Ipv4Addr>().ok()?,
            ))
        }) else {
            self.problem(
                v.span().start,
                "dhcp.pool",
                format!("{text:?} is not a range like \"10.0.0.100-10.0.0.199\""),
            );
            return None;
        };
        if !s.is_host(a) || !s.is_host(b) || u32::from(a) > u32::from(b) {
            self.problem(
                v.span().start,
                "dhcp.pool",
                format!(
                    "{a}-{b} must run upwards between host addresses of dhcp.subnet {}/{}",
                    s.network, s.prefix_len
                ),
            );
            return None;
        }
        Some((a, b))
    }

    /// `ip` and `hostname` of each machine: in the subnet, unique.
    fn reservations(
        &mut self,
        machines: &[Spanned<RawMachine>],
        s: &DhcpServerSettings,
    ) -> Vec<Reservation> {
        let mut out = Vec::new();
        let mut taken: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (n, m) in machines.iter().enumerate() {
            let m = m.get_ref();
            let key = format!("machines[{n}]");
            let hostname = match &m.hostname {
                Some(h) => {
                    if !is_hostname(h.get_ref()) {
                        self.problem(
                            h.span().start,
                            format!("{key}.hostname"),
                            format!(
                                "{:?} is not a host name (letters, digits and '-' in dot-separated labels of at most 63)",
                                h.get_ref()
                            ),
                        );
                    }
                    Some(h.get_ref().clone())
                }
                None => m
                    .name
                    .as_ref()
                    .map(|n| n.get_ref().clone())
                    .filter(|n| is_hostname(n)),
            };
            let Some(ip_text) = &m.ip else {
                if let Some(h) = &m.hostname {
                    self.problem(
                        h.span().start,
                        format!("{key}.hostname"),
                        "is handed out with a reservation: set ip too",
                    );
                }
                continue;
            };
            let Some(ip) = self.host_at(ip_text, &format!("{key}.ip"), s) else {
                continue;
            };
            let line = self.line(ip_text.span().start);
            if let Some(first) = taken.insert(ip, line) {
                self.problem(
                    ip_text.span().start,
                    format!("{key}.ip"),
                    format!("{ip} is reserved twice: also at line {first}"),
                );
                continue;
            }
            let Ok(mac) = m.mac.get_ref().parse::<MacAddr>() else {
                // Reported with the machine.
                continue;
            };
            out.push(Reservation { mac, ip, hostname });
        }
        out
    }
}

/// RFC 1123 host names.
fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, NoChecks};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("c.toml"), &NoChecks)
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    const MACHINES: &str = r#"
[[machines]]
mac = "52:54:00:00:00:01"
name = "node-01"
kernel = "/k"
ip = "10.0.0.11"

[[machines]]
mac = "52:54:00:00:00:02"
name = "node_02"
kernel = "/k"
ip = "10.0.0.12"
hostname = "n2"

[[machines]]
mac = "52:54:00:00:00:03"
name = "node_03"
kernel = "/k"
ip = "10.0.0.13"
"#;

    #[test]
    fn proxy_is_the_default_and_server_mode_reads_reservations() {
        assert_eq!(parse("").unwrap().dhcp, DhcpMode::Proxy);
        let c = parse(&format!(
            "[dhcp]\nmode = \"server\"\nsubnet = \"10.0.0.0/24\"\npool = \"10.0.0.100 - 10.0.0.199\"\n\
             lease_time = \"12h\"\nrouter = \"10.0.0.1\"\ndns = [\"10.0.0.1\", \"10.0.0.2\"]\n{MACHINES}"
        ))
        .unwrap();
        let DhcpMode::Server(s) = c.dhcp else {
            panic!("not server mode")
        };
        assert_eq!(
            s.pool,
            Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199)))
        );
        assert_eq!(s.lease_time, Duration::from_secs(12 * 3600));
        assert_eq!(s.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(s.dns.len(), 2);
        let r: Vec<(u8, Option<&str>)> = s
            .reservations
            .iter()
            .map(|r| (r.ip.octets()[3], r.hostname.as_deref()))
            .collect();
        // node_03's name is no host name, so it gets none.
        assert_eq!(r, [(11, Some("node-01")), (12, Some("n2")), (13, None)]);
    }

    #[test]
    fn every_dhcp_mistake_names_its_key() {
        let p = problems(&format!(
            "[dhcp]\nmode = \"server\"\nsubnet = \"10.0.0.1/24\"\n{MACHINES}"
        ));
        assert_eq!(
            p,
            ["c.toml:3: dhcp.subnet: \"10.0.0.1/24\" has host bits set; the network is 10.0.0.0/24"]
        );
        let p = problems(
            "[dhcp]\nmode = \"server\"\nsubnet = \"10.0.0.0/24\"\npool = \"10.0.0.200-10.0.0.100\"\n\
             lease_time = \"5s\"\nrouter = \"10.0.1.1\"\ndns = [\"x\"]\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\nip = \"10.0.0.255\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:02\"\nkernel = \"/k\"\nip = \"10.0.0.5\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:03\"\nkernel = \"/k\"\nip = \"10.0.0.5\"\nhostname = \"-x\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|l| l.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "dhcp.pool",
                "dhcp.lease_time",
                "dhcp.router",
                "dhcp.dns[0]",
                "machines[0].ip",
                "machines[2].ip",
                "machines[2].hostname",
            ],
            "{p:#?}"
        );
        assert!(
            p[5].ends_with("10.0.0.5 is reserved twice: also at line 15"),
            "{p:#?}"
        );
        let p = problems("[dhcp]\nmode = \"server\"\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("dhcp.subnet: mode = \"server\" needs"),
            "{p:?}"
        );
        let p = problems("[dhcp]\nmode = \"relay\"\n");
        assert!(p[0].contains("dhcp.mode: \"relay\" is not one of"), "{p:?}");
    }

    #[test]
    fn proxy_mode_refuses_server_only_keys() {
        let p = problems(&format!(
            "[dhcp]\npool = \"10.0.0.100-10.0.0.199\"\n{MACHINES}"
        ));
        let keys: Vec<&str> = p.iter().map(|l| l.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "dhcp.pool",
                "machines[0].ip",
                "machines[1].ip",
                "machines[1].hostname",
                "machines[2].ip"
            ]
        );
    }

    fn s() -> DhcpServerSettings {
        DhcpServerSettings {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            pool: None,
            lease_time: DEFAULT_LEASE_TIME,
            router: None,
            dns: vec![],
            reservations: vec![],
        }
    }

    #[test]
    fn subnet_arithmetic() {
        let s = s();
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert!(s.is_host(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!s.is_host(Ipv4Addr::new(10, 0, 0, 0)));
        assert!(!s.is_host(Ipv4Addr::new(10, 0, 0, 255)));
        assert!(!s.is_host(Ipv4Addr::new(10, 0, 1, 1)));
    }

    #[test]
    fn host_names() {
        assert!(is_hostname("node-00"));
        assert!(is_hostname("node-00.cluster"));
        for bad in ["", "-a", "a-", "a_b", "a..b", "ü"] {
            assert!(!is_hostname(bad), "{bad:?}");
        }
    }
}
