//! The IPv6 side of the servers (`--ipv6`): DHCPv6 on its own thread, and TFTP and
//! HTTP listeners on IPv6 next to the IPv4 ones, serving the same files and router.
//!
//! Every IPv6 socket is `IPV6_V6ONLY`, so it shares its port number with the IPv4
//! socket instead of taking IPv4 traffic too (an IPv4-mapped peer would then name
//! a v4 client by a v6 address in every log line and URL).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ironpxe_core::net6::check_announced_v6;
use ironpxe_core::Booter;
use ironpxe_dhcp::v6::{Config6, Dhcp6Socket, LeaseFile, Setup6, Stateful};
use ironpxe_dhcp::{IpxeBinaries, ServerPort};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::own_thread::OwnThread;
use crate::server_config::{Ipv6Config, ServerConfig};

/// The DHCPv6 server port.
const DHCP6_PORT: u16 = 547;

/// The lease file of the stateful mode, in `--state-dir`.
pub(crate) const LEASE_FILE: &str = "dhcp6-leases";

/// The IPv6 sockets, bound before anything serves.
pub(crate) struct Bound6 {
    cfg: Ipv6Config,
    tftp: tokio::net::UdpSocket,
    http: tokio::net::TcpListener,
    dhcp: OwnThread<Job6>,
}

/// A socket on `[listen]:port` that takes IPv6 only.
fn v6_socket(ty: Type, proto: Protocol, listen: Ipv6Addr, port: u16) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, ty, Some(proto))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV6::new(listen, port, 0, 0).into())?;
    Ok(s)
}

/// Checks the IPv6 settings a server cannot run with, before anything is bound: an
/// address that cannot be announced, a stateful range with nowhere to keep leases.
pub(crate) fn check(args: &ServerConfig) -> Result<()> {
    let Some(cfg) = &args.ipv6 else {
        return Ok(());
    };
    if let Err(e) = check_announced_v6(cfg.listen) {
        bail!("{}: {e}", cfg.listen_origin);
    }
    if let (Some(range), None) = (&cfg.range, &args.state_dir) {
        bail!(
            "ipv6_range {range} needs --state-dir DIR: the DHCPv6 leases are kept there across restarts"
        );
    }
    Ok(())
}

/// Binds DHCPv6 (547, 4011), TFTP and HTTP on IPv6 (settings as [`check`] passed
/// them). `None` when IPv6 is off.
pub(crate) fn bind(args: &ServerConfig, device: Option<&str>) -> Result<Option<Bound6>> {
    let Some(cfg) = args.ipv6.clone() else {
        return Ok(None);
    };
    let leases = match (&cfg.range, &args.state_dir) {
        (Some(range), Some(dir)) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--state-dir {}", dir.display()))?;
            let file = LeaseFile::new(dir.join(LEASE_FILE));
            let leases = file
                .load(*range, unix_now())
                .with_context(|| format!("the DHCPv6 leases of ipv6_range {range}"))?;
            info!(file = %file.path().display(), leases = leases.len(), range = %range, "DHCPv6 stateful mode");
            Some((leases, file))
        }
        _ => None,
    };
    let listen = cfg.listen;
    let tftp = v6_socket(Type::DGRAM, Protocol::UDP, listen, args.tftp_port)
        .and_then(|s| tokio::net::UdpSocket::from_std(s.into()))
        .with_context(|| format!("cannot bind TFTP on udp [{listen}]:{}", args.tftp_port))?;
    let http = v6_socket(Type::STREAM, Protocol::TCP, listen, args.http_port)
        .and_then(|s| {
            s.listen(1024)?;
            tokio::net::TcpListener::from_std(s.into())
        })
        .with_context(|| format!("cannot bind HTTP on tcp [{listen}]:{}", args.http_port))?;
    let device = device.map(str::to_string);
    let pxe_port = args.pxe_port;
    let server_id = ironpxe_dhcp::v6::server_duid(device.as_deref());
    let dhcp = dhcp6_thread(
        move || -> Result<Vec<Dhcp6Socket>> {
            let d = device.as_deref();
            Ok(vec![
                Dhcp6Socket::bind(ServerPort::Dhcp, DHCP6_PORT, d).with_context(|| {
                    format!("cannot bind DHCPv6 on udp [::]:{DHCP6_PORT}{}", on(d))
                })?,
                Dhcp6Socket::bind(ServerPort::Pxe, pxe_port, d).with_context(|| {
                    format!(
                        "cannot bind the PXE boot server on udp [::]:{pxe_port}{}",
                        on(d)
                    )
                })?,
            ])
        },
        (leases, server_id),
    )?;
    Ok(Some(Bound6 {
        cfg,
        tftp,
        http,
        dhcp,
    }))
}

