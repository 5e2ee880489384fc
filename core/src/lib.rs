//! Shared vocabulary of ironpxe.
//!
//! Every protocol crate speaks in these types:
//!
//! - [`MacAddr`] and [`ClientArch`] identify a machine and its firmware. They are
//!   built at the wire boundary (DHCP `chaddr`, option 93) and never re-parsed.
//! - [`BootSpec`] is what a machine boots: kernel, initrds, command line, message.
//!   Its files are [`FileRef`]s (a local path or an http(s) URL).
//! - [`FileId`] is the opaque, stable name under which the HTTP server exposes one
//!   [`FileRef`]. It is derived from the reference itself, so it survives a restart.
//! - [`Booter`] answers "what does this MAC boot?" and "which file is this id?".
//!   [`StaticBooter`] is pixiecore's `boot` mode: one spec for every machine.
//!
//! Data flows one way: the DHCP core asks the booter whether to answer a MAC at all,
//! the HTTP server asks it for the spec to render a script and for the files the
//! script names.

mod arch;
mod booter;
mod mac;
mod spec;

pub use arch::ClientArch;
pub use booter::{BootDecision, Booter, StaticBooter};
pub use mac::{MacAddr, MacParseError};
pub use spec::{BootSpec, FileId, FileRef, FileRefError};
