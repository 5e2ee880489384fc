//! The ProxyDHCP decision core: one packet in, at most one reply out.
//!
//! Pure and deterministic: the current time and the chainload memory are passed in,
//! so every branch is a unit test without sockets.
//!
//! A machine whose boot spec asks for shim or GRUB ([`Loader`]) gets that chain's
//! first file from [`LoaderSet::first_file`]: over TFTP for EFI x64 (7, 9) and ARM64
//! (11) PXE, in the BOOTP `file` field and option 67 alike (shim finds GRUB next to
//! the file the `file` field names), or as a `/_/bin/` URL for UEFI HTTP Boot (16,
//! 19) when that GRUB can fetch over HTTP. Firmware with no shim or GRUB image (BIOS,
//! 32-bit EFI) falls back to iPXE, noted once per machine in the log.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode};
use ironpxe_core::loader::LoaderGap;
use ironpxe_core::{BootDecision, BootUrls, Booter, ClientArch, Loader, LoaderSet, MacAddr};

use crate::request::{NotPxe, PxeRequest, VendorClass};

/// The TFTP names of the iPXE binaries ironpxe can chainload, per role; the role
/// table in `ironpxe_core::ipxe_role` says which firmware gets which.
pub use ironpxe_core::IpxeBinaries;

/// Settings of the decision core.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Port of ironpxe's HTTP server, used in script URLs.
    pub http_port: u16,
    /// Chainload binaries.
    pub binaries: IpxeBinaries,
    /// The shim and GRUB binaries, for machines whose loader is shim or GRUB.
    pub loaders: LoaderSet,
    /// Where answers that hand a machine shim or GRUB are recorded, for the watch on
    /// the site server's DHCPACKs ([`crate::site_ack`]).
    pub loader_offers: LoaderOffers,
    /// Chainload the configured iPXE even into clients that already are iPXE with
    /// HTTP (to replace an old NIC ROM's iPXE). Loops are avoided by remembering the
    /// chainload per MAC.
    pub force_chainload: bool,
    /// How long a chainload is remembered: an iPXE request from the same MAC, in a
    /// new exchange within this window, comes from the binary we sent.
    pub chainload_window: Duration,
    /// How long the driver lets the booter wait for a slow source (the pixiecore API)
    /// before it gives up on this packet. Within it, the first DISCOVER of a machine
    /// the source answers quickly gets its offer; past it, the retransmit is answered
    /// from the booter's cache, so a slow source never breaks PXE timing.
    pub lookup_wait: Duration,
    /// How many packets may wait for the booter at once. Past this, new packets
    /// that need a lookup are dropped (and counted), so a flood of unknown MACs
    /// cannot stall the receive loop or grow memory.
    pub max_lookups: usize,
}

/// Default of [`ProxyConfig::lookup_wait`].
pub const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// Default of [`ProxyConfig::max_lookups`].
pub const MAX_LOOKUPS: usize = 64;

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            http_port: 80,
            binaries: IpxeBinaries::default(),
            loaders: LoaderSet::default(),
            loader_offers: LoaderOffers::default(),
            force_chainload: false,
            chainload_window: Duration::from_secs(120),
            lookup_wait: LOOKUP_WAIT,
            max_lookups: MAX_LOOKUPS,
        }
    }
}

/// Which server port a packet arrived on; the two ProxyDHCP roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPort {
    /// UDP 67: answer DISCOVER with an OFFER.
    Dhcp,
    /// UDP 4011: answer REQUEST/INFORM with an ACK, unicast to the sender.
    Pxe,
}

/// Where and how a packet was received (the driver fills this from IP_PKTINFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Our address on the receiving interface; announced as server id and boot server.
    pub local_ip: Ipv4Addr,
    /// The receiving interface.
    pub ifindex: u32,
    /// Which role the packet was received in.
    pub port: ServerPort,
    /// The sender.
    pub src: SocketAddrV4,
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Limited broadcast to UDP 68, out of the receiving interface.
    Broadcast {
        /// Interface to send on.
        ifindex: u32,
    },
    /// Unicast (relay agent on 67, or the 4011 client).
    Unicast(SocketAddrV4),
}

