//! IPv6 vocabulary shared by the DHCPv6 responder, the configuration and the binary.
//!
//! - [`Ipv6Range`]: the addresses ironpxe's stateful DHCPv6 mode may hand out,
//!   written `START-END` in the configuration and on the command line.
//! - [`check_announced_v6`]: whether an address can be written into the boot URLs a
//!   client is given (a link-local address cannot: a URL has no room for its zone).
//! - [`mac_from_eui64`]: the MAC behind a link-local address formed from it (EUI-64),
//!   the last way to tell which machine sent a DHCPv6 message whose DUID names none.
//! - [`AddrFamily`]: `ipv4` or `ipv6`, the label status and metrics use.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use crate::MacAddr;

/// An inclusive range of IPv6 addresses inside one /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Range {
    start: Ipv6Addr,
    end: Ipv6Addr,
}

/// Why a text is not an [`Ipv6Range`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `START-END`.
    #[error("{0:?} is not a range: write it as START-END, e.g. fd00::1000-fd00::1fff")]
    Syntax(String),
    /// One end is not an IPv6 address.
    #[error("{0:?} is not an IPv6 address")]
    Address(String),
    /// START comes after END.
    #[error("the range starts after it ends ({start} > {end})")]
    Reversed {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
    /// The ends lie in different /64 prefixes (one link has one on-link /64).
    #[error("{start} and {end} are not in the same /64 prefix")]
    Prefix {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
    /// A range of addresses no client can use.
    #[error("{0} is {1}; the range must hold global or unique-local unicast addresses")]
    Scope(Ipv6Addr, &'static str),
}

impl Ipv6Range {
    /// The range from `start` to `end`, both included.
    pub fn new(start: Ipv6Addr, end: Ipv6Addr) -> Result<Self, RangeError> {
        for a in [start, end] {
            if let Some(what) = unusable_kind(a) {
                return Err(RangeError::Scope(a, what));
            }
        }
        if u128::from(start) > u128::from(end) {
            return Err(RangeError::Reversed { start, end });
        }
        if u128::from(start) >> 64 != u128::from(end) >> 64 {
            return Err(RangeError::Prefix { start, end });
        }
        Ok(Ipv6Range { start, end })
    }

    /// First address.
    pub fn start(&self) -> Ipv6Addr {
        self.start
    }

    /// Last address.
    pub fn end(&self) -> Ipv6Addr {
        self.end
    }

    /// How many addresses it holds (at least 1).
    pub fn len(&self) -> u64 {
        // Within one /64 the difference fits 64 bits; a full /64 saturates.
        let d = u128::from(self.end) - u128::from(self.start);
        u64::try_from(d).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Never empty: a range holds at least its start.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `addr` is in the range.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        let a = u128::from(addr);
        a >= u128::from(self.start) && a <= u128::from(self.end)
    }

    /// The `i`-th address (wrapping around the range).
    pub fn nth(&self, i: u64) -> Ipv6Addr {
        let off = u128::from(i % self.len());
        Ipv6Addr::from(u128::from(self.start) + off)
    }

    /// The position of `addr` in the range, if it is in it.
    pub fn index_of(&self, addr: Ipv6Addr) -> Option<u64> {
        self.contains(addr)
            .then(|| (u128::from(addr) - u128::from(self.start)) as u64)
    }
}

impl fmt::Display for Ipv6Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for Ipv6Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| RangeError::Syntax(s.to_string()))?;
        let parse = |t: &str| {
            t.trim()
                .parse::<Ipv6Addr>()
                .map_err(|_| RangeError::Address(t.trim().to_string()))
        };
        Ipv6Range::new(parse(a)?, parse(b)?)
    }
}

