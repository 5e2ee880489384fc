//! Every URL ironpxe hands to a booting machine, built and parsed in one place.
//!
//! ironpxe's HTTP server answers four routes, and three crates must agree on them:
//! ProxyDHCP writes the first URL a client fetches into its reply, the iPXE script
//! names the files and the callback, and the HTTP server routes and parses them all.
//!
//! | route                          | built by                  | answered with          |
//! |--------------------------------|---------------------------|------------------------|
//! | `/_/ipxe?mac=M&arch=N`             | [`BootUrls::script`]  | the iPXE boot script  |
//! | `/_/file?name=ID&mac=M&arch=N`     | [`BootUrls::file`]    | a kernel or initrd    |
//! | `/_/booting?mac=M&arch=N`          | [`BootUrls::booting`] | 200, logged           |
//! | `/_/bin/NAME`                      | [`BootUrls::binary`]  | an iPXE binary        |
//!
//! The machine API that installers and operators call is here too ([`MachineAction`]):
//! `POST /api/v1/machines/M/installed` (the URL `{{ DONE_URL }}` expands to, built by
//! [`BootUrls::installed`]) and `POST /api/v1/machines/M/reinstall`.
//!
//! `M` is the MAC as `aa:bb:cc:dd:ee:ff`, `N` the option 93 code in decimal, `ID` a
//! [`FileId`]. Parameters are always written in this order; parsing accepts any
//! order, and the first of repeated parameters wins.
//!
//! DHCPv6 names the first file a firmware PXE client fetches as a URL too (option
//! 59): [`tftp_url`] builds `tftp://[fd00::2]/snponly.efi`.
//!
//! [`BootUrls`] holds the server part (`http://10.0.0.2:8080`) and builds URLs;
//! [`MachineQuery`], [`FileQuery`], [`binary_name`] and [`BootRoute`] parse what a
//! client sends back. Parse errors are [`UrlError`]s naming the bad parameter.
//!
//! # Which machine a request is for
//!
//! Every route but the iPXE binaries names its machine, `mac=M&arch=N` (a
//! [`MachineQuery`]), and a file URL is handed to one machine: the script of machine
//! M names its files with M's MAC, and so do the URLs its command line expands to.
//! The HTTP server serves `name=ID` only to a machine that was given that file (its
//! boot spec names it), so a machine that learns another's file id cannot fetch the
//! file with its own MAC: it gets 404. File ids stay derived from the file itself
//! ([`crate::FileRef::id`]), so they survive a restart.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use crate::{ClientArch, FileId, MacAddr, MacParseError};

/// Route of the iPXE boot script.
pub const SCRIPT_PATH: &str = "/_/ipxe";
/// Route of served files (kernels, initrds, files named in a cmdline).
pub const FILE_PATH: &str = "/_/file";
/// Route of the callback a script makes just before `boot`.
pub const BOOTING_PATH: &str = "/_/booting";
/// Prefix of the iPXE binaries served by file name, for UEFI HTTP Boot clients.
pub const BINARY_PREFIX: &str = "/_/bin/";

const MAC: &str = "mac";
const ARCH: &str = "arch";
const NAME: &str = "name";

/// Why a URL, or a part of one, is not one of ironpxe's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A required query parameter is absent.
    #[error("missing {param} parameter")]
    Missing {
        /// The parameter's name.
        param: &'static str,
    },
    /// The `mac` parameter is not a MAC address.
    #[error("mac parameter: {0}")]
    Mac(#[source] MacParseError),
    /// The `arch` parameter is not an option 93 code.
    #[error("invalid arch {value:?}: expected a number 0-65535")]
    Arch {
        /// The rejected text.
        value: String,
    },
    /// A `name` parameter or binary name that is empty or not valid UTF-8 once decoded.
    #[error("invalid {param} {value:?}")]
    Name {
        /// `name`, or `binary` for the `/_/bin/` path.
        param: &'static str,
        /// The rejected text, as received.
        value: String,
    },
    /// The path is none of ironpxe's routes.
    #[error("{path:?} is not an ironpxe boot URL")]
    UnknownPath {
        /// The rejected path.
        path: String,
    },
    /// The server base is not `http://` or `https://` followed by a host.
    #[error("base URL {base:?} must start with http:// or https:// and name a host")]
    Base {
        /// The rejected base.
        base: String,
    },
}

/// ironpxe's HTTP server as a client reaches it, and the URLs under it.
///
/// Holds scheme and authority (and a path prefix, if the server sits behind one),
/// without a trailing slash: `http://10.0.0.2`, `http://10.0.0.2:8080`,
/// `http://[fd00::2]:8080`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BootUrls {
    base: String,
}

