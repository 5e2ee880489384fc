//! The ironpxe lab: real network boots of QEMU guests against the `ironpxe` binary,
//! in private network namespaces next to a real site DHCP server, or on QEMU user
//! networks. `ironpxe lab` is this library as a command; ironpxe's own QEMU tests
//! (`tests/`) use it the same way.
//!
//! # Layout
//!
//! - [`preflight`] checks the machine for what a lab [`Needs`] (root, `/dev/net/tun`,
//!   QEMU, dnsmasq, busybox-static, iPXE and OVMF files) and returns a [`Report`]
//!   naming the Debian package for each gap; [`LabBuilder::build`] turns gaps into
//!   [`Error::Preflight`]. Every fallible call returns the typed [`Error`].
//! - [`assets`] provides what guests boot: [`kernel`] (a Debian cloud kernel fetched
//!   once into the [`cache_dir`]) and [`initrd`] (busybox and an `/init` that prints
//!   `IRONPXE-MARKER cmdline=[...]` on ttyS0 and powers off), built at run time.
//!   [`installer`] builds a stand-in installer initrd that reports success to its
//!   `ironpxe.done=` URL and reboots (with the kernel's network modules, kept in
//!   the cache). [`disk`] writes a local disk for guests that prints [`DISK_MARKER`] when the
//!   firmware boots it (a BIOS boot sector, or an EFI application on a FAT disk).
//! - [`Lab`] ([`lab`]) is the network and everything started in it; [`netns`]
//!   creates, enters and removes namespaces and cleans up after killed labs;
//!   [`site`] runs the site DHCP server; [`Lab::start_ironpxe`] ([`ironpxe`]) runs
//!   the binary and reads its boot [`Event`]s from its status server; [`client`]
//!   adds ordinary client namespaces; [`segments`] adds bridges, relays and
//!   captures; [`Lab::start_bmc`] ([`bmc`]) gives a guest a BMC (OpenIPMI's
//!   `ipmi_sim`, IPMI over LAN on a management link) that powers its QEMU on and
//!   off; [`Lab::relay_url`] lets ironpxe reach one server of the host's
//!   network (an API, a kernel URL) and nothing else. With [`Network::User`] there
//!   are no namespaces: ironpxe listens on loopback and each guest has a QEMU user
//!   network.
//! - [`Lab::start_guest`] starts a QEMU [`Guest`] ([`guest`]) with KVM or TCG
//!   ([`accel`]); [`Guest::wait_for_marker`] returns the [`Marker`] with the command
//!   line the kernel received. [`link`] puts faults on a guest's link (random loss,
//!   a rate limit, a blocked port); [`Ironpxe::signal`], [`Lab::restart_ironpxe`] and
//!   [`Ironpxe::metrics`] act on ironpxe during a boot.
//! - [`Lab::timeline`] merges power-on, serial lines, ironpxe events and site DHCP
//!   lines into a [`Timeline`] in seconds since power-on.
//! - [`v6`]: the site server's IPv6 modes ([`SiteV6`]), IPv6-only labs, OVMF guests
//!   steered to PXEv6 or HTTPv6, and IPv6 out of captures.
//! - [`run`] boots a list of guests, several at a time, to a pass or fail verdict
//!   from their serial console, and reports the run as JSON and JUnit XML;
//!   [`GuestFirmware`] names the boot paths it offers.
//!
//! Every process is killed by PID and every namespace deleted when the lab is
//! dropped, on Ctrl-C/SIGTERM, and (for a lab whose process was killed) by the next
//! lab that starts.
//!
//! ```no_run
//! use std::time::Duration;
//! use ironpxe_lab::{GuestConfig, Lab};
//! let lab = Lab::new("example")?;
//! let kernel = ironpxe_lab::kernel()?;
//! let initrd = lab.initrd()?;
//! let args = lab.ironpxe_boot_args(&kernel, &[&initrd], "console=ttyS0 a=b");
//! let _ironpxe = lab.start_ironpxe(&args)?;
//! let guest = lab.start_guest(GuestConfig::bios())?;
//! let marker = guest.wait_for_marker(Duration::from_secs(180))?;
//! println!("{}", lab.timeline(&guest));
//! assert_eq!(marker.cmdline, "console=ttyS0 a=b");
//! # Ok::<(), ironpxe_lab::Error>(())
//! ```

