//! The `/_/ipxe` script handler, which asks the booter and renders its answer, and
//! the `/_/booting` callback a script makes just before it boots.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::urls::{BootUrls, MachineQuery};
use ironpxe_core::BootDecision;
use ironpxe_ipxe::{boot_script, local_boot_script, BootScript, Field, ScriptError};

use crate::{plain, Conn, HttpState};

/// The `mac` and `arch` parameters, or a one-line reason for a 400.
fn machine(query: Option<&str>) -> Result<MachineQuery, String> {
    MachineQuery::parse(query.unwrap_or("")).map_err(|e| e.to_string())
}

/// `http://<Host>`, or `http://<local address>` without a Host header.
fn base_url(headers: &HeaderMap, local: Option<SocketAddr>) -> Result<BootUrls, String> {
    if let Some(host) = headers.get(header::HOST) {
        return host
            .to_str()
            .ok()
            .filter(|h| !h.contains('@'))
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            .and_then(|h| BootUrls::http_host(h.as_str()).ok())
            .ok_or_else(|| format!("invalid Host header {host:?}"));
    }
    match local {
        Some(a) if !a.ip().is_unspecified() => Ok(BootUrls::http(a.ip(), a.port())),
        _ => Err("missing Host header".to_string()),
    }
}

pub(crate) async fn script(
    State(st): State<Arc<HttpState>>,
    conn: Conn,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let MachineQuery { mac, arch } = match machine(query.as_deref()) {
        Ok(m) => m,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    let base = match base_url(&headers, conn.local) {
        Ok(b) => b,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    // Booters may consult an API; keep a slow one off the async workers.
    let booter = st.booter.clone();
    let wait = st.script_wait;
    let decision = match tokio::task::spawn_blocking(move || booter.decide(mac, arch, wait)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%mac, error = %e, "booter failed while deciding");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "booter failed");
        }
    };
    let spec = match decision {
        BootDecision::Netboot(spec) => spec,
        BootDecision::Local => {
            emit(BootEvent::HttpLocal {
                mac,
                arch,
                peer: conn.peer,
            });
            return (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                local_boot_script(mac, arch),
            )
                .into_response();
        }
        BootDecision::Script(text) => {
            emit(BootEvent::HttpScript {
                mac,
                arch,
                bytes: text.len() as u64,
                custom: true,
                peer: conn.peer,
            });
            return (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text.to_string(),
            )
                .into_response();
        }
        BootDecision::Ignore(reason) => {
            let body = format!("not booting {mac}: {reason}");
            emit(BootEvent::HttpIgnored { mac, reason });
            return plain(StatusCode::NOT_FOUND, body);
        }
        BootDecision::Pending => {
            let reason = format!("the boot source did not answer within {wait:?}");
            let body = format!("not booting {mac} yet: {reason}");
            emit(BootEvent::HttpIgnored { mac, reason });
            return plain(StatusCode::SERVICE_UNAVAILABLE, body);
        }
    };
    match boot_script(&BootScript {
        base_url: base.base(),
        mac,
        arch,
        spec: &spec,
    }) {
        Ok(text) => {
            st.grants.grant(mac, &spec);
            emit(BootEvent::HttpScript {
                mac,
                arch,
                bytes: text.len() as u64,
                custom: false,
                peer: conn.peer,
            });
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Err(
            e @ ScriptError::Unrepresentable {
                field: Field::BaseUrl,
                ..
            },
        ) => plain(StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::error!(%mac, error = %e, "cannot render the boot script");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the boot script: {e}"),
            )
        }
    }
}

pub(crate) async fn booting(conn: Conn, RawQuery(query): RawQuery) -> Response {
    match machine(query.as_deref()) {
        Ok(MachineQuery { mac, arch }) => {
            emit(BootEvent::HttpBooting {
                mac,
                arch,
                peer: conn.peer,
            });
            StatusCode::OK.into_response()
        }
        Err(msg) => plain(StatusCode::BAD_REQUEST, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::HeaderValue;

    #[test]
    fn machine_params() {
        // The parsing itself is tested in ironpxe_core::urls; here, that a bad query
        // gives one line.
        assert_eq!(
            machine(Some("arch=7&mac=52-54-00-12-34-56")).unwrap(),
            MachineQuery {
                mac: ironpxe_core::MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                arch: ironpxe_core::ClientArch::EfiX64
            }
        );
        assert_eq!(machine(None).unwrap_err(), "missing mac parameter");
        assert!(machine(Some("arch=0&mac=zz"))
            .unwrap_err()
            .contains("invalid MAC"));
    }

    #[test]
    fn base_urls() {
        let mut h = HeaderMap::new();
        let local: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let base = |h: &HeaderMap, local| base_url(h, local).map(|b| b.to_string());
        assert_eq!(base(&h, Some(local)).unwrap(), "http://10.0.0.2:8080");
        assert_eq!(
            base(&h, Some("[fd00::2]:80".parse().unwrap())).unwrap(),
            "http://[fd00::2]"
        );
        assert!(base_url(&h, Some("0.0.0.0:80".parse().unwrap())).is_err());
        assert!(base_url(&h, None).is_err());
        h.insert(header::HOST, HeaderValue::from_static("[fd00::2]:8080"));
        assert_eq!(base(&h, Some(local)).unwrap(), "http://[fd00::2]:8080");
        for bad in ["a b", "user@host", "a/b", "${x}"] {
            h.insert(header::HOST, HeaderValue::from_static(bad));
            assert!(base_url(&h, Some(local)).is_err(), "{bad}");
        }
    }
}
