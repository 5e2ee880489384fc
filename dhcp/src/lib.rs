//! ironpxe's ProxyDHCP server.
//!
//! ProxyDHCP answers PXE clients next to the site's own DHCP server: it never hands
//! out addresses, only tells firmware where to boot from.
//!
//! # Layout
//!
//! - [`request`]: reads a decoded `dhcproto` message as a [`PxeRequest`] (MAC,
//!   architecture, vendor class, iPXE features), or says why it is not one.
//! - [`decide`](mod@decide): the pure core. [`classify()`] parses a message once and
//!   says whether it is ours; [`answer()`] takes the config, that request, the
//!   booter's [`BootDecision`](ironpxe_core::BootDecision) as data, the [`RecvMeta`],
//!   the time and the [`ChainloadMemory`], and returns a [`Reply`] (message,
//!   destination, boot path) or the reason it is [`Ignored`]. No sockets, no clock,
//!   no booter calls. [`decide()`] chains the two for a booter that answers at once.
//! - [`sock`]: the only place that knows socket options (`SO_BINDTODEVICE`,
//!   `IP_PKTINFO`).
//! - [`nobind`]: the non-binding receive path (`--dhcp-no-bind`): a packet socket
//!   with a BPF filter, IPv4/UDP decoding, and raw sends from port 67.
//! - [`site_ack`]: watches the site DHCP server's broadcast DHCPACKs to machines
//!   ProxyDHCP handed shim or GRUB, and warns once per machine when one names
//!   another next-server (Debian's signed GRUB takes its TFTP server from there).
//! - [`server`]: the tokio driver: receive, decode, ask the booter (off the receive
//!   loop when it must wait), answer, send, log an event.
//! - [`server_mode`]: the built-in DHCPv4 server (`[dhcp] mode = "server"`, off by
//!   default): reservations, a pool, leases in the state database, and ProxyDHCP's
//!   boot information in the offers of PXE clients.
//! - [`v6`]: DHCPv6 for network boot, the IPv6 counterpart of all of the above.
//!
//! Firmware PXE clients are chainloaded into iPXE over TFTP; iPXE clients with HTTP
//! get the boot script URL directly, which also breaks the chainload loop that stock
//! iPXE binaries would otherwise fall into.

/// The DHCP message types of this crate's API ([`decide()`] takes a
/// `dhcproto::v4::Message`), for callers that build or read them.
pub use dhcproto;

pub mod decide;
pub mod nobind;
pub mod request;
pub mod server;
pub mod server_mode;
pub mod site_ack;
pub mod sock;
pub mod v6;

pub use decide::{
    answer, classify, decide, BootPath, ChainloadMemory, Classified, Destination, Ignored,
    IpxeBinaries, LoaderOffers, ProxyConfig, RecvMeta, Reply, ServerPort, LOOKUP_WAIT, MAX_LOOKUPS,
};
pub use request::{ClientGuid, IpxeInfo, NotPxe, PxeRequest, VendorClass};
pub use server::serve;
pub use sock::DhcpSocket;
