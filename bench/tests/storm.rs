//! Root: a storm of 50 simulated BIOS PXE clients against a real ironpxe in a
//! private lab, each running ProxyDHCP, TFTP of undionly.kpxe, the iPXE script, an
//! 8 MiB initrd and a 4 MiB kernel over HTTP and the booting callback. Every one of
//! them must boot.
//!
//! Needs root and the lab's packages (the lab's preflight names what is missing and
//! fails), and the `ironpxe` binary built (`cargo build -p ironpxe`, or set
//! `IRONPXE_BIN`).

use std::path::PathBuf;

use ironpxe_bench::storm::{run_storm, StormConfig};

#[test]
fn root_storm_of_50_bios_clients_all_boot() {
    let mut config = StormConfig::new(50, PathBuf::from(env!("CARGO_BIN_EXE_ironpxe-bench")));
    config.deadline_secs = 50;
    // A DHCP probe every 50 ms while the clients download, measured on both sides.
    config.probe_ms = 50;
    config.capture = true;
    let report = run_storm(&config).unwrap_or_else(|e| panic!("storm could not run: {e:#}"));
    println!("{report}");
    assert_eq!(
        report.failed(),
        0,
        "{} of {} simulated clients did not boot:\n{report}",
        report.failed(),
        config.clients
    );
    let (probes, lost) = report.probes();
    assert!(!probes.is_empty(), "no DHCP probe was answered:\n{report}");
    assert_eq!(lost, 0, "DHCP probes went unanswered:\n{report}");
    let server = report
        .server_side
        .as_ref()
        .expect("a capture was asked for");
    // Each client's firmware DISCOVER and its iPXE DISCOVER were seen answered.
    assert!(
        server.clients_ms.len() >= 2 * config.clients,
        "{} answered client DISCOVERs in the capture:\n{report}",
        server.clients_ms.len()
    );
}
