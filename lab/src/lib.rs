//! The ironpxe QEMU lab: real PXE boots of QEMU guests against the `ironpxe` binary,
//! in private network namespaces, next to a real site DHCP server.
//!
//! # Layout
//!
//! - [`preflight`] checks the machine (root, `/dev/net/tun`, QEMU, dnsmasq,
//!   busybox-static, iPXE and OVMF files) and panics naming the Debian package for
//!   anything missing, so a lab test never passes or skips silently.
//! - [`assets`] provides what guests boot: [`kernel`] (a Debian cloud kernel fetched
//!   once into `.lab-cache/`) and [`initrd`] (busybox and an `/init` that prints
//!   `IRONPXE-MARKER cmdline=[...]` on ttyS0 and powers off), built at test time.
//! - [`Lab`] builds the network: a switch namespace with a bridge, a site namespace
//!   with dnsmasq (addresses only, plus IPv6 router advertisements) and an ironpxe
//!   namespace. Names are `ipxl<5 hex>-...`, unique per lab. [`Lab::start_ironpxe`]
//!   runs the binary there and reads its `ironpxe::event` log lines as [`Event`]s.
//! - [`Lab::start_guest`] starts a BIOS or UEFI QEMU [`Guest`] on a tap device of the
//!   bridge; [`Guest::wait_for_marker`] returns the [`Marker`] with the command line
//!   the kernel received.
//! - [`segments`]: more bridges ([`Lab::add_segment`]) with their own DHCP server,
//!   a second ironpxe NIC, or a dnsmasq DHCP relay routing to the main segment; and
//!   tcpdump captures ([`Lab::capture`]) read back as UDP datagrams.
//! - [`Lab::timeline`] merges power-on, serial lines, ironpxe events and site DHCP
//!   lines into a [`Timeline`] in seconds since power-on.
//!
//! Every process is killed by PID and every namespace deleted when the lab is
//! dropped, on Ctrl-C/SIGTERM, and (for a lab whose process was killed) by the next
//! lab that starts. Logs land in `<workspace>/lab-out/<lab name>/`.
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
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod assets;
pub mod events;
pub mod guest;
pub mod lab;
pub mod preflight;
pub mod proc;
pub mod segments;
pub mod timeline;

use std::path::PathBuf;
use std::time::Duration;

pub use assets::{cache_dir, initrd, kernel, workspace_dir, MARKER_PREFIX};
pub use events::{ironpxe_bin, parse_event_line, parse_log_json, Event, EventFeed};
pub use guest::{Firmware, Guest, GuestConfig, Marker, DEFAULT_MARKER_TIMEOUT};
pub use lab::{cleanup_stale, Client, Ironpxe, Lab, LabBuilder, DEFAULT_HTTP_PORT};
pub use preflight::preflight;
pub use proc::{LogLine, Stream};
pub use segments::{save_dhcp_requests, Capture, CapturedUdp, LabProc, Segment};
pub use timeline::{Entry, Source, Timeline};

impl Lab {
    /// Builds the lab initrd in the lab's temporary directory.
    pub fn initrd(&self) -> anyhow::Result<PathBuf> {
        initrd(self.tmp_dir())
    }
}

/// What [`boot_once`] saw.
pub struct BootOutcome {
    /// The guest (still running if it did not power off).
    pub guest: Guest,
    /// The marker, or why it did not come.
    pub marker: anyhow::Result<Marker>,
    /// The boot timeline (also written to the lab's output directory).
    pub timeline: Timeline,
}

impl BootOutcome {
    /// The marker, or a panic saying that `what` did not boot, why, and where the
    /// lab's logs are.
    pub fn expect_marker(&self, lab: &Lab, what: &str) -> &Marker {
        match &self.marker {
            Ok(m) => m,
            Err(e) => panic!(
                "{what} did not boot: {e:#}\n(logs in {})",
                lab.out_dir().display()
            ),
        }
    }
}

/// Starts one guest, waits for its marker and prints and saves the timeline. The
/// caller starts ironpxe (or deliberately does not).
pub fn boot_once(lab: &Lab, config: GuestConfig, timeout: Duration) -> anyhow::Result<BootOutcome> {
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
