//! The `ironpxe` command: parses the pixiecore-compatible command line, checks it,
//! and runs the ProxyDHCP, TFTP and HTTP servers until stopped.
//!
//! Installed (or symlinked) as `pixiecore`, it presents itself as pixiecore, so
//! existing scripts, units and `services.pixiecore` keep working unchanged.

mod api;
mod cli;
mod config_mode;
mod install;
mod ipxe_files;
mod lab_cmd;
mod loader_files;
mod machines_cmd;
mod own_thread;
mod privileges;
mod run;
mod server_config;
mod v6;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// The name under which ironpxe behaves as a pixiecore drop-in.
const PIXIECORE: &str = "pixiecore";

fn invoked_as_pixiecore() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == PIXIECORE)
}

fn main() -> ExitCode {
    let mut cmd = cli::Cli::command();
    if invoked_as_pixiecore() {
        cmd = cmd
            .name(PIXIECORE)
            .bin_name(PIXIECORE)
            .version(concat!(
                env!("CARGO_PKG_VERSION"),
                " (ironpxe, pixiecore-compatible)"
            ))
            .about("pixiecore-compatible network boot server (provided by ironpxe)");
    }
    let args = match cli::Cli::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let cli::Command::Lab(lab) = args.command {
        return lab_cmd::main(lab, args.log.debug);
    }
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