impl BootUrls {
    /// `http://ADDR[:PORT]`; port 80 is left out and IPv6 addresses are bracketed.
    pub fn http(addr: impl Into<IpAddr>, port: u16) -> Self {
        let host = match addr.into() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let base = if port == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{port}")
        };
        BootUrls { base }
    }

    /// `http://HOST` for an authority as a client sent it (an HTTP `Host` header:
    /// `name`, `ip:port`, `[v6]:port`).
    ///
    /// Refuses what would change the URL's meaning: an empty host, whitespace,
    /// control characters, `/`, `?`, `#`, `@` and `\`.
    pub fn http_host(host: &str) -> Result<Self, UrlError> {
        let bad = host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "/?#@\\".contains(c));
        if bad {
            return Err(UrlError::Base {
                base: format!("http://{host}"),
            });
        }
        Ok(BootUrls {
            base: format!("http://{host}"),
        })
    }

    /// An `http://` or `https://` base as given, e.g. by an operator; trailing
    /// slashes are tolerated and dropped.
    pub fn from_base(base: &str) -> Result<Self, UrlError> {
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(BootUrls {
                base: base.trim_end_matches('/').to_string(),
            }),
            _ => Err(UrlError::Base {
                base: base.to_string(),
            }),
        }
    }

    /// The base itself, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `route` under this base.
    pub fn url(&self, route: &BootRoute) -> String {
        format!("{}{route}", self.base)
    }

    /// The boot script of `mac`: `<base>/_/ipxe?mac=M&arch=N`.
    pub fn script(&self, mac: MacAddr, arch: ClientArch) -> String {
        self.url(&BootRoute::Script(MachineQuery { mac, arch }))
    }

    /// A file served to machine `mac` (firmware `arch`):
    /// `<base>/_/file?name=ID&mac=M&arch=N`.
    pub fn file(&self, mac: MacAddr, arch: ClientArch, id: &FileId) -> String {
        self.url(&BootRoute::File(FileQuery {
            id: id.clone(),
            machine: MachineQuery { mac, arch },
        }))
    }

    /// The callback a script makes before `boot`: `<base>/_/booting?mac=M&arch=N`.
    pub fn booting(&self, mac: MacAddr, arch: ClientArch) -> String {
        self.url(&BootRoute::Booting(MachineQuery { mac, arch }))
    }

    /// An iPXE binary by file name: `<base>/_/bin/NAME`.
    pub fn binary(&self, name: &str) -> String {
        self.url(&BootRoute::Binary(name.to_string()))
    }

    /// Where `mac`'s installer reports success: `<base>/api/v1/machines/M/installed`.
    pub fn installed(&self, mac: MacAddr) -> String {
        format!("{}{}", self.base, MachineAction::Installed.path(mac))
    }
}

/// Prefix of the per-machine API routes.
pub const MACHINE_API_PREFIX: &str = "/api/v1/machines/";

/// A POST of the machine API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MachineAction {
    /// `/api/v1/machines/M/installed`: the installer reports success (no token).
    Installed,
    /// `/api/v1/machines/M/reinstall`: netboot the machine's spec again (admin token).
    Reinstall,
}

impl MachineAction {
    /// The last path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineAction::Installed => "installed",
            MachineAction::Reinstall => "reinstall",
        }
    }

    /// `/api/v1/machines/M/<action>`.
    pub fn path(self, mac: MacAddr) -> String {
        format!("{MACHINE_API_PREFIX}{mac}/{}", self.as_str())
    }

    /// The route pattern, with `{mac}` for the MAC (axum's syntax).
    pub fn route(self) -> String {
        format!("{MACHINE_API_PREFIX}{{mac}}/{}", self.as_str())
    }

    /// Reads `/api/v1/machines/M/<action>` (M in any accepted MAC spelling).
    pub fn parse(path: &str) -> Result<(MacAddr, MachineAction), UrlError> {
        let unknown = || UrlError::UnknownPath {
            path: path.to_string(),
        };
        let rest = path.strip_prefix(MACHINE_API_PREFIX).ok_or_else(unknown)?;
        let (mac, action) = rest.split_once('/').ok_or_else(unknown)?;
        let action = match action {
            "installed" => MachineAction::Installed,
            "reinstall" => MachineAction::Reinstall,
            _ => return Err(unknown()),
        };
        let mac = decode_segment(mac)
            .ok_or_else(unknown)?
            .parse()
            .map_err(UrlError::Mac)?;
        Ok((mac, action))
    }
}

