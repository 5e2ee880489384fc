//! The `ironpxe` command: parses the pixiecore-compatible command line, checks it,
//! and runs the ProxyDHCP, TFTP and HTTP servers until stopped.

mod cli;
mod ipxe_files;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    run::init_logging(&args.log);
    match run::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what is wrong; no backtrace for a user's mistake.
            eprintln!("ironpxe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
