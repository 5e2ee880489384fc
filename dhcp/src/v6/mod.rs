//! DHCPv6 for network boot (RFC 8415, RFC 5970): ironpxe's IPv6 counterpart of
//! ProxyDHCP, next to the site's own DHCPv6 server and router advertisements.
//!
//! It answers only boot clients (vendor class enterprise 343 `PXEClient`/
//! `HTTPClient`, or user class `iPXE`), with boot information chosen per MAC from
//! the same [`Booter`](ironpxe_core::Booter) as IPv4: option 59 (a `tftp://[addr]/`
//! URL of the iPXE binary for PXE firmware, an `http://[addr]:port/_/bin/` URL for
//! UEFI HTTP Boot, the script URL for iPXE) and option 16. Ordinary DHCPv6 clients
//! are never answered.
//!
//! # Layout
//!
//! - [`wire`]: a checked view of received datagrams, relays unwrapped.
//! - [`request`]: a datagram as a boot request ([`Request6`]): the MAC (from the
//!   DUID, a relay's link-layer option, or an EUI-64 link-local address),
//!   architecture, vendor and user class, IA_NA.
//! - [`decide`](mod@decide): the pure core. [`classify6`] says whether and how a
//!   request is answered; [`answer6`] builds the ADVERTISE or REPLY (with
//!   `dhcproto`'s v6 types) from the booter's decision, the leases and the time.
//! - [`leases`]: the stateful mode's lease table and its crash-safe file.
//! - [`driver`]: the sockets (UDP 547 and 4011, IPv6 only) and the tokio loop.
//!
//! # ProxyDHCP-style, or stateful
//!
//! Without an address range ironpxe hands out no addresses: EDK2's PXE and HTTP
//! Boot clients take their address from the site's server and their boot file from
//! ironpxe. iPXE (the 2019 build in Debian 12 at least) ignores every ADVERTISE
//! without an address, so on an IPv6-only segment iPXE needs the stateful mode: an
//! `ipv6_range` from which ironpxe gives iPXE (or, with `ipv6_stateful = "all"`,
//! every boot client) an address, with leases kept in a file across restarts.

pub mod decide;
pub mod driver;
pub mod leases;
pub mod request;
pub mod wire;

pub use decide::{
    answer6, classify6, Answer6, ClientMemory, Config6, Ignored6, RecvMeta6, Reply6, Stateful,
    PXE_RESEND,
};
pub use driver::{serve6, server_duid, Dhcp6Socket, Setup6, ALL_DHCP_SERVERS};
pub use leases::{Lease, LeaseFile, LeaseFileError, LeaseKey, Leases};
pub use request::{MacSource, NotBoot6, Parsed6, Request6};
