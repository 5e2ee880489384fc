//! ironpxe benchmark programs. They build a lab (private network namespaces, see
//! `ironpxe-lab`), start the servers under test inside it and drive them with real
//! clients. Run as root, after `cargo build --release -p ironpxe`:
//!
//! - `ironpxe-bench tftp`: the same 16 MiB file fetched with atftp (blksize 1468) from
//!   ironpxe, dnsmasq and tftp-hpa's in.tftpd, lockstep, and from ironpxe with
//!   windowsize 16, over a client link shaped to 1 Gbit/s; rounds side by side, median
//!   ratios.
//! - `ironpxe-bench tftp-loss`: 3 MiB to curl with 10% of the packets arriving at the
//!   client dropped, ironpxe against dnsmasq and in.tftpd.
//! - `ironpxe-bench concurrent`: N simultaneous transfers of ipxe.efi from ironpxe (a
//!   tokio client in a client namespace); failures, timings, peak RSS and CPU.
//! - `ironpxe-bench http`: 16 concurrent downloads of a 256 MiB initrd from ironpxe
//!   (the URL of its own script) and from nginx with `sendfile on`, in alternating
//!   rounds; wall time, server CPU per GB and ironpxe's peak RSS.
//! - `ironpxe-bench storm`: N simulated BIOS PXE clients running the whole boot flow
//!   at once (ProxyDHCP, TFTP of undionly.kpxe, the iPXE script, kernel and initrd
//!   over HTTP, the booting callback); failures by phase, per-phase latencies, peak
//!   RSS and CPU per booted client.
//! - `ironpxe-bench boot`: QEMU guests (SeaBIOS with the iPXE ROM, OVMF native PXE)
//!   from power-on to the kernel's marker, booted by ironpxe and by dnsmasq (proxy
//!   and TFTP) plus nginx, alternating, in fresh labs.
//! - `ironpxe-bench dhcp`: ProxyDHCP answering of ironpxe against dnsmasq in proxy
//!   mode, driven by perfdhcp (PXE DISCOVERs only) at a sweep of rates; answered
//!   share, delays and server CPU per answer.
//!
//! Results are printed as Markdown; BENCHMARKS.md records them. Benchmarks are never
//! run by CI and assert nothing about timing.

use anyhow::Result;
use clap::{Parser, Subcommand};
use ironpxe_bench::{boot, client, concurrent, dhcp, http, loss, speed, storm};

#[derive(Parser)]
#[command(
    name = "ironpxe-bench",
    about = "ironpxe benchmarks (root; builds a private lab)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// TFTP throughput: ironpxe against dnsmasq and tftp-hpa, and windowsize 16 against lockstep.
    Tftp(speed::Args),
    /// TFTP under 10% random loss at the client: ironpxe against dnsmasq and tftp-hpa.
    TftpLoss(loss::Args),
    /// Many simultaneous transfers of one iPXE binary from ironpxe.
    Concurrent(concurrent::Args),
    /// Concurrent downloads of a large initrd: ironpxe against nginx with sendfile.
    Http(http::Args),
    /// Many simulated PXE clients booting at once: DHCP, TFTP, script, kernel and initrd.
    Storm(storm::Args),
    /// ProxyDHCP under perfdhcp at a sweep of rates: ironpxe against dnsmasq in proxy mode.
    Dhcp(dhcp::Args),
    /// QEMU guests, power-on to kernel marker: ironpxe against dnsmasq (proxy + TFTP) and nginx.
    Boot(boot::Args),
    /// (internal) The storm's clients, run inside the lab's client namespace.
    #[command(hide = true)]
    StormClients(storm::ClientArgs),
    /// (internal) The many-transfer client, run inside the lab's client namespace.
    #[command(hide = true)]
    ManyClients(client::Args),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Tftp(a) => speed::run(a),
        Cmd::TftpLoss(a) => loss::run(a),
        Cmd::Concurrent(a) => concurrent::run(a),
        Cmd::Http(a) => http::run(a),
        Cmd::Storm(a) => storm::run(a),
        Cmd::Dhcp(a) => dhcp::run(a),
        Cmd::Boot(a) => boot::run(a),
        Cmd::StormClients(a) => storm::run_clients(a),
        Cmd::ManyClients(a) => client::run(a),
    }
}
