//! The install API: installers report success, operators ask for reinstalls.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v1/machines/<mac>/installed` | the installer, no token | the machine is installed: a `once` machine boots from its disk from now on |
//! | `POST /api/v1/machines/<mac or name>/reinstall` | `Authorization: Bearer <token>` | back to install; with `{"power_cycle": true}`, PXE next and a power cycle through the BMC |
//! | `GET /api/v1/installs` | anyone who can read the status | every machine: install state, phase, last boot |
//! | `GET /api/v1/leases` | anyone who can read the status | the built-in DHCP server's leases |
//!
//! [`InstallApi::installer_router`] is the first route alone, for the boot port that
//! installers reach ([`ironpxe_core::BootUrls::installed`] builds its URL, which
//! `{{ DONE_URL }}` expands to). [`InstallApi::router`] has them all, for the status
//! server. The token is compared in constant time; without an admin token file the
//! reinstall route refuses every request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::urls::MachineAction;
use ironpxe_core::MacAddr;
use ironpxe_state::{Fleet, LeaseDb, ReinstallError};
use serde_json::{json, Value};

use crate::{now_ms, Status};

/// The install routes' shared state. Cheap to clone.
#[derive(Clone)]
pub struct InstallApi {
    inner: Arc<Inner>,
}

struct Inner {
    fleet: Fleet,
    status: Status,
    token: Option<String>,
    leases: Option<LeaseDb>,
}

impl InstallApi {
    /// The API over `fleet`, with phases from `status`. `admin_token`: the Bearer
    /// token reinstalls need (`None`: reinstalls are refused).
    pub fn new(
        fleet: Fleet,
        status: Status,
        admin_token: Option<String>,
        leases: Option<LeaseDb>,
    ) -> Self {
        InstallApi {
            inner: Arc::new(Inner {
                fleet,
                status,
                token: admin_token.filter(|t| !t.is_empty()),
                leases,
            }),
        }
    }

    /// `POST /api/v1/machines/<mac>/installed` alone.
    pub fn installer_router(&self) -> Router {
        Router::new()
            .route(&MachineAction::Installed.route(), post(installed))
            .with_state(self.clone())
    }

    /// Every install route.
    pub fn router(&self) -> Router {
        self.installer_router().merge(self.admin_router())
    }

    /// Every route but the installer's: for a status server that shares the boot
    /// port, which has [`InstallApi::installer_router`] already.
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route(&MachineAction::Reinstall.route(), post(reinstall))
            .route("/api/v1/installs", get(installs))
            .route("/api/v1/leases", get(leases))
            .with_state(self.clone())
    }

    /// `GET /api/v1/installs` at `now_ms`.
    pub fn installs_json(&self, now_ms: u64) -> Value {
        let fleet = &self.inner.fleet;
        let machines: Vec<Value> = fleet
            .list()
            .into_iter()
            .map(|(mac, conf, rec)| {
                let st = self.inner.status.machine_json(&mac, now_ms);
                let field = |k: &str| st.as_ref().and_then(|s| s.get(k)).cloned();
                json!({
                    "mac": mac,
                    "name": conf.as_ref().and_then(|c| c.name.clone()),
                    "once": conf.as_ref().map(|c| c.once).unwrap_or(false),
                    "boot": conf.as_ref().map(|c| c.boot),
                    "install": rec.as_ref().map(|r| r.state.as_str()).unwrap_or("install"),
                    "changed_ms": rec.as_ref().map(|r| r.changed_ms),
                    "installed_ms": rec.as_ref().and_then(|r| r.installed_ms),
                    "installs": rec.as_ref().map(|r| r.installs).unwrap_or(0),
                    "by": rec.as_ref().and_then(|r| r.by.clone()),
                    "bmc": conf.as_ref().and_then(|c| c.bmc.as_ref()).map(|b| b.address()),
                    // A machine whose last step was the local script boots its disk.
                    "phase": match st.as_ref().and_then(|s| s["last_event"]["event"].as_str()) {
                        Some("http.local") => Some(json!("local")),
                        _ => field("state"),
                    },
                    "ip": field("ip"),
                    "last_boot_ms": field("boot_started_ms"),
                    "last_seen_ms": field("last_seen_ms"),
                    "boots": field("boots"),
                })
            })
            .collect();
        json!({
            "now_ms": now_ms,
            "state_kept": fleet.installs().is_some(),
            "machines": machines,
        })
    }
}