/// The boot path a reply hands the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootPath {
    /// Load an iPXE binary over TFTP from us.
    Chainload {
        /// TFTP file name.
        file: String,
    },
    /// iPXE with HTTP: fetch the boot script directly.
    Script {
        /// Script URL.
        url: String,
    },
    /// UEFI HTTP Boot firmware: download an iPXE EFI binary from our HTTP server.
    HttpBoot {
        /// URL of the binary.
        url: String,
    },
    /// Load the first binary of the shim or GRUB chain over TFTP.
    Loader {
        /// shim or GRUB.
        loader: Loader,
        /// TFTP file name.
        file: String,
    },
    /// UEFI HTTP Boot firmware: download the first binary of the shim or GRUB chain.
    LoaderHttp {
        /// shim or GRUB.
        loader: Loader,
        /// URL of the binary.
        url: String,
    },
}

impl BootPath {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BootPath::Chainload { .. } => "tftp",
            BootPath::Script { .. } => "http",
            BootPath::HttpBoot { .. } => "httpboot",
            BootPath::Loader {
                loader: Loader::Grub,
                ..
            } => "grub",
            BootPath::Loader { .. } => "shim",
            BootPath::LoaderHttp {
                loader: Loader::Grub,
                ..
            } => "httpboot-grub",
            BootPath::LoaderHttp { .. } => "httpboot-shim",
        }
    }

    /// The file name or URL given to the client, owned.
    pub fn into_target(self) -> String {
        match self {
            BootPath::Chainload { file } | BootPath::Loader { file, .. } => file,
            BootPath::Script { url }
            | BootPath::HttpBoot { url }
            | BootPath::LoaderHttp { url, .. } => url,
        }
    }

    /// The file name or URL given to the client.
    pub fn target(&self) -> &str {
        match self {
            BootPath::Chainload { file } | BootPath::Loader { file, .. } => file,
            BootPath::Script { url }
            | BootPath::HttpBoot { url }
            | BootPath::LoaderHttp { url, .. } => url,
        }
    }
}

/// A reply to send.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The DHCP message.
    pub message: Message,
    /// Where to send it.
    pub dest: Destination,
    /// What it tells the client to boot.
    pub path: BootPath,
    /// The parsed request it answers.
    pub request: PxeRequest,
}

/// Why a packet got no reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// Not a PXE request at all: ordinary DHCP traffic, never answered.
    #[error("not a PXE client: {0}")]
    NotPxe(#[from] NotPxe),
    /// A message type this port does not answer (REQUEST on 67 goes to the site server).
    #[error("{msg_type:?} on {port:?} port is not for ProxyDHCP")]
    WrongPort {
        /// The message type.
        msg_type: MessageType,
        /// The port.
        port: ServerPort,
    },
    /// The booter declined this machine.
    #[error("{0}")]
    Booter(String),
    /// The booter's source has not answered yet; the client's retransmit is answered
    /// from its cache.
    #[error("the boot source has not answered yet; the client's retransmit gets the answer")]
    Pending,
    /// No iPXE binary is configured for this firmware.
    #[error("no iPXE binary configured for firmware {0} (option 93 = {code})", code = .0.code())]
    NoBinary(ClientArch),
    /// A firmware ironpxe does not boot (an unknown option 93 code, or ARM32).
    #[error("unsupported client firmware {0} (option 93 = {code}); not answering", code = .0.code())]
    UnsupportedArch(ClientArch),
    /// A UEFI HTTP Boot client for which no iPXE binary is configured.
    #[error("no iPXE binary configured for UEFI HTTP Boot client {0} (option 93 = {code})", code = .0.code())]
    NoHttpBinary(ClientArch),
    /// The receiving interface has no IPv4 address to announce (an IPv6-only
    /// segment): an offer would name 0.0.0.0 as the boot server.
    #[error("no IPv4 address on interface {0} to announce; not answering over IPv4")]
    NoLocalAddress(u32),
    /// iPXE without HTTP, right after we chainloaded it: answering again would loop.
    #[error(
        "iPXE without HTTP support came back after a chainload; not answering to avoid a boot loop"
    )]
    ChainloadLoop,
    /// The machine's loader (shim or GRUB) cannot be given to this client.
    #[error("{0}")]
    Loader(LoaderGap),
}

