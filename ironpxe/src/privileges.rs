//! `--user NAME` / `[server] user`: started as root, ironpxe opens every socket it
//! needs a privilege for (ProxyDHCP on 67 and 4011 or its packet sockets, TFTP on
//! 69, HTTP on 80), then becomes NAME for good.
//!
//! The switch sets the supplementary groups to NAME's own, then the real, effective
//! and saved group and user ids to NAME's. Leaving uid 0 this way clears every
//! capability (permitted, effective and ambient; no `SECBIT_KEEP_CAPS`), and glibc
//! applies the change to every thread of the process, including the ProxyDHCP and
//! configuration threads that already run. What ironpxe does after that (TFTP
//! transfer sockets, HTTP downloads, reloading the configuration, writing the state
//! directory) needs no privilege, only files NAME may read or write; those are
//! checked once as NAME right after the switch, so a wrong permission is one line at
//! start-up, not a failure at the first client.
//!
//! Under systemd use `User=` or `DynamicUser=` and capabilities instead (see
//! `contrib/ironpxe.service`); outside systemd, running as root without `--user`
//! gets a warning.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid, User};
use tracing::{info, warn};

/// The user to become, looked up before anything is bound.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    name: String,
    uid: Uid,
    gid: Gid,
}

impl Target {
    /// The user's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Whether systemd started this process as a service (it sets `INVOCATION_ID`).
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty())
}

/// Decides what to do about privileges before binding: the user to switch to
/// (`None`: stay as we are). `origin` names where `user` came from, for messages
/// (`--user`, or `FILE: server.user`). A user that does not exist is an error;
/// running as root with no user (outside systemd) is a warning, and naming root
/// itself keeps root without one.
pub(crate) fn plan(user: Option<&str>, origin: &str) -> Result<Option<Target>> {
    let euid = Uid::effective();
    let Some(name) = user else {
        if euid.is_root() && !under_systemd() {
            warn!(
                "running as root: pass --user NAME (or set [server] user) to drop root \
                 once the ports are bound"
            );
        }
        return Ok(None);
    };
    let found =
        User::from_name(name).with_context(|| format!("{origin}: cannot look up user {name:?}"))?;
    let Some(u) = found else {
        bail!("{origin}: no such user {name:?}");
    };
    if euid.is_root() {
        if u.uid.is_root() {
            // Asked for in so many words (a test lab in a namespace of its own).
            info!("{origin}: user {name:?} is root: staying root, as asked");
            return Ok(None);
        }
        return Ok(Some(Target {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
        }));
    }
    if euid == u.uid {
        // Already that user (started by a service manager or setpriv as NAME).
        return Ok(None);
    }
    bail!(
        "{origin}: ironpxe runs as uid {euid}, not as root, and cannot become user {name:?}; \
         start it as root, or as {name:?}"
    )
}

/// Becomes `t` for good: its groups, then its group id, then its user id. Fails if
/// root could be regained afterwards.
pub(crate) fn switch_to(t: &Target) -> Result<()> {
    let cname = CString::new(t.name.as_str()).context("user name with a NUL byte")?;
    let why = |what: &str| format!("--user {}: cannot {what}", t.name);
    nix::unistd::initgroups(&cname, t.gid).with_context(|| why("set its groups"))?;
    nix::unistd::setresgid(t.gid, t.gid, t.gid).with_context(|| why("set its group id"))?;
    nix::unistd::setresuid(t.uid, t.uid, t.uid).with_context(|| why("set its user id"))?;
    let (r, e, s) = (
        Uid::current(),
        Uid::effective(),
        nix::unistd::getresuid()?.saved,
    );
    if r != t.uid || e != t.uid || s != t.uid || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!(
            "--user {}: the switch did not hold (root could be regained)",
            t.name
        );
    }
    info!(
        user = %t.name,
        uid = %t.uid,
        gid = %t.gid,
        "dropped root: running as this user from here on, with no capabilities"
    );
    Ok(())
}

/// Checks, as the user ironpxe now runs as, that it can read each of `paths` (a file
/// it serves, the configuration it reloads, a directory it serves files from).
/// Returns the first one it cannot, as one line naming the path and the user.
pub(crate) fn check_readable(paths: &[PathBuf], user: &str) -> Result<()> {
    for p in paths {
        readable(p).with_context(|| {
            format!(
                "{}: not readable by user {user}, which ironpxe runs as (--user); \
                 fix the permissions or choose another user",
                p.display()
            )
        })?;
    }
    Ok(())
}

fn readable(p: &Path) -> std::io::Result<()> {
    if std::fs::metadata(p)?.is_dir() {
        std::fs::read_dir(p).map(drop)
    } else {
        std::fs::File::open(p).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_is_one_line() {
        let e = plan(Some("ironpxe-no-such-user"), "--user").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "--user: no such user \"ironpxe-no-such-user\""
        );
    }

    #[test]
    fn the_current_user_needs_no_switch() {
        // As root: root names itself, nothing to drop; otherwise: already that user.
        let me = User::from_uid(Uid::effective()).unwrap().unwrap();
        assert!(plan(Some(&me.name), "--user").unwrap().is_none());
    }

    #[test]
    fn unreadable_paths_are_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("vmlinuz");
        let e = check_readable(&[d.path().to_path_buf(), missing.clone()], "nobody").unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.starts_with(&format!(
                "{}: not readable by user nobody",
                missing.display()
            )),
            "{text}"
        );
    }
}
