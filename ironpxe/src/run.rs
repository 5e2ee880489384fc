//! Wiring: turn checked arguments into running servers.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ironpxe_core::{BootSpec, Booter, FileRef, StaticBooter};
use ironpxe_dhcp::{DhcpSocket, ProxyConfig, ServerPort};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::{BootArgs, Cli, Command, LogArgs, ServerArgs};
use crate::ipxe_files::{IpxeSet, Overrides, SEARCH_DIRS};

/// Installs the log subscriber. `RUST_LOG` overrides the level chosen by `--debug`.
pub fn init_logging(args: &LogArgs) {
    let default = if args.debug {
        "debug,hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_timestamps {
        builder.init();
    } else {
        builder.without_time().init();
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boot(args) => {
            let spec = boot_spec(&args)?;
            for f in spec.files() {
                info!(file = %f, "serving");
            }
            let booter: Arc<dyn Booter> = Arc::new(StaticBooter::new(spec));
            serve(&args.server, booter)
        }
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
    Ok(BootSpec {
        kernel,
        initrds,
        cmdline: args.cmdline.clone(),
        message: args.bootmsg.clone(),
    })
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

fn serve(args: &ServerArgs, booter: Arc<dyn Booter>) -> Result<()> {
    let over = Overrides {
        bios: args.ipxe_bios.clone(),
        efi32: args.ipxe_efi32.clone(),
        efi64: args.ipxe_efi64.clone(),
        ipxe: args.ipxe_ipxe.clone(),
    };
    // IRONPXE_IPXE_DIR (set by packagers, e.g. the Nix package to pkgs.ipxe) is
    // searched before the distribution directories.
    let packaged = std::env::var_os("IRONPXE_IPXE_DIR").map(std::path::PathBuf::from);
    let dirs: Vec<&Path> = packaged
        .as_deref()
        .into_iter()
        .chain(SEARCH_DIRS.iter().map(Path::new))
        .collect();
    let ipxe = IpxeSet::resolve(&over, &dirs)?;
    for line in &ipxe.report {
        info!("iPXE {line}");
    }

    if let Some(ifname) = &args.interface {
        nix::net::if_::if_nametoindex(ifname.as_str()).map_err(|e| {
            anyhow::anyhow!("--interface {ifname}: no such network interface ({e})")
        })?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve_async(args, booter, ipxe))
}

async fn serve_async(args: &ServerArgs, booter: Arc<dyn Booter>, ipxe: IpxeSet) -> Result<()> {
    let device = args.interface.as_deref();
    let listen = args.listen_addr;

    // Bind everything first, so a port in use is reported before anything runs.
    let dhcp_sockets = vec![
        bind_dhcp(ServerPort::Dhcp, args.dhcp_port, device, listen)?,
        bind_dhcp(ServerPort::Pxe, args.pxe_port, device, listen)?,
    ];
    let tftp_addr = SocketAddrV4::new(listen, args.tftp_port);
    let tftp_socket = tokio::net::UdpSocket::bind(tftp_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind TFTP on udp {tftp_addr}{}",
                port_hint(args.tftp_port)
            )
        })?;
    let http_addr = SocketAddr::V4(SocketAddrV4::new(listen, args.port));
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind HTTP on tcp {http_addr}{}",
                port_hint(args.port)
            )
        })?;

    let proxy = ProxyConfig {
        http_port: args.port,
        binaries: ipxe.binaries.clone(),
        force_chainload: args.force_chainload,
        ..ProxyConfig::default()
    };
    info!(
        interface = device.unwrap_or("(all)"),
        listen = %listen,
        http = %http_addr,
        tftp = %tftp_addr,
        dhcp = args.dhcp_port,
        pxe = args.pxe_port,
        force_chainload = args.force_chainload,
        "ironpxe ready"
    );

    let mut files = ironpxe_tftp::MemoryFiles::new();
    for (name, bytes) in ipxe.files {
        files
            .insert(&name, bytes)
            .with_context(|| format!("iPXE binary name {name:?} cannot be served over TFTP"))?;
    }
    let files = Arc::new(files);
    let tftp = ironpxe_tftp::serve(
        tftp_socket,
        files,
        ironpxe_tftp::TftpConfig::default(),
        std::future::pending(),
    );
    let state = ironpxe_http::HttpState::new(booter.clone())
        .context("cannot set up the HTTP client for remote files")?;
    let router = ironpxe_http::router(state);
    let http = ironpxe_http::serve(http_listener, router, std::future::pending());
    let dhcp = ironpxe_dhcp::serve(dhcp_sockets, proxy, booter, std::future::pending());

    tokio::select! {
        r = dhcp => r.context("ProxyDHCP server stopped"),
        r = tftp => r.context("TFTP server stopped"),
        r = http => r.context("HTTP server stopped"),
        () = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    }
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
