//! Traces, metrics and the audit trail, end to end: real MCP servers behind a real gateway,
//! spans received by an OTLP/HTTP receiver that decodes the protobuf, `/metrics` read with a
//! Prometheus text parser, audit lines read back from the file.
//!
//! The names the OpenTelemetry semantic conventions for MCP (semantic-conventions-genai v0.1.0)
//! fix are written out as literals here, so a rename in the code fails these tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gateway_service::{AdapterConfig, Config, Handle};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_gateway_core::AdapterName;
use mcp_gateway_testkit::{Http, McpSession, Replicas, tool_call};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode as Otel};
use prost::Message;
use serde_json::{Value, json};

fn adapter(name: &str, upstreams: Vec<String>) -> AdapterConfig {
    AdapterConfig {
        name: AdapterName::new(name).unwrap(),
        upstreams,
        mcp_path: "/mcp".into(),
        sse_path: "/sse".into(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    }
}

fn mcp_url(gw: &Handle, adapter: &str) -> String {
    format!("http://{}/adapters/{adapter}/mcp", gw.data_addr)
}

async fn scrape(gw: &Handle) -> prometheus_parse::Scrape {
    let url = format!("http://{}/metrics", gw.admin_addr);
    let reply = Http::default()
        .send(Method::GET, &url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// Sorted label pairs of a series (without `le`).
type Labels = Vec<(String, String)>;

/// `(labels, count, finite bucket bounds)` of every series of histogram `name` for `adapter`.
fn histogram(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    adapter: &str,
) -> Vec<(Labels, f64, Vec<f64>)> {
    let mut out: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get("adapter") == Some(adapter))
        .map(|s| {
            let prometheus_parse::Value::Histogram(buckets) = &s.value else {
                panic!("{name} is not a histogram");
            };
            let mut labels: Labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket")
                .count;
            let bounds = buckets
                .iter()
                .map(|b| b.less_than)
                .filter(|b| b.is_finite())
                .collect();
            (labels, inf, bounds)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// The semantic conventions' boundaries for the MCP duration histograms.
const CONVENTION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[tokio::test]
async fn mcp_histograms_count_exactly_the_operations_sent() {
    let replicas = Replicas::start(1).await.unwrap();
    let mut config = Config::for_tests();
    config.adapters = vec![adapter("metered", replicas.urls())];
    let gw = gateway_service::run(config).await.unwrap();
    let url = mcp_url(&gw, "metered");

    // Before any tools/list, a tool name is a client's string: not a label value.
    let mut s = McpSession::open(&url).await.unwrap(); // initialize + notifications/initialized
    s.call_text("echo", json!({"text": "before listing"}))
        .await
        .unwrap();
    let list = s
        .post(&json!({"jsonrpc": "2.0", "id": 50, "method": "tools/list"}))
        .await
        .unwrap();
    assert_eq!(list.status, StatusCode::OK);
    s.call_text("echo", json!({"text": "a"})).await.unwrap();
    s.call_text("echo", json!({"text": "b"})).await.unwrap();
    // A tool error (isError: true) and a protocol error (unknown tool: -32602).
    let bad = s.call("echo", json!({})).await.unwrap();
    assert_eq!(bad.message().unwrap()["result"]["isError"], true);
    let unknown = s.call("no_such_tool", json!({})).await.unwrap();
    assert_eq!(unknown.message().unwrap()["error"]["code"], -32602);
    let session_id = s.id.clone();
    assert!(s.delete().await.unwrap().status.is_success());

    let scrape = scrape(&gw).await;
    let call = |tool: &str, error: Option<&str>| {
        let mut l = vec![
            ("adapter", "metered"),
            ("replica", "0"),
            ("mcp_method_name", "tools/call"),
            ("gen_ai_tool_name", tool),
        ];
        if let Some(e) = error {
            l.push(("error_type", e));
        }
        labels(&l)
    };
    let method = |m: &str| {
        labels(&[
            ("adapter", "metered"),
            ("replica", "0"),
            ("mcp_method_name", m),
        ])
    };
    let mut expected = vec![
        (method("initialize"), 1.0),
        (method("notifications/initialized"), 1.0),
        (method("tools/list"), 1.0),
        (call("_OTHER", None), 1.0),
        (call("echo", None), 2.0),
        (call("echo", Some("tool_error")), 1.0),
        (call("_OTHER", Some("-32602")), 1.0),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    for name in [
        "mcp_server_operation_duration_seconds",
        "mcp_client_operation_duration_seconds",
    ] {
        let got = histogram(&scrape, name, "metered");
        let counts: Vec<_> = got.iter().map(|(l, c, _)| (l.clone(), *c)).collect();
        assert_eq!(counts, expected, "{name}");
        for (_, _, bounds) in &got {
            assert_eq!(bounds, &CONVENTION_BUCKETS, "{name} buckets");
        }
    }
    let sessions = histogram(&scrape, "mcp_server_session_duration_seconds", "metered");
    let sessions: Vec<_> = sessions.iter().map(|(l, c, _)| (l.clone(), *c)).collect();
    assert_eq!(
        sessions,
        [(labels(&[("adapter", "metered"), ("replica", "0")]), 1.0)]
    );
    // No series of the gateway carries the session id.
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.labels.values().all(|v| *v != session_id)),
        "a session id became a label value"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn live_sessions_per_replica_are_counted_from_redis_by_every_gateway() {
    let redis = mcp_gateway_testkit::RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let start = || {
        let mut config = Config::for_tests();
        config.adapters = vec![adapter("shared-live", replicas.urls())];
        config.session_store = gateway_service::SessionStoreConfig::Redis {
            url: redis.url(),
            password: None,
            refresh_after: Duration::from_secs(30),
        };
        config.live_sessions_every = Duration::from_millis(100);
        gateway_service::run(config)
    };
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    // Three sessions through gateway A: two on replica 0, one on replica 1.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(McpSession::open(&mcp_url(&a, "shared-live")).await.unwrap());
    }
    let gauge = |scrape: &prometheus_parse::Scrape, replica: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "mcp_gateway_sessions_live"
                    && s.labels.get("adapter") == Some("shared-live")
                    && s.labels.get("replica") == Some(replica)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("not a gauge"),
            })
    };
    // Gateway B never saw these sessions; it reads them from Redis.
    let mut last = (None, None);
    for _ in 0..50 {
        let scrape = scrape(&b).await;
        last = (gauge(&scrape, "0"), gauge(&scrape, "1"));
        if last == (Some(2.0), Some(1.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, (Some(2.0), Some(1.0)));
    sessions[0].delete().await.unwrap();
    for _ in 0..50 {
        let scrape = scrape(&b).await;
        last = (gauge(&scrape, "0"), gauge(&scrape, "1"));
        if last == (Some(1.0), Some(1.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, (Some(1.0), Some(1.0)));
    a.shutdown().await;
    b.shutdown().await;
}

/// The dashboard under deployment/ and the README's metrics list name exactly the metrics the
/// gateway has.
#[test]
fn dashboard_and_readme_use_the_gateways_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deployment/grafana/mcp-gateway-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let known = mcp_gateway_telemetry::METRICS;
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Metric names are the identifiers a selector (`{`) or a range (`[`) follows.
            let names: Vec<&str> = expr
                .match_indices(['{', '['])
                .filter_map(|(at, _)| {
                    let head = &expr[..at];
                    let start = head
                        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .map_or(0, |i| i + 1);
                    Some(&head[start..]).filter(|n| n.starts_with("mcp_"))
                })
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(known.contains(&family), "dashboard uses unknown {name}");
            }
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for name in known {
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
    }
}

// === traces ===

/// An OTLP/HTTP trace receiver on 127.0.0.1:0 that decodes the protobuf it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let this = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = this.spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let spans = spans.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let spans = spans.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                for ss in rs.scope_spans {
                                    spans.lock().unwrap().extend(ss.spans);
                                }
                            }
                            let mut res = Response::new(Full::new(Bytes::new()));
                            res.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (this, addr)
    }

    async fn wait_for(&self, tracing: &mcp_gateway_telemetry::Tracing, n: usize) -> Vec<Span> {
        for _ in 0..100 {
            tracing.flush();
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "received {} spans, expected {n}",
            self.spans.lock().unwrap().len()
        );
    }
}

