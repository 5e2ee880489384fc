//! `ironpxe machines` and `ironpxe reinstall`: clients of a running server's install
//! API (`GET /api/v1/installs`, `POST /api/v1/machines/<name or mac>/reinstall`).
//! The server owns the state database; these commands never open it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ironpxe_core::config::{Config, NoChecks};
use ironpxe_core::urls::MachineAction;
use serde_json::Value;

use crate::cli::{ClientArgs, MachinesArgs, ReinstallArgs};

/// How long a call may take; a power cycle waits for the BMC.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The server's base URL, and the configuration file when it could be read.
fn target(c: &ClientArgs) -> Result<(String, Option<Config>)> {
    let cfg = read_config(&c.config);
    if let Some(url) = &c.server {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--server {url}: expected an http:// or https:// URL");
        }
        return Ok((url.to_string(), cfg.ok()));
    }
    let cfg = cfg.with_context(|| {
        "no --server URL given, and no configuration to find the status port in"
    })?;
    Ok((local_status_url(&cfg), Some(cfg)))
}

/// The status server of a configuration, as reached from this host: its
/// `status_port` (else `http_port`, else 80) on `listen_addr` (127.0.0.1 when it
/// listens on every address).
fn local_status_url(cfg: &Config) -> String {
    let s = &cfg.server;
    let port = s.status_port.or(s.http_port).unwrap_or(80);
    let host = s
        .listen_addr
        .filter(|a| !a.is_unspecified())
        .unwrap_or(Ipv4Addr::LOCALHOST);
    format!("http://{host}:{port}")
}

fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Config::parse(&text, &abs, &NoChecks).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or("").to_string();
        anyhow::anyhow!("{first}")
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .user_agent(concat!("ironpxe/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")
}

/// The answer's JSON, or one line: the server's `error`, or why it was not reached.
async fn call(req: reqwest::RequestBuilder, base: &str) -> Result<Value> {
    let resp = req.send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach ironpxe's status server at {base}: {} (is it running? give its status port with --server URL)",
            root_cause(&e)
        )
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{base}: the answer broke off"))?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        let why = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        if status == reqwest::StatusCode::NOT_FOUND && json.is_none() {
            bail!("{base} has no install API (HTTP 404): is it ironpxe's status port?");
        }
        bail!("{why} (HTTP {})", status.as_u16());
    }
    json.with_context(|| format!("{base}: the answer is not JSON"))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `ironpxe machines`.
pub(crate) fn machines(args: &MachinesArgs) -> Result<()> {
    let (base, _) = target(&args.client)?;
    let v = runtime()?.block_on(call(
        client()?.get(format!("{base}/api/v1/installs")),
        &base,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print!("{}", table(&v));
    Ok(())
}

/// The machines as a table, one line each.
fn table(v: &Value) -> String {
    let now = v["now_ms"].as_u64().unwrap_or(0);
    let mut rows = vec![[
        "NAME",
        "MAC",
        "INSTALL",
        "ONCE",
        "PHASE",
        "LAST BOOT",
        "IP",
        "BMC",
    ]
    .map(String::from)];
    for m in v["machines"].as_array().into_iter().flatten() {
        let s = |k: &str| m[k].as_str().unwrap_or("-").to_string();
        let install = match (m["install"].as_str(), m["installed_ms"].as_u64()) {
            (Some("installed"), Some(at)) => format!("installed {}", ago(now, at)),
            (Some(x), _) => x.to_string(),
            _ => "-".into(),
        };
        rows.push([
            s("name"),
            s("mac"),
            install,
            if m["once"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            s("phase"),
            m["last_boot_ms"]
                .as_u64()
                .map(|t| ago(now, t))
                .unwrap_or_else(|| "-".into()),
            s("ip"),
            s("bmc"),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if v["state_kept"].as_bool() == Some(false) {
        out.push_str("(the server keeps no install state: it runs without --state-dir)\n");
    }
    out
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
fn ago(now_ms: u64, t_ms: u64) -> String {
    let s = now_ms.saturating_sub(t_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// `ironpxe reinstall NAME|MAC [--power-cycle]`.
pub(crate) fn reinstall(args: &ReinstallArgs) -> Result<()> {
    let (base, cfg) = target(&args.client)?;
    let token_file: PathBuf = match (&args.token_file, cfg.as_ref().and_then(|c| c.admin_token_file.clone())) {
        (Some(f), _) => f.clone(),
        (None, Some(f)) => f,
        (None, None) => bail!(
            "no admin token: give --token-file FILE, or --config FILE with [server] admin_token_file"
        ),
    };
    let token = crate::install::read_token(&token_file)?;
    if args.machine.is_empty() || args.machine.contains(['/', '?', '#', ' ']) {
        bail!("{:?} is neither a machine name nor a MAC", args.machine);
    }
    let path = format!(
        "{}{}/{}",
        ironpxe_core::urls::MACHINE_API_PREFIX,
        args.machine,
        MachineAction::Reinstall.as_str()
    );
    let body = serde_json::json!({ "power_cycle": args.power_cycle }).to_string();
    let v = runtime()?.block_on(call(
        client()?
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body),
        &base,
    ))?;
    let name = v["name"].as_str().unwrap_or("-");
    let mac = v["mac"].as_str().unwrap_or("-");
    let power = match v["power"].as_str() {
        Some("cycle") => "; next boot PXE, power cycled",
        Some("on") => "; next boot PXE, powered on (it was off)",
        _ => "; it netboots its spec at its next boot",
    };
    println!("{name} ({mac}): set to install{power}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_local_status_url_follows_the_config() {
        let p = |t: &str| Config::parse(t, Path::new("/x.toml"), &NoChecks).unwrap();
        assert_eq!(local_status_url(&p("")), "http://127.0.0.1:80");
        assert_eq!(
            local_status_url(&p("[server]\nhttp_port = 8080\n")),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            local_status_url(&p(
                "[server]\nhttp_port = 8080\nstatus_port = 8081\nlisten_addr = \"10.0.0.2\"\n"
            )),
            "http://10.0.0.2:8081"
        );
    }

    #[test]
    fn the_table_shows_state_phase_and_last_boot() {
        let v = json!({
            "now_ms": 10_000_000u64,
            "state_kept": true,
            "machines": [
                {"mac": "52:54:00:00:00:01", "name": "node-01", "once": true,
                 "install": "installed", "installed_ms": 9_700_000u64, "phase": "booted",
                 "last_boot_ms": 9_000_000u64, "ip": "10.0.0.11", "bmc": "10.1.0.11"},
                {"mac": "52:54:00:00:00:02", "name": null, "once": false,
                 "install": "install", "phase": null, "last_boot_ms": null, "ip": null, "bmc": null}
            ]
        });
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NAME     MAC"), "{t}");
        assert!(
            lines[1].contains("node-01  52:54:00:00:00:01  installed 5 min ago  yes   booted  16 min ago  10.0.0.11  10.1.0.11"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("-        52:54:00:00:00:02  install"),
            "{t}"
        );
    }
}
