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
    let config = StormConfig {
        clients: 50,
        initrd_mb: 8,
        kernel_mb: 4,
        ramp_ms: 0,
        deadline_secs: 50,
        shape: false,
        client_exe: PathBuf::from(env!("CARGO_BIN_EXE_ironpxe-bench")),
    };
    let report = run_storm(&config).unwrap_or_else(|e| panic!("storm could not run: {e:#}"));
    println!("{report}");
    assert_eq!(
        report.failed(),
        0,
        "{} of {} simulated clients did not boot:\n{report}",
        report.failed(),
        config.clients
    );
}
