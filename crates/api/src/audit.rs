//! The audit record of every management change (`POST /adapters`, `PUT` and `DELETE
//! /adapters/{name}`), allowed or refused, written through the [`AuditSink`] port.
//!
//! A middleware rather than code in each handler, so no change can skip it. It reads only the
//! request line, the caller and the response status (never a body: an adapter's environment
//! values are secrets).

use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{Method, header};
use mcp_gateway_core::{AuditEvent, AuditPrincipal, Principal};

use crate::ApiState;

/// Records the request when it changes an adapter.
pub async fn record(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(sink) = state.audit.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let named = path.strip_prefix("/adapters/").filter(|n| !n.contains('/'));
    let action = match (req.method(), named) {
        (&Method::POST, None) if path.trim_end_matches('/') == "/adapters" => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::DELETE, Some(_)) => "delete",
        _ => return next.run(req).await,
    };
    let adapter = named.map(str::to_owned);
    let principal = Principal::of(req.extensions()).map(AuditPrincipal::from);
    let started = tokio::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status();
    // A created adapter's name is in its Location; a refused create has none to give.
    let adapter = adapter.or_else(|| {
        res.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.strip_prefix("/adapters/"))
            .map(str::to_owned)
    });
    let ok = status.is_success();
    sink.record(AuditEvent {
        time: mcp_gateway_core::rfc3339(SystemTime::now()),
        kind: "management",
        principal,
        adapter,
        replica: None,
        method: action.to_owned(),
        target: None,
        request_id: None,
        decision: if status.is_client_error() {
            "refused"
        } else {
            "allowed"
        },
        reason: (!ok).then(|| {
            format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
        }),
        outcome: if ok {
            "ok".into()
        } else {
            status.as_u16().to_string()
        },
        status: status.as_u16(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        arguments_sha256: None,
        arguments: None,
    });
    res
}
