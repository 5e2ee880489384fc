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
//!   [`ConfigBooter`] answers per MAC from a validated [`Config`] (the TOML file of
//!   `ironpxe serve`), and [`SwapBooter`] lets a running server replace its booter.
//! - [`event`]: [`BootEvent`], the one typed vocabulary of what happened during a
//!   boot; [`emit`] logs it and hands it to the status store.
//! - [`file_root`]: [`ConfinedBooter`] keeps the local files a booter names inside
//!   one directory tree ([`FileRoot`], `--api-file-root`).
//! - [`parse_duration`] reads durations (`30s`, `1m30s`) for flags and the file.
//! - [`template`] expands `{{ URL "x" }}` / `{{ ID "x" }}` in command lines.
//! - [`urls`] builds and parses every URL ironpxe hands out ([`BootUrls`]): the
//!   script URL ProxyDHCP announces, the file and callback URLs of a script, and the
//!   iPXE binaries of UEFI HTTP Boot.
//! - [`net6`]: IPv6 address ranges (stateful DHCPv6), which IPv6 addresses can be
//!   announced in boot URLs, MACs from EUI-64 link-local addresses, and the
//!   [`AddrFamily`](net6::AddrFamily) label of status and metrics.
//! - [`loader`] names the loaders a spec boots through ([`Loader`]: iPXE, or shim and
//!   GRUB for Secure Boot, or GRUB), the table of shim and GRUB binaries
//!   ([`LoaderBinary`]), and the paths GRUB fetches ([`GrubPath`]).
//! - [`ipxe_role`] is the table of iPXE binary roles ([`IpxeRole`]): their flags,
//!   config keys, default file names and the firmware each serves, and
//!   [`IpxeBinaries`], the file chosen per role.
//!
//! Data flows one way: the DHCP core asks the booter whether to answer a MAC at all,
//! the HTTP server asks it for the spec to render a script and for the files the
//! script names.

mod arch;
mod booter;
pub mod config;
mod duration;
pub mod event;
pub mod file_root;
pub mod ipxe_role;
pub mod loader;
mod mac;
pub mod net6;
mod spec;
pub mod template;
pub mod urls;

pub use arch::ClientArch;
pub use booter::{BootDecision, Booter, StaticBooter, SwapBooter};
pub use config::{Config, ConfigBooter};
pub use duration::{parse_duration, DurationError};
pub use event::{emit, BootEvent, EventSink, EVENT_TARGET};
pub use file_root::{ConfinedBooter, FileRoot, FileRootError};
pub use ipxe_role::{IpxeBinaries, IpxeRole, RoleMap};
pub use loader::{EfiCpu, GrubPath, Loader, LoaderBinary, LoaderSet};
pub use mac::{MacAddr, MacParseError};
pub use spec::{BootSpec, FileId, FileRef, FileRefError};
pub use urls::BootUrls;
