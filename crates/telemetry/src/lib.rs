//! Telemetry of the MCP gateway binaries: logs through `tracing-subscriber` (text or JSON),
//! Prometheus metrics through the `metrics` facade, OTLP traces ([`trace`]) and the audit trail
//! as JSON lines ([`audit`]).
//!
//! Libraries (`mcp-gateway-routing`, `mcp-gateway-store`) only emit through `tracing`,
//! `metrics` and the ports of `mcp-gateway-core`; this crate is where a binary decides where
//! that goes. An embedder of the routing crate installs its own recorder and subscriber instead.

pub mod audit;
pub mod prometheus;
pub mod trace;

use std::sync::OnceLock;

use mcp_gateway_routing::observe;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use audit::{AuditLog, AuditTarget};
pub use prometheus::MetricsHandle;
pub use trace::{OtlpProtocol, Tracing, TracingConfig};

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
    #[error("tracing: {0}")]
    Tracing(String),
    #[error("audit trail: {0}")]
    Audit(String),
}

/// Installs the global log subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `mcp_gateway_routing=debug,info`). Calling it twice keeps the first subscriber.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), TelemetryError> {
    init(filter, format, None)
}

/// Installs the global subscriber: log lines on stderr and, with `tracing`, the MCP spans of
/// the routing crate exported over OTLP (those spans never reach the log lines, and log events
/// are not exported). Calling it twice keeps the first subscriber.
pub fn init(
    filter: &str,
    format: LogFormat,
    tracing: Option<&Tracing>,
) -> Result<(), TelemetryError> {
    use tracing_subscriber::Layer as _;
    let env_filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter(filter.to_owned(), e.to_string()))?
        .add_directive(
            format!("{}=off", observe::SPAN_TARGET)
                .parse()
                .map_err(|e| TelemetryError::Filter(filter.to_owned(), format!("{e}")))?,
        );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(env_filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_filter(env_filter)
            .boxed(),
    };
    let otel = tracing.map(|t| {
        t.layer().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(observe::SPAN_TARGET, tracing::Level::INFO),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(())
}

/// Every metric family the gateway's crates emit, for the README's list and the Grafana
/// dashboard (a test checks both against it).
pub const METRICS: &[&str] = &[
    "mcp_gateway_requests_total",
    "mcp_gateway_request_duration_seconds",
    "mcp_gateway_mcp_requests_total",
    "mcp_gateway_sessions_live",
    "mcp_gateway_refusals_total",
    "mcp_gateway_upstream_errors_total",
    "mcp_gateway_replica_ejections_total",
    "mcp_gateway_store_up",
    "mcp_gateway_store_errors_total",
    "mcp_gateway_auth_failures_total",
    "mcp_gateway_jwks_fetches_total",
    observe::SERVER_OPERATION_DURATION,
    observe::CLIENT_OPERATION_DURATION,
    observe::SERVER_SESSION_DURATION,
];

/// Installs the process-wide metrics recorder (once; later calls return the same handle), so
/// several gateways in one test process share it. Counters and gauges are kept by
/// `metrics-exporter-prometheus`, histograms in fixed buckets ([`prometheus`]): a sample costs a
/// few atomic additions and is not kept, so memory does not grow with traffic whether or not
/// anybody scrapes.
pub fn metrics() -> Result<MetricsHandle, TelemetryError> {
    static HANDLE: OnceLock<Result<MetricsHandle, String>> = OnceLock::new();
    // `get_or_init` runs the installation once even when several gateways start at the same
    // time in one process (tests): the others wait for it and share the handle.
    HANDLE
        .get_or_init(|| {
            let (recorder, handle) = prometheus::recorder();
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
    describe_histogram!(
        observe::SERVER_OPERATION_DURATION,
        Unit::Seconds,
        "mcp.server.operation.duration: an MCP request or notification from its receipt to the end of its response, by adapter, replica, mcp_method_name, gen_ai_tool_name / gen_ai_prompt_name and error_type."
    );
    describe_histogram!(
        observe::CLIENT_OPERATION_DURATION,
        Unit::Seconds,
        "mcp.client.operation.duration: an MCP request or notification sent to a replica, until the end of its response, with the same labels."
    );
    describe_histogram!(
        observe::SERVER_SESSION_DURATION,
        Unit::Seconds,
        "mcp.server.session.duration: MCP sessions from initialize to their end as the gateway saw it (DELETE; error_type session_not_found or replica_gone otherwise)."
    );
}
