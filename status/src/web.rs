//! The status HTTP routes and the JSON shapes they answer with.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use ironpxe_core::MacAddr;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::machine::Machine;
use crate::record::Record;
use crate::{now_ms, Status};

/// The page: hand-written HTML, CSS and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("index.html");

pub(crate) fn router(status: Status) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/machines", get(machines))
        .route("/api/v1/machines/{mac}", get(machine))
        .route("/api/v1/events", get(events))
        .route("/api/v1/log", get(log))
        .route("/metrics", get(metrics))
        .with_state(status)
}

/// Where the page carries the machine list it starts with.
const INITIAL: &str = "/*IRONPXE-INITIAL*/";

async fn index(State(st): State<Status>) -> Response {
    // `<` only occurs inside JSON strings, where `\u003c` means the same; so no
    // `</script>` can end the block early.
    let initial = st
        .machines_json(now_ms())
        .to_string()
        .replace('<', "\\u003c");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML.replacen(INITIAL, &initial, 1),
    )
        .into_response()
}

async fn machines(State(st): State<Status>) -> Json<Value> {
    Json(st.machines_json(now_ms()))
}

async fn machine(State(st): State<Status>, Path(mac): Path<String>) -> Response {
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match st.machine_json(&mac, now_ms()) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no machine {mac}\n")).into_response(),
    }
}

async fn log(
    State(st): State<Status>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let after = match query.as_deref().map(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("after="))
            .map(str::parse::<u64>)
    }) {
        None | Some(None) => 0,
        Some(Some(Ok(n))) => n,
        Some(Some(Err(e))) => {
            return (StatusCode::BAD_REQUEST, format!("after: {e}\n")).into_response()
        }
    };
    Json(st.log_json(after)).into_response()
}

async fn metrics(State(st): State<Status>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics_text(now_ms()),
    )
        .into_response()
}

/// Server-sent events: `boot` with `{mac, event, machine}` for every applied event,
/// and `resync` when this subscriber fell behind and should reload the list. The
/// stream ends when the server shuts down ([`Status::end_streams`]).
async fn events(State(st): State<Status>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.subscribe();
    let closing = Box::pin(st.closing());
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        let ev = tokio::select! {
            r = rx.recv() => match r {
                Ok(payload) => Event::default().event("boot").data(&*payload),
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(RecvError::Closed) => return None,
            },
            () = &mut closing => return None,
        };
        Some((Ok(ev), (rx, closing)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// An event as the API shows it.
pub(crate) fn event_json(r: &Record) -> Value {
    json!({
        "t": r.rfc3339(),
        "t_ms": r.t_ms,
        "event": r.event,
        "details": r.details,
    })
}

/// A machine as the API shows it; `with_events` adds its timeline.
pub(crate) fn machine_json(
    m: &Machine,
    now_ms: u64,
    stuck_after_ms: u64,
    with_events: bool,
) -> Value {
    let phases: Vec<Value> = m
        .phases
        .iter()
        .map(|p| {
            let end = p.end_ms.unwrap_or(now_ms);
            json!({
                "phase": p.phase,
                "start_ms": p.start_ms,
                "end_ms": p.end_ms,
                "ms": end.saturating_sub(p.start_ms),
            })
        })
        .collect();
    let mut v = json!({
        "mac": m.mac,
        "name": m.name,
        "arch": m.arch,
        "ip": m.ip,
        "family": m.family,
        "state": m.state.map(|p| p.as_str()).unwrap_or("unknown"),
        "stuck": m.is_stuck(now_ms, stuck_after_ms),
        "progress": m.progress,
        "since_ms": m.since_ms,
        "in_phase_ms": now_ms.saturating_sub(m.since_ms),
        "boot_started_ms": m.boot_started_ms,
        "boot_ms": m.boot_ms,
        "boots": m.boots,
        "reason": m.reason,
        "last_seen_ms": m.last_seen_ms,
        "phases": phases,
        "last_event": m.events.back().map(event_json),
    });
    if with_events {
        v["events"] = m.events.iter().map(event_json).collect();
    }
    v
}
