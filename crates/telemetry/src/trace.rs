//! OTLP trace export: the spans the routing crate opens (target
//! [`SPAN_TARGET`](mcp_gateway_routing::observe::SPAN_TARGET)) go through
//! `tracing-opentelemetry` to an OpenTelemetry SDK tracer whose batch processor sends them to a
//! collector over HTTP/protobuf or gRPC.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::Deserialize;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::TelemetryError;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, to `{endpoint}/v1/traces` (default port 4318).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (default port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            other => Err(format!(
                "unknown OTLP protocol {other:?}: use http/protobuf or grpc"
            )),
        }
    }
}

/// Where and how traces are exported. Every field falls back to the standard
/// `OTEL_EXPORTER_OTLP_*` environment variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector: `http://collector:4318` (HTTP; `/v1/traces` is appended unless the path
    /// already ends so) or `http://collector:4317` (gRPC). `None`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT`; with neither set, tracing is off.
    pub endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP.
    pub protocol: Option<OtlpProtocol>,
    /// Share of traces started here that are kept, 0.0 to 1.0 (default 1.0). A client's
    /// sampling decision (the `traceparent` flag) is followed.
    pub sample_ratio: f64,
    /// `service.name` of the spans, unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
    /// Longest wait before a batch of spans is sent (default 5 s).
    pub batch_delay: Duration,
}

impl TracingConfig {
    pub fn new(service_name: &str) -> Self {
        Self {
            endpoint: None,
            protocol: None,
            sample_ratio: 1.0,
            service_name: service_name.to_owned(),
            batch_delay: Duration::from_secs(5),
        }
    }

    /// Whether a collector is configured here or in the environment.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    }

    fn protocol(&self) -> Result<OtlpProtocol, TelemetryError> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = env(var) {
                return v
                    .parse()
                    .map_err(|e| TelemetryError::Tracing(format!("{var}: {e}")));
            }
        }
        Ok(OtlpProtocol::HttpProtobuf)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The HTTP endpoint of traces for a base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The exporting tracer; flushes what it holds when shut down.
#[derive(Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and tracer. Must run inside the Tokio runtime the exports use.
    pub fn start(config: &TracingConfig) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TelemetryError::Tracing("trace export needs a Tokio runtime".into()))?;
        let build_err = |e: opentelemetry_otlp::ExporterBuildError| {
            TelemetryError::Tracing(format!("cannot build the OTLP exporter: {e}"))
        };
        let exporter = match config.protocol()? {
            OtlpProtocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(OnRuntime {
                        runtime,
                        client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                            Duration::from_secs(10),
                            None,
                        ),
                    });
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(traces_url(e));
                }
                b.build().map_err(build_err)?
            }
            OtlpProtocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build().map_err(build_err)?
            }
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(config.batch_delay)
                    .build(),
            )
            .build();
        let ratio = config.sample_ratio.clamp(0.0, 1.0);
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(config.service_name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource.build())
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mcp-gateway"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
    }

    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "could not flush traces");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "could not shut the trace exporter down");
        }
    }
}

/// The W3C trace context propagator for the routing crate.
pub fn propagator() -> Arc<dyn mcp_gateway_routing::TracePropagator> {
    Arc::new(W3c(TraceContextPropagator::new()))
}

struct W3c(TraceContextPropagator);

/// `traceparent` and `tracestate`, read once from the routing crate's carrier.
struct Carrier([String; 2]);

impl opentelemetry::propagation::Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        let i = ["traceparent", "tracestate"]
            .iter()
            .position(|k| *k == key)?;
        Some(self.0[i].as_str()).filter(|v| !v.is_empty())
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl mcp_gateway_routing::TracePropagator for W3c {
    fn set_parent(&self, span: &Span, get: &dyn Fn(&str) -> Option<String>) {
        let carrier = Carrier([
            get("traceparent").unwrap_or_default(),
            get("tracestate").unwrap_or_default(),
        ]);
        let cx = self.0.extract(&carrier);
        let _ = span.set_parent(cx);
    }

    fn inject(&self, span: &Span, headers: &mut http::HeaderMap) {
        self.0
            .inject_context(&span.context(), &mut HeaderInjector(headers));
    }
}

/// An HTTP client whose requests run on the gateway's Tokio runtime, so the SDK's batch
/// processor (a thread of its own) can export through the workspace's hyper.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: opentelemetry_http::hyper::HyperClient,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| -> HttpError { Box::new(e) })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_owned()
        );
        assert_eq!(
            traces_url("http://c:4318/"),
            "http://c:4318/v1/traces".to_owned()
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces".to_owned()
        );
    }

    #[test]
    fn protocols_parse_as_the_otel_variables_spell_them() {
        assert_eq!(
            "http/protobuf".parse::<OtlpProtocol>(),
            Ok(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!("grpc".parse::<OtlpProtocol>(), Ok(OtlpProtocol::Grpc));
        assert!("http/json".parse::<OtlpProtocol>().is_err());
    }
}
