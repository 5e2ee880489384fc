//! The install-once keys: `once` (profiles and machines), `bmc` (machines) and
//! `[server] admin_token_file`.
//!
//! ```toml
//! [server]
//! admin_token_file = "/run/secrets/ironpxe-admin"   # Bearer token of POST .../reinstall
//!
//! [profiles.installer]
//! once = true            # netboot until the installer reports success, then boot locally
//!
//! [[machines]]
//! mac = "3c:ec:ef:30:00:00"
//! profile = "installer"
//! bmc = { address = "10.1.0.30", user = "admin", password_file = "/run/secrets/bmc-node-00" }
//! # optional in bmc: cipher_suite = 17   (ipmitool -C)
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Validator, S};

/// A machine's BMC, reached with IPMI over LAN (`ipmitool -I lanplus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcSettings {
    /// Host name or address of the BMC.
    pub host: String,
    /// UDP port, when not IPMI's 623 (`address = "host:port"`).
    pub port: Option<u16>,
    /// The IPMI user.
    pub user: String,
    /// A file holding the password (read by ipmitool itself, `-f FILE`).
    pub password_file: PathBuf,
    /// The IPMI 2.0 cipher suite (`ipmitool -C`), when ipmitool's own choice does
    /// not suit the BMC (many answer fastest, or only, to 3 or 17).
    pub cipher_suite: Option<u8>,
}