/// What kind of address `a` is, when no client could be handed it or reach it by it.
fn unusable_kind(a: Ipv6Addr) -> Option<&'static str> {
    let seg0 = a.segments()[0];
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_loopback() {
        Some("the loopback address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if seg0 & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if a.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

/// Checks that `addr` can be announced to clients as ironpxe's IPv6 address (in
/// option 59 and every boot URL): a global or unique-local unicast address. `::`
/// means "each NIC's own address" and is accepted.
pub fn check_announced_v6(addr: Ipv6Addr) -> Result<(), String> {
    if addr.is_unspecified() {
        return Ok(());
    }
    match unusable_kind(addr) {
        Some("a link-local address") => Err(format!(
            "{addr} is a link-local address, which a boot URL cannot carry (it needs a zone); \
             use the NIC's global or unique-local (fdXX::) address"
        )),
        Some(what) => Err(format!(
            "{addr} is {what}; use the data NIC's global or unique-local (fdXX::) address"
        )),
        None => Ok(()),
    }
}

/// The MAC an EUI-64 interface identifier was formed from (`xx:xx:xx:ff:fe:xx:xx:xx`
/// with the universal/local bit flipped), as in the link-local addresses iPXE and
/// EDK2 give themselves. `None` when the identifier is not of that form.
pub fn mac_from_eui64(addr: Ipv6Addr) -> Option<MacAddr> {
    let o = addr.octets();
    if o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some(MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// The link-local address a NIC with `mac` forms by EUI-64 (`fe80::` + identifier).
pub fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.octets();
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// An address family, as status and metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrFamily {
    /// IPv4 (an IPv4-mapped IPv6 address counts as IPv4).
    V4,
    /// IPv6.
    V6,
}

impl AddrFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddrFamily::V4,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => AddrFamily::V4,
            IpAddr::V6(_) => AddrFamily::V6,
        }
    }

    /// `ipv4` or `ipv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrFamily::V4 => "ipv4",
            AddrFamily::V6 => "ipv6",
        }
    }
}

impl fmt::Display for AddrFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_refuse() {
        let r: Ipv6Range = "fd00::1000-fd00::10ff".parse().unwrap();
        assert_eq!(r.len(), 256);
        assert_eq!(r.nth(0), a("fd00::1000"));
        assert_eq!(r.nth(256), a("fd00::1000"));
        assert_eq!(r.index_of(a("fd00::10ff")), Some(255));
        assert!(!r.contains(a("fd00::1100")));
        assert_eq!(r.to_string(), "fd00::1000-fd00::10ff");
        assert!(matches!(
            "fd00::2".parse::<Ipv6Range>(),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            "fd00::2-fd00::1".parse::<Ipv6Range>(),
            Err(RangeError::Reversed { .. })
        ));
        assert!(matches!(
            "fd00::1-fd00:0:0:1::1".parse::<Ipv6Range>(),
            Err(RangeError::Prefix { .. })
        ));
        assert!(matches!(
            "fe80::1-fe80::2".parse::<Ipv6Range>(),
            Err(RangeError::Scope(..))
        ));
        assert!(matches!(
            "x-fd00::1".parse::<Ipv6Range>(),
            Err(RangeError::Address(_))
        ));
        let full: Ipv6Range = "fd00::-fd00::ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(full.len(), u64::MAX);
    }

    #[test]
    fn announced_addresses() {
        assert!(check_announced_v6(a("fd77:1::2")).is_ok());
        assert!(check_announced_v6(a("2001:db8::2")).is_ok());
        assert!(check_announced_v6(Ipv6Addr::UNSPECIFIED).is_ok());
        let e = check_announced_v6(a("fe80::1")).unwrap_err();
        assert!(e.contains("link-local"), "{e}");
        assert!(check_announced_v6(a("ff02::1:2")).is_err());
        assert!(check_announced_v6(a("::1")).is_err());
        assert!(check_announced_v6(a("::ffff:10.0.0.2")).is_err());
    }

    #[test]
    fn eui64_round_trip() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let ll = eui64_link_local(mac);
        assert_eq!(ll, a("fe80::5054:ff:fe12:3456"));
        assert_eq!(mac_from_eui64(ll), Some(mac));
        assert_eq!(mac_from_eui64(a("fe80::1")), None);
        assert_eq!(mac_from_eui64(a("fd77:1::2")), None);
    }

    #[test]
    fn families() {
        assert_eq!(AddrFamily::of("10.0.0.1".parse().unwrap()), AddrFamily::V4);
        assert_eq!(
            AddrFamily::of("::ffff:10.0.0.1".parse().unwrap()),
            AddrFamily::V4
        );
        assert_eq!(AddrFamily::of("fd00::1".parse().unwrap()).as_str(), "ipv6");
    }
}