impl Ignored {
    /// True for traffic that is simply not ours (logged at debug level only).
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            Ignored::NotPxe(_) | Ignored::WrongPort { .. } | Ignored::NoLocalAddress(_)
        )
    }
}

/// The machines ProxyDHCP recently handed shim or GRUB, and when; shared between the
/// decision core, which records them, and the site-ACK watch, which checks the site
/// server's answers to them. Bounded: a flood of MACs cannot grow it.
#[derive(Clone, Debug, Default)]
pub struct LoaderOffers(Arc<Mutex<HashMap<MacAddr, Instant>>>);

impl LoaderOffers {
    /// Entries kept before old ones are dropped.
    const MAX: usize = 4096;

    /// Records that `mac` was handed shim or GRUB at `now`.
    pub fn record(&self, mac: MacAddr, now: Instant) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= Self::MAX && !m.contains_key(&mac) {
            let window = Duration::from_secs(600);
            m.retain(|_, t| now.saturating_duration_since(*t) <= window);
            if m.len() >= Self::MAX {
                m.clear();
            }
        }
        m.insert(mac, now);
    }

    /// Whether `mac` was handed shim or GRUB within `window` before `now`.
    pub fn recent(&self, mac: MacAddr, now: Instant, window: Duration) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&mac)
            .is_some_and(|t| now.saturating_duration_since(*t) <= window)
    }
}

/// Remembers, per MAC, the exchange (xid) in which we last chainloaded iPXE, and
/// when a machine's loader last fell back to iPXE (noted once per machine).
#[derive(Debug, Default)]
pub struct ChainloadMemory {
    entries: HashMap<MacAddr, (u32, Instant)>,
    fallbacks: HashMap<MacAddr, Instant>,
}

impl ChainloadMemory {
    const PRUNE_AT: usize = 4096;

    /// True when `mac` was chainloaded within `window` in an exchange other than `xid`.
    fn came_back(&self, mac: MacAddr, xid: u32, now: Instant, window: Duration) -> bool {
        self.entries
            .get(&mac)
            .is_some_and(|&(x, t)| x != xid && now.saturating_duration_since(t) <= window)
    }

    fn record(&mut self, mac: MacAddr, xid: u32, now: Instant, window: Duration) {
        if self.entries.len() >= Self::PRUNE_AT && !self.entries.contains_key(&mac) {
            self.entries
                .retain(|_, (_, t)| now.saturating_duration_since(*t) <= window);
            if self.entries.len() >= Self::PRUNE_AT {
                // A flood of fresh MACs: keep the newest half. Pruning then happens
                // at most once per PRUNE_AT / 2 inserts, so a flood costs O(log n)
                // per packet and memory stays bounded.
                let mut times: Vec<Instant> = self.entries.values().map(|(_, t)| *t).collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                self.entries.retain(|_, (_, t)| *t > cut);
            }
        }
        self.entries.insert(mac, (xid, now));
    }

    /// Whether the fallback of `mac` to iPXE should be logged now: once per
    /// machine and [`ChainloadMemory::NOTE_AGAIN`], not once per packet.
    fn note_fallback(&mut self, mac: MacAddr, now: Instant) -> bool {
        if let Some(t) = self.fallbacks.get(&mac) {
            if now.saturating_duration_since(*t) < Self::NOTE_AGAIN {
                return false;
            }
        }
        if self.fallbacks.len() >= Self::PRUNE_AT {
            self.fallbacks
                .retain(|_, t| now.saturating_duration_since(*t) < Self::NOTE_AGAIN);
            if self.fallbacks.len() >= Self::PRUNE_AT {
                self.fallbacks.clear();
            }
        }
        self.fallbacks.insert(mac, now);
        true
    }