impl BmcSettings {
    /// `host` or `host:port`, as written.
    pub fn address(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// `bmc = { address, user, password_file }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBmc {
    address: S,
    user: S,
    password_file: S,
    cipher_suite: Option<Spanned<u8>>,
}

impl Validator<'_> {
    /// `machines[N].bmc`.
    pub(super) fn bmc_at(&mut self, raw: &Spanned<RawBmc>, key: &str) -> Option<BmcSettings> {
        let b = raw.get_ref();
        let mut ok = true;
        let addr = b.address.get_ref().trim();
        let (host, port) = match split_host_port(addr) {
            Ok(hp) => hp,
            Err(msg) => {
                self.problem(b.address.span().start, format!("{key}.bmc.address"), msg);
                ok = false;
                (String::new(), None)
            }
        };
        let user = b.user.get_ref();
        if user.is_empty() || user.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.problem(
                b.user.span().start,
                format!("{key}.bmc.user"),
                format!("{user:?} is not an IPMI user name (no spaces or control characters)"),
            );
            ok = false;
        }
        let pw = b.password_file.get_ref();
        let password_file = if pw.is_empty() {
            self.problem(
                b.password_file.span().start,
                format!("{key}.bmc.password_file"),
                "empty path",
            );
            ok = false;
            PathBuf::new()
        } else {
            let p = PathBuf::from(pw);
            let p = if p.is_relative() { self.dir.join(p) } else { p };
            if let Err(e) = self.checks.file(&p) {
                self.problem(
                    b.password_file.span().start,
                    format!("{key}.bmc.password_file"),
                    format!("{}: {e}", p.display()),
                );
                ok = false;
            }
            p
        };
        let cipher_suite = b.cipher_suite.as_ref().map(|c| *c.get_ref());
        if let Some(c) = &b.cipher_suite {
            if *c.get_ref() > 17 {
                self.problem(
                    c.span().start,
                    format!("{key}.bmc.cipher_suite"),
                    format!("{} is not an IPMI 2.0 cipher suite (0 to 17)", c.get_ref()),
                );
                ok = false;
            }
        }
        ok.then(|| BmcSettings {
            host,
            port,
            user: user.clone(),
            password_file,
            cipher_suite,
        })
    }

    /// `[server] admin_token_file`: a readable file (relative to the config file).
    pub(super) fn admin_token_file_at(&mut self, v: &S) -> Option<PathBuf> {
        if v.get_ref().is_empty() {
            self.problem(v.span().start, "server.admin_token_file", "empty path");
            return None;
        }
        let p = PathBuf::from(v.get_ref());
        let p = if p.is_relative() { self.dir.join(p) } else { p };
        if let Err(e) = self.checks.file(&p) {
            self.problem(
                v.span().start,
                "server.admin_token_file",
                format!("{}: {e}", p.display()),
            );
            return None;
        }
        Some(p)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(addr: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("{addr:?} is not a BMC address (host, host:port or [IPv6]:port)");
    if addr.is_empty() || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<IpAddr>().map_err(|_| bad())?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if addr.parse::<IpAddr>().is_ok() {
        (addr, None)
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (addr, None),
        }
    };
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && (host.parse::<IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
    if !host_ok {
        return Err(bad());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad()),
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::split_host_port;
    use crate::config::{Checks, Config, ConfigError, NoChecks};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ironpxe/c.toml"), &NoChecks)
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn once_comes_from_the_machine_then_its_profile_then_the_default_profile() {
        let c = parse(
            r#"
[server]
default_profile = "inst"
admin_token_file = "secrets/admin"

[profiles.inst]
kernel = "/k"
once = true

[profiles.plain]
kernel = "/k"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "inst"

[[machines]]
mac = "52:54:00:00:00:02"
profile = "inst"
once = false

[[machines]]
mac = "52:54:00:00:00:03"
profile = "plain"
once = true
bmc = { address = "10.1.0.3", user = "admin", password_file = "bmc-3" }
"#,
        )
        .unwrap();
        let once = |last: u8| {
            c.booter
                .machines()
                .find(|(m, _)| m.0[5] == last)
                .map(|(_, m)| m.once)
                .unwrap()
        };
        assert!(once(1));
        assert!(!once(2));
        assert!(once(3));
        assert!(c.booter.default_once());
        assert_eq!(
            c.admin_token_file.as_deref(),
            Some(Path::new("/etc/ironpxe/secrets/admin"))
        );
        let (_, m3) = c.booter.machines().find(|(m, _)| m.0[5] == 3).unwrap();
        let b = m3.bmc.as_ref().unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.user.as_str()),
            ("10.1.0.3", None, "admin")
        );
        assert_eq!(b.password_file, Path::new("/etc/ironpxe/bmc-3"));
    }

    #[test]
    fn bmc_and_token_mistakes_are_one_line_each() {
        struct Missing;
        impl Checks for Missing {
            fn file(&self, p: &Path) -> Result<(), String> {
                if p.ends_with("missing") {
                    Err("no such file".into())
                } else {
                    Ok(())
                }
            }
        }
        let text = r#"
[server]
admin_token_file = "missing"

[[machines]]
mac = "52:54:00:00:00:01"
kernel = "/k"
bmc = { address = "a b", user = "", password_file = "missing" }
"#;
        let e = Config::parse(text, Path::new("/etc/ironpxe/c.toml"), &Missing).unwrap_err();
        let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            [
                "/etc/ironpxe/c.toml:3: server.admin_token_file: /etc/ironpxe/missing: no such file",
                "/etc/ironpxe/c.toml:8: machines[0].bmc.address: \"a b\" is not a BMC address (host, host:port or [IPv6]:port)",
                "/etc/ironpxe/c.toml:8: machines[0].bmc.user: \"\" is not an IPMI user name (no spaces or control characters)",
                "/etc/ironpxe/c.toml:8: machines[0].bmc.password_file: /etc/ironpxe/missing: no such file",
            ]
        );
        // An unknown key inside bmc is a shape error.
        let p = problems(
            "[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\nbmc = { address = \"h\", user = \"u\", password_file = \"p\", password = \"x\" }\n",
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("unknown field `password`"), "{p:?}");
    }

    #[test]
    fn bmc_addresses() {
        let ok = |a: &str| split_host_port(a).unwrap();
        assert_eq!(ok("10.1.0.30"), ("10.1.0.30".into(), None));
        assert_eq!(ok("bmc-node-00.mgmt"), ("bmc-node-00.mgmt".into(), None));
        assert_eq!(ok("10.1.0.30:6230"), ("10.1.0.30".into(), Some(6230)));
        assert_eq!(ok("fd00::30"), ("fd00::30".into(), None));
        assert_eq!(ok("[fd00::30]:623"), ("fd00::30".into(), Some(623)));
        for bad in [
            "",
            "a b",
            "h:0",
            "h:x",
            "[fd00::30",
            "[x]:1",
            "h/x",
            "-H",
            "-",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
