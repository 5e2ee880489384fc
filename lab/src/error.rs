//! The lab's error type: what went wrong, with the program, file or guest at fault.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::preflight::Report;

/// A result with the lab's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why waiting for a process's output ended without what was waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The deadline passed.
    Timeout(Duration),
    /// The process closed its output: it exited.
    Exited,
}

impl fmt::Display for WaitEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitEnd::Timeout(t) => write!(f, "did not appear within {}", secs(*t)),
            WaitEnd::Exited => f.write_str("did not appear before QEMU exited"),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

/// Everything the lab can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine lacks something the lab needs; the report names each gap and the
    /// Debian package that fills it.
    #[error("{0}")]
    Preflight(Report),

    /// A program could not be started at all.
    #[error("cannot run {program}: {source}{}", hint_suffix(hint))]
    Spawn {
        /// The program.
        program: String,
        /// What to do about it.
        hint: Option<String>,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A program ran and exited with an error.
    #[error("`{command}` failed ({status}): {stderr}{}", hint_suffix(hint))]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
        /// What to do about it.
        hint: Option<String>,
    },

    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: `read`, `create`, `copy to`, ...
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A process of the lab (dnsmasq, ironpxe, tcpdump) exited or never became ready.
    #[error("{process} {why}:\n{tail}")]
    Startup {
        /// Its name in the lab.
        process: String,
        /// `exited during start-up`, `did not start within 10 s`, ...
        why: String,
        /// Its last log lines.
        tail: String,
    },

    /// A guest's serial console did not show what was waited for.
    #[error("{guest}: {what} {end}; serial log {}; last lines:\n{tail}", serial_log.display())]
    Guest {
        /// The guest's name.
        guest: String,
        /// What was waited for.
        what: String,
        /// Why the wait ended.
        end: WaitEnd,
        /// The guest's serial log.
        serial_log: PathBuf,
        /// Its last serial lines.
        tail: String,
    },

    /// Something other than a guest's console did not happen in time.
    #[error("{what} within {}", secs(*timeout))]
    Timeout {
        /// What did not happen, e.g. `no DHCPACK from the site server to 52:54:...`.
        what: String,
        /// How long the lab waited.
        timeout: Duration,
    },

    /// The test kernel could not be fetched or found.
    #[error("test kernel: {0}")]
    Kernel(String),

    /// The lab's ARM64 files (kernel, busybox, shim, GRUB) could not be fetched or
    /// found.
    #[error("the lab's ARM64 files: {0}")]
    Arm64(String),

    /// A request the lab cannot carry out (a bad segment number, too many guests, a
    /// mode that does not fit the network).
    #[error("{0}")]
    Invalid(String),

    /// The lab was already torn down (after Ctrl-C, or by [`crate::Lab::teardown`]).
    #[error("the lab has been torn down")]
    TornDown,
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_deref()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default()
}

/// `map_err` helper: an [`Error::Io`] for `action` on `path`.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