    /// How long before a machine's fallback to iPXE is logged again.
    pub const NOTE_AGAIN: Duration = Duration::from_secs(600);

    /// Number of remembered MACs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A packet that is for ProxyDHCP: the parsed request and the reply it calls for.
///
/// [`classify`] produces it without consulting the booter, so traffic that is not
/// ours never costs a lookup; [`answer`] turns it and the booter's decision into a
/// reply.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The parsed request.
    pub request: PxeRequest,
    /// OFFER on port 67, ACK on 4011.
    pub reply_type: MessageType,
    /// A UEFI HTTP Boot client (it gets a binary URL, not a TFTP file).
    pub http_boot: bool,
}

/// Says whether ProxyDHCP answers a parsed PXE request at all, and how.
#[must_use = "the classification says whether and how to answer the packet"]
pub fn classify(request: PxeRequest, meta: &RecvMeta) -> Result<Classified, Ignored> {
    let reply_type = match (meta.port, request.msg_type) {
        (ServerPort::Dhcp, MessageType::Discover) => MessageType::Offer,
        (ServerPort::Pxe, MessageType::Request | MessageType::Inform) => MessageType::Ack,
        (port, msg_type) => return Err(Ignored::WrongPort { msg_type, port }),
    };
    if meta.local_ip.is_unspecified() {
        return Err(Ignored::NoLocalAddress(meta.ifindex));
    }
    if matches!(
        request.arch,
        ClientArch::Unknown(_) | ClientArch::EfiArm32 | ClientArch::HttpArm32
    ) {
        return Err(Ignored::UnsupportedArch(request.arch));
    }
    let http_boot = request.class == VendorClass::HttpClient || request.arch.is_http_boot();
    if http_boot && request.arch == ClientArch::Bios {
        // BIOS firmware has no HTTP Boot; a client claiming both is not one we know.
        return Err(Ignored::UnsupportedArch(request.arch));
    }
    Ok(Classified {
        request,
        reply_type,
        http_boot,
    })
}

/// Builds the reply to a classified packet, given what the booter decided for it.
#[must_use = "the reply must be sent, or the reason for none logged"]
pub fn answer(
    cfg: &ProxyConfig,
    msg: &Message,
    classified: Classified,
    decision: &BootDecision,
    meta: &RecvMeta,
    now: Instant,
    memory: &mut ChainloadMemory,
) -> Result<Reply, Ignored> {
    match decision {
        BootDecision::Ignore(reason) => return Err(Ignored::Booter(reason.clone())),
        BootDecision::Pending => return Err(Ignored::Pending),
        BootDecision::Netboot(_) | BootDecision::Local | BootDecision::Script(_) => {}
    }
    let Classified {
        request: req,
        reply_type,
        http_boot,
    } = classified;
    let loader = match decision {
        BootDecision::Netboot(spec) => spec.loader,
        _ => Loader::Ipxe,
    };
    let path = match loader_path(cfg, &req, meta, loader, http_boot) {
        Some(Ok(path)) => path,
        Some(Err(LoaderGap::NoCpu { arch, loader })) => {
            if memory.note_fallback(req.mac, now) {
                tracing::info!(
                    mac = %req.mac,
                    %arch,
                    %loader,
                    "{}",
                    LoaderGap::NoCpu { arch, loader }
                );
            }
            ipxe_path(cfg, &req, meta, now, memory, http_boot)?
        }
        Some(Err(gap)) => return Err(Ignored::Loader(gap)),
        None => ipxe_path(cfg, &req, meta, now, memory, http_boot)?,
    };
    match path {
        BootPath::Chainload { .. } | BootPath::HttpBoot { .. } => {
            memory.record(req.mac, req.xid, now, cfg.chainload_window)
        }
        BootPath::Loader { .. } | BootPath::LoaderHttp { .. } => {
            cfg.loader_offers.record(req.mac, now)
        }
        BootPath::Script { .. } => {}
    }

    let dest = if !req.giaddr.is_unspecified() {
        Destination::Unicast(SocketAddrV4::new(req.giaddr, 67))
    } else if meta.port == ServerPort::Pxe {
        Destination::Unicast(meta.src)
    } else {
        Destination::Broadcast {
            ifindex: meta.ifindex,
        }
    };
    let message = build_reply(msg, &req, reply_type, meta.local_ip, &path);
    Ok(Reply {
        message,
        dest,
        path,
        request: req,
    })
}