impl fmt::Display for BootUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// The URL of a file on ironpxe's TFTP server, as DHCPv6 option 59 names it for a
/// firmware PXE client: `tftp://[fd00::2]/snponly.efi` (`tftp://10.0.0.2/x` for
/// IPv4). The file name is one percent-encoded path segment.
pub fn tftp_url(server: impl Into<IpAddr>, file: &str) -> String {
    match server.into() {
        IpAddr::V4(a) => format!("tftp://{a}/{}", encode_segment(file)),
        IpAddr::V6(a) => format!("tftp://[{a}]/{}", encode_segment(file)),
    }
}

/// The machine a script or booting request is about: `mac=M&arch=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MachineQuery {
    /// The machine.
    pub mac: MacAddr,
    /// Its firmware, as option 93 named it.
    pub arch: ClientArch,
}

impl MachineQuery {
    /// Reads `mac` and `arch` from a query string (without the `?`).
    pub fn parse(query: &str) -> Result<Self, UrlError> {
        let mac = Self::parse_mac(query)?;
        let arch = param(query, ARCH).ok_or(UrlError::Missing { param: ARCH })?;
        let code: u16 = arch.parse().map_err(|_| UrlError::Arch {
            value: arch.to_string(),
        })?;
        Ok(MachineQuery {
            mac,
            arch: ClientArch::from_code(code),
        })
    }

    /// Reads only `mac`, e.g. to name the client in a log before the request is
    /// fully checked.
    pub fn parse_mac(query: &str) -> Result<MacAddr, UrlError> {
        param(query, MAC)
            .ok_or(UrlError::Missing { param: MAC })?
            .parse()
            .map_err(UrlError::Mac)
    }
}

impl fmt::Display for MachineQuery {
    /// The canonical query string, `mac=M&arch=N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MAC}={}&{ARCH}={}", self.mac, self.arch.code())
    }
}

/// The file a file request asks for, and the machine asking: `name=ID&mac=M&arch=N`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileQuery {
    /// The file's id; only a lookup key until a booter recognises it.
    pub id: FileId,
    /// The machine the URL was handed to; the file is served only to a machine that
    /// was given it.
    pub machine: MachineQuery,
}

impl FileQuery {
    /// Reads `name`, `mac` and `arch` from a query string (without the `?`).
    pub fn parse(query: &str) -> Result<Self, UrlError> {
        let name = param(query, NAME).ok_or(UrlError::Missing { param: NAME })?;
        Ok(FileQuery {
            id: FileId::from_wire(&name),
            machine: MachineQuery::parse(query)?,
        })
    }
}

impl fmt::Display for FileQuery {
    /// The canonical query string, `name=ID&mac=M&arch=N`, with the id form-encoded
    /// (the ids ironpxe makes are hex, which encoding leaves as is).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAME)?;
        f.write_str("=")?;
        for part in url::form_urlencoded::byte_serialize(self.id.as_str().as_bytes()) {
            f.write_str(part)?;
        }
        write!(f, "&{}", self.machine)
    }
}

/// The file name in a `/_/bin/NAME` path, percent-decoded. A name is one path
/// segment: empty names and names holding `/` are refused.
pub fn binary_name(path: &str) -> Result<String, UrlError> {
    let bad = || UrlError::Name {
        param: "binary",
        value: path.to_string(),
    };
    let raw = path
        .strip_prefix(BINARY_PREFIX)
        .ok_or_else(|| UrlError::UnknownPath {
            path: path.to_string(),
        })?;
    let name = decode_segment(raw).ok_or_else(bad)?;
    if name.is_empty() || name.contains('/') || raw.contains('/') {
        return Err(bad());
    }
    Ok(name)
}

/// One of ironpxe's boot URLs, without its server part.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BootRoute {
    /// `/_/ipxe`.
    Script(MachineQuery),
    /// `/_/file`.
    File(FileQuery),
    /// `/_/booting`.
    Booting(MachineQuery),
    /// `/_/bin/NAME`.
    Binary(String),
}

impl BootRoute {
    /// Reads a request's path and query (without the `?`).
    pub fn parse(path: &str, query: &str) -> Result<Self, UrlError> {
        match path {
            SCRIPT_PATH => MachineQuery::parse(query).map(BootRoute::Script),
            FILE_PATH => FileQuery::parse(query).map(BootRoute::File),
            BOOTING_PATH => MachineQuery::parse(query).map(BootRoute::Booting),
            p if p.starts_with(BINARY_PREFIX) => binary_name(p).map(BootRoute::Binary),
            p => Err(UrlError::UnknownPath {
                path: p.to_string(),
            }),
        }
    }

