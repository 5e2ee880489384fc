//! Network namespaces: creating and deleting them, running code inside one, and
//! cleaning up after labs whose process was killed.
//!
//! Every lab namespace is named `ipxl<5 hex>-<role>`. A running lab records its
//! owner (PID and start time) in `/run/ironpxe-lab/<id>`; [`cleanup_stale`] deletes
//! the namespaces of labs whose owner is gone, killing what still runs in them.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::error::{io_err, Error, Result};
use crate::preflight::program;

/// Every lab namespace and interface name starts with this.
pub const NAME_PREFIX: &str = "ipxl";

/// Where running labs record their owner process, so stale labs can be found.
pub(crate) const REGISTRY_DIR: &str = "/run/ironpxe-lab";

/// Runs `ip ARGS...`, failing with its stderr.
pub(crate) fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new(program("ip"))
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            program: "ip".into(),
            hint: Some("apt-get install iproute2".into()),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint: None,
        });
    }
    Ok(())
}

/// `ip netns exec NS PROGRAM`, ready for more arguments.
pub(crate) fn exec_in(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program("ip"));
    cmd.args(["netns", "exec", ns]).arg(prog);
    cmd
}

/// Runs `f` on a thread that has entered network namespace `ns`, and returns what
/// it returns. Sockets created there belong to `ns` for their whole life, whichever
/// thread uses them later.
pub(crate) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path).map_err(io_err("open the namespace", &path))?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> std::io::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .map_err(|source| Error::Spawn {
            program: format!("a thread in namespace {ns}"),
            hint: None,
            source,
        })?;
    match handle.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Io {
            action: "enter the namespace",
            path,
            source,
        }),
        Err(_) => Err(Error::Invalid(format!(
            "a thread in namespace {ns} panicked"
        ))),
    }
}

/// Kills whatever still runs in a lab namespace (by PID) and deletes it.
pub(crate) fn remove_namespace(ns: &str) {
    let ip = program("ip");
    if let Ok(out) = Command::new(&ip).args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
    }
    let _ = Command::new(&ip).args(["netns", "del", ns]).output();
}

/// The names of all network namespaces.
pub fn list_namespaces() -> Vec<String> {
    Command::new(program("ip"))
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Records this process as the owner of lab `id`.
pub(crate) fn register_owner(id: &str) -> Result<()> {
    fs::create_dir_all(REGISTRY_DIR).map_err(io_err("create", REGISTRY_DIR))?;
    let me = std::process::id();
    let start = process_start_time(me).unwrap_or_default();
    let path = Path::new(REGISTRY_DIR).join(id);
    fs::write(&path, format!("{me} {start}\n")).map_err(io_err("write", path))
}

/// Forgets lab `id` (after its namespaces are gone).
pub(crate) fn unregister(id: &str) {
    let _ = fs::remove_file(Path::new(REGISTRY_DIR).join(id));
}

/// Removes the namespaces of labs whose owning process is gone (killed before it
/// could tear down). Returns the namespaces removed.
pub fn cleanup_stale() -> Vec<String> {
    // Namespaces first, registry second: a lab registers before it creates
    // namespaces, so any namespace seen here already has its registry entry.
    let namespaces: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    let mut alive = Vec::new();
    let mut dead = Vec::new();
    if let Ok(dir) = fs::read_dir(REGISTRY_DIR) {
        for e in dir.filter_map(|e| e.ok()) {
            let id = e.file_name().to_string_lossy().into_owned();
            let owner = fs::read_to_string(e.path()).unwrap_or_default();
            let mut f = owner.split_whitespace();
            let pid: Option<u32> = f.next().and_then(|p| p.parse().ok());
            let start: Option<u64> = f.next().and_then(|s| s.parse().ok());
            let running = match pid {
                Some(pid) => process_start_time(pid).is_some_and(|s| Some(s) == start),
                None => false,
            };
            if running {
                alive.push(id);
            } else {
                dead.push(e.path());
            }
        }
    }
    let mut removed = Vec::new();
    for ns in namespaces {
        let id = ns.split('-').next().unwrap_or_default();
        if !alive.iter().any(|a| a == id) {
            remove_namespace(&ns);
            removed.push(ns);
        }
    }
    for path in dead {
        let _ = fs::remove_file(path);
    }
    removed
}

/// Field 22 of /proc/PID/stat: the process start time, which tells a live owner
/// from a recycled PID.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `ipxl` + 5 hex digits not used by any existing namespace, and the random bits.
pub(crate) fn unique_id() -> Result<(String, u32)> {
    let existing = list_namespaces();
    for _ in 0..100 {
        let rnd = random_u32()?;
        let id = format!("{NAME_PREFIX}{:05x}", rnd & 0xf_ffff);
        if !existing.iter().any(|n| n.starts_with(&format!("{id}-"))) {
            return Ok((id, rnd >> 4));
        }
    }
    Err(Error::Invalid("could not find an unused lab id".into()))
}

/// Four random bytes from the kernel.
pub(crate) fn random_u32() -> Result<u32> {
    let mut b = [0u8; 4];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("read", "/dev/urandom"))?;
    Ok(u32::from_le_bytes(b))
}