fn on(device: Option<&str>) -> String {
    device.map(|d| format!(" on {d}")).unwrap_or_default()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A server task's name and result, as `run::serve_async` collects them.
pub(crate) type ServerResult = (&'static str, std::io::Result<()>);

/// What the IPv6 servers share with the IPv4 ones.
pub(crate) struct Shared6 {
    pub files: Arc<dyn ironpxe_tftp::FileSource>,
    pub tftp_cfg: ironpxe_tftp::TftpConfig,
    pub router: axum::Router,
    pub booter: Arc<dyn Booter>,
    pub binaries: IpxeBinaries,
    pub http_port: u16,
    pub lookup_wait: std::time::Duration,
    pub drain: std::time::Duration,
    /// The HTTP connection limits, as on IPv4 (a cap of their own).
    pub http_limits: ironpxe_http::HttpLimits,
}

impl Bound6 {
    /// Starts TFTP, HTTP and DHCPv6 on IPv6 until `shutdown`.
    pub(crate) fn spawn(
        self,
        servers: &mut tokio::task::JoinSet<ServerResult>,
        shared: Shared6,
        shutdown: &CancellationToken,
    ) {
        info!(
            listen = %self.cfg.listen,
            tftp = %self.tftp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            http = %self.http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            stateful = self.cfg.range.map(|r| format!("{} ({})", r, self.cfg.stateful.as_str())).unwrap_or_else(|| "off".into()),
            "IPv6 ready: DHCPv6 (547, 4011), TFTP and HTTP"
        );
        let stop = shutdown.clone().cancelled_owned();
        let (tftp, files, tftp_cfg) = (self.tftp, shared.files, shared.tftp_cfg);
        servers.spawn(async move {
            (
                "TFTP (IPv6)",
                ironpxe_tftp::serve(tftp, files, tftp_cfg, stop).await,
            )
        });
        let stop = shutdown.clone().cancelled_owned();
        let (http, router, drain) = (self.http, shared.router, shared.drain);
        let limits = shared.http_limits;
        servers.spawn(async move {
            (
                "HTTP (IPv6)",
                ironpxe_http::serve_with(http, router, stop, drain, limits).await,
            )
        });
        let cfg = Config6 {
            http_port: shared.http_port,
            binaries: shared.binaries,
            stateful: self.cfg.range.map(|_| Stateful {
                for_whom: self.cfg.stateful,
                ..Stateful::default()
            }),
            proxy_preference: self.cfg.proxy_preference,
            ..Config6::default()
        };
        let done = self.dhcp.serve((
            cfg,
            self.cfg.listen,
            shared.lookup_wait,
            shared.booter,
            shutdown.clone().cancelled_owned(),
        ));
        servers.spawn(async move {
            let r = done
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the DHCPv6 thread ended")));
            ("DHCPv6", r)
        });
    }
}

type Leases6 = Option<(ironpxe_dhcp::v6::Leases, LeaseFile)>;

/// What the DHCPv6 thread runs once its sockets are open.
type Job6 = (
    Config6,
    Ipv6Addr,
    std::time::Duration,
    Arc<dyn Booter>,
    tokio_util::sync::WaitForCancellationFutureOwned,
);

/// Starts DHCPv6's own thread (as ProxyDHCP has one) and opens its sockets there
/// with `open`.
fn dhcp6_thread(
    open: impl FnOnce() -> Result<Vec<Dhcp6Socket>> + Send + 'static,
    (leases, server_id): (Leases6, Vec<u8>),
) -> Result<OwnThread<Job6>> {
    OwnThread::open(
        "ironpxe-dhcp6",
        "DHCPv6",
        open,
        move |rt, sockets, (cfg, listen, lookup_wait, booter, stop): Job6| {
            let setup = Setup6 {
                cfg,
                server_id,
                listen,
                leases,
                lookup_wait,
                max_lookups: ironpxe_dhcp::MAX_LOOKUPS,
            };
            rt.block_on(ironpxe_dhcp::v6::serve6(sockets, setup, booter, stop))
        },
    )
}