pub mod accel;
pub mod assets;
pub mod bmc;
pub mod client;
pub mod disk;
pub mod error;
pub mod events;
mod fetch;
pub mod firmware;
pub mod guest;
pub mod installer;
pub mod ironpxe;
pub mod lab;
pub mod link;
pub mod netns;
pub mod preflight;
pub mod proc;
mod relay;
pub mod run;
pub mod segments;
pub mod site;
pub mod timeline;
pub mod v6;

use std::path::PathBuf;
use std::time::Duration;

pub use accel::{Accel, AccelChoice};
pub use assets::{cache_dir, initrd, kernel, kernel_in, workspace_dir, MARKER_PREFIX};
pub use bmc::{Bmc, BMC_USER};
pub use client::Client;
pub use disk::{bios_disk, uefi_disk, GuestDisk, DISK_MARKER};
pub use error::{Error, Result, WaitEnd};
pub use events::{parse_event_line, parse_log_json, Event, EventFeed};
pub use firmware::GuestFirmware;
pub use guest::{Firmware, Guest, GuestConfig, Marker, DEFAULT_MARKER_TIMEOUT};
pub use installer::{installer_initrd, net_modules, INSTALLED_MARKER, INSTALLER_MARKER};
pub use ironpxe::{ironpxe_bin, metric_value, Ironpxe, DEFAULT_HTTP_PORT, DEFAULT_STATUS_PORT};
pub use lab::{Lab, LabBuilder, Network, UserPorts};
pub use link::{Block, Class, Counts, Link, LinkCounters, LinkFaults};
pub use netns::cleanup_stale;
/// Signals for [`Ironpxe::signal`].
pub use nix::sys::signal::Signal;
pub use preflight::{preflight, Needs, Report};
pub use proc::{LogLine, Stream};
pub use segments::{save_dhcp_requests, Capture, CapturedUdp, LabProc, Segment};
pub use timeline::{Entry, Source, Timeline};
pub use v6::{
    frames_in_pcap, save_dhcp6_requests, udp6_in_frames, udp6_in_pcap_file, CapturedUdp6, Frame,
    SiteV6,
};

impl Lab {
    /// Builds the lab initrd in the lab's temporary directory.
    pub fn initrd(&self) -> Result<PathBuf> {
        initrd(self.tmp_dir())
    }

    /// Builds the installer initrd ([`installer`]) in the lab's temporary directory.
    pub fn installer_initrd(&self) -> Result<PathBuf> {
        installer_initrd(self.tmp_dir())
    }
}

/// What [`boot_once`] saw.
pub struct BootOutcome {
    /// The guest (still running if it did not power off).
    pub guest: Guest,
    /// The marker, or why it did not come.
    pub marker: Result<Marker>,
    /// The boot timeline (also written to the lab's output directory).
    pub timeline: Timeline,
}

impl BootOutcome {
    /// The marker, or a panic saying that `what` did not boot, why, and where the
    /// lab's logs are. For tests.
    pub fn expect_marker(&self, lab: &Lab, what: &str) -> &Marker {
        match &self.marker {
            Ok(m) => m,
            Err(e) => panic!(
                "{what} did not boot: {e}\n(logs in {})",
                lab.out_dir().display()
            ),
        }
    }
}

/// Starts one guest, waits for its marker and prints and saves the timeline. The
/// caller starts ironpxe (or deliberately does not).
pub fn boot_once(lab: &Lab, config: GuestConfig, timeout: Duration) -> Result<BootOutcome> {
    let guest = lab.start_guest(config)?;
    let marker = guest.wait_for_marker(timeout);
    if marker.is_ok() {
        // The initrd powers off right after the marker; let QEMU finish its output.
        let _ = guest.wait_for_serial("reboot: Power down", Duration::from_secs(5));
    }
    let timeline = lab.write_timeline(&guest);
    println!(
        "--- boot timeline of {} in lab {} ({}) ---\n{timeline}--- logs: {} ---",
        guest.name(),
        lab.name(),
        lab.id(),
        lab.out_dir().display()
    );
    Ok(BootOutcome {
        guest,
        marker,
        timeline,
    })
}
