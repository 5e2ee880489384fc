//! The configuration file of `ironpxe serve`: machines described by MAC.
//!
//! Two layers. The TOML text is read into serde structs that refuse unknown keys and
//! keep the position of every value ([`toml::Spanned`]). Those are then validated
//! into a [`Config`], whose [`ConfigBooter`] cannot hold an invalid state: every MAC
//! is parsed and unique, every profile is resolved, every netbooting machine has a
//! kernel. Validation does not stop at the first problem: [`ConfigError`] lists every
//! one as `FILE:LINE: key: message`, which is what `ironpxe check` prints.
//!
//! ```toml
//! [server]
//! interface = "eth1"            # the data NIC
//! http_port = 8080
//! status_port = 8081            # unset: no status page; = http_port: on the boot port
//! status_addr = "192.168.1.2"   # unset: listen_addr
//! shutdown_timeout = "30s"      # after SIGTERM, transfers in flight get this long
//! http_max_connections = 4096   # unset: derived from the open-file limit
//! ipv6 = true                   # also DHCPv6, TFTP and HTTP on IPv6 (default off)
//! listen_addr6 = "fd00::2"      # unset: the data NIC's global or unique-local address
//! ipv6_range = "fd00::1000-fd00::1fff"  # unset: no addresses, boot information only
//! ipv6_stateful = "ipxe"        # who gets an address from ipv6_range: "ipxe" or "all"
//! tftp_per_address = 8          # TFTP transfers one client address may run at once
//! user = "ironpxe"              # started as root: run as this user once the ports are bound
//! default_profile = "installer" # unset: machines not listed are not answered
//!
//! [loaders]                    # shim and GRUB, when not in the usual places
//! shim_x64 = "/srv/efi/shimx64.efi"
//!
//! [profiles.installer]
//! kernel = "/srv/netboot/bzImage"        # path (relative to this file), file:// or http(s)://
//! initrd = ["/srv/netboot/initrd"]
//! cmdline = "console=ttyS0 loglevel=4"
//! message = "NixOS installer"
//! loader = "shim"              # "ipxe" (default), "shim" (Secure Boot) or "grub"
//!
//! [[machines]]
//! mac = "52:54:00:00:00:01"
//! name = "node-01"
//! profile = "installer"
//! cmdline_append = "nixos.install=/nix/store/...-install-node-01"
//!
//! [[machines]]
//! mac = "52:54:00:00:00:02"
//! boot = "local"                # answer, then leave iPXE to the local disk
//! ```
//!
//! The library does no I/O: the caller passes the text, the file's path (for
//! messages and relative paths) and [`Checks`], which is how the binary verifies that
//! files exist and that each boot script can be rendered.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ipxe_role::{IpxeRole, RoleMap};
use crate::loader::{Loader, LoaderBinary, LoaderMap};
use crate::template::resolve_cmdline;
use crate::{BootDecision, BootSpec, Booter, ClientArch, FileId, FileRef, MacAddr};

mod dhcp;
mod install;

pub use dhcp::{DhcpMode, DhcpServerSettings, Reservation, DEFAULT_LEASE_TIME, MIN_LEASE_TIME};
pub use install::BmcSettings;

/// Verifications that need the outside world, supplied by the caller.
pub trait Checks {
    /// A local file the configuration references (kernel, initrd, a file named in a
    /// cmdline template, an iPXE binary): is it there and readable?
    fn file(&self, _path: &Path) -> Result<(), String> {
        Ok(())
    }

    /// Can this spec be served? (The binary renders its iPXE script, and its GRUB
    /// configuration when its loader is GRUB or shim.)
    fn spec(&self, _spec: &BootSpec) -> Result<(), String> {
        Ok(())
    }

    /// A profile or machine boots through `loader` (GRUB or shim): can this server
    /// give it one? `paths` are the file's `[loaders]`.
    fn loader(&self, _loader: Loader, _paths: &LoaderPaths) -> Result<(), String> {
        Ok(())
    }
}

/// Checks nothing: for parsing a configuration whose files live elsewhere.
pub struct NoChecks;

impl Checks for NoChecks {}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// The key, as a path: `machines[2].mac`, `profiles.compute.kernel`.
    pub key: String,
    /// What is wrong, and what to do.
    pub message: String,
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// In file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One line per problem: `FILE:LINE: key: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                p.line,
                p.key,
                p.message
            )?;
        }
        Ok(())
    }
}

