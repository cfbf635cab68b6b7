//! The operations endpoints (`/healthz`, `/livez`, `/readyz`, `/metrics`, `/admin`,
//! `/openapi.json`, `/debug/pprof/…`): their own small router, called boxed from the API's,
//! so the API's request future does not carry their states.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::HttpState;
use super::problem::json;
use super::routes::credential;
use crate::auth::Access;
use crate::error::ServiceError;
use crate::ops::profiling::{self, CpuFormat, MAX_SECONDS};

type HttpResult = Result<Response<Full<Bytes>>, ServiceError>;

/// The status page: one self-contained file (no build step, nothing fetched from elsewhere).
const ADMIN_PAGE: &str = include_str!("../../ops/admin.html");
/// The OpenAPI 3.1 document of the HTTP API (checked against the router by a test).
const OPENAPI: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/openapi.json"
));

/// Routes `GET /{path}` (the last path segment) to its operations endpoint.
pub(super) async fn route(state: &HttpState, parts: &Parts, path: &str) -> HttpResult {
    match path {
        "healthz" => health(state).await,
        "livez" => Ok(json(
            StatusCode::OK,
            Bytes::from_static(br#"{"status":"alive"}"#),
        )),
        "readyz" => ready(state).await,
        "metrics" => metrics(state, &parts.headers).await,
        "admin" => Ok(static_file(ADMIN_PAGE, "text/html; charset=utf-8")),
        "openapi.json" => Ok(static_file(OPENAPI, "application/json")),
        "profile" => {
            admin_only(state, &parts.headers, "only admin keys take profiles")?;
            let (seconds, format) = profile_query(parts.uri.query().unwrap_or(""))?;
            let body = profiling::cpu(seconds, format).await?;
            let content_type = match format {
                CpuFormat::Protobuf => "application/octet-stream",
                CpuFormat::Svg => "image/svg+xml",
            };
            Ok(binary(body, content_type))
        }
        _ => {
            admin_only(state, &parts.headers, "only admin keys take profiles")?;
            Ok(binary(profiling::heap().await?, "application/octet-stream"))
        }
    }
}

/// `seconds` (1 to 300, default 10) and `format` (`protobuf`, the default, or `svg`).
fn profile_query(query: &str) -> Result<(u64, CpuFormat), ServiceError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        seconds: Option<u64>,
        format: Option<String>,
    }
    let query: Query = serde_urlencoded::from_str(query).map_err(|e| {
        ServiceError::bad_request(format!(
            "query: {e} (seconds=1..{MAX_SECONDS}, format=protobuf|svg)"
        ))
    })?;
    let seconds = query.seconds.unwrap_or(10);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(ServiceError::bad_request(format!(
            "seconds: from 1 to {MAX_SECONDS}"
        )));
    }
    let format = match query.format.as_deref() {
        None | Some("protobuf") => CpuFormat::Protobuf,
        Some("svg") => CpuFormat::Svg,
        Some(other) => {
            return Err(ServiceError::bad_request(format!(
                "format {other:?}: protobuf or svg"
            )));
        }
    };
    Ok((seconds, format))
}

/// A profile: bytes, not to be cached.
fn binary(body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page or document compiled into the binary.
fn static_file(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Refuses every caller but an admin key (anyone when auth is off).
fn admin_only(state: &HttpState, headers: &http::HeaderMap, why: &str) -> Result<(), ServiceError> {
    let principal = state.auth.authenticate("", credential(headers))?;
    if principal.role != crate::auth::Role::Admin {
        return Err(principal.deny(Access::Read, "", why));
    }
    Ok(())
}

/// `GET /metrics`: admin keys only when auth is on.
async fn metrics(state: &HttpState, headers: &http::HeaderMap) -> HttpResult {
    admin_only(state, headers, "only admin keys read the metrics")?;
    let text = state.service.metrics().encode();
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::ops::metrics::CONTENT_TYPE),
    );
    Ok(response)
}

/// `GET /readyz`: 200 when this instance should get traffic — not draining, warm-up done,
/// every store answering; else 503 with the first reason.
async fn ready(state: &HttpState) -> HttpResult {
    let service = &state.service;
    let not_ready = |status: &str| {
        let body = serde_json::json!({ "status": status });
        Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(body.to_string()),
        ))
    };
    if service.draining() {
        return not_ready("draining");
    }
    if service
        .warming()
        .active
        .load(std::sync::atomic::Ordering::Acquire)
    {
        return not_ready("warming");
    }
    if service.health().await.iter().any(|(_, r)| r.is_err()) {
        return not_ready("degraded");
    }
    Ok(json(
        StatusCode::OK,
        Bytes::from_static(br#"{"status":"ready"}"#),
    ))
}

async fn health(state: &HttpState) -> HttpResult {
    let warming = state.service.warming();
    if warming.active.load(std::sync::atomic::Ordering::Acquire) {
        let body = serde_json::json!({
            "status": "warming",
            "loaded": warming.loaded.load(std::sync::atomic::Ordering::Relaxed),
            "total": warming.total.load(std::sync::atomic::Ordering::Relaxed),
        });
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(body.to_string()),
        ));
    }
    let checks = state.service.health().await;
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let stores: Vec<_> = checks
        .iter()
        .map(|(name, result)| match result {
            Ok(()) => serde_json::json!({"store": name, "ok": true}),
            Err(e) => serde_json::json!({"store": name, "ok": false, "error": e}),
        })
        .collect();
    // Redis failing degrades (reads go to the store) and does not make the instance unhealthy.
    let cache = state.service.cache();
    // An idle instance calls Redis for no request: the health check asks it itself.
    let l2 = match cache.l2() {
        None => "none",
        Some(l2) if l2.ping().await => "ok",
        Some(_) => "failing",
    };
    let bus = match cache.bus() {
        None => "none",
        Some(bus) if bus.trusted() => "whole",
        Some(_) => "broken",
    };
    let draining = state.service.draining();
    let body = serde_json::json!({
        "status": if draining { "draining" } else if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.service.uptime().as_secs(),
        "stores": stores,
        "cache": {"l2": l2, "bus": bus},
    });
    let status = if healthy && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, Bytes::from(body.to_string())))
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::Endpoint;

    /// The served OpenAPI document names exactly the router's route templates, so neither can
    /// gain or lose a route without the other (schemathesis checks the rest against the
    /// running server in scripts/test.sh).
    #[test]
    fn the_openapi_paths_are_the_routers_templates() {
        let document: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let mut documented: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut routed: Vec<&str> = Endpoint::ALL
            .iter()
            .filter(|e| **e != Endpoint::Unmatched)
            .map(|e| e.label())
            .collect();
        documented.sort_unstable();
        routed.sort_unstable();
        assert_eq!(documented, routed);
    }
}
