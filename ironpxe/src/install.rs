//! Install state and the built-in DHCP server, wired into a serving mode: the state
//! database in `--state-dir`, the [`Fleet`] of configured machines, the admin token,
//! and what UDP 67 does (`[dhcp] mode`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ironpxe_core::config::{Config, DhcpMode};
use ironpxe_core::Booter;
use ironpxe_state::{Directory, Fleet, IpmiTool, OnceBooter, StateDb};

/// What a serving mode adds to the servers for install state and DHCP.
pub(crate) struct InstallWiring {
    /// The machines, their install states and BMCs.
    pub fleet: Fleet,
    /// The state database, when `--state-dir` is given.
    pub db: Option<StateDb>,
    /// The Bearer token of the admin API.
    pub admin_token: Option<String>,
    /// ProxyDHCP, or the built-in DHCP server.
    pub dhcp: DhcpMode,
    /// Start the DHCP server even when another one answers on the segment.
    pub force: bool,
}

impl InstallWiring {
    /// For `boot` and `api` mode: no configured machines; installs are recorded when
    /// there is a state directory (in API mode the API decides what a machine boots,
    /// so install state only shows in `ironpxe machines`).
    pub(crate) fn plain(state_dir: Option<&Path>) -> Result<InstallWiring> {
        let db = open_db(state_dir)?;
        let installs = db.as_ref().map(|d| d.installs()).transpose()?;
        Ok(InstallWiring {
            fleet: Fleet::new(installs, Directory::default(), IpmiTool::default()),
            db,
            admin_token: None,
            dhcp: DhcpMode::Proxy,
            force: false,
        })
    }

    /// For `serve`: the configuration's machines, `once` policy, token and DHCP
    /// mode. Refuses `once` machines and the DHCP server without a state directory,
    /// and the DHCP server without a data NIC.
    pub(crate) fn from_config(
        cfg: &Config,
        file: &Path,
        state_dir: Option<&Path>,
        interface: Option<&str>,
        force: bool,
    ) -> Result<InstallWiring> {
        let directory = Directory::from_config(&cfg.booter);
        let uses_once = !directory.once_policy().is_empty();
        let server = matches!(cfg.dhcp, DhcpMode::Server(_));
        if state_dir.is_none() && (uses_once || server) {
            bail!(
                "{}: {} keeps its state in the state directory: start ironpxe with --state-dir DIR",
                file.display(),
                if uses_once {
                    "once = true"
                } else {
                    "[dhcp] mode = \"server\""
                }
            );
        }
        if server && interface.is_none() {
            bail!(
                "{}: [dhcp] mode = \"server\" answers only on the data NIC: set [server] interface or --interface",
                file.display()
            );
        }
        let db = open_db(state_dir)?;
        let installs = db.as_ref().map(|d| d.installs()).transpose()?;
        let admin_token = cfg
            .admin_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        Ok(InstallWiring {
            fleet: Fleet::new(installs, directory, IpmiTool::default()),
            db,
            admin_token,
            dhcp: cfg.dhcp.clone(),
            force,
        })
    }

    /// `booter` with the installed `once` machines of `directory` booting locally.
    pub(crate) fn wrap(&self, booter: Arc<dyn Booter>, directory: &Directory) -> Arc<dyn Booter> {
        wrap_once(&self.fleet, booter, directory)
    }
}

/// `booter` with the installed `once` machines of `directory` booting locally (no
/// wrapper when no machine installs once, or no state is kept).
pub(crate) fn wrap_once(
    fleet: &Fleet,
    booter: Arc<dyn Booter>,
    directory: &Directory,
) -> Arc<dyn Booter> {
    match fleet.installs() {
        Some(installs) if !directory.once_policy().is_empty() => Arc::new(OnceBooter::new(
            booter,
            installs.clone(),
            directory.once_policy(),
        )),
        _ => booter,
    }
}

fn open_db(state_dir: Option<&Path>) -> Result<Option<StateDb>> {
    state_dir
        .map(|d| StateDb::open(d).with_context(|| format!("--state-dir {}", d.display())))
        .transpose()
}

/// The admin token: the file's contents without surrounding whitespace.
pub(crate) fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("admin token file {}: cannot read", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        bail!(
            "admin token file {}: holds no token (one line, no spaces)",
            path.display()
        );
    }
    Ok(token)
}

/// Probes the data NIC for another DHCP server ([`ironpxe_dhcp::server_mode::probe`])
/// and fails, naming each one, if one answers.
pub(crate) async fn refuse_other_dhcp_servers(device: &str) -> Result<()> {
    let dev = device.to_string();
    let found = tokio::task::spawn_blocking(move || {
        ironpxe_dhcp::server_mode::probe(&dev, ironpxe_dhcp::server_mode::PROBE_WAIT)
    })
    .await
    .context("the DHCP probe failed")?
    .with_context(|| {
        format!("cannot probe {device} for another DHCP server (UDP 68 must be free; --force skips the probe)")
    })?;
    if found.is_empty() {
        tracing::info!(
            interface = device,
            "no other DHCP server answered; serving DHCP"
        );
        return Ok(());
    }
    let list: Vec<String> = found
        .iter()
        .map(|s| format!("{} (it offered {})", s.server, s.offered))
        .collect();
    bail!(
        "another DHCP server answers on {device}: {}; not starting [dhcp] mode = \"server\" next to it (stop it, use mode = \"proxy\", or start with --force)",
        list.join(", ")
    )
}
