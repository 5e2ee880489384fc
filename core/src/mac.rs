use std::fmt;
use std::str::FromStr;

/// An Ethernet hardware address.
///
/// Displays as lowercase `aa:bb:cc:dd:ee:ff`; parses colon or dash separated forms.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets like aa:bb:cc:dd:ee:ff")]
pub struct MacParseError {
    /// The rejected text.
    pub input: String,
}

impl MacAddr {
    /// Builds a MAC from a DHCP `chaddr` field, checking the hardware type and length
    /// the packet declares. Only Ethernet (htype 1, hlen 6) is a MAC.
    pub fn from_chaddr(htype: u8, hlen: u8, chaddr: &[u8]) -> Option<Self> {
        if htype != 1 || hlen != 6 || chaddr.len() < 6 {
            return None;
        }
        let mut b = [0u8; 6];
        b.copy_from_slice(&chaddr[..6]);
        Some(MacAddr(b))
    }

    /// The raw octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written into one buffer and handed over at once: MACs are formatted for
        // every logged and recorded DHCP packet.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[i * 3] = HEX[usize::from(b >> 4)];
            out[i * 3 + 1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits and colons were written.
        f.pad(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_and_dash_and_displays_lowercase() {
        let a: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-CD-01".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(
            MacAddr([0, 0x0f, 0xf0, 0xff, 1, 0x10]).to_string(),
            "00:0f:f0:ff:01:10"
        );
        assert_eq!(format!("{:>18}|", a), " 52:54:00:ab:cd:01|");
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5254.00ab.cd01",
            "zz:54:00:ab:cd:01",
            "525:4:00:ab:cd:01",
            "52:54-00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn chaddr_checks_type_and_length() {
        let ch = [0x52, 0x54, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            MacAddr::from_chaddr(1, 6, &ch),
            Some(MacAddr([0x52, 0x54, 0, 1, 2, 3]))
        );
        assert_eq!(MacAddr::from_chaddr(6, 6, &ch), None);
        assert_eq!(MacAddr::from_chaddr(1, 8, &ch), None);
        assert_eq!(MacAddr::from_chaddr(1, 6, &ch[..4]), None);
    }
}
