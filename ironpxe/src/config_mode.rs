//! `ironpxe serve --config FILE` and `ironpxe check --config FILE`: loading and
//! checking the configuration file, and reloading it while serving.
//!
//! Reload: a watcher thread re-reads the file on SIGHUP and when its modification
//! time, size or inode changes (polled every second). A file with problems is
//! refused (event `config.rejected`, then one warning per problem) and the running
//! configuration stays. A good one replaces the booter atomically (event
//! `config.reloaded`); see [`SwapBooter`] for why transfers in progress and scripts
//! fetched just before are not disturbed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use ironpxe_core::config::{Checks, ConfigError, IpxePaths, MachineBoot, ServerSettings};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::template::resolve_cmdline;
use ironpxe_core::{BootSpec, Booter, Config, FileRef, SwapBooter};
use tracing::{info, warn};

use crate::cli::{CheckArgs, ServeArgs};
use crate::install::InstallWiring;
use crate::server_config::ServerConfig;

/// How often the watcher looks at the file.
const POLL: Duration = Duration::from_secs(1);

/// The checks `check` and `serve` run: files exist and are readable, and each boot
/// script can be rendered.
pub(crate) struct FsChecks {
    /// Check files (off for `check --no-file-checks`).
    pub files: bool,
}

impl Checks for FsChecks {
    fn file(&self, path: &Path) -> Result<(), String> {
        if !self.files {
            return Ok(());
        }
        readable(path)
    }

    fn spec(&self, spec: &BootSpec) -> Result<(), String> {
        ironpxe_ipxe::check_spec(spec).map_err(|e| e.to_string())
    }
}

/// `Ok` if `path` is a regular file we can open, else a short reason.
pub(crate) fn readable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| io_reason(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path).map_err(|e| io_reason(&e))?;
    Ok(())
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Why a configuration could not be loaded.
enum LoadError {
    /// The file itself could not be read.
    Read(String),
    /// Its contents have problems.
    Problems(ConfigError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read(m) => f.write_str(m),
            LoadError::Problems(e) => e.fmt(f),
        }
    }
}