/// A forwarding hop in front of a replica that records the `traceparent` each request
/// carries, so the test sees what the replica received.
async fn recording_hop(upstream: String) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<hyper::body::Incoming>();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (client, seen, upstream) = (client.clone(), seen2.clone(), upstream.clone());
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let (client, seen, upstream) = (client.clone(), seen.clone(), upstream.clone());
                    async move {
                        seen.lock().unwrap().push(
                            req.headers()
                                .get("traceparent")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
                        *req.uri_mut() = format!("{upstream}{pq}").parse().unwrap();
                        client.request(req).await
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exporting tracer and global subscriber of this test process, sending to `endpoint`.
fn tracing_to(endpoint: SocketAddr) -> &'static mcp_gateway_telemetry::Tracing {
    static TRACING: OnceLock<mcp_gateway_telemetry::Tracing> = OnceLock::new();
    TRACING.get_or_init(|| {
        let mut config = mcp_gateway_telemetry::TracingConfig::new("gateway-service-test");
        config.endpoint = Some(format!("http://{endpoint}"));
        config.batch_delay = Duration::from_millis(50);
        let tracing = mcp_gateway_telemetry::Tracing::start(&config).unwrap();
        mcp_gateway_telemetry::init("warn", Default::default(), Some(&tracing)).unwrap();
        tracing
    })
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const META_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const META_SPAN: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_traced_to_an_otlp_collector() {
    let (receiver, otlp) = Receiver::start().await;
    let tracing = tracing_to(otlp);
    let replicas = Replicas::start(1).await.unwrap();
    let (hop, seen) = recording_hop(replicas.urls()[0].clone()).await;
    let mut config = Config::for_tests();
    config.adapters = vec![adapter("traced", vec![format!("http://{hop}")])];
    config.tracing.endpoint = Some(format!("http://{otlp}"));
    let gw = gateway_service::run(config).await.unwrap();

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let mut s = McpSession::open_with(&mcp_url(&gw, "traced"), &[("traceparent", &traceparent)])
        .await
        .unwrap();
    assert_eq!(
        s.call_text("echo", json!({"text": "hi"})).await.unwrap(),
        "hi"
    );
    // A tool error, with the trace context in params._meta (SEP-414), which wins.
    let mut call = tool_call(7, "echo", json!({}));
    call["params"]["_meta"] = json!({"traceparent": format!("00-{META_TRACE}-{META_SPAN}-01")});
    // `_meta` first, as the SDKs write it.
    let params = call["params"].take();
    let mut ordered = serde_json::Map::new();
    ordered.insert("_meta".into(), params["_meta"].clone());
    ordered.insert("name".into(), params["name"].clone());
    ordered.insert("arguments".into(), params["arguments"].clone());
    call["params"] = Value::Object(ordered);
    let reply = s.post(&call).await.unwrap();
    assert_eq!(reply.message().unwrap()["result"]["isError"], true);

    // initialize, notifications/initialized and two calls: a SERVER and a CLIENT span each.
    let spans = receiver.wait_for(tracing, 8).await;
    let by_name = |name: &str, kind: SpanKind| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.kind == kind as i32)
            .cloned()
            .collect()
    };
    let servers = by_name("tools/call echo", SpanKind::Server);
    let clients = by_name("tools/call echo", SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (2, 2), "{spans:#?}");
    let (ok_server, err_server) = if hex(&servers[0].trace_id) == CLIENT_TRACE {
        (&servers[0], &servers[1])
    } else {
        (&servers[1], &servers[0])
    };

    // The client's traceparent header is the SERVER span's parent.
    assert_eq!(hex(&ok_server.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&ok_server.parent_span_id), CLIENT_SPAN);
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "echo"),
        ("gen_ai.operation.name", "execute_tool"),
        ("jsonrpc.request.id", "1"),
        ("mcp.protocol.version", "2025-11-25"),
        ("mcp.session.id", s.id.as_str()),
        ("network.transport", "tcp"),
        ("network.protocol.name", "http"),
        ("mcp_gateway.adapter", "traced"),
        ("mcp_gateway.replica", "0"),
    ] {
        assert_eq!(attr(ok_server, key).as_deref(), Some(value), "SERVER {key}");
    }
    assert_eq!(attr(ok_server, "error.type"), None);
    assert_ne!(
        ok_server.status.as_ref().map_or(0, |s| s.code),
        Otel::Error as i32
    );

    // The CLIENT span is its child, and its context is what the replica received.
    let ok_client = clients
        .iter()
        .find(|c| c.parent_span_id == ok_server.span_id)
        .expect("a CLIENT span under the SERVER span");
    assert_eq!(ok_client.trace_id, ok_server.trace_id);
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "echo"),
        ("jsonrpc.request.id", "1"),
        ("mcp.session.id", s.id.as_str()),
        ("server.address", "127.0.0.1"),
        ("server.port", &hop.port().to_string()),
        ("mcp_gateway.replica", "0"),
    ] {
        assert_eq!(attr(ok_client, key).as_deref(), Some(value), "CLIENT {key}");
    }
    let propagated = format!(
        "00-{}-{}-01",
        hex(&ok_client.trace_id),
        hex(&ok_client.span_id)
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&Some(propagated.clone())),
        "the replica received {seen:?}, not {propagated}"
    );

    // params._meta wins over the header; the tool error is the span's error.
    assert_eq!(hex(&err_server.trace_id), META_TRACE);
    assert_eq!(hex(&err_server.parent_span_id), META_SPAN);
    assert_eq!(attr(err_server, "jsonrpc.request.id").as_deref(), Some("7"));
    assert_eq!(
        attr(err_server, "error.type").as_deref(),
        Some("tool_error")
    );
    assert_eq!(
        err_server.status.as_ref().map(|s| s.code),
        Some(Otel::Error as i32)
    );
    let err_client = clients
        .iter()
        .find(|c| c.parent_span_id == err_server.span_id)
        .expect("a CLIENT span under the failed SERVER span");
    assert_eq!(
        attr(err_client, "error.type").as_deref(),
        Some("tool_error")
    );

    // Methods without a target are named by the method alone.
    assert_eq!(by_name("initialize", SpanKind::Server).len(), 1);
    assert_eq!(
        by_name("notifications/initialized", SpanKind::Client).len(),
        1
    );
    gw.shutdown().await;
}

