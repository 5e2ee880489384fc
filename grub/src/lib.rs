//! The GRUB side of ironpxe: what a machine whose loader is GRUB or shim gets once
//! GRUB runs.
//!
//! A Secure Boot machine boots a signed shim, shim loads a signed GRUB, and that GRUB
//! fetches its configuration from ironpxe: Debian's signed netboot GRUB reads
//! `grub/grub.cfg` (its prefix is `/grub`) from the TFTP server its DHCP answer
//! named, and a GRUB built with the http module reads it over HTTP after UEFI HTTP
//! Boot. This crate answers both.
//!
//! # Layout
//!
//! - [`render`]: the configurations, pure text: [`render::dispatch_config`] (the
//!   shared `grub/grub.cfg`, which sources the machine's own file by
//!   `$net_default_mac` and `$grub_cpu`) and [`render::machine_config`] (echo the
//!   message, `linux` with the command line quoted for GRUB's script language,
//!   `initrd`, `boot`, retries, and an `exit` to the next boot device when there is
//!   nothing to boot). [`render::check_spec`] is what `ironpxe check` runs.
//! - [`files`]: [`GrubFiles`], which answers every [`GrubPath`] from the booter's
//!   decisions; it is a TFTP [`FileSource`](ironpxe_tftp::FileSource).
//! - [`http`]: the same files at `GET /grub/...`, with the events TFTP would give.
//! - [`image`]: reads a GRUB EFI image's built-in prefix and modules, to know whether
//!   it can fetch over HTTP.
//!
//! Paths are those of [`ironpxe_core::loader::GrubPath`], which also says which file
//! is a machine's last: its transfer marks the boot, since GRUB cannot call
//! ironpxe's `/_/booting`.
//!
//! [`GrubPath`]: ironpxe_core::loader::GrubPath

pub mod files;
pub mod http;
pub mod image;
pub mod render;

/// A model of GRUB's script lexer and `linux` for checking rendered configurations;
/// the unit tests and the `grub_config` fuzz target use it (feature `sim`).
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

pub use files::{GrubFiles, RemoteFetch};
pub use image::{inspect, GrubImage, ImageError};
pub use render::{check_spec, dispatch_config, machine_config, Answer, GrubError, MachineConfig};
