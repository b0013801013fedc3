//! Trace export over OTLP/gRPC: a collector's gRPC trace service (the generated
//! `TraceServiceServer` of opentelemetry-proto, served by hyper over HTTP/2 on 127.0.0.1:0)
//! receives the spans of a `tools/call` through the gateway. A test binary of its own: the
//! exporting subscriber is process-wide.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_service::{AdapterConfig, Config};
use mcp_gateway_core::AdapterName;
use mcp_gateway_telemetry::{OtlpProtocol, Tracing, TracingConfig};
use mcp_gateway_testkit::{McpSession, Replicas};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use serde_json::json;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_grpc() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });

    let mut tracing_config = TracingConfig::new("gateway-service-test");
    tracing_config.endpoint = Some(format!("http://{addr}"));
    tracing_config.protocol = Some(OtlpProtocol::Grpc);
    tracing_config.batch_delay = Duration::from_millis(50);
    let tracing = Tracing::start(&tracing_config).unwrap();
    mcp_gateway_telemetry::init("warn", Default::default(), Some(&tracing)).unwrap();

    let replicas = Replicas::start(1).await.unwrap();
    let mut config = Config::for_tests();
    config.adapters = vec![AdapterConfig {
        name: AdapterName::new("grpc-traced").unwrap(),
        upstreams: replicas.urls(),
        mcp_path: "/mcp".into(),
        sse_path: "/sse".into(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    }];
    config.tracing = tracing_config;
    let gw = gateway_service::run(config).await.unwrap();
    let url = format!("http://{}/adapters/grpc-traced/mcp", gw.data_addr);
    let mut s = McpSession::open(&url).await.unwrap();
    assert_eq!(s.call_text("whoami", json!({})).await.unwrap(), "r0");

    let mut spans = Vec::new();
    for _ in 0..100 {
        tracing.flush();
        spans = collector.0.lock().unwrap().clone();
        if spans
            .iter()
            .filter(|s| s.name == "tools/call whoami")
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = spans
        .iter()
        .find(|s| s.name == "tools/call whoami" && s.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no SERVER span in {spans:#?}"));
    let client = spans
        .iter()
        .find(|s| s.name == "tools/call whoami" && s.kind == SpanKind::Client as i32)
        .expect("a CLIENT span");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.trace_id, server.trace_id);
    gw.shutdown().await;
    tracing.shutdown();
}