/// [`classify`], then the booter without waiting, then [`answer`]: the whole decision
/// for a booter that knows its answers locally (and for tests).
#[must_use = "the reply must be sent, or the reason for none logged"]
pub fn decide(
    cfg: &ProxyConfig,
    booter: &dyn Booter,
    msg: &Message,
    meta: &RecvMeta,
    now: Instant,
    memory: &mut ChainloadMemory,
) -> Result<Reply, Ignored> {
    let c = classify(PxeRequest::parse(msg)?, meta)?;
    let decision = booter.decide(c.request.mac, c.request.arch, Duration::ZERO);
    answer(cfg, msg, c, &decision, meta, now, memory)
}

/// The iPXE path of a client: its HTTP Boot binary, a chainload or the script.
fn ipxe_path(
    cfg: &ProxyConfig,
    req: &PxeRequest,
    meta: &RecvMeta,
    now: Instant,
    memory: &ChainloadMemory,
    http_boot: bool,
) -> Result<BootPath, Ignored> {
    if http_boot {
        http_boot_path(cfg, req, meta)
    } else {
        choose_path(cfg, req, meta, now, memory)
    }
}

/// The shim or GRUB path of a client whose spec asks for one; `None` for iPXE.
fn loader_path(
    cfg: &ProxyConfig,
    req: &PxeRequest,
    meta: &RecvMeta,
    loader: Loader,
    http_boot: bool,
) -> Option<Result<BootPath, LoaderGap>> {
    if !loader.uses_grub() {
        return None;
    }
    let file = match cfg.loaders.first_file(loader, req.arch) {
        Ok(f) => f,
        Err(gap) => return Some(Err(gap)),
    };
    Some(Ok(if http_boot {
        BootPath::LoaderHttp {
            loader,
            url: boot_urls(cfg, meta).binary(file),
        }
    } else {
        BootPath::Loader {
            loader,
            file: file.to_string(),
        }
    }))
}

fn choose_path(
    cfg: &ProxyConfig,
    req: &PxeRequest,
    meta: &RecvMeta,
    now: Instant,
    memory: &ChainloadMemory,
) -> Result<BootPath, Ignored> {
    let chainload = |already_ipxe| {
        cfg.binaries
            .for_arch(req.arch, already_ipxe)
            .map(|f| BootPath::Chainload {
                file: f.to_string(),
            })
            .ok_or(Ignored::NoBinary(req.arch))
    };
    if !req.ipxe.is_ipxe {
        return chainload(false);
    }
    let ours = memory.came_back(req.mac, req.xid, now, cfg.chainload_window);
    match (req.ipxe.http, ours) {
        (true, true) => Ok(script(cfg, req, meta)),
        (true, false) if !cfg.force_chainload => Ok(script(cfg, req, meta)),
        (false, true) => Err(Ignored::ChainloadLoop),
        _ => chainload(true),
    }
}

/// Our HTTP server, as seen on the receiving interface.
fn boot_urls(cfg: &ProxyConfig, meta: &RecvMeta) -> BootUrls {
    BootUrls::http(meta.local_ip, cfg.http_port)
}