/// The caller's address, when the server recorded it (`ironpxe_http::serve` does).
struct Caller(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<ConnectInfo<ironpxe_http::ConnAddrs>>()
                .map(|c| c.0.peer),
        ))
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

async fn installed(
    State(api): State<InstallApi>,
    Caller(peer): Caller,
    Path(mac): Path<String>,
) -> Response {
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let fleet = api.inner.fleet.clone();
    // Only machines this server knows: a flood of invented MACs from the segment
    // cannot grow the database.
    let known = fleet.directory().get(&mac).is_some()
        || fleet.installs().is_some_and(|i| i.get(&mac).is_some())
        || api.inner.status.machine_json(&mac, now_ms()).is_some();
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown machine {mac}: not in the configuration, and not seen booting here"),
        );
    }
    let by = peer.map(|p| p.ip().to_string());
    let done = tokio::task::spawn_blocking(move || fleet.installed(mac, now_ms(), by)).await;
    match done {
        Ok(Ok(rec)) => {
            emit(BootEvent::InstallDone { mac, peer });
            Json(json!({
                "mac": mac,
                "state": rec.state.as_str(),
                "installed_ms": rec.installed_ms,
                "installs": rec.installs,
            }))
            .into_response()
        }
        Ok(Err(ReinstallError::NoStateDir)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, ReinstallError::NoStateDir)
        }
        Ok(Err(e)) => {
            tracing::error!(%mac, error = %e, "cannot record the install");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The body of a reinstall request (optional).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReinstallBody {
    #[serde(default)]
    power_cycle: bool,
}

async fn reinstall(
    State(api): State<InstallApi>,
    Caller(peer): Caller,
    Path(who): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(api.inner.token.as_deref(), &headers) {
        return r;
    }
    let body: ReinstallBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReinstallBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let fleet = api.inner.fleet.clone();
    let mac = match who.parse::<MacAddr>() {
        Ok(m) => m,
        Err(_) => {
            let dir = fleet.directory();
            let found = dir
                .machines()
                .find(|m| m.name.as_deref() == Some(who.as_str()))
                .map(|m| m.mac);
            match found {
                Some(m) => m,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no machine named {who:?} in the configuration"),
                    )
                }
            }
        }
    };
    let by = Some(match peer {
        Some(p) => format!("api {}", p.ip()),
        None => "api".to_string(),
    });
    let power_cycle = body.power_cycle;
    let label = fleet.label(&mac);
    let done = tokio::task::spawn_blocking({
        let fleet = fleet.clone();
        move || fleet.reinstall(mac, power_cycle, now_ms(), by)
    })
    .await;
    let result = match done {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let power = match &result {
        Ok(o) => o.power.map(|p| p.as_str()).unwrap_or("none"),
        Err(_) => "failed",
    };
    if !matches!(
        result,
        Err(ReinstallError::NoStateDir | ReinstallError::State(_))
    ) {
        emit(BootEvent::InstallReset { mac, peer, power });
    }
    match result {
        Ok(o) => Json(json!({
            "mac": mac,
            "name": label,
            "state": o.record.state.as_str(),
            "power": o.power.map(|p| p.as_str()),
        }))
        .into_response(),
        Err(e @ ReinstallError::NoStateDir) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ ReinstallError::NoBmc { .. }) => error(StatusCode::CONFLICT, e),
        Err(e @ ReinstallError::Bmc { .. }) => {
            tracing::warn!(%mac, error = %e, "reinstall: the BMC step failed");
            error(StatusCode::BAD_GATEWAY, e)
        }
        Err(e @ ReinstallError::State(_)) => {
            tracing::error!(%mac, error = %e, "cannot record the reinstall");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
#[allow(clippy::result_large_err)]
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "reinstalls are off: no admin token is configured (set [server] admin_token_file)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "needs Authorization: Bearer <the token in [server] admin_token_file>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Err(r)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn installs(State(api): State<InstallApi>) -> Json<Value> {
    Json(api.installs_json(now_ms()))
}

async fn leases(State(api): State<InstallApi>) -> Response {
    let Some(db) = api.inner.leases.clone() else {
        return Json(json!({ "server": false, "leases": [] })).into_response();
    };
    match tokio::task::spawn_blocking(move || db.all()).await {
        Ok(Ok(all)) => Json(json!({ "server": true, "leases": all })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use ironpxe_state::{Directory, IpmiTool, StateDb};
    use tower::ServiceExt;

    fn api(dir: &std::path::Path, token: Option<&str>) -> InstallApi {
        let db = StateDb::open(dir).unwrap();
        let cfg = ironpxe_core::config::Config::parse(
            &format!("[[machines]]\nmac = \"{M}\"\nname = \"node-01\"\nkernel = \"/k\"\n"),
            std::path::Path::new("/c.toml"),
            &ironpxe_core::config::NoChecks,
        )
        .unwrap();
        let fleet = Fleet::new(
            Some(db.installs().unwrap()),
            Directory::from_config(&cfg.booter),
            IpmiTool::default(),
        );
        InstallApi::new(
            fleet,
            Status::with_neighbors(Default::default(), Box::new(crate::NoNeighbors)),
            token.map(str::to_string),
            Some(db.leases()),
        )
    }

    async fn call(r: &Router, method: &str, uri: &str, auth: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = r
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    const M: &str = "52:54:00:00:00:01";

    #[tokio::test]
    async fn installed_needs_no_token_and_reinstall_needs_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path(), Some("s3cret"));
        let r = api.router();
        let (s, v) = call(&r, "POST", &format!("/api/v1/machines/{M}/installed"), None).await;
        assert_eq!(
            (s, v["state"].as_str()),
            (StatusCode::OK, Some("installed"))
        );
        let re = format!("/api/v1/machines/{M}/reinstall");
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cre"),
        ] {
            let (s, _) = call(&r, "POST", &re, bad).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        let (_, v) = call(&r, "GET", "/api/v1/installs", None).await;
        assert_eq!(v["machines"][0]["install"], "installed");
        let (s, v) = call(&r, "POST", &re, Some("Bearer s3cret")).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("install")));
        let (_, v) = call(&r, "GET", "/api/v1/installs", None).await;
        assert_eq!(v["machines"][0]["install"], "install");
        assert_eq!(v["machines"][0]["installs"], 1);
        // The boot port has the installer's route only.
        let boot = api.installer_router();
        let (s, _) = call(&boot, "POST", &re, Some("Bearer s3cret")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // A name that is not configured, and a bad MAC.
        let (s, _) = call(
            &r,
            "POST",
            "/api/v1/machines/node-9/reinstall",
            Some("Bearer s3cret"),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(&r, "POST", "/api/v1/machines/zz/installed", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let by_name = "/api/v1/machines/node-01/reinstall";
        let (s, _) = call(&r, "POST", by_name, Some("Bearer s3cret")).await;
        assert_eq!(s, StatusCode::OK, "by name");
        // A MAC nobody configured and nobody saw booting is not recorded.
        let stranger = "/api/v1/machines/02:00:00:00:00:99/installed";
        let (s, v) = call(&r, "POST", stranger, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["error"].as_str().unwrap().contains("unknown machine"));
        let (_, v) = call(&r, "GET", "/api/v1/installs", None).await;
        assert_eq!(v["machines"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn without_a_token_file_reinstalls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = api(dir.path(), None).router();
        let (s, v) = call(
            &r,
            "POST",
            &format!("/api/v1/machines/{M}/reinstall"),
            Some("Bearer "),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(v["error"].as_str().unwrap().contains("admin_token_file"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
