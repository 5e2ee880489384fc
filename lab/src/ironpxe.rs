//! The ironpxe process of a lab: its command line, start-up, and its boot events.
//!
//! ironpxe runs in the lab's ironpxe namespace (or, with user networking, on
//! loopback ports of the host) and logs to `ironpxe.log`. The lab reads its boot
//! events from its status server ([`EventFeed`]).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::events::{Event, EventFeed};
use crate::lab::{Lab, Network};
use crate::netns::exec_in;
use crate::proc::{LineMode, Proc};

/// The HTTP port the lab's ironpxe listens on in namespaces.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The status port [`Lab::ironpxe_server_args`] gives ironpxe in namespaces.
pub const DEFAULT_STATUS_PORT: u16 = 8081;

/// A running ironpxe started by [`Lab::start_ironpxe`].
pub struct Ironpxe {
    proc: Arc<Proc>,
    feed: Arc<EventFeed>,
}

impl Ironpxe {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Its log lines so far.
    pub fn lines(&self) -> Vec<crate::LogLine> {
        self.proc.lines()
    }

    /// Its boot events so far, from its status feed (`GET /api/v1/log`).
    pub fn events(&self) -> Vec<Event> {
        self.feed.events()
    }

    /// Waits for an event that `pred` accepts, polling the status feed.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.feed.events().into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if !self.proc.is_running() {
                return Err(Error::Startup {
                    process: "ironpxe".into(),
                    why: "exited".into(),
                    tail: self.proc.tail(20),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "no matching ironpxe event".into(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (SIGKILL by PID).
    pub fn stop(&self) {
        self.proc.kill();
    }
}

impl Lab {
    /// The arguments that make any serving mode of ironpxe (`boot`, `serve`, `api`)
    /// serve this lab's guests, with its status server on a port of its own:
    ///
    /// - namespaces: `-l 10.77.N.2 -p 8080 --status-port 8081 --interface <pxe ifname>`;
    /// - user networking: `-l 127.0.0.1 -p H --status-port S --interface lo` and the
    ///   DHCP, PXE and TFTP ports, all free loopback ports.
    ///
    /// Given on the command line, they win over a configuration file's `[server]`.
    pub fn ironpxe_server_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |k: &str, v: String| {
            args.push(k.into());
            args.push(v.into());
        };
        match self.user_ports() {
            Some(p) => {
                push("-l", "127.0.0.1".into());
                push("-p", p.http.to_string());
                push("--status-port", p.status.to_string());
                push("--interface", "lo".into());
                push("--dhcp-port", p.dhcp.to_string());
                push("--pxe-port", p.pxe.to_string());
                push("--tftp-port", p.tftp.to_string());
            }
            None => {
                if self.has_ipv4() {
                    push("-l", self.pxe_addr().to_string());
                }
                push("-p", DEFAULT_HTTP_PORT.to_string());
                push("--status-port", DEFAULT_STATUS_PORT.to_string());
                push("--interface", self.pxe_ifname());
            }
        }
        args
    }

    /// The arguments of `ironpxe boot` for this lab: `boot KERNEL INITRD... --cmdline
    /// CMDLINE -p 8080 --interface <pxe ifname>` (with user networking, the loopback
    /// arguments of [`Lab::ironpxe_server_args`] instead).
    pub fn ironpxe_boot_args(
        &self,
        kernel: &Path,
        initrds: &[&Path],
        cmdline: &str,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["boot".into(), kernel.into()];
        args.extend(initrds.iter().map(|p| OsString::from(p.as_os_str())));
        args.push("--cmdline".into());
        args.push(cmdline.into());
        match self.network() {
            Network::User => args.extend(self.ironpxe_server_args()),
            Network::Namespaces => {
                args.push("-p".into());
                args.push(DEFAULT_HTTP_PORT.to_string().into());
                args.push("--interface".into());
                args.push(self.pxe_ifname().into());
            }
        }
        args
    }

    /// Starts the ironpxe binary ([`crate::ironpxe_bin`], or the one given to the
    /// builder) with `args` inside the ironpxe namespace (with user networking: on
    /// the host), logging to `ironpxe.log`. Waits (up to 15 s) until it listens on
    /// UDP 67 or its HTTP port, and fails if it exits first.
    pub fn start_ironpxe<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Ironpxe> {
        match self.network() {
            Network::Namespaces => self.start_ironpxe_in(&self.pxe_ns(), args),
            Network::User => self.start_ironpxe_at(None, args),
        }
    }

    /// Like [`Lab::start_ironpxe`], in namespace `ns` (for example the site
    /// namespace, next to its DHCP server). Outside the ironpxe namespace UDP 67 may
    /// belong to another server, so only the HTTP port counts as "listening" there.
    pub fn start_ironpxe_in<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Result<Ironpxe> {
        self.require_namespaces("ironpxe in a namespace")?;
        self.start_ironpxe_at(Some(ns), args)
    }

    fn start_ironpxe_at<S: AsRef<OsStr>>(&self, ns: Option<&str>, args: &[S]) -> Result<Ironpxe> {
        let bin = match self.ironpxe_bin_override() {
            Some(b) => b.to_path_buf(),
            None => ironpxe_bin()?,
        };
        let udp67_counts = ns == Some(self.pxe_ns().as_str());
        let mut cmd = match ns {
            Some(ns) => exec_in(ns, &bin),
            None => Command::new(&bin),
        };
        cmd.args(args).env("NO_COLOR", "1");
        let log = self.out_dir().join("ironpxe.log");
        let proc = self.spawn_proc("ironpxe", cmd, &log, LineMode::Plain, None)?;
        let feed = Arc::new(EventFeed::new(ns, &status_base_of(args)));
        *self.inner.ironpxe.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((proc.clone(), feed.clone()));

        let port = http_port_of(args);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if !proc.is_running() {
                // Give the readers a moment to collect its last words.
                std::thread::sleep(Duration::from_millis(200));
                return Err(Error::Startup {
                    process: format!("ironpxe ({})", bin.display()),
                    why: "exited during start-up".into(),
                    tail: proc.tail(30),
                });
            }
            if self.listening(ns, port, udp67_counts) {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "ironpxe lab: ironpxe is running but not listening on UDP 67 or TCP {port} \
                     after 15 s; going on"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Ironpxe { proc, feed })
    }

    /// Whether something in `ns` (or the host) listens on TCP `http_port` (or UDP
    /// 67, if `udp67`).
    fn listening(&self, ns: Option<&str>, http_port: u16, udp67: bool) -> bool {
        const TABLES: [&str; 4] = [
            "/proc/net/udp",
            "/proc/net/udp6",
            "/proc/net/tcp",
            "/proc/net/tcp6",
        ];
        let text = match ns {
            Some(ns) => match self.run_in(ns, "cat", &TABLES) {
                Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
                Err(_) => return false,
            },
            // /proc/net of this process is the host namespace's.
            None => TABLES
                .iter()
                .filter_map(|t| std::fs::read_to_string(t).ok())
                .collect(),
        };
        let tcp = format!(":{http_port:04X} ");
        text.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && ((udp67 && format!("{} ", cols[1]).ends_with(":0043 ") && cols[3] == "07")
                    || (format!("{} ", cols[1]).ends_with(&tcp) && cols[3] == "0A"))
        })
    }