fn http_boot_path(
    cfg: &ProxyConfig,
    req: &PxeRequest,
    meta: &RecvMeta,
) -> Result<BootPath, Ignored> {
    let file = cfg
        .binaries
        .for_http_boot(req.arch)
        .ok_or(Ignored::NoHttpBinary(req.arch))?;
    Ok(BootPath::HttpBoot {
        url: boot_urls(cfg, meta).binary(file),
    })
}

fn script(cfg: &ProxyConfig, req: &PxeRequest, meta: &RecvMeta) -> BootPath {
    BootPath::Script {
        url: boot_urls(cfg, meta).script(req.mac, req.arch),
    }
}

/// PXE vendor options (option 43) for firmware clients: discovery control = 8, "use
/// the boot file in this offer, skip boot server discovery".
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// The BOOTP `file` field holds 128 bytes including the terminating NUL.
const FILE_FIELD_MAX: usize = 127;

fn build_reply(
    req_msg: &Message,
    req: &PxeRequest,
    reply_type: MessageType,
    server: Ipv4Addr,
    path: &BootPath,
) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid)
        .set_chaddr(&req.mac.octets())
        .set_giaddr(req.giaddr)
        .set_siaddr(server)
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_ciaddr(Ipv4Addr::UNSPECIFIED);
    let flags = if reply_type == MessageType::Offer {
        Flags::default().set_broadcast()
    } else {
        req_msg.flags()
    };
    m.set_flags(flags);
    let file = path.target().as_bytes();
    if file.len() <= FILE_FIELD_MAX {
        // shim and some PXE ROMs read only the BOOTP field; keep both in step.
        m.set_fname(file);
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(server));
    opts.insert(DhcpOption::ClassIdentifier(
        req.class.as_str().as_bytes().to_vec(),
    ));
    if let Some(guid) = req.guid {
        opts.insert(DhcpOption::ClientMachineIdentifier(guid.to_option()));
    }
    opts.insert(DhcpOption::BootfileName(file.to_vec()));
    if !req.ipxe.is_ipxe && req.class == VendorClass::PxeClient {
        opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
    }
    m
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn a_fallback_is_noted_once_per_machine() {
        let mut m = ChainloadMemory::default();
        let t0 = Instant::now();
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        assert!(m.note_fallback(a, t0));
        assert!(!m.note_fallback(a, t0 + Duration::from_secs(4)));
        assert!(m.note_fallback(b, t0 + Duration::from_secs(4)));
        assert!(m.note_fallback(a, t0 + ChainloadMemory::NOTE_AGAIN));
    }

    #[test]
    fn loader_offers_are_recent_then_forgotten() {
        let o = LoaderOffers::default();
        let t0 = Instant::now();
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let w = Duration::from_secs(120);
        assert!(!o.recent(a, t0, w));
        o.record(a, t0);
        assert!(o.recent(a, t0 + w, w));
        assert!(!o.recent(a, t0 + w + Duration::from_secs(1), w));
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            o.record(MacAddr([2, 1, b[0], b[1], b[2], b[3]]), t0);
        }
        assert!(o.0.lock().unwrap().len() <= LoaderOffers::MAX);
    }

    #[test]
    fn a_flood_of_fresh_macs_stays_bounded() {
        let mut m = ChainloadMemory::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(120);
        for i in 0..50_000u32 {
            let b = i.to_be_bytes();
            let mac = MacAddr([2, 0, b[0], b[1], b[2], b[3]]);
            // All inside the window: expiry alone would keep every one.
            m.record(mac, i, t0 + Duration::from_millis(u64::from(i)), window);
            assert!(
                m.len() <= ChainloadMemory::PRUNE_AT,
                "{} entries after {i}",
                m.len()
            );
        }
        // The newest entries survive.
        let last = MacAddr([2, 0, 0, 0, 0xc3, 0x4f]);
        assert!(m.came_back(last, 1, t0 + Duration::from_secs(60), window));
    }
}