fn load(path: &Path, file_checks: bool) -> Result<(Config, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError::Read(format!(
            "{}: cannot read: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    // Relative paths in the file are relative to its directory, wherever we run from.
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let cfg = parse_with_display(&text, path, &abs, &FsChecks { files: file_checks })
        .map_err(LoadError::Problems)?;
    Ok((cfg, text))
}

/// Parses with relative paths resolved against `abs`'s directory, but reports
/// problems under the name the user gave.
fn parse_with_display(
    text: &str,
    shown: &Path,
    abs: &Path,
    checks: &dyn Checks,
) -> Result<Config, ConfigError> {
    Config::parse(text, abs, checks).map_err(|mut e| {
        e.file = shown.to_path_buf();
        e
    })
}

/// `ironpxe check`.
pub(crate) fn check(args: &CheckArgs) -> Result<()> {
    match load(&args.config, !args.no_file_checks) {
        Ok((cfg, _)) => {
            println!("{}: ok: {}", args.config.display(), summary(&cfg));
            Ok(())
        }
        Err(LoadError::Read(m)) => bail!("{m}"),
        Err(LoadError::Problems(e)) => {
            println!("{e}");
            let n = e.problems.len();
            bail!(
                "{n} problem{} in {}",
                if n == 1 { "" } else { "s" },
                args.config.display()
            )
        }
    }
}

fn summary(cfg: &Config) -> String {
    let (mut net, mut local, mut ignore) = (0, 0, 0);
    for (_, m) in cfg.booter.machines() {
        match m.boot {
            MachineBoot::Netboot(_) => net += 1,
            MachineBoot::Local => local += 1,
            MachineBoot::Ignore => ignore += 1,
        }
    }
    let default = match cfg.booter.default_spec() {
        Some((name, _)) => format!("other machines boot profile {name:?}"),
        None => "other machines are not answered".to_string(),
    };
    format!(
        "{} machines ({net} netboot, {local} local, {ignore} ignored), {default}, {} files",
        net + local + ignore,
        cfg.booter.file_count()
    )
}

/// `ironpxe serve`: loads the file, starts watching it for reloads, and returns the
/// runtime configuration (the command line over the file's `[server]` and `[ipxe]`),
/// the booter and the install wiring for [`crate::run::serve`].
pub(crate) fn prepare(args: &ServeArgs) -> Result<(ServerConfig, Arc<dyn Booter>, InstallWiring)> {
    let (cfg, _) = load(&args.config, true).map_err(|e| match e {
        LoadError::Read(m) => anyhow::anyhow!("{m}"),
        LoadError::Problems(e) => anyhow::anyhow!(
            "{} has {} problem(s); nothing was started:\n{e}",
            args.config.display(),
            e.problems.len()
        ),
    })?;
    let mut server = ServerConfig::merge(&args.server, &args.config, &cfg.server, &cfg.ipxe);
    // Reloads read the file again, and downloads its local files.
    server.read_after_start = std::iter::once(args.config.clone())
        .chain(cfg.booter.local_files().map(Path::to_path_buf))
        .collect();
    info!(config = %args.config.display(), "{}", summary(&cfg));
    let wiring = InstallWiring::from_config(
        &cfg,
        &args.config,
        server.state_dir.as_deref(),
        server.interface.as_deref(),
        args.force,
    )?;
    let applied = Applied {
        server: cfg.server.clone(),
        ipxe: cfg.ipxe.clone(),
        dhcp: cfg.dhcp.clone(),
        admin_token_file: cfg.admin_token_file.clone(),
    };
    let directory = wiring.fleet.directory();
    let swap = Arc::new(SwapBooter::new(
        wiring.wrap(Arc::new(cfg.booter), &directory),
    ));
    start_watcher(
        args.config.clone(),
        swap.clone(),
        applied,
        wiring.fleet.clone(),
    )?;
    Ok((server, swap, wiring))
}

/// What a reload cannot change while running: restart-only settings.
#[derive(PartialEq)]
struct Applied {
    server: ServerSettings,
    ipxe: IpxePaths,
    dhcp: ironpxe_core::config::DhcpMode,
    admin_token_file: Option<PathBuf>,
}

/// Identity of the file on disk, to notice edits and replacements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Starts the reload thread. Returns once SIGHUP is handled, so a SIGHUP sent right
/// after start-up cannot kill the process.
fn start_watcher(
    path: PathBuf,
    swap: Arc<SwapBooter>,
    applied: Applied,
    fleet: ironpxe_state::Fleet,
) -> Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("ironpxe-config".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut last = stamp(&path);
                let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
                loop {
                    let why = tokio::select! {
                        _ = hup.recv() => "SIGHUP",
                        () = tokio::time::sleep(POLL) => {
                            let now = stamp(&path);
                            if now == last || now.is_none() {
                                continue;
                            }
                            // Let an editor finish writing.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            "file changed"
                        }
                    };
                    last = stamp(&path);
                    match load(&path, true) {
                        Ok((cfg, text)) => {
                            if why != "SIGHUP" && text == last_text {
                                continue;
                            }
                            let dir = ironpxe_state::Directory::from_config(&cfg.booter);
                            if fleet.installs().is_none() && !dir.once_policy().is_empty() {
                                emit(BootEvent::ConfigRejected {
                                    file: path.display().to_string(),
                                    trigger: why,
                                    problems: 1,
                                    reason: "once = true needs the state directory: restart ironpxe with --state-dir DIR".into(),
                                });
                                continue;
                            }
                            last_text = text;
                            let now = Applied {
                                server: cfg.server.clone(),
                                ipxe: cfg.ipxe.clone(),
                                dhcp: cfg.dhcp.clone(),
                                admin_token_file: cfg.admin_token_file.clone(),
                            };
                            if now != applied {
                                warn!(
                                    "{}: changes to [server], [ipxe] and [dhcp] take effect after a restart",
                                    path.display()
                                );
                            }
                            let sum = summary(&cfg);
                            fleet.set_directory(dir.clone());
                            // The machines of the new file that install once boot
                            // locally once installed.
                            swap.swap(crate::install::wrap_once(
                                &fleet,
                                Arc::new(cfg.booter),
                                &dir,
                            ));
                            emit(BootEvent::ConfigReloaded {
                                file: path.display().to_string(),
                                trigger: why,
                                summary: sum,
                            });
                        }
                        Err(e) => {
                            let (n, first) = match &e {
                                LoadError::Read(m) => (1, m.clone()),
                                LoadError::Problems(p) => (
                                    p.problems.len(),
                                    e.to_string().lines().next().unwrap_or("").to_string(),
                                ),
                            };
                            emit(BootEvent::ConfigRejected {
                                file: path.display().to_string(),
                                trigger: why,
                                problems: n as u64,
                                reason: first,
                            });
                            warn!("new configuration refused; the previous one keeps serving");
                            if n > 1 {
                                for line in e.to_string().lines() {
                                    warn!("{line}");
                                }
                            }
                        }
                    }
                }
            });
        })
        .context("cannot start the configuration watcher")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("cannot watch the configuration for reloads: {e}"),
        Err(_) => bail!("the configuration watcher stopped during start-up"),
    }
}

/// Resolves `{{ URL "x" }}` / `{{ ID "x" }}` in a `boot --cmdline`: `x` is a local
/// path (which must be readable now) or a URL. Returns the files to serve.
pub(crate) fn resolve_boot_cmdline(spec: &mut BootSpec) -> Result<Vec<FileRef>> {
    let (canon, files) = resolve_cmdline(&spec.cmdline, &mut |x: &str| match FileRef::parse(x)
        .map_err(|e| e.to_string())?
    {
        FileRef::Local(p) => {
            let abs = std::fs::canonicalize(&p)
                .map_err(|e| format!("{}: {}", p.display(), io_reason(&e)))?;
            readable(&abs).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(FileRef::Local(abs))
        }
        remote => Ok(remote),
    })
    .context("--cmdline")?;
    spec.cmdline = canon;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_problems_under_the_given_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bzImage"), "k").unwrap();
        let file = d.path().join("c.toml");
        std::fs::write(
            &file,
            "[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"bzImage\"\ninitrd = [\"nope\"]\ncmdline = \"a=${x}\"\n",
        )
        .unwrap();
        let Err(LoadError::Problems(e)) = load(&file, true) else {
            panic!("loaded")
        };
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let f = file.display();
        assert_eq!(
            lines,
            [
                format!(
                    "{f}:4: machines[0].initrd[0]: {}: no such file",
                    d.path().join("nope").display()
                ),
                format!(
                    "{f}:5: machines[0]: cmdline: '}}' at byte 5 cannot be passed through iPXE: \
                     iPXE expands `${{...}}` within one word and has no escape for it; only a \
                     `}}` separated from the `${{` by a space can be passed"
                ),
            ]
        );
        // Without file checks only the text problem is left.
        let Err(LoadError::Problems(e)) = load(&file, false) else {
            panic!("loaded")
        };
        assert_eq!(e.problems.len(), 1);
    }
}