    /// Reads a whole URL as [`BootUrls::url`] builds it: its base and its route. A
    /// base with a path prefix is not recognised (the route must follow the host).
    pub fn parse_url(url: &str) -> Result<(BootUrls, BootRoute), UrlError> {
        let bad = || UrlError::Base {
            base: url.to_string(),
        };
        let scheme_len = if url.starts_with("http://") {
            "http://".len()
        } else if url.starts_with("https://") {
            "https://".len()
        } else {
            return Err(bad());
        };
        let path_at = url[scheme_len..]
            .find('/')
            .map(|i| i + scheme_len)
            .ok_or_else(bad)?;
        let base = BootUrls::from_base(&url[..path_at])?;
        let (path, query) = url[path_at..]
            .split_once('?')
            .unwrap_or((&url[path_at..], ""));
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        Ok((base, BootRoute::parse(path, query)?))
    }
}

impl fmt::Display for BootRoute {
    /// Path and query, as a request line carries them: `/_/ipxe?mac=M&arch=N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootRoute::Script(q) => write!(f, "{SCRIPT_PATH}?{q}"),
            BootRoute::File(q) => write!(f, "{FILE_PATH}?{q}"),
            BootRoute::Booting(q) => write!(f, "{BOOTING_PATH}?{q}"),
            BootRoute::Binary(name) => write!(f, "{BINARY_PREFIX}{}", encode_segment(name)),
        }
    }
}