/// What a machine listed in the file gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineBoot {
    /// Netboot this spec.
    Netboot(Arc<BootSpec>),
    /// Answer DHCP, then leave iPXE to the next boot device.
    Local,
    /// Do not answer at all.
    Ignore,
}

/// A machine of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Its `name`, for logs.
    pub name: Option<String>,
    /// What it boots.
    pub boot: MachineBoot,
    /// The line of its `[[machines]]` entry.
    pub line: usize,
    /// `once = true` (its own or its profile's): netboot until the installer reports
    /// success, then boot locally.
    pub once: bool,
    /// Its BMC, for `ironpxe reinstall --power-cycle`.
    pub bmc: Option<BmcSettings>,
}

/// `[server]`: settings the binary applies (command-line flags take precedence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// The data NIC.
    pub interface: Option<String>,
    /// Address to listen on and announce.
    pub listen_addr: Option<Ipv4Addr>,
    /// HTTP port.
    pub http_port: Option<u16>,
    /// Status page port.
    pub status_port: Option<u16>,
    /// Address the status page listens on.
    pub status_addr: Option<Ipv4Addr>,
    /// How long, after SIGTERM or SIGINT, transfers in flight may take to finish.
    pub shutdown_timeout: Option<Duration>,
    /// HTTP connections open at once.
    pub http_max_connections: Option<usize>,
    /// HTTP connections one client address may always hold.
    pub http_max_connections_per_addr: Option<usize>,
    /// The user to run as once every port is bound, when started as root.
    pub user: Option<String>,
    /// `ipv6`, `listen_addr6`, `ipv6_range`, `ipv6_stateful`.
    pub ipv6: Ipv6Settings,
    /// TFTP transfers one client address may run at once (at least 1).
    pub tftp_per_address: Option<usize>,
}

/// `[ipxe]`: iPXE binaries by role (keys as in [`IpxeRole::config_key`]), relative
/// paths resolved against the file.
pub type IpxePaths = RoleMap<PathBuf>;