// === audit ===

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn audit_lines_record_management_changes_and_tool_calls() {
    use mcp_gateway_auth::{ApiKeyConfig, AuthConfig, hash_api_key};
    const ADMIN_KEY: &str = "mcpgw_admin_key_for_audit_tests_0000000000";
    const CAROL_KEY: &str = "mcpgw_carol_key_for_audit_tests_0000000000";
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let replicas = Replicas::start(1).await.unwrap();
    let mut config = Config::for_tests();
    config.management = true;
    config.data_dir = dir.path().join("data");
    config.audit = Some(mcp_gateway_telemetry::AuditTarget::File(audit.clone()));
    config.auth.tokens = Some(AuthConfig {
        api_keys: vec![
            ApiKeyConfig {
                subject: "admin".into(),
                roles: vec!["mcp.admin".into()],
                sha256: hash_api_key(ADMIN_KEY),
            },
            ApiKeyConfig {
                subject: "carol".into(),
                roles: vec!["team-b".into()],
                sha256: hash_api_key(CAROL_KEY),
            },
        ],
        ..AuthConfig::default()
    });
    let mut fronted = adapter("audited", replicas.urls());
    fronted.required_roles = vec!["team-a".into()];
    config.adapters = vec![fronted];
    let gw = gateway_service::run(config).await.unwrap();
    let admin = format!("Bearer {ADMIN_KEY}");
    let carol = format!("Bearer {CAROL_KEY}");

    // Management: create, update, a refused delete, delete. The spec holds a secret value.
    let api = |method: Method, path: &str, who: &str, body: Option<Value>| {
        let url = format!("http://{}{path}", gw.data_addr);
        let who = who.to_owned();
        async move {
            let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            Http::default()
                .send(
                    method,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("authorization", &who),
                    ],
                    body,
                )
                .await
                .unwrap()
        }
    };
    let upstream = replicas.urls()[0].clone();
    let spec = |n: u32| {
        json!({
            "name": "managed",
            "upstreams": [upstream.clone()],
            "environmentVariables": {"API_TOKEN": "s3cret-value"},
            "replicaCount": n,
        })
    };
    assert_eq!(
        api(Method::POST, "/adapters", &admin, Some(spec(1)))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api(Method::PUT, "/adapters/managed", &admin, Some(spec(1)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api(Method::DELETE, "/adapters/managed", &carol, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api(Method::DELETE, "/adapters/managed", &admin, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // Tool calls: allowed for the admin, refused for carol (no team-a role).
    let url = mcp_url(&gw, "audited");
    let mut s = McpSession::open_with(&url, &[("authorization", &admin)])
        .await
        .unwrap();
    s.call_text("echo", json!({"text": "top secret argument"}))
        .await
        .unwrap();
    let refused = Http::default()
        .post_json(
            &url,
            &[("authorization", &carol)],
            &tool_call(9, "echo", json!({"text": "carol's argument"})),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    gw.shutdown().await; // writes every queued line

    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [
        "s3cret-value",
        "top secret argument",
        "carol's argument",
        ADMIN_KEY,
        CAROL_KEY,
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the audit trail");
    }
    let lines = audit_lines(&audit);
    let management: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "management")
        .map(|l| {
            (
                l["method"].as_str().unwrap().to_owned(),
                l["adapter"].as_str().unwrap_or("").to_owned(),
                l["principal"]["subject"].as_str().unwrap().to_owned(),
                l["decision"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |m: &str, who: &str, d: &str, o: &str, st: u64| {
        (
            m.to_owned(),
            "managed".to_owned(),
            who.to_owned(),
            d.to_owned(),
            o.to_owned(),
            st,
        )
    };
    assert_eq!(
        management,
        [
            row("create", "admin", "allowed", "ok", 201),
            row("update", "admin", "allowed", "ok", 200),
            row("delete", "carol", "refused", "403", 403),
            row("delete", "admin", "allowed", "ok", 204),
        ]
    );
    let calls: Vec<_> = lines.iter().filter(|l| l["kind"] == "mcp").collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let (allowed, refused) = (calls[0], calls[1]);
    let expected_sha = {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(br#"{"text":"top secret argument"}"#))
    };
    assert_eq!(allowed["method"], "tools/call");
    assert_eq!(allowed["target"], "echo");
    assert_eq!(allowed["adapter"], "audited");
    assert_eq!(allowed["replica"], "0");
    assert_eq!(allowed["principal"]["subject"], "admin");
    assert_eq!(
        allowed["principal"]["issuer"],
        mcp_gateway_core::Principal::API_KEY_ISSUER
    );
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["outcome"], "ok");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["arguments_sha256"], expected_sha.as_str());
    assert!(allowed["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(allowed.get("arguments").is_none());
    assert_eq!(refused["method"], "tools/call");
    assert_eq!(refused["target"], "echo");
    assert_eq!(refused["principal"]["subject"], "carol");
    assert_eq!(refused["decision"], "refused");
    assert_eq!(refused["reason"], "forbidden");
    assert_eq!(refused["status"], 403);
    assert!(refused.get("replica").is_none());
    assert!(
        chrono_like(allowed["time"].as_str().unwrap()),
        "{}",
        allowed["time"]
    );
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn chrono_like(t: &str) -> bool {
    t.len() >= 20 && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b'T' && t.ends_with('Z')
}