/// The decoded value of the first parameter called `name`.
fn param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if s.bytes().all(keep) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Undoes percent-encoding; `None` for a malformed escape or invalid UTF-8.
fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn archs() -> impl Iterator<Item = ClientArch> {
        [0u16, 6, 7, 9, 10, 11, 15, 16, 18, 19, 42, u16::MAX]
            .into_iter()
            .map(ClientArch::from_code)
    }

    fn bases() -> Vec<BootUrls> {
        vec![
            BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 80),
            BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 8080),
            BootUrls::http("fd00::2".parse::<Ipv6Addr>().unwrap(), 8080),
            BootUrls::http_host("boot.example:8080").unwrap(),
            BootUrls::from_base("https://boot.example/").unwrap(),
        ]
    }

    #[test]
    fn bases_are_written_as_clients_reach_them() {
        let b: Vec<String> = bases().iter().map(|b| b.to_string()).collect();
        assert_eq!(
            b,
            [
                "http://10.0.0.2",
                "http://10.0.0.2:8080",
                "http://[fd00::2]:8080",
                "http://boot.example:8080",
                "https://boot.example",
            ]
        );
        assert_eq!(
            BootUrls::http("fd00::2".parse::<IpAddr>().unwrap(), 80).base(),
            "http://[fd00::2]"
        );
        for bad in ["", "a b", "user@host", "a/b", "h?x", "h#x", "h\n"] {
            assert!(BootUrls::http_host(bad).is_err(), "{bad:?}");
        }
        for bad in ["ftp://x", "http://", "http:///x", "10.0.0.2"] {
            assert!(BootUrls::from_base(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_have_one_canonical_form() {
        let u = BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 8080);
        assert_eq!(
            u.script(MAC_A, ClientArch::EfiX64),
            "http://10.0.0.2:8080/_/ipxe?mac=52:54:00:12:34:56&arch=7"
        );
        assert_eq!(
            u.booting(MAC_A, ClientArch::Bios),
            "http://10.0.0.2:8080/_/booting?mac=52:54:00:12:34:56&arch=0"
        );
        assert_eq!(
            u.file(MAC_A, ClientArch::Bios, &FileId::from_wire("0123abcd")),
            "http://10.0.0.2:8080/_/file?name=0123abcd&mac=52:54:00:12:34:56&arch=0"
        );
        assert_eq!(
            u.binary("snponly.efi"),
            "http://10.0.0.2:8080/_/bin/snponly.efi"
        );
    }

    #[test]
    fn every_url_parses_back() {
        let ids = ["0123456789abcdef0123456789abcdef", "odd id&x=1", "ü%+"];
        let names = ["snponly.efi", "ipxe-x86_64.efi", "a b%c", "ü"];
        for base in bases() {
            let mut routes = Vec::new();
            for arch in archs() {
                let q = MachineQuery { mac: MAC_A, arch };
                routes.push(BootRoute::Script(q));
                routes.push(BootRoute::Booting(q));
            }
            for id in ids {
                for arch in archs() {
                    routes.push(BootRoute::File(FileQuery {
                        id: FileId::from_wire(id),
                        machine: MachineQuery { mac: MAC_A, arch },
                    }));
                }
            }
            for name in names {
                routes.push(BootRoute::Binary(name.to_string()));
            }
            for route in routes {
                let target = route.to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                assert_eq!(BootRoute::parse(path, query).as_ref(), Ok(&route));
                let url = base.url(&route);
                assert_eq!(
                    BootRoute::parse_url(&url),
                    Ok((base.clone(), route)),
                    "{url}"
                );
            }
        }
    }

    #[test]
    fn machine_api_paths_round_trip() {
        let u = BootUrls::http(Ipv4Addr::new(10, 0, 0, 2), 8080);
        assert_eq!(
            u.installed(MAC_A),
            "http://10.0.0.2:8080/api/v1/machines/52:54:00:12:34:56/installed"
        );
        for a in [MachineAction::Installed, MachineAction::Reinstall] {
            assert_eq!(MachineAction::parse(&a.path(MAC_A)), Ok((MAC_A, a)));
        }
        assert_eq!(
            MachineAction::route(MachineAction::Reinstall),
            "/api/v1/machines/{mac}/reinstall"
        );
        assert_eq!(
            MachineAction::parse("/api/v1/machines/52-54-00-12-34-56/reinstall"),
            Ok((MAC_A, MachineAction::Reinstall))
        );
        for bad in [
            "/api/v1/machines/52:54:00:12:34:56",
            "/api/v1/machines/52:54:00:12:34:56/other",
            "/api/v1/machines/zz/installed",
            "/_/ipxe",
        ] {
            assert!(MachineAction::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tftp_urls_bracket_ipv6() {
        let v6: Ipv6Addr = "fd77:1::2".parse().unwrap();
        assert_eq!(
            tftp_url(v6, "snponly.efi"),
            "tftp://[fd77:1::2]/snponly.efi"
        );
        assert_eq!(
            tftp_url(Ipv4Addr::new(10, 0, 0, 2), "a b.efi"),
            "tftp://10.0.0.2/a%20b.efi"
        );
        let u = BootUrls::http(v6, 8080);
        assert_eq!(
            u.script(MAC_A, ClientArch::EfiX64),
            "http://[fd77:1::2]:8080/_/ipxe?mac=52:54:00:12:34:56&arch=7"
        );
        assert_eq!(
            u.binary("snponly.efi"),
            "http://[fd77:1::2]:8080/_/bin/snponly.efi"
        );
    }

    #[test]
    fn queries_parse_in_any_order() {
        let want = MachineQuery {
            mac: MAC_A,
            arch: ClientArch::EfiX64,
        };
        for q in [
            "mac=52:54:00:12:34:56&arch=7",
            "arch=7&mac=52-54-00-12-34-56",
            "arch=7&mac=52%3A54%3A00%3A12%3A34%3A56&mac=zz",
        ] {
            assert_eq!(MachineQuery::parse(q), Ok(want), "{q}");
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        let p = MachineQuery::parse;
        assert_eq!(
            p("arch=0").unwrap_err().to_string(),
            "missing mac parameter"
        );
        assert_eq!(
            p("mac=52:54:00:12:34:56").unwrap_err().to_string(),
            "missing arch parameter"
        );
        assert_eq!(
            p("arch=70000&mac=52:54:00:12:34:56").unwrap_err(),
            UrlError::Arch {
                value: "70000".into()
            }
        );
        let e = p("arch=0&mac=zz").unwrap_err().to_string();
        assert!(e.starts_with("mac parameter: invalid MAC"), "{e}");
        assert_eq!(
            FileQuery::parse("").unwrap_err(),
            UrlError::Missing { param: "name" }
        );
        // A file URL names its machine: without one it is refused.
        assert_eq!(
            FileQuery::parse("name=0123").unwrap_err(),
            UrlError::Missing { param: "mac" }
        );
        assert_eq!(
            FileQuery::parse("name=0123&mac=52:54:00:12:34:56").unwrap_err(),
            UrlError::Missing { param: "arch" }
        );
        for bad in [
            "/_/bin/",
            "/_/bin/a/b",
            "/_/bin/a%2Fb",
            "/_/bin/%zz",
            "/_/bin/%ff",
            "/_/bin/%+f",
        ] {
            assert!(binary_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            BootRoute::parse("/_/other", ""),
            Err(UrlError::UnknownPath { .. })
        ));
        assert!(BootRoute::parse_url("ftp://x/_/ipxe").is_err());
    }
}
