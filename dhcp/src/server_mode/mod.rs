//! The built-in DHCPv4 server (`[dhcp] mode = "server"`), for data networks that
//! have no DHCP server of their own. Off by default: ProxyDHCP stays the default and
//! is unchanged.
//!
//! - [`core`](mod@core): the pure decision core, [`ServerCore::handle`]: one message in,
//!   a [`Decision`] out (reply, store-then-ACK, forget, or silence), with the time
//!   passed in.
//! - [`leases`]: the in-memory [`LeaseTable`] and the [`LeaseStore`] trait; the
//!   server keeps its leases in the state database (`ironpxe_state::LeaseDb`,
//!   fsynced), and acknowledges an address only after its lease is stored.
//! - [`probe`]: at start-up, a DISCOVER out of the data NIC; an OFFER from anyone
//!   means another DHCP server is there, and ironpxe refuses to start (unless told
//!   to with `--force`).
//! - [`driver`]: the receive thread on UDP 67 (batches of datagrams, as
//!   ProxyDHCP's), bound to the data NIC (`SO_BINDTODEVICE`), so the server answers
//!   there only; a lease is stored (an fsync) on that thread before its ACK is sent. PXE clients get their
//!   address and their boot information (what ProxyDHCP would have answered,
//!   [`crate::answer`]) in one OFFER and ACK; UDP 4011 stays ProxyDHCP's.

pub mod core;
pub mod driver;
pub mod leases;
pub mod probe;

pub use self::core::{Decision, ServerCore, ServerReply, Silence};
pub use driver::{merge_boot, serve, ServerMode};
pub use leases::{Lease, LeaseStore, LeaseTable, MemoryLeases};
pub use probe::{probe, OtherServer, PROBE_WAIT};
