//! The IPv6 keys of `[server]`: `ipv6`, `listen_addr6`, `ipv6_range` and
//! `ipv6_stateful`, validated like the rest of the file.

use std::net::Ipv6Addr;
use std::str::FromStr;

use super::{RawServer, Validator};
use crate::net6::{check_announced_v6, Ipv6Range};

/// `[server]`'s IPv6 settings (command-line flags take precedence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Settings {
    /// `ipv6`: answer DHCPv6 and serve TFTP and HTTP on IPv6 too.
    pub enabled: Option<bool>,
    /// `listen_addr6`: the IPv6 address to listen on and announce.
    pub listen_addr6: Option<Ipv6Addr>,
    /// `ipv6_range`: the addresses the stateful mode hands out.
    pub range: Option<Ipv6Range>,
    /// `ipv6_stateful`: which clients get an address from the range.
    pub stateful: Option<StatefulFor>,
}

/// Which DHCPv6 clients the stateful mode gives an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatefulFor {
    /// Only iPXE, which ignores a DHCPv6 answer without an address. Firmware gets
    /// boot information only and its address from the site's server.
    Ipxe,
    /// Every PXE and HTTP Boot client: for a segment with no other DHCPv6 server.
    All,
}

impl StatefulFor {
    /// The value as written in the file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StatefulFor::Ipxe => "ipxe",
            StatefulFor::All => "all",
        }
    }
}

impl FromStr for StatefulFor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipxe" => Ok(StatefulFor::Ipxe),
            "all" => Ok(StatefulFor::All),
            other => Err(format!("{other:?} is not one of \"ipxe\", \"all\"")),
        }
    }
}

impl Validator<'_> {
    pub(super) fn ipv6(&mut self, s: &RawServer) -> Ipv6Settings {
        let listen_addr6 = s.listen_addr6.as_ref().and_then(|a| {
            let key = "server.listen_addr6";
            match a.get_ref().parse::<Ipv6Addr>() {
                Ok(ip) => match check_announced_v6(ip) {
                    Ok(()) => Some(ip),
                    Err(e) => {
                        self.problem(a.span().start, key, e);
                        None
                    }
                },
                Err(_) => {
                    self.problem(
                        a.span().start,
                        key,
                        format!("{:?} is not an IPv6 address", a.get_ref()),
                    );
                    None
                }
            }
        });
        let range = s
            .ipv6_range
            .as_ref()
            .and_then(|r| match r.get_ref().parse::<Ipv6Range>() {
                Ok(range) => Some(range),
                Err(e) => {
                    self.problem(r.span().start, "server.ipv6_range", e.to_string());
                    None
                }
            });
        let stateful =
            s.ipv6_stateful
                .as_ref()
                .and_then(|v| match v.get_ref().parse::<StatefulFor>() {
                    Ok(f) => Some(f),
                    Err(e) => {
                        self.problem(v.span().start, "server.ipv6_stateful", e);
                        None
                    }
                });
        let enabled = s.ipv6.as_ref().map(|b| *b.get_ref());
        if s.ipv6.is_some() && enabled == Some(false) {
            for (key, given) in [
                ("listen_addr6", s.listen_addr6.as_ref()),
                ("ipv6_range", s.ipv6_range.as_ref()),
                ("ipv6_stateful", s.ipv6_stateful.as_ref()),
            ] {
                if let Some(v) = given {
                    self.problem(
                        v.span().start,
                        format!("server.{key}"),
                        "has no effect with ipv6 = false; set ipv6 = true or remove it",
                    );
                }
            }
        }
        if let (Some(addr), Some(range), Some(a)) = (listen_addr6, range, &s.listen_addr6) {
            if range.contains(addr) {
                self.problem(
                    a.span().start,
                    "server.listen_addr6",
                    format!("{addr} lies inside ipv6_range {range}, which hands it to clients"),
                );
            }
        }
        if let (Some(v), None) = (&s.ipv6_stateful, &s.ipv6_range) {
            self.problem(
                v.span().start,
                "server.ipv6_stateful",
                "needs ipv6_range, the addresses to hand out",
            );
        }
        Ipv6Settings {
            enabled,
            listen_addr6,
            range,
            stateful,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NoChecks};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(text, Path::new("f.toml"), &NoChecks)
            .map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    #[test]
    fn ipv6_keys_parse() {
        let c = parse(
            "[server]\nipv6 = true\nlisten_addr6 = \"fd77:1::2\"\n\
             ipv6_range = \"fd77:1::1000-fd77:1::10ff\"\nipv6_stateful = \"all\"\n",
        )
        .unwrap();
        let v6 = &c.server.ipv6;
        assert_eq!(v6.enabled, Some(true));
        assert_eq!(v6.listen_addr6, Some("fd77:1::2".parse().unwrap()));
        assert_eq!(v6.range.unwrap().len(), 256);
        assert_eq!(v6.stateful, Some(StatefulFor::All));
        assert_eq!(
            parse("[server]\n").unwrap().server.ipv6,
            Ipv6Settings::default()
        );
    }

    #[test]
    fn every_ipv6_mistake_names_its_line_and_key() {
        let e = parse(
            "[server]\nipv6 = true\nlisten_addr6 = \"fe80::2\"\n\
             ipv6_range = \"fd77:1::10ff-fd77:1::1000\"\nipv6_stateful = \"some\"\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e[0].starts_with("f.toml:3: server.listen_addr6: fe80::2 is a link-local"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("f.toml:4: server.ipv6_range: the range starts after"),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("f.toml:5: server.ipv6_stateful: \"some\""),
            "{}",
            e[2]
        );

        let e = parse("[server]\nlisten_addr6 = \"10.0.0.2\"\n").unwrap_err();
        assert_eq!(
            e,
            ["f.toml:2: server.listen_addr6: \"10.0.0.2\" is not an IPv6 address"]
        );
        let e = parse(
            "[server]\nipv6 = true\nlisten_addr6 = \"fd77:1::1001\"\n\
             ipv6_range = \"fd77:1::1000-fd77:1::10ff\"\n",
        )
        .unwrap_err();
        assert!(e[0].contains("lies inside ipv6_range"), "{e:?}");
        let e =
            parse("[server]\nipv6 = false\nipv6_range = \"fd77:1::1-fd77:1::2\"\n").unwrap_err();
        assert!(
            e[0].starts_with("f.toml:3: server.ipv6_range: has no effect"),
            "{e:?}"
        );
        let e = parse("[server]\nipv6 = true\nipv6_stateful = \"ipxe\"\n").unwrap_err();
        assert!(e[0].contains("needs ipv6_range"), "{e:?}");
    }
}
