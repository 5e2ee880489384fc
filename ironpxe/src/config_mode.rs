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
use ironpxe_core::config::{
    Checks, ConfigError, IpxePaths, LoaderPaths, MachineBoot, ServerSettings,
};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::template::resolve_cmdline;
use ironpxe_core::{BootSpec, Booter, Config, FileRef, Loader, LoaderBinary, SwapBooter};
use tracing::{info, warn};

use crate::cli::{CheckArgs, ServeArgs};
use crate::install::InstallWiring;
use crate::server_config::ServerConfig;

/// How often the watcher looks at the file.
const POLL: Duration = Duration::from_secs(1);

/// The checks `check` and `serve` run: files exist and are readable, each boot
/// script (and, for GRUB and shim machines, each GRUB configuration) can be
/// rendered, and each loader in use has its binaries.
pub(crate) struct FsChecks {
    /// Check files (off for `check --no-file-checks`).
    pub files: bool,
    /// shim and GRUB paths given as flags, which win over the file's `[loaders]`.
    pub loader_flags: LoaderPaths,
    /// The binaries found, looked for once per load.
    found: std::cell::OnceCell<Result<crate::loader_files::LoaderFileSet, String>>,
}

impl FsChecks {
    pub(crate) fn new(files: bool, loader_flags: LoaderPaths) -> Self {
        FsChecks {
            files,
            loader_flags,
            found: std::cell::OnceCell::new(),
        }
    }
}

impl Checks for FsChecks {
    fn file(&self, path: &Path) -> Result<(), String> {
        if !self.files {
            return Ok(());
        }
        readable(path)
    }

    fn spec(&self, spec: &BootSpec) -> Result<(), String> {
        // Each loader carries what it can: GRUB takes `${x}`, iPXE takes quotes. (A
        // BIOS client of a GRUB or shim machine falls back to iPXE; if its command
        // line cannot pass iPXE, that client is refused with the reason.)
        if spec.loader.uses_grub() {
            ironpxe_grub::check_spec(spec).map_err(|e| e.to_string())
        } else {
            ironpxe_ipxe::check_spec(spec).map_err(|e| e.to_string())
        }
    }

    fn loader(&self, loader: Loader, paths: &LoaderPaths) -> Result<(), String> {
        if !self.files {
            return Ok(());
        }
        let found = self.found.get_or_init(|| {
            let merged: LoaderPaths = LoaderBinary::ALL
                .into_iter()
                .filter_map(|b| Some((b, self.loader_flags.get(b).or(paths.get(b))?.clone())))
                .collect();
            crate::loader_files::LoaderFileSet::resolve(&merged, Path::new("/"))
                .map_err(|e| format!("{e:#}"))
        });
        match found {
            Ok(set) => set.unusable(loader).map_or(Ok(()), Err),
            Err(e) => Err(e.clone()),
        }
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

fn load(
    path: &Path,
    file_checks: bool,
    loader_flags: &LoaderPaths,
) -> Result<(Config, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError::Read(format!(
            "{}: cannot read: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    // Relative paths in the file are relative to its directory, wherever we run from.
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let checks = FsChecks::new(file_checks, loader_flags.clone());
    let cfg = parse_with_display(&text, path, &abs, &checks).map_err(LoadError::Problems)?;
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
    match load(&args.config, !args.no_file_checks, &LoaderPaths::default()) {
        Ok((cfg, _)) => {
            println!("{}: ok: {}", args.config.display(), summary(&cfg));
            for line in loader_notes(&cfg, !args.no_file_checks) {
                println!("{}: {line}", args.config.display());
            }
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

/// What `check` says about the shim and GRUB path when the file uses it: the
/// binaries found, what the site's DHCP server must do, and what UEFI HTTP Boot
/// clients cannot get.
fn loader_notes(cfg: &Config, file_checks: bool) -> Vec<String> {
    if cfg.loaders_used.is_empty() {
        return Vec::new();
    }
    let used: Vec<&str> = cfg.loaders_used.iter().map(|l| l.name()).collect();
    let mut out = Vec::new();
    if file_checks {
        match crate::loader_files::LoaderFileSet::resolve(&cfg.loaders, Path::new("/")) {
            Ok(set) => {
                out.extend(set.report.iter().map(|l| format!("loader binary {l}")));
                for (bin, _) in &set.missing {
                    out.push(format!(
                        "note: no {} binary ({}): {} clients of loader {} get no answer \
                         (install {} or set [loaders] {})",
                        bin.name(),
                        bin.spec().served_as,
                        bin.spec().cpu,
                        used.join("/"),
                        bin.spec().package,
                        bin.spec().config_key
                    ));
                }
                out.extend(
                    set.http_boot_notes()
                        .into_iter()
                        .map(|n| format!("note: {n}")),
                );
            }
            Err(e) => out.push(format!("note: {e:#}")),
        }
    }
    out.push(format!(
        "note: loader {} needs the site's DHCP server to name this server as next-server \
         (siaddr): Debian's signed GRUB takes its TFTP server from the site's DHCPACK, \
         not from ProxyDHCP (dnsmasq: --dhcp-boot=,,<this server's address>; ISC dhcpd: \
         next-server <address>;)",
        used.join("/")
    ));
    out
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
    let loader_flags = args.server.loader_paths();
    let (cfg, _) = load(&args.config, true, &loader_flags).map_err(|e| match e {
        LoadError::Read(m) => anyhow::anyhow!("{m}"),
        LoadError::Problems(e) => anyhow::anyhow!(
            "{} has {} problem(s); nothing was started:\n{e}",
            args.config.display(),
            e.problems.len()
        ),
    })?;
    let mut server = ServerConfig::merge(
        &args.server,
        &args.config,
        &cfg.server,
        &cfg.ipxe,
        &cfg.loaders,
    );
    server.loaders_used = cfg.loaders_used.clone();
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
        loaders: cfg.loaders.clone(),
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
        loader_flags,
    )?;
    Ok((server, swap, wiring))
}

/// What a reload cannot change while running: restart-only settings.
#[derive(PartialEq)]
struct Applied {
    server: ServerSettings,
    ipxe: IpxePaths,
    loaders: LoaderPaths,
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
    loader_flags: LoaderPaths,
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
                    match load(&path, true, &loader_flags) {
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
                                loaders: cfg.loaders.clone(),
                                dhcp: cfg.dhcp.clone(),
                                admin_token_file: cfg.admin_token_file.clone(),
                            };
                            if now != applied {
                                warn!(
                                    "{}: changes to [server], [ipxe], [loaders] and [dhcp] take effect after a restart",
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
        let Err(LoadError::Problems(e)) = load(&file, true, &LoaderPaths::default()) else {
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
        let Err(LoadError::Problems(e)) = load(&file, false, &LoaderPaths::default()) else {
            panic!("loaded")
        };
        assert_eq!(e.problems.len(), 1);
    }
}