/// `[loaders]`: shim and GRUB binaries by slot (keys as in
/// [`LoaderBinary::spec`]'s `config_key`), relative paths resolved against the file.
pub type LoaderPaths = LoaderMap<PathBuf>;

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[ipxe]`.
    pub ipxe: IpxePaths,
    /// `[loaders]`.
    pub loaders: LoaderPaths,
    /// The loaders other than iPXE that profiles or machines use, each once.
    pub loaders_used: Vec<Loader>,
    /// Per-machine answers.
    pub booter: ConfigBooter,
    /// `[server] admin_token_file`: the Bearer token of the admin API
    /// (`POST /api/v1/machines/<mac>/reinstall`).
    pub admin_token_file: Option<PathBuf>,
    /// `[dhcp]`.
    pub dhcp: DhcpMode,
}

/// Answers per MAC from a validated configuration.
#[derive(Debug)]
pub struct ConfigBooter {
    machines: HashMap<MacAddr, Machine>,
    default: Option<(String, Arc<BootSpec>)>,
    /// The default profile has `once = true`.
    default_once: bool,
    files: HashMap<FileId, FileRef>,
}

impl ConfigBooter {
    /// The machines listed in the file.
    pub fn machines(&self) -> impl Iterator<Item = (&MacAddr, &Machine)> {
        self.machines.iter()
    }

    /// The default profile's name and spec, for machines not listed.
    pub fn default_spec(&self) -> Option<(&str, &Arc<BootSpec>)> {
        self.default.as_ref().map(|(n, s)| (n.as_str(), s))
    }

    /// How many distinct files are served.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The local files served (kernels, initrds, templated files).
    pub fn local_files(&self) -> impl Iterator<Item = &Path> {
        self.files.values().filter_map(|f| match f {
            FileRef::Local(p) => Some(p.as_path()),
            FileRef::Remote(_) => None,
        })
    }

    /// Whether machines that are not listed install once (the default profile has
    /// `once = true`).
    pub fn default_once(&self) -> bool {
        self.default.is_some() && self.default_once
    }
}

impl Booter for ConfigBooter {
    fn decide(&self, mac: MacAddr, _arch: ClientArch, _wait: std::time::Duration) -> BootDecision {
        match self.machines.get(&mac) {
            Some(m) => match &m.boot {
                MachineBoot::Netboot(spec) => BootDecision::Netboot(spec.clone()),
                MachineBoot::Local => BootDecision::Local,
                MachineBoot::Ignore => BootDecision::Ignore(format!(
                    "{} has boot = \"ignore\" in the config",
                    m.name.as_deref().unwrap_or("the machine")
                )),
            },
            None => match &self.default {
                Some((_, spec)) => BootDecision::Netboot(spec.clone()),
                None => BootDecision::Ignore(
                    "not in the config, and no server.default_profile is set".into(),
                ),
            },
        }
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        self.files.get(id).cloned()
    }
}

// ---- the serde layer ----

type S = Spanned<String>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    ipxe: RawIpxe,
    #[serde(default)]
    loaders: RawLoaders,
    #[serde(default)]
    profiles: BTreeMap<S, RawProfile>,
    #[serde(default)]
    machines: Vec<Spanned<RawMachine>>,
    dhcp: Option<Spanned<dhcp::RawDhcp>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    interface: Option<S>,
    listen_addr: Option<S>,
    http_port: Option<Spanned<u16>>,
    status_port: Option<Spanned<u16>>,
    status_addr: Option<S>,
    shutdown_timeout: Option<S>,
    http_max_connections: Option<Spanned<i64>>,
    http_max_connections_per_addr: Option<Spanned<i64>>,
    ipv6: Option<Spanned<bool>>,
    listen_addr6: Option<S>,
    ipv6_range: Option<S>,
    ipv6_stateful: Option<S>,
    tftp_per_address: Option<Spanned<u32>>,
    default_profile: Option<S>,
    user: Option<S>,
    admin_token_file: Option<S>,
}

/// Keys are checked against the role table during validation.
type RawIpxe = BTreeMap<S, S>;

/// Keys are checked against the loader table during validation.
type RawLoaders = BTreeMap<S, S>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kernel: Option<S>,
    initrd: Option<Vec<S>>,
    cmdline: Option<S>,
    message: Option<S>,
    once: Option<Spanned<bool>>,
    loader: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    mac: S,
    name: Option<S>,
    profile: Option<S>,
    kernel: Option<S>,
    initrd: Option<Vec<S>>,
    cmdline: Option<S>,
    cmdline_append: Option<S>,
    message: Option<S>,
    loader: Option<S>,
    boot: Option<S>,
    once: Option<Spanned<bool>>,
    bmc: Option<Spanned<install::RawBmc>>,
    ip: Option<S>,
    hostname: Option<S>,
}

// ---- validation ----

/// A profile with its files resolved and its cmdline in canonical template form.
#[derive(Default, Clone)]
struct Resolved {
    kernel: Option<FileRef>,
    /// A kernel was written, even if it had a problem (reported already).
    kernel_given: bool,
    initrds: Option<Vec<FileRef>>,
    cmdline: Option<String>,
    message: Option<String>,
    /// A profile's `once`.
    once: Option<bool>,
    loader: Option<Loader>,
}

struct Validator<'a> {
    text: &'a str,
    dir: PathBuf,
    checks: &'a dyn Checks,
    problems: Vec<Problem>,
    files: HashMap<FileId, FileRef>,
    /// `[loaders]`, for [`Checks::loader`].
    loader_paths: LoaderPaths,
    /// Loaders other than iPXE in use, each once, in file order.
    loaders_used: Vec<Loader>,
}

impl Validator<'_> {
    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn problem(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let line = self.line(offset);
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: one_line(&message.into()),
        });
    }

    /// A kernel, initrd or template reference: parsed, made absolute, checked.
    fn file_ref(&self, input: &str) -> Result<FileRef, String> {
        let r = FileRef::parse(input).map_err(|e| e.to_string())?;
        match r {
            FileRef::Local(p) => {
                let p = if p.is_relative() { self.dir.join(p) } else { p };
                self.checks
                    .file(&p)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(FileRef::Local(p))
            }
            remote => Ok(remote),
        }
    }

    fn file_at(&mut self, v: &S, key: &str) -> Option<FileRef> {
        match self.file_ref(v.get_ref()) {
            Ok(f) => {
                self.files.insert(f.id(), f.clone());
                Some(f)
            }
            Err(e) => {
                self.problem(v.span().start, key, e);
                None
            }
        }
    }

    fn path_at(&mut self, v: &S, key: &str) -> Option<PathBuf> {
        self.binary_path_at(v, key, "iPXE binary")
    }

    /// The path of a binary ironpxe serves (`what` names it in messages).
    fn binary_path_at(&mut self, v: &S, key: &str, what: &str) -> Option<PathBuf> {
        let p = PathBuf::from(v.get_ref());
        if v.get_ref().is_empty() {
            self.problem(v.span().start, key, "empty path");
            return None;
        }
        let p = if p.is_relative() { self.dir.join(p) } else { p };
        if let Err(e) = self.checks.file(&p) {
            self.problem(v.span().start, key, format!("{what} {}: {e}", p.display()));
        }
        Some(p)
    }

    /// A cmdline: one line, templates resolved into canonical form.
    fn cmdline_at(&mut self, v: &S, key: &str) -> Option<String> {
        let text = v.get_ref();
        if let Some(i) = text.find(['\n', '\r']) {
            self.problem(
                v.span().start,
                key,
                format!(
                    "contains a line break at byte {i}; a kernel command line is one line \
                     (use spaces; in a TOML \"\"\" string end lines with \\)"
                ),
            );
            return None;
        }
        let mut found = Vec::new();
        let resolved = {
            let this = &*self;
            resolve_cmdline(text, &mut |x: &str| this.file_ref(x))
        };
        match resolved {
            Ok((canon, files)) => {
                found.extend(files);
                for f in found {
                    self.files.insert(f.id(), f);
                }
                Some(canon)
            }
            Err(e) => {
                self.problem(v.span().start, key, e.to_string());
                None
            }
        }
    }

    fn text_at(&mut self, v: &S, key: &str) -> Option<String> {
        if let Some(i) = v.get_ref().find('\0') {
            self.problem(v.span().start, key, format!("contains NUL at byte {i}"));
            return None;
        }
        Some(v.get_ref().clone())
    }

    fn initrds_at(&mut self, list: &[S], key: &str) -> Vec<FileRef> {
        list.iter()
            .enumerate()
            .filter_map(|(i, v)| self.file_at(v, &format!("{key}[{i}]")))
            .collect()
    }

    fn spec_check(&mut self, spec: &BootSpec, offset: usize, key: &str) {
        if let Err(e) = self.checks.spec(spec) {
            self.problem(offset, key, e);
        }
    }

    /// A `loader` key: one of the loader names, and one this server can give.
    fn loader_at(&mut self, v: &S, key: &str) -> Option<Loader> {
        let loader = match v.get_ref().parse::<Loader>() {
            Ok(l) => l,
            Err(e) => {
                self.problem(v.span().start, key, e.to_string());
                return None;
            }
        };
        if loader != Loader::Ipxe {
            if let Err(e) = self.checks.loader(loader, &self.loader_paths) {
                self.problem(v.span().start, key, e);
            }
            if !self.loaders_used.contains(&loader) {
                self.loaders_used.push(loader);
            }
        }
        Some(loader)
    }
}

/// The validated profiles by name, with the offset of their `[profiles.NAME]` header.
type Profiles = HashMap<String, (Resolved, usize)>;

/// What `boot` says a listed machine does.
#[derive(Clone, Copy)]
enum BootKind {
    Netboot,
    Local,
    Ignore,
}

impl Config {
    /// Validates `text`, the contents of `file`. Relative paths are relative to the
    /// file's directory. Returns every problem found, not just the first.
    pub fn parse(text: &str, file: &Path, checks: &dyn Checks) -> Result<Config, ConfigError> {
        let err = |problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        };
        let raw = read_raw(text).map_err(|p| err(vec![p]))?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut v = Validator {
            text,
            dir,
            checks,
            problems: Vec::new(),
            files: HashMap::new(),
            loader_paths: LoaderPaths::default(),
            loaders_used: Vec::new(),
        };
        let server = v.server(&raw.server);
        let ipxe = v.ipxe(&raw.ipxe);
        v.loader_paths = v.loaders(&raw.loaders);
        let profiles = v.profiles(&raw.profiles);
        let default = v.default_profile(raw.server.default_profile.as_ref(), &profiles);
        let default_once = raw
            .server
            .default_profile
            .as_ref()
            .and_then(|d| profiles.get(d.get_ref()))
            .and_then(|(r, _)| r.once)
            .unwrap_or(false);
        let machines = v.machines(&raw.machines, &profiles);
        let admin_token_file = raw
            .server
            .admin_token_file
            .as_ref()
            .and_then(|f| v.admin_token_file_at(f));
        let dhcp = v.dhcp(raw.dhcp.as_ref(), &raw.machines);

        if !v.problems.is_empty() {
            let mut problems = std::mem::take(&mut v.problems);
            problems.sort_by_key(|p| p.line);
            return Err(err(problems));
        }
        Ok(Config {
            server,
            ipxe,
            loaders: v.loader_paths,
            loaders_used: v.loaders_used,
            booter: ConfigBooter {
                machines,
                default,
                default_once,
                files: v.files,
            },
            admin_token_file,
            dhcp,
        })
    }
}

/// The serde layer. A TOML syntax or shape mistake stops reading, so it is the only
/// problem reported.
fn read_raw(text: &str) -> Result<RawConfig, Problem> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let key = e
            .span()
            .and_then(|s| text.get(s))
            .map(|k| k.trim_matches('"'))
            .filter(|k| {
                !k.is_empty()
                    && k.len() < 64
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            })
            .unwrap_or("toml")
            .to_string();
        let mut message = one_line(e.message());
        if message.is_empty() {
            // The parser has no words for some characters (a control character in
            // a comment): name the character.
            message = match text.get(offset..).and_then(|t| t.chars().next()) {
                Some(c) => format!("invalid TOML: unexpected {c:?}"),
                None => "invalid TOML".to_string(),
            };
        }
        Problem {
            line: line_of(text, offset),
            key,
            message,
        }
    })
}

/// `message` on one line: a problem is printed as one `FILE:LINE: key: message` line,
/// and the TOML parser's messages can span several (`invalid table header\nexpected
/// ...`).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The sections of the file, one function each, called in file order by
/// [`Config::parse`].
impl Validator<'_> {
    /// `[server]`, except `default_profile`, which needs the profiles.
    fn server(&mut self, s: &RawServer) -> ServerSettings {
        let listen_addr = self.ipv4_at(s.listen_addr.as_ref(), "server.listen_addr");
        let status_addr = self.ipv4_at(s.status_addr.as_ref(), "server.status_addr");
        let shutdown_timeout =
            s.shutdown_timeout
                .as_ref()
                .and_then(|t| match crate::parse_duration(t.get_ref()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.problem(t.span().start, "server.shutdown_timeout", e.to_string());
                        None
                    }
                });
        let user = s.user.as_ref().and_then(|u| {
            let name = u.get_ref();
            // Whether the user exists is checked where ironpxe runs, not here: the
            // file may be checked on another machine.
            if name.is_empty()
                || name.contains(['\0', ':', '/'])
                || name.chars().any(char::is_whitespace)
            {
                self.problem(
                    u.span().start,
                    "server.user",
                    format!("{name:?} is not a user name"),
                );
                return None;
            }
            Some(name.clone())
        });
        ServerSettings {
            interface: s.interface.as_ref().map(|i| i.get_ref().clone()),
            listen_addr,
            http_port: self.port_at(s.http_port.as_ref(), "server.http_port"),
            status_port: self.port_at(s.status_port.as_ref(), "server.status_port"),
            status_addr,
            shutdown_timeout,
            http_max_connections: self.count_at(
                s.http_max_connections.as_ref(),
                "server.http_max_connections",
            ),
            http_max_connections_per_addr: self.count_at(
                s.http_max_connections_per_addr.as_ref(),
                "server.http_max_connections_per_addr",
            ),
            user,
            ipv6: self.ipv6(s),
            tftp_per_address: s.tftp_per_address.as_ref().and_then(|n| {
                if *n.get_ref() == 0 {
                    self.problem(
                        n.span().start,
                        "server.tftp_per_address",
                        "must be at least 1",
                    );
                    return None;
                }
                Some(*n.get_ref() as usize)
            }),
        }
    }

    /// An IPv4 address.
    fn ipv4_at(&mut self, a: Option<&S>, key: &str) -> Option<Ipv4Addr> {
        let a = a?;
        match a.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.problem(
                    a.span().start,
                    key,
                    format!("{:?} is not an IPv4 address", a.get_ref()),
                );
                None
            }
        }
    }

    /// A count of things: at least 1.
    fn count_at(&mut self, n: Option<&Spanned<i64>>, key: &str) -> Option<usize> {
        let n = n?;
        match usize::try_from(*n.get_ref()) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                self.problem(
                    n.span().start,
                    key,
                    format!("{} is not a positive number", n.get_ref()),
                );
                None
            }
        }
    }

    /// A TCP port: anything but 0.
    fn port_at(&mut self, p: Option<&Spanned<u16>>, key: &str) -> Option<u16> {
        let p = p?;
        if *p.get_ref() == 0 {
            self.problem(p.span().start, key, "port 0 is not a port");
            return None;
        }
        Some(*p.get_ref())
    }

    /// `[ipxe]`.
    fn ipxe(&mut self, raw: &RawIpxe) -> IpxePaths {
        let mut ipxe = IpxePaths::default();
        for (key, path) in raw {
            let name = format!("ipxe.{}", key.get_ref());
            match IpxeRole::from_config_key(key.get_ref()) {
                Some(role) => {
                    if let Some(p) = self.path_at(path, &name) {
                        ipxe.insert(role, p);
                    }
                }
                None => {
                    let known: Vec<&str> = IpxeRole::ALL
                        .iter()
                        .filter_map(|r| r.config_key())
                        .collect();
                    self.problem(
                        key.span().start,
                        name,
                        format!("unknown key, expected one of {}", known.join(", ")),
                    );
                }
            }
        }
        ipxe
    }

    /// `[loaders]`.
    fn loaders(&mut self, raw: &RawLoaders) -> LoaderPaths {
        let mut paths = LoaderPaths::default();
        for (key, path) in raw {
            let name = format!("loaders.{}", key.get_ref());
            match LoaderBinary::from_config_key(key.get_ref()) {
                Some(bin) => {
                    let what = format!("{} binary", bin.name());
                    if let Some(p) = self.binary_path_at(path, &name, &what) {
                        paths.insert(bin, p);
                    }
                }
                None => {
                    let known: Vec<&str> = LoaderBinary::ALL
                        .iter()
                        .map(|b| b.spec().config_key)
                        .collect();
                    self.problem(
                        key.span().start,
                        name,
                        format!("unknown key, expected one of {}", known.join(", ")),
                    );
                }
            }
        }
        paths
    }

    /// `[profiles.NAME]`. Text problems of a profile are reported once, here, not
    /// once per machine using it.
    fn profiles(&mut self, raw: &BTreeMap<S, RawProfile>) -> Profiles {
        let mut profiles = Profiles::new();
        for (name, p) in raw {
            let key = format!("profiles.{}", name.get_ref());
            let mut r = self.fields(
                &key,
                p.kernel.as_ref(),
                p.initrd.as_deref(),
                p.cmdline.as_ref(),
                p.message.as_ref(),
                p.loader.as_ref(),
            );
            r.once = p.once.as_ref().map(|o| *o.get_ref());
            let text_at = p
                .cmdline
                .as_ref()
                .or(p.message.as_ref())
                .or(p.loader.as_ref())
                .map(|c| c.span().start)
                .unwrap_or(name.span().start);
            if let Some(spec) = text_spec(&r) {
                self.spec_check(&spec, text_at, &key);
            }
            profiles.insert(name.get_ref().clone(), (r, name.span().start));
        }
        profiles
    }

    /// The fields profiles and machines share: kernel, initrd, cmdline, message.
    fn fields(
        &mut self,
        key: &str,
        kernel: Option<&S>,
        initrd: Option<&[S]>,
        cmdline: Option<&S>,
        message: Option<&S>,
        loader: Option<&S>,
    ) -> Resolved {
        Resolved {
            kernel_given: kernel.is_some(),
            kernel: kernel.and_then(|k| self.file_at(k, &format!("{key}.kernel"))),
            initrds: initrd.map(|l| self.initrds_at(l, &format!("{key}.initrd"))),
            cmdline: cmdline.and_then(|c| self.cmdline_at(c, &format!("{key}.cmdline"))),
            message: message.and_then(|m| self.text_at(m, &format!("{key}.message"))),
            once: None,
            loader: loader.and_then(|l| self.loader_at(l, &format!("{key}.loader"))),
        }
    }

    /// `server.default_profile`: what machines not listed boot.
    fn default_profile(
        &mut self,
        d: Option<&S>,
        profiles: &Profiles,
    ) -> Option<(String, Arc<BootSpec>)> {
        let d = d?;
        let Some((r, _)) = profiles.get(d.get_ref()) else {
            let known = known_profiles(profiles);
            self.problem(
                d.span().start,
                "server.default_profile",
                format!("unknown profile {:?}{known}", d.get_ref()),
            );
            return None;
        };
        match build_spec(r, &Resolved::default()) {
            Ok(spec) => Some((d.get_ref().clone(), Arc::new(spec))),
            Err(()) => {
                self.problem(
                    d.span().start,
                    "server.default_profile",
                    format!("profile {:?} has no kernel", d.get_ref()),
                );
                None
            }
        }
    }

    /// `[[machines]]`: unique MACs and names, each with what it boots.
    fn machines(
        &mut self,
        raw: &[Spanned<RawMachine>],
        profiles: &Profiles,
    ) -> HashMap<MacAddr, Machine> {
        let mut machines: HashMap<MacAddr, Machine> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (n, m) in raw.iter().enumerate() {
            let key = format!("machines[{n}]");
            let m = m.get_ref();
            let line = self.line(m.mac.span().start);
            let mac = match m.mac.get_ref().parse::<MacAddr>() {
                Ok(mac) => Some(mac),
                Err(e) => {
                    self.problem(m.mac.span().start, format!("{key}.mac"), e.to_string());
                    None
                }
            };
            if let Some(name) = &m.name {
                if let Some(first) = names.insert(name.get_ref().clone(), line) {
                    self.problem(
                        name.span().start,
                        format!("{key}.name"),
                        format!("duplicate name {:?}: also at line {first}", name.get_ref()),
                    );
                }
            }
            let boot = self.machine_boot(m, &key, profiles);
            let once = m
                .once
                .as_ref()
                .map(|o| *o.get_ref())
                .or_else(|| {
                    let p = m.profile.as_ref()?;
                    profiles.get(p.get_ref())?.0.once
                })
                .unwrap_or(false);
            let bmc = m.bmc.as_ref().and_then(|b| self.bmc_at(b, &key));
            let Some(mac) = mac else { continue };
            if let Some(first) = machines.get(&mac) {
                let first = first.line;
                self.problem(
                    m.mac.span().start,
                    format!("{key}.mac"),
                    format!("duplicate MAC {mac}: also at line {first}"),
                );
                continue;
            }
            let machine = match boot {
                Some(boot) => Machine {
                    name: m.name.as_ref().map(|n| n.get_ref().clone()),
                    boot,
                    line,
                    once,
                    bmc,
                },
                // Keep the line so a later duplicate is still reported.
                None => Machine {
                    name: None,
                    boot: MachineBoot::Ignore,
                    line,
                    once: false,
                    bmc: None,
                },
            };
            machines.insert(mac, machine);
        }
        machines
    }

    /// What one listed machine boots, or `None` once the reason is reported.
    fn machine_boot(
        &mut self,
        m: &RawMachine,
        key: &str,
        profiles: &Profiles,
    ) -> Option<MachineBoot> {
        let boot = self.boot_kind(m.boot.as_ref(), key);
        let profile = self.machine_profile(m.profile.as_ref(), key, profiles);
        let own = self.machine_fields(m, key, profile.as_ref());
        match boot? {
            BootKind::Local => Some(MachineBoot::Local),
            BootKind::Ignore => Some(MachineBoot::Ignore),
            BootKind::Netboot => self
                .netboot_spec(m, key, profile.as_ref(), &own)
                .map(MachineBoot::Netboot),
        }
    }

    /// `machines[N].boot`.
    fn boot_kind(&mut self, boot: Option<&S>, key: &str) -> Option<BootKind> {
        match boot.map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "netboot")) => Some(BootKind::Netboot),
            Some((_, "local")) => Some(BootKind::Local),
            Some((_, "ignore")) => Some(BootKind::Ignore),
            Some((b, other)) => {
                self.problem(
                    b.span().start,
                    format!("{key}.boot"),
                    format!("{other:?} is not one of \"netboot\", \"local\", \"ignore\""),
                );
                None
            }
        }
    }

    /// `machines[N].profile`, looked up.
    fn machine_profile(
        &mut self,
        profile: Option<&S>,
        key: &str,
        profiles: &Profiles,
    ) -> Option<Resolved> {
        let p = profile?;
        match profiles.get(p.get_ref()) {
            Some((r, _)) => Some(r.clone()),
            None => {
                let known = known_profiles(profiles);
                self.problem(
                    p.span().start,
                    format!("{key}.profile"),
                    format!("unknown profile {:?}{known}", p.get_ref()),
                );
                None
            }
        }
    }

    /// A machine's own fields, with `cmdline_append` added to its cmdline (or to its
    /// profile's).
    fn machine_fields(
        &mut self,
        m: &RawMachine,
        key: &str,
        profile: Option<&Resolved>,
    ) -> Resolved {
        let mut own = self.fields(
            key,
            m.kernel.as_ref(),
            m.initrd.as_deref(),
            m.cmdline.as_ref(),
            m.message.as_ref(),
            m.loader.as_ref(),
        );
        let append = m
            .cmdline_append
            .as_ref()
            .and_then(|c| self.cmdline_at(c, &format!("{key}.cmdline_append")));
        if let Some(extra) = append {
            let base = own
                .cmdline
                .clone()
                .or_else(|| profile.and_then(|p| p.cmdline.clone()))
                .unwrap_or_default();
            own.cmdline = Some(if base.is_empty() {
                extra
            } else {
                format!("{base} {extra}")
            });
        }
        own
    }

    /// The spec of a netbooting machine: its own fields over its profile's.
    fn netboot_spec(
        &mut self,
        m: &RawMachine,
        key: &str,
        profile: Option<&Resolved>,
        own: &Resolved,
    ) -> Option<Arc<BootSpec>> {
        let base = profile.cloned().unwrap_or_default();
        match build_spec(&base, own) {
            Ok(spec) => {
                if m.cmdline.is_some()
                    || m.cmdline_append.is_some()
                    || m.message.is_some()
                    || m.loader.is_some()
                {
                    // Where a problem with the machine's own text is reported.
                    let at = [&m.cmdline, &m.cmdline_append, &m.message, &m.loader]
                        .into_iter()
                        .flatten()
                        .map(|t| t.span().start)
                        .min()
                        .unwrap_or(m.mac.span().start);
                    self.spec_check(&spec, at, key);
                }
                Some(Arc::new(spec))
            }
            Err(()) => {
                // Not worth saying if a kernel or the profile has its own problem.
                let reported = own.kernel_given
                    || base.kernel_given
                    || (m.profile.is_some() && profile.is_none());
                if !reported {
                    let hint = match &m.profile {
                        Some(p) => format!("set kernel here or in profile {:?}", p.get_ref()),
                        None => "set kernel or profile".to_string(),
                    };
                    self.problem(
                        m.mac.span().start,
                        key,
                        format!("netboot machine without a kernel: {hint}"),
                    );
                }
                None
            }
        }
    }
}

