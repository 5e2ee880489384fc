//! Boot events: the one vocabulary of what happened while a machine booted.
//!
//! Every crate that serves a client (DHCP, TFTP, HTTP, the API client, the binary)
//! describes what it did as a [`BootEvent`] and hands it to [`emit`]. From that one
//! value:
//!
//! - the log line is rendered (a `tracing` event with target [`EVENT_TARGET`], a
//!   field `event` holding [`BootEvent::name`], and the event's fields);
//! - the installed [`EventSink`] (the status store, which also counts the metrics)
//!   receives the typed event itself, whatever the log level.
//!
//! Field names and their rendering live here only: [`BootEvent::fields`] visits them
//! in a fixed order, so the log, the status store and the lab all see the same keys.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use crate::loader::{is_optional_probe, GrubPath};
use crate::{ClientArch, FileId, MacAddr};

/// The `tracing` target of boot events.
pub const EVENT_TARGET: &str = "ironpxe::event";

/// Which ProxyDHCP answer was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpAnswer {
    /// An OFFER to a DISCOVER on port 67.
    Offer,
    /// An ACK to a REQUEST or INFORM on port 4011.
    Ack,
}

/// One thing that happened while serving a client.
#[derive(Clone, Debug, PartialEq)]
pub enum BootEvent {
    /// ProxyDHCP told a client what to boot.
    DhcpAnswered {
        /// OFFER or ACK.
        answer: DhcpAnswer,
        /// The client.
        mac: MacAddr,
        /// Its firmware.
        arch: ClientArch,
        /// The exchange.
        xid: u32,
        /// The client is already iPXE.
        ipxe: bool,
        /// How it boots: `tftp`, `http` or `httpboot`.
        path: &'static str,
        /// The TFTP file or URL it was given.
        boot: String,
        /// Our address, as announced.
        server: IpAddr,
        /// Where the request came from.
        peer: SocketAddr,
        /// `broadcast` or the unicast destination.
        via: String,
    },
    /// ProxyDHCP did not answer a PXE client, and why.
    DhcpIgnored {
        /// The client.
        mac: MacAddr,
        /// The exchange.
        xid: u32,
        /// Where the request came from.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A packet that needed a booter lookup was dropped: every lookup slot was
    /// busy. One per packet, for the metric; logged only at debug level (the driver
    /// writes a rate-limited warning with the count).
    DhcpDropped {
        /// The machine of the dropped packet.
        mac: MacAddr,
        /// The number of lookup slots.
        limit: usize,
    },
    /// The site DHCP server's DHCPACK to a machine that boots through GRUB (loader
    /// `shim` or `grub`) names another next-server than ironpxe. Debian's signed
    /// GRUB takes its TFTP server from that ACK, not from ProxyDHCP, so it will ask
    /// the wrong server for its configuration. Warned once per machine.
    DhcpSiteNextServer {
        /// The machine.
        mac: MacAddr,
        /// The next-server (siaddr) the site's ACK names.
        next_server: IpAddr,
        /// The site server that sent it.
        site_server: IpAddr,
    },
    /// The DHCP side saw which address a PXE client is taking (its REQUEST to the
    /// site server names it), so later TFTP and HTTP requests from that address are
    /// the machine's.
    DhcpClientAddress {
        /// The client.
        mac: MacAddr,
        /// The address it requested.
        ip: IpAddr,
    },
    /// A TFTP transfer started.
    TftpStart {
        /// The requested file name.
        file: String,
        /// The client's address and port.
        peer: SocketAddr,
        /// Negotiated block size.
        blksize: u16,
        /// Negotiated window size.
        windowsize: u16,
        /// The client asked for the size.
        tsize: bool,
        /// The file's size.
        size: u64,
    },
    /// Every byte of a TFTP transfer has been sent once; the client's last ACK may
    /// still be on its way, or never come (a client that boots what it loaded can
    /// stop its network first). Logged at debug level.
    TftpSent {
        /// The requested file name.
        file: String,
        /// The client.
        peer: SocketAddr,
        /// The file's size.
        bytes: u64,
    },
    /// A TFTP transfer sent the whole file.
    TftpDone {
        /// The requested file name.
        file: String,
        /// The client.
        peer: SocketAddr,
        /// Bytes sent.
        bytes: u64,
        /// How long it took.
        duration_ms: u64,
        /// Block size.
        blksize: u16,
        /// Window size.
        windowsize: u16,
        /// Retransmitted blocks.
        retransmits: u64,
    },
    /// The client aborted a TFTP transfer (an ERROR packet; iPXE and EDK2 send one
    /// after reading only the size).
    TftpAborted {
        /// The requested file name.
        file: String,
        /// The client.
        peer: SocketAddr,
        /// The client's error code.
        code: u16,
        /// The client's message.
        message: String,
        /// How long the transfer ran.
        duration_ms: u64,
    },
    /// A TFTP request or transfer failed on our side.
    TftpFailed {
        /// The requested file name.
        file: String,
        /// The client.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// An iPXE script was served.
    HttpScript {
        /// The machine.
        mac: MacAddr,
        /// Its firmware.
        arch: ClientArch,
        /// Script length.
        bytes: u64,
        /// The script came verbatim from the booter (the API's `ipxe-script`).
        custom: bool,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// The "boot from local disk" script was served.
    HttpLocal {
        /// The machine.
        mac: MacAddr,
        /// Its firmware.
        arch: ClientArch,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// A script request was refused, and why.
    HttpIgnored {
        /// The machine.
        mac: MacAddr,
        /// Why.
        reason: String,
    },
    /// The script's last call before `boot`.
    HttpBooting {
        /// The machine.
        mac: MacAddr,
        /// Its firmware.
        arch: ClientArch,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// A GRUB configuration, kernel or initrd was requested over HTTP, by a GRUB
    /// built with the http module (UEFI HTTP Boot).
    HttpGrub {
        /// The machine, when the path names one.
        mac: Option<MacAddr>,
        /// The path requested.
        file: String,
        /// Bytes sent.
        bytes: u64,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// GRUB received the last byte of the last file it loads (the last initrd, or
    /// the kernel when there is none), over TFTP or HTTP: it boots the kernel now.
    /// GRUB cannot call `/_/booting`, so this marks the boot instead.
    GrubBooting {
        /// The machine.
        mac: MacAddr,
        /// The path of that last file.
        file: String,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// An iPXE binary was requested over HTTP (UEFI HTTP Boot).
    HttpBinary {
        /// Its file name.
        file: String,
        /// Its size.
        bytes: u64,
        /// A HEAD request.
        head: bool,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// A file download started.
    FileStart {
        /// The served id.
        id: FileId,
        /// The file behind it.
        file: String,
        /// Bytes to send, when known (a remote file may not say).
        bytes: Option<u64>,
        /// The Range asked for, or empty.
        range: String,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// A file download was sent to its end.
    FileDone {
        /// The served id.
        id: FileId,
        /// Bytes sent.
        bytes: u64,
        /// How long it took.
        duration_ms: u64,
        /// The client.
        peer: Option<SocketAddr>,
    },
    /// A file download stopped early (read error, short file, client went away).
    FileFailed {
        /// The served id.
        id: FileId,
        /// Bytes sent.
        bytes: u64,
        /// Bytes that should have been sent, when known.
        expected: Option<u64>,
        /// How long it ran.
        duration_ms: u64,
        /// The client.
        peer: Option<SocketAddr>,
        /// Why.
        reason: String,
    },
    /// The API answered about a machine.
    ApiAnswer {
        /// The machine.
        mac: MacAddr,
        /// `netboot` or `ipxe-script`.
        answer: &'static str,
        /// How many files the answer named.
        files: u64,
    },
    /// The API declined a machine (a non-200 answer, or no file in the tree).
    ApiDeclined {
        /// The machine.
        mac: MacAddr,
        /// Why.
        reason: String,
    },
    /// The API could not be used for a machine (bad JSON, timeout, unreachable).
    ApiError {
        /// The machine.
        mac: MacAddr,
        /// Why.
        reason: String,
    },
    /// A changed configuration file was applied.
    ConfigReloaded {
        /// The file.
        file: String,
        /// What noticed the change.
        trigger: &'static str,
        /// A summary of the new configuration.
        summary: String,
    },
    /// A machine's installer reported success (`POST .../installed`): a `once`
    /// machine boots from its disk from now on.
    InstallDone {
        /// The machine.
        mac: MacAddr,
        /// Who called.
        peer: Option<SocketAddr>,
    },
    /// A machine was set back to install (`POST .../reinstall`).
    InstallReset {
        /// The machine.
        mac: MacAddr,
        /// Who asked.
        peer: Option<SocketAddr>,
        /// The power step through its BMC: `cycle`, `on`, or `none`.
        power: &'static str,
    },
    /// The built-in DHCP server acknowledged a lease (stored before it was sent).
    DhcpLease {
        /// The client.
        mac: MacAddr,
        /// Its address.
        ip: IpAddr,
        /// `reserved` (from the configuration) or `pool`.
        kind: &'static str,
        /// The host name handed out, or empty.
        hostname: String,
        /// Lease time in seconds.
        lease_s: u64,
    },
    /// A changed configuration file was refused; the previous one keeps serving.
    ConfigRejected {
        /// The file.
        file: String,
        /// What noticed the change.
        trigger: &'static str,
        /// How many problems it has.
        problems: u64,
        /// The first one.
        reason: String,
    },
}

/// One field value of an event, as the log and the status store take it.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    /// Text (addresses, names, reasons).
    Text(Cow<'a, str>),
    /// A count, size or duration.
    Number(u64),
    /// A flag.
    Bool(bool),
}

impl std::fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Text(t) => f.write_str(t),
            FieldValue::Number(n) => write!(f, "{n}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn text<'a>(s: impl Into<Cow<'a, str>>) -> FieldValue<'a> {
    FieldValue::Text(s.into())
}

fn shown(v: &impl ToString) -> FieldValue<'static> {
    FieldValue::Text(Cow::Owned(v.to_string()))
}

/// An HTTP client's address; `-` when the connection did not say.
fn client(peer: &Option<SocketAddr>) -> FieldValue<'static> {
    match peer {
        Some(p) => shown(p),
        None => text("-"),
    }
}

/// How loud an event is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loudness {
    /// Counted, but too frequent to log by default (one per dropped packet).
    Debug,
    /// Normal progress.
    Info,
    /// Something failed.
    Warn,
}

impl BootEvent {
    /// The event's name, e.g. `dhcp.offer`.
    pub fn name(&self) -> &'static str {
        match self {
            BootEvent::DhcpAnswered {
                answer: DhcpAnswer::Offer,
                ..
            } => "dhcp.offer",
            BootEvent::DhcpAnswered {
                answer: DhcpAnswer::Ack,
                ..
            } => "dhcp.ack",
            BootEvent::DhcpIgnored { .. } => "dhcp.ignore",
            BootEvent::DhcpDropped { .. } => "dhcp.dropped",
            BootEvent::DhcpClientAddress { .. } => "dhcp.address",
            BootEvent::DhcpSiteNextServer { .. } => "dhcp.next_server",
            BootEvent::TftpStart { .. } => "tftp.start",
            BootEvent::TftpSent { .. } => "tftp.sent",
            BootEvent::TftpDone { .. } => "tftp.done",
            BootEvent::TftpAborted { .. } => "tftp.aborted",
            BootEvent::TftpFailed { .. } => "tftp.failed",
            BootEvent::HttpScript { .. } => "http.script",
            BootEvent::HttpLocal { .. } => "http.local",
            BootEvent::HttpIgnored { .. } => "http.ignored",
            BootEvent::HttpBooting { .. } => "http.booting",
            BootEvent::HttpBinary { .. } => "http.bin",
            BootEvent::HttpGrub { .. } => "http.grub",
            BootEvent::GrubBooting { .. } => "grub.booting",
            BootEvent::FileStart { .. } => "http.file.start",
            BootEvent::FileDone { .. } => "http.file.done",
            BootEvent::FileFailed { .. } => "http.file.failed",
            BootEvent::ApiAnswer { .. } => "api.answer",
            BootEvent::ApiDeclined { .. } => "api.declined",
            BootEvent::ApiError { .. } => "api.error",
            BootEvent::ConfigReloaded { .. } => "config.reloaded",
            BootEvent::ConfigRejected { .. } => "config.rejected",
            BootEvent::InstallDone { .. } => "install.done",
            BootEvent::InstallReset { .. } => "install.reinstall",
            BootEvent::DhcpLease { .. } => "dhcp.lease",
        }
    }

    /// The machine the event names, when it names one.
    pub fn mac(&self) -> Option<MacAddr> {
        match self {
            BootEvent::DhcpAnswered { mac, .. }
            | BootEvent::DhcpIgnored { mac, .. }
            | BootEvent::DhcpDropped { mac, .. }
            | BootEvent::DhcpClientAddress { mac, .. }
            | BootEvent::DhcpSiteNextServer { mac, .. }
            | BootEvent::GrubBooting { mac, .. }
            | BootEvent::HttpScript { mac, .. }
            | BootEvent::HttpLocal { mac, .. }
            | BootEvent::HttpIgnored { mac, .. }
            | BootEvent::HttpBooting { mac, .. }
            | BootEvent::ApiAnswer { mac, .. }
            | BootEvent::ApiDeclined { mac, .. }
            | BootEvent::ApiError { mac, .. }
            | BootEvent::InstallDone { mac, .. }
            | BootEvent::InstallReset { mac, .. }
            | BootEvent::DhcpLease { mac, .. } => Some(*mac),
            BootEvent::HttpGrub { mac, .. } => *mac,
            _ => None,
        }
    }

    /// The client's address and port, when the event came from a client request.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            BootEvent::DhcpAnswered { peer, .. }
            | BootEvent::DhcpIgnored { peer, .. }
            | BootEvent::TftpStart { peer, .. }
            | BootEvent::TftpSent { peer, .. }
            | BootEvent::TftpDone { peer, .. }
            | BootEvent::TftpAborted { peer, .. }
            | BootEvent::TftpFailed { peer, .. } => Some(*peer),
            BootEvent::HttpScript { peer, .. }
            | BootEvent::HttpLocal { peer, .. }
            | BootEvent::HttpBooting { peer, .. }
            | BootEvent::HttpBinary { peer, .. }
            | BootEvent::HttpGrub { peer, .. }
            | BootEvent::GrubBooting { peer, .. }
            | BootEvent::FileStart { peer, .. }
            | BootEvent::FileDone { peer, .. }
            | BootEvent::FileFailed { peer, .. }
            | BootEvent::InstallDone { peer, .. }
            | BootEvent::InstallReset { peer, .. } => *peer,
            _ => None,
        }
    }

    /// Whether the log shows it as a warning.
    pub fn loudness(&self) -> Loudness {
        match self {
            BootEvent::DhcpDropped { .. } | BootEvent::TftpSent { .. } => Loudness::Debug,
            // shim and GRUB ask for files they do without on every boot.
            BootEvent::TftpFailed { file, .. } if is_optional_probe(file) => Loudness::Debug,
            BootEvent::DhcpSiteNextServer { .. }
            | BootEvent::TftpFailed { .. }
            | BootEvent::FileFailed { .. }
            | BootEvent::ApiError { .. }
            | BootEvent::ConfigRejected { .. } => Loudness::Warn,
            _ => Loudness::Info,
        }
    }

    /// Visits every field but the name, in a fixed order: `(key, value)`.
    pub fn fields(&self, f: &mut dyn FnMut(&'static str, FieldValue<'_>)) {
        use FieldValue::{Bool, Number};
        match self {
            BootEvent::DhcpAnswered {
                answer: _,
                mac,
                arch,
                xid,
                ipxe,
                path,
                boot,
                server,
                peer,
                via,
            } => {
                f("mac", shown(mac));
                f("arch", shown(arch));
                f("xid", text(format!("{xid:#010x}")));
                f("ipxe", Bool(*ipxe));
                f("path", text(*path));
                f("boot", text(boot.as_str()));
                f("server", shown(server));
                f("peer", shown(peer));
                f("via", text(via.as_str()));
            }
            BootEvent::DhcpIgnored {
                mac,
                xid,
                peer,
                reason,
            } => {
                f("mac", shown(mac));
                f("xid", text(format!("{xid:#010x}")));
                f("peer", shown(peer));
                f("reason", text(reason.as_str()));
            }
            BootEvent::DhcpDropped { mac, limit } => {
                f("mac", shown(mac));
                f("limit", Number(*limit as u64));
            }
            BootEvent::DhcpClientAddress { mac, ip } => {
                f("mac", shown(mac));
                f("ip", shown(ip));
            }
            BootEvent::DhcpSiteNextServer {
                mac,
                next_server,
                site_server,
            } => {
                f("mac", shown(mac));
                f("next_server", shown(next_server));
                f("site_server", shown(site_server));
            }
            BootEvent::HttpGrub {
                mac,
                file,
                bytes,
                peer,
            } => {
                if let Some(mac) = mac {
                    f("mac", shown(mac));
                }
                f("file", text(file.as_str()));
                f("bytes", Number(*bytes));
                f("peer", client(peer));
            }
            BootEvent::GrubBooting { mac, file, peer } => {
                f("mac", shown(mac));
                f("file", text(file.as_str()));
                f("peer", client(peer));
            }
            BootEvent::TftpStart {
                file,
                peer,
                blksize,
                windowsize,
                tsize,
                size,
            } => {
                f("file", text(file.as_str()));
                f("peer", shown(peer));
                f("blksize", Number(u64::from(*blksize)));
                f("windowsize", Number(u64::from(*windowsize)));
                f("tsize", Bool(*tsize));
                f("size", Number(*size));
            }
            BootEvent::TftpSent { file, peer, bytes } => {
                f("file", text(file.as_str()));
                f("peer", shown(peer));
                f("bytes", Number(*bytes));
            }
            BootEvent::TftpDone {
                file,
                peer,
                bytes,
                duration_ms,
                blksize,
                windowsize,
                retransmits,
            } => {
                f("file", text(file.as_str()));
                f("peer", shown(peer));
                f("bytes", Number(*bytes));
                f("duration_ms", Number(*duration_ms));
                f("blksize", Number(u64::from(*blksize)));
                f("windowsize", Number(u64::from(*windowsize)));
                f("retransmits", Number(*retransmits));
            }
            BootEvent::TftpAborted {
                file,
                peer,
                code,
                message,
                duration_ms,
            } => {
                f("file", text(file.as_str()));
                f("peer", shown(peer));
                f("code", Number(u64::from(*code)));
                f("message", text(message.as_str()));
                f("duration_ms", Number(*duration_ms));
            }
            BootEvent::TftpFailed { file, peer, reason } => {
                f("file", text(file.as_str()));
                f("peer", shown(peer));
                f("reason", text(reason.as_str()));
            }
            BootEvent::HttpScript {
                mac,
                arch,
                bytes,
                custom,
                peer,
            } => {
                f("mac", shown(mac));
                f("arch", shown(arch));
                if *custom {
                    f("custom", Bool(true));
                }
                f("bytes", Number(*bytes));
                f("peer", client(peer));
            }
            BootEvent::HttpLocal { mac, arch, peer }
            | BootEvent::HttpBooting { mac, arch, peer } => {
                f("mac", shown(mac));
                f("arch", shown(arch));
                f("peer", client(peer));
            }
            BootEvent::HttpIgnored { mac, reason }
            | BootEvent::ApiDeclined { mac, reason }
            | BootEvent::ApiError { mac, reason } => {
                f("mac", shown(mac));
                f("reason", text(reason.as_str()));
            }
            BootEvent::HttpBinary {
                file,
                bytes,
                head,
                peer,
            } => {
                f("file", text(file.as_str()));
                f("bytes", Number(*bytes));
                f("head", Bool(*head));
                f("peer", client(peer));
            }
            BootEvent::FileStart {
                id,
                file,
                bytes,
                range,
                peer,
            } => {
                f("id", shown(id));
                f("file", text(file.as_str()));
                if let Some(b) = bytes {
                    f("bytes", Number(*b));
                }
                f("range", text(range.as_str()));
                f("peer", client(peer));
            }
            BootEvent::FileDone {
                id,
                bytes,
                duration_ms,
                peer,
            } => {
                f("id", shown(id));
                f("bytes", Number(*bytes));
                f("duration_ms", Number(*duration_ms));
                f("peer", client(peer));
            }
            BootEvent::FileFailed {
                id,
                bytes,
                expected,
                duration_ms,
                peer,
                reason,
            } => {
                f("id", shown(id));
                f("bytes", Number(*bytes));
                if let Some(e) = expected {
                    f("expected", Number(*e));
                }
                f("duration_ms", Number(*duration_ms));
                f("peer", client(peer));
                f("reason", text(reason.as_str()));
            }
            BootEvent::ApiAnswer { mac, answer, files } => {
                f("mac", shown(mac));
                f("answer", text(*answer));
                f("files", Number(*files));
            }
            BootEvent::ConfigReloaded {
                file,
                trigger,
                summary,
            } => {
                f("file", text(file.as_str()));
                f("trigger", text(*trigger));
                f("summary", text(summary.as_str()));
            }
            BootEvent::ConfigRejected {
                file,
                trigger,
                problems,
                reason,
            } => {
                f("file", text(file.as_str()));
                f("trigger", text(*trigger));
                f("problems", Number(*problems));
                f("reason", text(reason.as_str()));
            }
            BootEvent::InstallDone { mac, peer } => {
                f("mac", shown(mac));
                f("peer", client(peer));
            }
            BootEvent::InstallReset { mac, peer, power } => {
                f("mac", shown(mac));
                f("peer", client(peer));
                f("power", text(*power));
            }
            BootEvent::DhcpLease {
                mac,
                ip,
                kind,
                hostname,
                lease_s,
            } => {
                f("mac", shown(mac));
                f("ip", shown(ip));
                f("kind", text(*kind));
                f("hostname", text(hostname.as_str()));
                f("lease_s", Number(*lease_s));
            }
        }
    }

    /// The fields as `key=value` pairs separated by spaces, values with spaces or
    /// quotes in double quotes (the log's rendering).
    pub fn render_fields(&self) -> String {
        let mut out = String::new();
        self.fields(&mut |k, v| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            let v = v.to_string();
            if v.is_empty() || v.contains([' ', '"', '=']) {
                out.push('"');
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            } else {
                out.push_str(&v);
            }
        });
        out
    }
}

/// Receives every event [`emit`] is given (the status store).
pub trait EventSink: Send + Sync + 'static {
    /// One event, as it happened.
    fn event(&self, event: &BootEvent);
}

static SINK: OnceLock<Arc<dyn EventSink>> = OnceLock::new();

/// Installs the process's event sink (the binary does, once, at start). Returns
/// `false` if one was installed already.
pub fn set_sink(sink: Arc<dyn EventSink>) -> bool {
    SINK.set(sink).is_ok()
}

/// Keeps the INFO log at one line per machine and DHCP step, not one per packet:
/// the first `dhcp.offer` (or ack, ignore, address) of a machine is logged at its
/// level, repeats within [`LogThrottle::REPEAT`] at debug level, and at most
/// [`LogThrottle::PER_SECOND`] such lines are written per second. Every event still
/// reaches the sink.
#[derive(Debug)]
pub struct LogThrottle {
    seen: std::collections::HashMap<(MacAddr, &'static str), std::time::Instant>,
    second: Option<std::time::Instant>,
    in_second: u32,
    quieted: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

impl LogThrottle {
    /// How long a machine's repeat of the same DHCP step stays at debug level.
    pub const REPEAT: std::time::Duration = std::time::Duration::from_secs(60);
    /// DHCP lines logged at their own level per second, at most.
    pub const PER_SECOND: u32 = 20;
    /// Machines remembered; past this the memory starts over (a flood of invented
    /// MACs cannot grow it).
    const MAX_KEYS: usize = 4096;

    /// An empty throttle.
    pub fn new() -> Self {
        LogThrottle {
            seen: std::collections::HashMap::new(),
            second: None,
            in_second: 0,
            quieted: 0,
        }
    }

    /// Whether this DHCP event of `mac` is logged at its own level (`true`) or at
    /// debug level. Also returns how many were quieted in the second that just
    /// ended, when one ended, for a summary line.
    pub fn admit(
        &mut self,
        mac: MacAddr,
        name: &'static str,
        now: std::time::Instant,
    ) -> (bool, Option<u64>) {
        let mut summary = None;
        match self.second {
            Some(start)
                if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) => {}
            _ => {
                if self.quieted > 0 {
                    summary = Some(self.quieted);
                }
                self.second = Some(now);
                self.in_second = 0;
                self.quieted = 0;
            }
        }
        let repeat = self
            .seen
            .get(&(mac, name))
            .is_some_and(|t| now.saturating_duration_since(*t) < Self::REPEAT);
        let loud = !repeat && self.in_second < Self::PER_SECOND;
        if loud {
            if self.seen.len() >= Self::MAX_KEYS {
                self.seen.clear();
            }
            self.seen.insert((mac, name), now);
            self.in_second += 1;
        } else {
            self.quieted += 1;
        }
        (loud, summary)
    }
}

static THROTTLE: std::sync::Mutex<Option<LogThrottle>> = std::sync::Mutex::new(None);

/// Reports `event`: logs it and hands it to the installed sink.
pub fn emit(event: BootEvent) {
    let name = event.name();
    let mut loudness = event.loudness();
    let per_packet = matches!(
        event,
        BootEvent::DhcpAnswered { .. }
            | BootEvent::DhcpIgnored { .. }
            | BootEvent::DhcpClientAddress { .. }
    );
    if per_packet && tracing::enabled!(target: EVENT_TARGET, tracing::Level::INFO) {
        if let Some(mac) = event.mac() {
            let (loud, summary) = {
                let mut t = THROTTLE.lock().unwrap_or_else(|p| p.into_inner());
                t.get_or_insert_with(LogThrottle::new)
                    .admit(mac, name, std::time::Instant::now())
            };
            if let Some(n) = summary {
                tracing::info!(
                    target: EVENT_TARGET,
                    quieted = n,
                    "{n} repeated or surplus DHCP events in the last second were logged at debug level"
                );
            }
            if !loud {
                loudness = Loudness::Debug;
            }
        }
    }
    match loudness {
        Loudness::Debug => {
            if tracing::enabled!(target: EVENT_TARGET, tracing::Level::DEBUG) {
                let fields = event.render_fields();
                tracing::debug!(target: EVENT_TARGET, event = name, "{fields}");
            }
        }
        Loudness::Info => {
            if tracing::enabled!(target: EVENT_TARGET, tracing::Level::INFO) {
                let fields = event.render_fields();
                tracing::info!(target: EVENT_TARGET, event = name, "{fields}");
            }
        }
        Loudness::Warn => {
            if tracing::enabled!(target: EVENT_TARGET, tracing::Level::WARN) {
                let fields = event.render_fields();
                tracing::warn!(target: EVENT_TARGET, event = name, "{fields}");
            }
        }
    }
    if let Some(sink) = SINK.get() {
        sink.event(&event);
    }
    if let Some(booting) = event.implied() {
        emit(booting);
    }
}

impl BootEvent {
    /// The event this one implies, if any: once the last byte of the last file of a
    /// machine's boot has been sent to GRUB over TFTP, the machine boots
    /// ([`BootEvent::GrubBooting`]). Sent, not acknowledged: GRUB boots the kernel
    /// right after reading that byte, and its last ACK may never leave the machine.
    pub fn implied(&self) -> Option<BootEvent> {
        let BootEvent::TftpSent { file, peer, .. } = self else {
            return None;
        };
        let path = GrubPath::parse(file).filter(GrubPath::is_last)?;
        Some(BootEvent::GrubBooting {
            mac: path.mac()?,
            file: file.clone(),
            peer: Some(*peer),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_render_as_key_value_pairs() {
        let ev = BootEvent::TftpFailed {
            file: "undionly.kpxe".into(),
            peer: "10.0.0.9:2070".parse().unwrap(),
            reason: "server busy".into(),
        };
        assert_eq!(ev.name(), "tftp.failed");
        assert_eq!(ev.loudness(), Loudness::Warn);
        assert_eq!(
            ev.render_fields(),
            r#"file=undionly.kpxe peer=10.0.0.9:2070 reason="server busy""#
        );
        assert_eq!(ev.peer(), Some("10.0.0.9:2070".parse().unwrap()));
        assert_eq!(ev.mac(), None);
    }

    #[test]
    fn offers_and_acks_share_a_variant_but_not_a_name() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let offer = BootEvent::DhcpAnswered {
            answer: DhcpAnswer::Offer,
            mac,
            arch: ClientArch::Bios,
            xid: 0x1234,
            ipxe: false,
            path: "tftp",
            boot: "undionly.kpxe".into(),
            server: "10.0.0.2".parse().unwrap(),
            peer: "0.0.0.0:68".parse().unwrap(),
            via: "broadcast".into(),
        };
        let mut ack = offer.clone();
        if let BootEvent::DhcpAnswered { answer, .. } = &mut ack {
            *answer = DhcpAnswer::Ack;
        }
        assert_eq!(offer.name(), "dhcp.offer");
        assert_eq!(ack.name(), "dhcp.ack");
        assert_eq!(ack.mac(), Some(mac));
        let mut keys = Vec::new();
        offer.fields(&mut |k, _| keys.push(k));
        assert_eq!(
            keys,
            ["mac", "arch", "xid", "ipxe", "path", "boot", "server", "peer", "via"]
        );
        assert!(offer.render_fields().contains("xid=0x00001234"));
    }

    #[test]
    fn the_throttle_logs_each_machine_step_once_and_caps_a_flood() {
        use std::time::{Duration, Instant};
        let mut t = LogThrottle::new();
        let t0 = Instant::now();
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(t.admit(m, "dhcp.offer", t0), (true, None));
        // The same step again: quiet; another step of the same machine: loud.
        assert_eq!(
            t.admit(m, "dhcp.offer", t0 + Duration::from_millis(10)),
            (false, None)
        );
        assert_eq!(
            t.admit(m, "dhcp.ack", t0 + Duration::from_millis(20)),
            (true, None)
        );
        // A flood of new machines within one second: only PER_SECOND are loud.
        let loud = (0..100u8)
            .filter(|n| {
                t.admit(
                    MacAddr([2, 0, 0, 0, 1, *n]),
                    "dhcp.offer",
                    t0 + Duration::from_millis(30),
                )
                .0
            })
            .count();
        assert_eq!(loud as u32, LogThrottle::PER_SECOND - 2);
        // The next second starts with a summary of what was quieted.
        let (loud, summary) = t.admit(
            MacAddr([2, 0, 0, 0, 2, 0]),
            "dhcp.offer",
            t0 + Duration::from_secs(1),
        );
        assert!(loud);
        assert_eq!(
            summary,
            Some(1 + 100 - (u64::from(LogThrottle::PER_SECOND) - 2))
        );
        // After REPEAT, the machine's step is loud again.
        assert!(
            t.admit(
                m,
                "dhcp.offer",
                t0 + LogThrottle::REPEAT + Duration::from_secs(2)
            )
            .0
        );
    }

    #[test]
    fn the_last_grub_file_implies_the_boot() {
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
        let id = crate::FileRef::parse("/srv/initrd").unwrap().id();
        let path = |step| {
            GrubPath::File {
                mac,
                step,
                id: id.clone(),
                name: "initrd".into(),
            }
            .to_path()
        };
        let done = |file: String| BootEvent::TftpSent {
            file,
            peer: "10.0.0.9:2070".parse().unwrap(),
            bytes: 1,
        };
        use crate::loader::GrubStep;
        let last = path(GrubStep::Initrd { index: 2, of: 2 });
        let booting = done(last.clone()).implied().expect("implied boot");
        assert_eq!(booting.name(), "grub.booting");
        assert_eq!(booting.mac(), Some(mac));
        assert_eq!(
            booting.render_fields(),
            format!("mac=52:54:00:00:00:09 file={last} peer=10.0.0.9:2070")
        );
        assert_eq!(
            done(path(GrubStep::Initrd { index: 1, of: 2 })).implied(),
            None
        );
        assert_eq!(done(path(GrubStep::Kernel { initrds: 2 })).implied(), None);
        assert!(done(path(GrubStep::Kernel { initrds: 0 }))
            .implied()
            .is_some());
        assert_eq!(done("undionly.kpxe".into()).implied(), None);
        // The end of the transfer (the last ACK) does not count again.
        let acked = BootEvent::TftpDone {
            file: last.clone(),
            peer: "10.0.0.9:2070".parse().unwrap(),
            bytes: 1,
            duration_ms: 1,
            blksize: 1024,
            windowsize: 1,
            retransmits: 0,
        };
        assert_eq!(acked.implied(), None);
        // A failed or aborted transfer before the last byte is not a boot.
        let failed = BootEvent::TftpFailed {
            file: last,
            peer: "10.0.0.9:2070".parse().unwrap(),
            reason: "timeout".into(),
        };
        assert_eq!(failed.implied(), None);
    }

    #[test]
    fn shim_probes_are_not_warnings() {
        let probe = BootEvent::TftpFailed {
            file: "revocations_sbat.efi".into(),
            peer: "10.0.0.9:2070".parse().unwrap(),
            reason: "file not found".into(),
        };
        assert_eq!(probe.loudness(), Loudness::Debug);
        let real = BootEvent::TftpFailed {
            file: "grubx64.efi".into(),
            peer: "10.0.0.9:2070".parse().unwrap(),
            reason: "file not found".into(),
        };
        assert_eq!(real.loudness(), Loudness::Warn);
    }

    #[test]
    fn quotes_inside_values_are_escaped() {
        let ev = BootEvent::HttpIgnored {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            reason: r#"say "no""#.into(),
        };
        assert_eq!(
            ev.render_fields(),
            r#"mac=02:00:00:00:00:01 reason="say \"no\"""#
        );
    }
}
