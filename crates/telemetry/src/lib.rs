//! Telemetry of the MCP gateway binaries: logs through `tracing-subscriber` (text or JSON) and
//! Prometheus metrics through the `metrics` facade.
//!
//! Libraries (`mcp-gateway-routing`, `mcp-gateway-store`) only emit through `tracing` and
//! `metrics`; this crate is where a binary decides where that goes. An embedder of the routing
//! crate installs its own recorder and subscriber instead.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Format of log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("could not install the metrics recorder: {0}")]
    Metrics(String),
}

/// Installs the global log subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `mcp_gateway_routing=debug,info`). Calling it twice keeps the first subscriber.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), TelemetryError> {
    let env_filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter(filter.to_owned(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Buckets of every `*_seconds` histogram: 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle),
/// so several gateways in one test process share it.
pub fn metrics() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    // `get_or_init` runs the installation once even when several gateways start at the same
    // time in one process (tests): the others wait for it and share the handle.
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "another metrics recorder is installed".to_owned())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(TelemetryError::Metrics)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "mcp_gateway_requests_total",
        "Data-plane requests by adapter, route (mcp, sse, messages) and HTTP status."
    );
    describe_histogram!(
        "mcp_gateway_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a request to sending its response headers."
    );
    describe_counter!(
        "mcp_gateway_mcp_requests_total",
        "JSON-RPC messages posted to streamable HTTP endpoints, by adapter and MCP method."
    );
    describe_counter!(
        "mcp_gateway_refusals_total",
        "Requests the gateway answered itself (limits, unknown sessions, upstream failures), by reason."
    );
    describe_counter!(
        "mcp_gateway_upstream_errors_total",
        "Failures talking to replicas, by adapter, replica and kind (connect, connect_timeout, timeout, io)."
    );
    describe_counter!(
        "mcp_gateway_replica_ejections_total",
        "Times a replica was taken out of placement after a failed connection."
    );
    describe_gauge!(
        "mcp_gateway_sessions_live",
        "Live MCP sessions by adapter and replica."
    );
}