fn known_profiles(profiles: &Profiles) -> String {
    let mut names: Vec<&str> = profiles.keys().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        " (no [profiles.NAME] is defined)".to_string()
    } else {
        format!(" (defined: {})", names.join(", "))
    }
}

/// The machine's own fields over its profile's.
fn build_spec(profile: &Resolved, own: &Resolved) -> Result<BootSpec, ()> {
    let kernel = own
        .kernel
        .clone()
        .or_else(|| profile.kernel.clone())
        .ok_or(())?;
    Ok(BootSpec {
        kernel,
        initrds: own
            .initrds
            .clone()
            .or_else(|| profile.initrds.clone())
            .unwrap_or_default(),
        cmdline: own
            .cmdline
            .clone()
            .or_else(|| profile.cmdline.clone())
            .unwrap_or_default(),
        message: own.message.clone().or_else(|| profile.message.clone()),
        loader: own.loader.or(profile.loader).unwrap_or_default(),
    })
}

/// A spec carrying a profile's text, to check that it can be rendered.
fn text_spec(r: &Resolved) -> Option<BootSpec> {
    if r.cmdline.is_none() && r.message.is_none() && r.loader.is_none() {
        return None;
    }
    Some(BootSpec {
        kernel: r
            .kernel
            .clone()
            .unwrap_or_else(|| FileRef::Local(PathBuf::from("/kernel"))),
        initrds: r.initrds.clone().unwrap_or_default(),
        cmdline: r.cmdline.clone().unwrap_or_default(),
        message: r.message.clone(),
        loader: r.loader.unwrap_or_default(),
    })
}

mod ipv6;
pub use ipv6::{Ipv6Settings, StatefulFor};

#[cfg(test)]
mod tests;
