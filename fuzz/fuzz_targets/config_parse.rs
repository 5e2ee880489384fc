//! The configuration parser and validator (`ironpxe check`) on arbitrary text:
//!
//! - it never panics;
//! - a refusal lists at least one problem, each on a line of the text (1 to the
//!   number of lines), with a key and a message, printed as exactly one
//!   `FILE:LINE: key: message` line per problem;
//! - a configuration it accepts can be served: every machine that netboots, and the
//!   default profile, renders an iPXE script (so no accepted file answers 500).
//!
//! The validator runs with the same spec check as `ironpxe check` and no file
//! checks (the paths are on no disk). Seeds: testdata/config/ (examples/*.toml and
//! files with mistakes).
#![no_main]

use std::path::Path;

use ironpxe_core::config::{Checks, MachineBoot};
use ironpxe_core::{BootSpec, Config};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/fuzz/ironpxe.toml";

/// What `ironpxe check --no-file-checks` verifies besides the text.
struct SpecChecks;

impl Checks for SpecChecks {
    fn spec(&self, spec: &BootSpec) -> Result<(), String> {
        ironpxe_ipxe::check_spec(spec).map_err(|e| e.to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new(FILE), &SpecChecks) {
        Ok(cfg) => {
            for (mac, m) in cfg.booter.machines() {
                if let MachineBoot::Netboot(spec) = &m.boot {
                    if let Err(e) = ironpxe_ipxe::check_spec(spec) {
                        panic!("accepted machine {mac} cannot be served: {e}");
                    }
                }
            }
            if let Some((name, spec)) = cfg.booter.default_spec() {
                if let Err(e) = ironpxe_ipxe::check_spec(spec) {
                    panic!("accepted default profile {name} cannot be served: {e}");
                }
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "a refusal without a problem");
            let lines = text.split('\n').count();
            for p in &e.problems {
                assert!(
                    (1..=lines).contains(&p.line),
                    "line {} of a {lines}-line text: {p:?}",
                    p.line
                );
                assert!(!p.key.is_empty(), "{p:?}");
                assert!(!p.message.trim().is_empty(), "{p:?}");
            }
            let shown = e.to_string();
            let printed: Vec<&str> = shown.split('\n').collect();
            assert_eq!(
                printed.len(),
                e.problems.len(),
                "a problem printed on several lines: {shown:?}"
            );
            for (line, p) in printed.iter().zip(&e.problems) {
                let prefix = format!("{FILE}:{}: {}: ", p.line, p.key);
                assert!(line.starts_with(&prefix), "{line:?}");
            }
        }
    }
});