    /// The boot events of the ironpxe started last, from its status feed (empty if
    /// ironpxe was not started).
    pub fn ironpxe_events(&self) -> Vec<Event> {
        let feed = self
            .inner
            .ironpxe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, f)| f.clone());
        feed.map(|f| f.events()).unwrap_or_default()
    }

    pub(crate) fn ironpxe_proc(&self) -> Option<Arc<Proc>> {
        self.inner
            .ironpxe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(p, _)| p.clone())
    }
}

/// `http://ADDR:PORT` of the status server ironpxe starts with `args`: its own
/// `--status-port`, or the boot HTTP port; on `-l ADDR`, or loopback.
pub(crate) fn status_base_of<S: AsRef<OsStr>>(args: &[S]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let value = |long: &str, short: Option<&str>| {
        args.iter().enumerate().find_map(|(i, a)| {
            if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                return Some(v.to_string());
            }
            (a == long || Some(a.as_str()) == short)
                .then(|| args.get(i + 1).cloned())
                .flatten()
        })
    };
    let host = value("--listen-addr", Some("-l"))
        .filter(|a| a != "0.0.0.0")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = value("--status-port", None)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| http_port_of(&args));
    format!("http://{host}:{port}")
}

pub(crate) fn http_port_of<S: AsRef<OsStr>>(args: &[S]) -> u16 {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--port=") {
            return v.parse().unwrap_or(80);
        }
        if a == "-p" || a == "--port" {
            return args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(80);
        }
    }
    80
}

/// Finds the ironpxe binary: `$IRONPXE_BIN`, else `ironpxe` in the cargo target
/// profile directory of the running executable (same profile first).
pub fn ironpxe_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("IRONPXE_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::Invalid(format!(
            "ironpxe binary not found at {} (from IRONPXE_BIN); build it with `cargo build -p ironpxe`",
            p.display()
        )));
    }
    let exe =
        std::env::current_exe().map_err(crate::error::io_err("find", "the running executable"))?;
    let candidates = bin_candidates(&exe, "ironpxe");
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let shown = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::Invalid(format!(
        "ironpxe binary not found at {shown}; build it with `cargo build -p ironpxe`"
    )))
}

/// `target/<profile>/deps/x` or `target/<profile>/x` → `target/<profile>/<name>`,
/// then the other profiles of the same target directory.
pub(crate) fn bin_candidates(exe: &Path, name: &str) -> Vec<PathBuf> {
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
    }
    let mut out = Vec::new();
    if let Some(profile_dir) = dir {
        out.push(profile_dir.join(name));
        if let Some(target) = profile_dir.parent() {
            for profile in ["debug", "release"] {
                let p = target.join(profile).join(name);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_base_from_args() {
        assert_eq!(
            status_base_of(&["boot", "k", "-p", "8080"]),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            status_base_of(&["api", "u", "--status-port", "9090", "-l", "10.0.0.2"]),
            "http://10.0.0.2:9090"
        );
        assert_eq!(
            status_base_of(&["boot", "--status-port=81"]),
            "http://127.0.0.1:81"
        );
    }

    #[test]
    fn http_port_from_args() {
        assert_eq!(http_port_of(&["boot", "k", "-p", "8080"]), 8080);
        assert_eq!(http_port_of(&["boot", "--port=81"]), 81);
        assert_eq!(http_port_of(&["boot"]), 80);
    }

    #[test]
    fn binary_candidates_follow_profile() {
        let c = bin_candidates(Path::new("/t/debug/deps/lab-123"), "ironpxe");
        assert_eq!(c[0], Path::new("/t/debug/ironpxe"));
        assert!(c.contains(&PathBuf::from("/t/release/ironpxe")));
        let c = bin_candidates(Path::new("/t/release/ironpxe-lab"), "ironpxe");
        assert_eq!(c[0], Path::new("/t/release/ironpxe"));
    }
}
