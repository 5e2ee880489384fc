//! Wiring: turn checked arguments into running servers.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ironpxe_core::{BootSpec, Booter, FileRef, StaticBooter};
use ironpxe_dhcp::{DhcpSocket, ProxyConfig, ServerPort};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::{BootArgs, Cli, Command, LogArgs, LogFormat};
use crate::install::InstallWiring;
use crate::ipxe_files::{IpxeSet, SEARCH_DIRS};
use crate::loader_files::LoaderFileSet;
use crate::own_thread::OwnThread;
use crate::server_config::{ServerConfig, StatusPlace};

/// The boot status store, fed by the log subscriber's status layer.
static STATUS: std::sync::OnceLock<ironpxe_status::Status> = std::sync::OnceLock::new();

/// The boot status store (created by [`init_logging`], or here if logging was not set up).
fn status() -> &'static ironpxe_status::Status {
    STATUS.get_or_init(|| ironpxe_status::Status::new(ironpxe_status::StoreConfig::default()))
}

/// Installs the log subscriber. `RUST_LOG` overrides the level chosen by `--debug`.
///
/// Boot events (target `ironpxe::event`) also go to the status store, whatever the
/// log level.
pub(crate) fn init_logging(args: &LogArgs) {
    use tracing_subscriber::prelude::*;

    let default = if args.debug {
        "debug,hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match (args.log_format, args.log_timestamps) {
        // Log shippers want a time on every record.
        (LogFormat::Json, _) => fmt.json().boxed(),
        (LogFormat::Text, true) => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        (LogFormat::Text, false) => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .without_time()
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .init();
    // Boot events reach the status store as typed values, whatever the log level.
    ironpxe_core::event::set_sink(Arc::new(status().clone()));
}

/// Runs the command: each serving mode yields its runtime configuration and booter,
/// and [`serve`] runs them.
pub(crate) fn run(cli: Cli) -> Result<()> {
    let plain = |s: &ServerConfig| InstallWiring::plain(s.state_dir.as_deref());
    let (server, booter, install) = match cli.command {
        Command::Boot(args) => {
            let (s, b) = boot_mode(&args)?;
            let w = plain(&s)?;
            (s, b, w)
        }
        Command::Serve(args) => crate::config_mode::prepare(&args)?,
        Command::Check(args) => return crate::config_mode::check(&args),
        Command::Api(args) => {
            let root = match &args.api_file_root {
                Some(dir) => Some(
                    ironpxe_core::FileRoot::open(dir)
                        .with_context(|| format!("--api-file-root {}", dir.display()))?,
                ),
                None => None,
            };
            let (server, booter) = crate::api::run(args)?;
            let (server, booter) = match root {
                Some(root) => {
                    info!(root = %root.path().display(), "API answers may name local files under this directory only");
                    let confined: Arc<dyn Booter> =
                        Arc::new(ironpxe_core::ConfinedBooter::new(booter, root));
                    (server, confined)
                }
                None => (server, booter),
            };
            let w = plain(&server)?;
            (server, booter, w)
        }
        Command::Machines(args) => return crate::machines_cmd::machines(&args),
        Command::Reinstall(args) => return crate::machines_cmd::reinstall(&args),
        Command::Lab(_) => bail!("`ironpxe lab` is run by main, not as a server"),
    };
    serve(&server, booter, install)
}

/// `ironpxe boot`: one spec for every machine.
fn boot_mode(args: &BootArgs) -> Result<(ServerConfig, Arc<dyn Booter>)> {
    let mut spec = boot_spec(args)?;
    // `{{ ID "x" }}` / `{{ URL "x" }}` in --cmdline, as in pixiecore's boot mode.
    let extra = crate::config_mode::resolve_boot_cmdline(&mut spec)?;
    // What iPXE cannot carry is refused now, not with a 500 for every script.
    if !spec.loader.uses_grub() {
        check_boot_text(&spec)?;
    }
    for f in spec.files().chain(extra.iter()) {
        info!(file = %f, "serving");
    }
    let mut server = ServerConfig::from_args(&args.server);
    server.read_after_start = spec
        .files()
        .chain(extra.iter())
        .filter_map(|f| match f {
            FileRef::Local(p) => Some(p.clone()),
            FileRef::Remote(_) => None,
        })
        .collect();
    let loader = spec.loader;
    let booter: Arc<dyn Booter> = Arc::new(StaticBooter::with_files(spec, extra));
    if loader.uses_grub() {
        server.loaders_used.push(loader);
    }
    Ok((server, booter))
}

/// Checks that `--cmdline` and `--bootmsg` can be carried through an iPXE script:
/// one line naming the flag and the problem.
fn check_boot_text(spec: &BootSpec) -> Result<()> {
    use ironpxe_ipxe::{Field, ScriptError};
    match ironpxe_ipxe::check_spec(spec) {
        Ok(()) => Ok(()),
        Err(ScriptError::Unrepresentable {
            field,
            ch,
            offset,
            reason,
        }) => {
            let (flag, text) = match field {
                Field::Message => ("--bootmsg", spec.message.as_deref().unwrap_or("")),
                _ => (
                    "--cmdline",
                    &*ironpxe_core::template::display_cmdline(&spec.cmdline),
                ),
            };
            bail!(
                "{flag} {text:?}: {ch:?} at byte {offset} cannot be passed through iPXE: {reason}"
            )
        }
        Err(e) => bail!("--cmdline: {e}"),
    }
}

/// Checks the `boot` arguments: local files must exist and be readable now, not
/// when the first client asks.
fn boot_spec(args: &BootArgs) -> Result<BootSpec> {
    let kernel = file_ref(&args.kernel, "KERNEL")?;
    let initrds = args
        .initrds
        .iter()
        .map(|i| file_ref(i, "INITRD"))
        .collect::<Result<Vec<_>>>()?;
    let spec = BootSpec {
        kernel,
        initrds,
        cmdline: args.cmdline.clone(),
        message: args.bootmsg.clone(),
        loader: args.loader,
    };
    if spec.loader.uses_grub() {
        ironpxe_grub::check_spec(&spec)
            .with_context(|| format!("--loader {}: --cmdline", spec.loader))?;
    }
    Ok(spec)
}

fn file_ref(input: &str, what: &str) -> Result<FileRef> {
    let r = FileRef::parse(input).with_context(|| format!("{what} {input:?}"))?;
    match r {
        FileRef::Local(p) => {
            let abs = std::fs::canonicalize(&p)
                .with_context(|| format!("{what} {}: cannot open", p.display()))?;
            check_readable(&abs).with_context(|| format!("{what} {}", p.display()))?;
            Ok(FileRef::Local(abs))
        }
        remote => Ok(remote),
    }
}

fn check_readable(p: &Path) -> Result<()> {
    let meta = std::fs::metadata(p).context("cannot stat")?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    std::fs::File::open(p).context("cannot open for reading")?;
    Ok(())
}

/// Runs the servers with `booter` until SIGTERM or SIGINT, then shuts down (see
/// [`serve_async`]).
pub(crate) fn serve(
    args: &ServerConfig,
    booter: Arc<dyn Booter>,
    install: InstallWiring,
) -> Result<()> {
    raise_open_file_limit();
    // The status store learns each machine's kernel and initrds from the booter.
    let booter = status().observe_booter(booter);
    // IRONPXE_IPXE_DIR (set by packagers, e.g. the Nix package to pkgs.ipxe) is
    // searched before the distribution directories.
    let packaged = std::env::var_os("IRONPXE_IPXE_DIR").map(std::path::PathBuf::from);
    let dirs: Vec<&Path> = packaged
        .as_deref()
        .into_iter()
        .chain(SEARCH_DIRS.iter().map(Path::new))
        .collect();
    let ipxe = IpxeSet::resolve(&args.ipxe, &dirs)?;
    for line in &ipxe.report {
        info!("iPXE {line}");
    }
    let loaders = LoaderFileSet::resolve(&args.loaders, Path::new("/"))?;
    for line in &loaders.report {
        info!("loader {line}");
    }
    for loader in &args.loaders_used {
        if let Some(why) = loaders.unusable(*loader) {
            bail!("{why}");
        }
    }
    if !args.loaders_used.is_empty() || !loaders.set.is_empty() {
        for note in loaders.http_boot_notes() {
            info!("{note}");
        }
    }
    if !args.loaders_used.is_empty() {
        info!(
            "shim and GRUB clients: the site's DHCP server must name this server as \
             next-server (Debian's signed GRUB takes its TFTP server from the site's \
             DHCPACK, not from ProxyDHCP); ironpxe warns once per machine when it sees \
             an ACK that names another (event dhcp.next_server)"
        );
    }

    if let Some(ifname) = &args.interface {
        nix::net::if_::if_nametoindex(ifname.as_str()).map_err(|e| {
            anyhow::anyhow!(
                "{} {ifname}: no such network interface ({e})",
                args.interface_origin
            )
        })?;
    }

    crate::v6::check(args)?;
    // Before anything is bound: a user that does not exist is refused now.
    let user = crate::privileges::plan(args.user.as_deref(), &args.user_origin)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(serve_async(args, booter, ipxe, user, install, loaders));
    // Transfers past the shutdown timeout are abandoned, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// Binds every socket, then serves until a signal or a server failure.
///
/// Shutdown (SIGTERM or SIGINT): one [`CancellationToken`] tells every server to
/// stop taking new work: DHCP stops answering, the TFTP listener and the HTTP
/// listeners close. Downloads and TFTP transfers in flight get
/// [`ServerConfig::shutdown_timeout`] to finish; then the boot status is saved and
/// this returns `Ok`. A second signal stops waiting.
/// Raises the soft open-file limit to the hard limit. Every HTTP download and TFTP
/// transfer holds a socket and often a file; the usual soft default of 1024 (also
/// systemd's) is far below what a rack rebooting at once needs, while the hard limit
/// (524288 under systemd) is not.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(
                soft,
                hard,
                error = %e,
                "cannot raise the open-file limit; many clients at once may fail"
            ),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Concurrent TFTP transfers: a quarter of the open-file limit (each holds a socket,
/// and a file when it is not in memory), at least 1,024 and at most 16,384. A
/// request past them waits for the client to repeat it.
fn tftp_slots() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    (soft / 4).clamp(1024, 16_384) as usize
}

async fn serve_async(
    args: &ServerConfig,
    booter: Arc<dyn Booter>,
    ipxe: IpxeSet,
    user: Option<crate::privileges::Target>,
    install: InstallWiring,
    loaders: LoaderFileSet,
) -> Result<()> {
    let mut signals = Signals::new()?;
    let listen = args.listen_addr;
    // `-l IP` without --interface: answer DHCP only on the interface holding IP.
    let listen_if = match (&args.interface, listen.is_unspecified()) {
        (None, false) => ironpxe_dhcp::nobind::interface_with_addr(listen),
        _ => None,
    };
    let device = args.interface.as_deref().or(listen_if.as_deref());
    let tftp_root = match &args.tftp_root {
        Some(dir) => Some(
            ironpxe_tftp::TftpRoot::open(dir, ironpxe_tftp::DEFAULT_CACHE_BYTES)
                .with_context(|| format!("--tftp-root {}", dir.display()))?,
        ),
        None => None,
    };

    // `[dhcp] mode = "server"`: ironpxe is the segment's DHCP server. Unless forced,
    // first make sure no other DHCP server answers there.
    let dhcp_server = match &install.dhcp {
        ironpxe_core::config::DhcpMode::Proxy => None,
        ironpxe_core::config::DhcpMode::Server(settings) => {
            let Some(dev) = device.map(str::to_string) else {
                bail!("[dhcp] mode = \"server\" answers only on the data NIC: set --interface or [server] interface");
            };
            if args.dhcp_no_bind {
                bail!("[dhcp] mode = \"server\" is the DHCP server on UDP 67 itself; --dhcp-no-bind does not go with it");
            }
            let db = install
                .db
                .clone()
                .context("[dhcp] mode = \"server\" keeps its leases in the state directory: give --state-dir DIR")?;
            if install.force {
                tracing::warn!(interface = %dev, "--force: not probing for another DHCP server");
            } else {
                crate::install::refuse_other_dhcp_servers(&dev).await?;
            }
            Some(ironpxe_dhcp::server_mode::ServerMode {
                settings: settings.clone(),
                store: Arc::new(db.leases()),
            })
        }
    };

    // Bind everything first, so a port in use is reported before anything runs.
    // ProxyDHCP gets a thread and runtime of its own (its sockets belong to that
    // runtime), so that downloads keeping the main workers busy cannot delay an
    // offer; it is opened there and reports back before anything else binds.
    let open_dhcp = {
        let (device, no_bind) = (device.map(str::to_string), args.dhcp_no_bind);
        let (dhcp_port, pxe_port) = (args.dhcp_port, args.pxe_port);
        move || -> Result<Vec<DhcpSocket>> {
            let device = device.as_deref();
            Ok(vec![
                if no_bind {
                    DhcpSocket::no_bind(ServerPort::Dhcp, dhcp_port, device, listen).with_context(
                        || {
                            format!(
                                "--dhcp-no-bind: cannot open a packet socket for udp {}{}",
                                dhcp_port,
                                if nix::unistd::geteuid().is_root() {
                                    ""
                                } else {
                                    " (needs root or CAP_NET_RAW)"
                                }
                            )
                        },
                    )?
                } else {
                    bind_dhcp(ServerPort::Dhcp, dhcp_port, device, listen)?
                },
                bind_dhcp(ServerPort::Pxe, pxe_port, device, listen)?,
            ])
        }
    };
    let dhcp_thread = dhcp_thread(open_dhcp)?;
    let v6 = crate::v6::bind(args, device)?;
    let tftp_addr = SocketAddrV4::new(listen, args.tftp_port);
    let tftp_socket = tokio::net::UdpSocket::bind(tftp_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind TFTP on udp {tftp_addr}{}",
                port_hint(args.tftp_port)
            )
        })?;
    let http_addr = SocketAddr::V4(SocketAddrV4::new(listen, args.http_port));
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind HTTP on tcp {http_addr}{}",
                port_hint(args.http_port)
            )
        })?;
    let status_listener = match args.status {
        StatusPlace::Own(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "status port: cannot bind tcp {addr}{}",
                    port_hint(addr.port())
                )
            })?;
            Some(l)
        }
        StatusPlace::Off | StatusPlace::BootPort => None,
    };
    // Every privileged socket is open: with --user, become that user now, and check
    // as it what the servers will read from here on.
    let as_user = match &user {
        Some(t) => {
            crate::privileges::switch_to(t)?;
            let mut read: Vec<std::path::PathBuf> = args.read_after_start.clone();
            read.extend(args.tftp_root.iter().cloned());
            crate::privileges::check_readable(&read, t.name())?;
            format!(" (as user {})", t.name())
        }
        None => String::new(),
    };
    status().set_stuck_after(args.stuck_after);
    let state_dir = match &args.state_dir {
        Some(dir) => Some(
            status()
                .open_state_dir(dir)
                .with_context(|| format!("--state-dir {}{as_user}", dir.display()))?,
        ),
        None => None,
    };

    let loader_offers = ironpxe_dhcp::LoaderOffers::default();
    let proxy = ProxyConfig {
        http_port: args.http_port,
        binaries: ipxe.binaries.clone(),
        loaders: loaders.set.clone(),
        loader_offers: loader_offers.clone(),
        force_chainload: args.force_chainload,
        lookup_wait: args.dhcp_lookup_wait,
        ..ProxyConfig::default()
    };
    // The caps follow the open-file limit as raised in `serve`.
    let mut http_limits = ironpxe_http::HttpLimits::default();
    if let Some(n) = args.http_max_connections {
        http_limits.max_connections = n;
    }
    if let Some(n) = args.http_max_connections_per_addr {
        http_limits.max_connections_per_addr = n;
    }
    info!(
        interface = device.unwrap_or("(all)"),
        listen = %listen,
        http = %http_addr,
        http_max_connections = http_limits.max_connections,
        http_max_connections_per_addr = http_limits.max_connections_per_addr,
        tftp = %tftp_addr,
        dhcp = args.dhcp_port,
        pxe = args.pxe_port,
        force_chainload = args.force_chainload,
        dhcp_no_bind = args.dhcp_no_bind,
        "ironpxe ready"
    );

    // The iPXE, shim and GRUB binaries, over TFTP and over HTTP (for UEFI HTTP Boot
    // clients), each under its own name.
    let mut binaries = ipxe.files;
    for (name, bytes) in loaders.files {
        if binaries.contains_key(&name) {
            bail!(
                "an iPXE binary is named {name:?}, which the {name} loader binary needs; rename it"
            );
        }
        binaries.insert(name, bytes);
    }
    let http_binaries = binaries.clone();
    let mut files = ironpxe_tftp::MemoryFiles::new();
    for (name, bytes) in binaries {
        files
            .insert(&name, bytes)
            .with_context(|| format!("binary name {name:?} cannot be served over TFTP"))?;
    }
    // GRUB's files: the dispatcher, each machine's configuration, its kernel and
    // initrds. A `grub/` tree of the operator's own in the TFTP root comes first.
    let grub_files = Arc::new(
        ironpxe_grub::GrubFiles::new(booter.clone(), args.http_port)
            .with_remote(Arc::new(RemoteFiles::new()?)),
    );
    let mut overlay = ironpxe_tftp::Overlay::new();
    overlay.push(Arc::new(files));
    if let Some(root) = tftp_root {
        info!(dir = %root.path().display(), "serving the TFTP root next to the iPXE binaries");
        if root.path().join("grub/grub.cfg").exists() && !args.loaders_used.is_empty() {
            tracing::warn!(
                dir = %root.path().display(),
                "the TFTP root has grub/grub.cfg, which is served instead of ironpxe's; \
                 GRUB clients of shim and GRUB machines read that file"
            );
        }
        overlay.push(Arc::new(root));
    }
    overlay.push(grub_files.clone());
    let files: Arc<dyn ironpxe_tftp::FileSource> = Arc::new(overlay);
    let shutdown = CancellationToken::new();
    let drain = args.shutdown_timeout;
    let mut servers = tokio::task::JoinSet::new();
    let tftp_cfg = ironpxe_tftp::TftpConfig {
        shutdown_drain: drain,
        max_per_address: args.tftp_per_address,
        max_transfers: tftp_slots(),
        ..ironpxe_tftp::TftpConfig::default()
    };
    let (files6, tftp_cfg6) = (files.clone(), tftp_cfg.clone());
    let stop = shutdown.clone().cancelled_owned();
    servers.spawn(async move {
        let r = ironpxe_tftp::serve(tftp_socket, files, tftp_cfg, stop).await;
        ("TFTP", r)
    });
    let state = ironpxe_http::HttpState::new(booter.clone())
        .context("cannot set up the HTTP client for remote files")?
        .with_ipxe_binaries(http_binaries);
    // Installers report success on the boot port, where they reach ironpxe.
    let install_api = ironpxe_status::InstallApi::new(
        install.fleet.clone(),
        status().clone(),
        install.admin_token.clone(),
        install.db.as_ref().map(|d| d.leases()),
    );
    let mut router = ironpxe_http::router(state)
        .merge(ironpxe_grub::http::router(grub_files))
        .merge(install_api.installer_router());
    if let Some(db) = &install.db {
        info!(file = %db.path().display(), "install state and leases kept in the state database");
    }
    // The status page, API and metrics: on their own port, next to the boot files
    // when the operator asks for that, or nowhere.
    match (status_listener, args.status) {
        (Some(l), _) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            info!(status = %addr, "boot status on its own port");
            let stop = shutdown.clone().cancelled_owned();
            let routes = status().router().merge(install_api.router());
            servers.spawn(async move {
                let r = ironpxe_http::serve(l, routes, stop, drain).await;
                ("status", r)
            });
        }
        (None, StatusPlace::BootPort) => {
            tracing::warn!(
                status = %http_addr,
                "boot status on the boot port: every PXE client can read every machine's MAC, \
                 address and files"
            );
            router = router
                .merge(status().router())
                .merge(install_api.admin_router());
        }
        (None, _) => info!(
            "boot status not served over HTTP (--status-port PORT serves it, \
             preferably on a management address)"
        ),
    }
    if let Some(dir) = &state_dir {
        info!(file = %dir.file().display(), "boot status kept in the state directory");
        tokio::spawn(dir.clone().run(std::time::Duration::from_secs(2)));
    }
    if let Some(v6) = v6 {
        let shared = crate::v6::Shared6 {
            files: files6,
            tftp_cfg: tftp_cfg6,
            router: router.clone(),
            booter: booter.clone(),
            binaries: ipxe.binaries.clone(),
            http_port: args.http_port,
            lookup_wait: args.dhcp_lookup_wait,
            drain,
            http_limits: http_limits.clone(),
        };
        v6.spawn(&mut servers, shared, &shutdown);
    }
    let stop = shutdown.clone().cancelled_owned();
    servers.spawn(async move {
        let r = ironpxe_http::serve_with(http_listener, router, stop, drain, http_limits).await;
        ("HTTP", r)
    });
    // The site server's broadcast DHCPACKs to machines handed shim or GRUB.
    match ironpxe_dhcp::site_ack::bind_watch(device) {
        Ok(sock) => {
            let stop = shutdown.clone().cancelled_owned();
            tokio::spawn(ironpxe_dhcp::site_ack::watch(
                sock,
                loader_offers,
                move |ip| ip == listen || ironpxe_dhcp::site_ack::is_local_address(ip),
                stop,
            ));
        }
        Err(e) => info!(
            error = %e,
            "not watching the site's DHCPACKs on udp 255.255.255.255:68; a site server \
             that names another next-server for GRUB machines goes unnoticed"
        ),
    }
    let done = dhcp_thread.serve((
        proxy,
        booter,
        dhcp_server,
        shutdown.clone().cancelled_owned(),
    ));
    servers.spawn(async move {
        let r = done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the ProxyDHCP thread ended")));
        ("DHCP", r)
    });

    // Until a signal, or until a server stops on its own, which is a failure.
    let failed = tokio::select! {
        signal = signals.recv() => Err(signal),
        Some(done) = servers.join_next() => Ok(done),
    };
    shutdown.cancel();
    // Open status pages would otherwise hold the HTTP server for the whole timeout.
    status().end_streams();
    let result = match failed {
        Err(signal) => {
            info!(
                signal,
                timeout = ?drain,
                "shutting down: no new DHCP, TFTP or HTTP work is taken; \
                 transfers in flight may finish"
            );
            Ok(())
        }
        Ok(Ok((name, Ok(())))) => Err(anyhow::anyhow!("{name} server stopped")),
        Ok(Ok((name, Err(e)))) => {
            Err(anyhow::Error::new(e).context(format!("{name} server stopped")))
        }
        Ok(Err(e)) => Err(anyhow::anyhow!("a server task failed: {e}")),
    };
    // Each server returns once its transfers are done, or after `drain`.
    tokio::select! {
        () = async { while servers.join_next().await.is_some() {} } => {}
        signal = signals.recv() => {
            info!(signal, "second signal: stopping without waiting for transfers");
        }
    }
    if let Some(dir) = &state_dir {
        if let Err(e) = dir.save() {
            tracing::warn!(error = %e, "cannot save the boot status");
        }
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

/// What the ProxyDHCP thread is told to run once its sockets are open: ProxyDHCP, and
/// with a [`ironpxe_dhcp::server_mode::ServerMode`] the DHCP server on UDP 67.
type DhcpJob = (
    ProxyConfig,
    Arc<dyn Booter>,
    Option<ironpxe_dhcp::server_mode::ServerMode>,
    tokio_util::sync::WaitForCancellationFutureOwned,
);

/// Starts ProxyDHCP's own thread and opens its sockets there with `open`.
fn dhcp_thread(
    open: impl FnOnce() -> Result<Vec<DhcpSocket>> + Send + 'static,
) -> Result<OwnThread<DhcpJob>> {
    OwnThread::open(
        "ironpxe-dhcp",
        "ProxyDHCP",
        open,
        |rt, sockets, (proxy, booter, server, stop): DhcpJob| match server {
            Some(server) => rt.block_on(ironpxe_dhcp::server_mode::serve(
                sockets, proxy, booter, server, stop,
            )),
            None => rt.block_on(ironpxe_dhcp::serve(sockets, proxy, booter, stop)),
        },
    )
}

fn bind_dhcp(
    role: ServerPort,
    port: u16,
    device: Option<&str>,
    listen: Ipv4Addr,
) -> Result<DhcpSocket> {
    DhcpSocket::bind(role, port, device, listen).with_context(|| {
        let on = device.map(|d| format!(" on {d}")).unwrap_or_default();
        format!(
            "cannot bind ProxyDHCP on udp 0.0.0.0:{port}{on}{}",
            port_hint(port)
        )
    })
}

fn port_hint(port: u16) -> &'static str {
    if port < 1024 && !nix::unistd::geteuid().is_root() {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    } else {
        ""
    }
}

/// SIGTERM and SIGINT, caught from before the first socket is bound, so that once a
/// client can connect a signal always means a graceful shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        Ok(Signals { term, int })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Fetches remote kernels and initrds whole for GRUB's TFTP transfers, on the
/// runtime that asked (the TFTP driver calls from its blocking pool).
struct RemoteFiles {
    client: reqwest::Client,
}

/// The largest remote file fetched into memory for a TFTP transfer.
const REMOTE_MAX: u64 = 1 << 30;

impl RemoteFiles {
    fn new() -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("ironpxe/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client for remote files")?;
        Ok(RemoteFiles { client })
    }
}

impl ironpxe_grub::RemoteFetch for RemoteFiles {
    fn fetch(&self, url: &url::Url) -> std::result::Result<bytes::Bytes, String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let client = self.client.clone();
        let url = url.clone();
        handle.block_on(async move {
            let r = client
                .get(url.clone())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("{url}: {e}"))?;
            if r.content_length().is_some_and(|n| n > REMOTE_MAX) {
                return Err(format!("{url}: larger than {REMOTE_MAX} bytes"));
            }
            r.bytes().await.map_err(|e| format!("{url}: {e}"))
        })
    }
}
