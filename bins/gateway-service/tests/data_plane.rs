//! The data plane end to end, in-process: real MCP servers (`mcp-example-server`) on loopback
//! ports behind a real gateway, driven over real sockets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use gateway_service::{AdapterConfig, Config, Handle};
use http::{Method, StatusCode};
use mcp_gateway_core::AdapterName;
use mcp_gateway_testkit::{
    DeadNode, EventReader, Http, McpSession, Replicas, black_hole, closed_port, failing_server,
    initialize_request, result_text, stateless_call,
};
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

async fn gateway(adapters: Vec<AdapterConfig>, tweak: impl FnOnce(&mut Config)) -> Handle {
    let mut config = Config::for_tests();
    config.adapters = adapters;
    tweak(&mut config);
    gateway_service::run(config).await.expect("gateway starts")
}

fn mcp_url(gw: &Handle, adapter: &str) -> String {
    format!("http://{}/adapters/{adapter}/mcp", gw.data_addr)
}

/// Two replicas behind one adapter named `demo`.
async fn two_replicas() -> (Replicas, Handle) {
    let replicas = Replicas::start(2).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |_| {}).await;
    (replicas, gw)
}

fn error_code(reply: &mcp_gateway_testkit::Reply) -> i64 {
    let body: Value = serde_json::from_slice(&reply.body).expect("JSON-RPC error body");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    body["error"]["code"].as_i64().expect("error code")
}

#[tokio::test]
async fn sessions_keep_their_replica_and_spread_over_both() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let runs = (0..20).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut s = McpSession::open(&url).await?;
            let mut seen = HashSet::new();
            for i in 1..=5 {
                let text = s.call_text("counter_increment", json!({})).await?;
                let (replica, count) = text.rsplit_once(':').expect("replica:count");
                assert_eq!(count, i.to_string(), "session state lost: {text}");
                seen.insert(replica.to_owned());
            }
            assert_eq!(seen.len(), 1, "one session, one replica: {seen:?}");
            anyhow::Ok(seen.into_iter().next().unwrap_or_default())
        })
    });
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for run in runs {
        *per_replica.entry(run.await.unwrap().unwrap()).or_default() += 1;
    }
    assert_eq!(per_replica.len(), 2, "both replicas used: {per_replica:?}");
    assert!(
        per_replica.values().all(|&n| n >= 5),
        "load spread: {per_replica:?}"
    );
}

#[tokio::test]
async fn new_sessions_go_to_the_replica_with_fewest_sessions() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let mut sessions = Vec::new();
    let mut order = Vec::new();
    for _ in 0..4 {
        let mut s = McpSession::open(&url).await.unwrap();
        order.push(s.call_text("whoami", json!({})).await.unwrap());
        sessions.push(s);
    }
    assert_eq!(
        order,
        ["r0", "r1", "r0", "r1"],
        "ties go to the lowest ordinal"
    );
    // Ending r0's sessions makes r0 the emptier replica again.
    sessions[0].delete().await.unwrap();
    sessions[2].delete().await.unwrap();
    let mut s = McpSession::open(&url).await.unwrap();
    assert_eq!(s.call_text("whoami", json!({})).await.unwrap(), "r0");
}

#[tokio::test]
async fn stateless_requests_go_to_any_replica() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();
    let mut seen = HashSet::new();
    let calls = (0..20).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            stateless_call(&http, &url, "slow", json!({"ms": 50, "steps": 1})).await
        })
    });
    for call in calls {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(
            reply.header("mcp-session-id").is_none(),
            "no session in 2026-07-28"
        );
        assert_eq!(result_text(&reply.message().unwrap()).unwrap(), "done");
    }
    for _ in 0..6 {
        let reply = stateless_call(&http, &url, "whoami", json!({}))
            .await
            .unwrap();
        seen.insert(result_text(&reply.message().unwrap()).unwrap());
    }
    assert!(!seen.is_empty());
    // Concurrent requests are spread by least in-flight: both replicas answered the slow ones.
    let metrics = Http::default()
        .send(
            Method::GET,
            &format!("http://{}/metrics", gw.admin_addr),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap()
        .text();
    assert!(metrics.contains("mcp_gateway_requests_total"), "{metrics}");
}

#[tokio::test]
async fn stateless_requests_spread_by_least_in_flight() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();
    // Two slow calls in flight together must land on different replicas.
    let a = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { stateless_call(&http, &url, "slow", json!({"ms": 600, "steps": 1})).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = stateless_call(&http, &url, "whoami", json!({}))
        .await
        .unwrap();
    assert_eq!(
        result_text(&b.message().unwrap()).unwrap(),
        "r1",
        "r0 is busy"
    );
    assert_eq!(a.await.unwrap().unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn header_that_disagrees_with_the_body_is_refused() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();
    let call = mcp_gateway_testkit::tool_call(9, "echo", json!({"text": "x"}));
    let reply = http
        .post_json(
            &url,
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "whoami"),
            ],
            &call,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&reply), -32020);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["id"], 9, "the error answers the request id");
}

#[tokio::test]
async fn unknown_invalid_and_deleted_sessions() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();
    let call = mcp_gateway_testkit::tool_call(1, "whoami", json!({}));

    let reply = http
        .post_json(&url, &[("mcp-session-id", "no-such-session")], &call)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&reply), -32001);

    let long = "x".repeat(300);
    for bad in ["has space", long.as_str()] {
        let reply = http
            .post_json(&url, &[("mcp-session-id", bad)], &call)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }

    let mut s = McpSession::open(&url).await.unwrap();
    s.call_text("whoami", json!({})).await.unwrap();
    assert!(s.delete().await.unwrap().status.is_success());
    let reply = s.call("whoami", json!({})).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "a deleted session is gone"
    );

    let reply = http
        .post_json(
            &format!("http://{}/adapters/nope/mcp", gw.data_addr),
            &[],
            &call,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = http
        .send(Method::PUT, &url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("GET, POST, DELETE"));
}

#[tokio::test]
async fn get_stream_and_delete_reach_the_session_replica() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let _first = McpSession::open(&url).await.unwrap(); // on r0
    let s = McpSession::open(&url).await.unwrap(); // on r1
    let res = s
        .http
        .open(
            Method::GET,
            &url,
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &s.id),
                ("last-event-id", "0"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    drop(res);
    assert_eq!(s.delete().await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn progress_events_reach_the_client_as_they_are_sent() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let s = McpSession::open(&url).await.unwrap();
    let call = json!({
        "jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": 1500, "steps": 3}, "_meta": {"progressToken": "p"}}
    });
    let res = s
        .http
        .open(
            Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-session-id", &s.id),
            ],
            call.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut events = EventReader::new(res.into_body());
    let mut progress_at = Vec::new();
    let mut result_at = None;
    while let Some((ev, at)) = events.next(Duration::from_secs(10)).await.unwrap() {
        let msg: Value = serde_json::from_str(&ev.data).unwrap();
        if msg["method"] == "notifications/progress" {
            progress_at.push(at);
        } else if msg["id"] == 5 {
            result_at = Some(at);
        }
    }
    let result_at = result_at.expect("final result");
    assert_eq!(progress_at.len(), 3, "{progress_at:?}");
    // The first notification is sent ~500 ms in, the result ~1500 ms in: a buffering proxy
    // would deliver them together.
    assert!(
        result_at - progress_at[0] >= Duration::from_millis(700),
        "progress {progress_at:?} vs result {result_at:?}"
    );
}

#[tokio::test]
async fn legacy_sse_sessions_use_the_rewritten_endpoint() {
    let (_replicas, gw) = two_replicas().await;
    let http = Http::default();
    let sse_url = format!("http://{}/adapters/demo/sse", gw.data_addr);
    let mut streams = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let res = http
            .open(
                Method::GET,
                &sse_url,
                &[("accept", "text/event-stream")],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut events = EventReader::new(res.into_body());
        let (endpoint, _) = events.next(Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
        assert!(
            endpoint
                .data
                .starts_with("/adapters/demo/messages?sessionId="),
            "rewritten to point back through the gateway: {}",
            endpoint.data
        );
        let post_url = format!("http://{}{}", gw.data_addr, endpoint.data);
        let post = |msg: Value| {
            let (http, post_url) = (http.clone(), post_url.clone());
            async move { http.post_json(&post_url, &[], &msg).await.unwrap() }
        };
        assert_eq!(
            post(initialize_request(0)).await.status,
            StatusCode::ACCEPTED
        );
        let init = events
            .next(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .0;
        assert!(init.data.contains("protocolVersion"), "{init:?}");
        post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        for i in 1..=3 {
            let reply = post(mcp_gateway_testkit::tool_call(
                i,
                "counter_increment",
                json!({}),
            ))
            .await;
            assert_eq!(reply.status, StatusCode::ACCEPTED);
            let ev = events
                .next(Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap()
                .0;
            let text = result_text(&serde_json::from_str(&ev.data).unwrap()).unwrap();
            let (replica, count) = text.rsplit_once(':').unwrap();
            assert_eq!(count, i.to_string());
            seen.insert(replica.to_owned());
        }
        streams.push(events);
    }
    assert_eq!(seen.len(), 2, "both replicas: {seen:?}");

    let reply = http
        .post_json(
            &format!(
                "http://{}/adapters/demo/messages?sessionId=unknown",
                gw.data_addr
            ),
            &[],
            &initialize_request(0),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = http
        .post_json(
            &format!("http://{}/adapters/demo/messages", gw.data_addr),
            &[],
            &initialize_request(0),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_killed_replica_s_sessions_get_404_and_start_over_elsewhere() {
    let (mut replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let mut on_r0 = McpSession::open(&url).await.unwrap();
    let mut on_r1 = McpSession::open(&url).await.unwrap();
    assert_eq!(on_r0.call_text("whoami", json!({})).await.unwrap(), "r0");
    assert_eq!(on_r1.call_text("whoami", json!({})).await.unwrap(), "r1");

    replicas.kill(0).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), on_r0.call("whoami", json!({})))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert_eq!(error_code(&reply), -32001);
    // The client starts over: the new session lands on the surviving replica, every time.
    for _ in 0..3 {
        let mut again = McpSession::open(&url).await.unwrap();
        assert_eq!(again.call_text("whoami", json!({})).await.unwrap(), "r1");
    }
    assert_eq!(on_r1.call_text("whoami", json!({})).await.unwrap(), "r1");
}

#[tokio::test]
async fn new_sessions_skip_a_dead_replica_without_failing() {
    let replicas = Replicas::start(1).await.unwrap();
    let dead = format!("http://{}", closed_port().unwrap());
    let gw = gateway(
        vec![adapter("demo", vec![dead, replicas.urls()[0].clone()])],
        |_| {},
    )
    .await;
    let url = mcp_url(&gw, "demo");
    for _ in 0..3 {
        let mut s = McpSession::open(&url)
            .await
            .expect("retried on the live replica");
        assert_eq!(s.call_text("whoami", json!({})).await.unwrap(), "r0");
    }
}

/// Opens `n` sessions one after the other; returns how many failed and the replicas (by
/// `whoami`) the others landed on.
async fn open_sessions(url: &str, n: usize) -> (usize, HashMap<String, usize>) {
    let mut failed = 0;
    let mut landed: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        match McpSession::open(url).await {
            Ok(mut s) => {
                let who = s.call_text("whoami", json!({})).await.unwrap();
                *landed.entry(who).or_default() += 1;
            }
            Err(_) => failed += 1,
        }
    }
    (failed, landed)
}

#[tokio::test]
async fn a_replica_answering_500_to_initialize_gets_no_new_sessions() {
    // Replica 0 (first in placement order, and always the emptiest) answers every request 500.
    let (broken, hits, _task) = failing_server(500).await.unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let mut upstreams = vec![format!("http://{broken}")];
    upstreams.extend(replicas.urls());
    let gw = gateway(vec![adapter("demo", upstreams)], |_| {}).await;
    let url = mcp_url(&gw, "demo");
    let n = 60;
    let (failed, landed) = open_sessions(&url, n).await;
    let hits = hits.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "new sessions failed: {failed}/{n} ({:.0} %); initialize requests the broken replica saw: \
         {hits}; sessions per healthy replica: {landed:?}",
        100.0 * failed as f64 / n as f64
    );
    assert_eq!(
        failed, 0,
        "a 5xx to initialize is retried on the next replica"
    );
    assert_eq!(
        hits, 3,
        "ejected after 3 consecutive 5xx, not tried again within the ejection"
    );
    assert_eq!(landed.values().sum::<usize>(), n);
    assert!(landed.values().all(|&k| k >= n / 2 - 1), "{landed:?}");
}

#[tokio::test]
async fn an_ejected_replica_is_readmitted_after_its_backoff_and_ejected_longer_if_still_failing() {
    let (broken, hits, _task) = failing_server(503).await.unwrap();
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(
        vec![adapter(
            "demo",
            vec![format!("http://{broken}"), replicas.urls()[0].clone()],
        )],
        |c| {
            c.routing.eject_after_5xx = 1;
            c.routing.eject_for = Duration::from_millis(300);
        },
    )
    .await;
    let url = mcp_url(&gw, "demo");
    let seen = || hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(open_sessions(&url, 3).await.0, 0);
    assert_eq!(seen(), 1, "ejected by its first 503");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(open_sessions(&url, 3).await.0, 0);
    assert_eq!(
        seen(),
        2,
        "re-admitted after 300 ms: one probe, ejected again"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(open_sessions(&url, 3).await.0, 0);
    assert_eq!(seen(), 2, "the second ejection lasts 600 ms");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open_sessions(&url, 1).await.0, 0);
    assert_eq!(seen(), 3);
}

#[tokio::test]
async fn a_connect_timeout_on_a_new_session_is_retried_on_the_next_replica() {
    let dead = DeadNode::start().unwrap();
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(
        vec![adapter(
            "demo",
            vec![format!("http://{}", dead.addr), replicas.urls()[0].clone()],
        )],
        |c| c.routing.connect_timeout = Duration::from_millis(300),
    )
    .await;
    let url = mcp_url(&gw, "demo");
    let started = std::time::Instant::now();
    let (failed, landed) = open_sessions(&url, 5).await;
    assert_eq!(failed, 0, "timed out on the dead node, then opened on r0");
    assert_eq!(landed.get("r0"), Some(&5));
    // Only the first waited for the timeout: the dead node was ejected by it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Legacy SSE sessions too (a GET, nothing to replay), on a gateway that has not yet ejected
    // the dead node.
    let upstreams = vec![format!("http://{}", dead.addr), replicas.urls()[0].clone()];
    let gw = gateway(vec![adapter("demo", upstreams)], |c| {
        c.routing.connect_timeout = Duration::from_millis(300)
    })
    .await;
    let http = Http::default();
    let res = http
        .open(
            Method::GET,
            &format!("http://{}/adapters/demo/sse", gw.data_addr),
            &[("accept", "text/event-stream")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn upstream_failures_are_clear_and_bounded() {
    let dead = format!("http://{}", closed_port().unwrap());
    let (hole, _task) = black_hole().await.unwrap();
    let gw = gateway(
        vec![
            adapter("dead", vec![dead]),
            adapter("hang", vec![format!("http://{hole}")]),
        ],
        |c| c.routing.request_timeout = Duration::from_millis(500),
    )
    .await;
    let http = Http::default();
    let reply = http
        .post_json(&mcp_url(&gw, "dead"), &[], &initialize_request(3))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["id"], 3);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{body}"
    );

    let started = std::time::Instant::now();
    let reply = http
        .post_json(&mcp_url(&gw, "hang"), &[], &initialize_request(4))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn limits_refuse_with_clear_errors() {
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |c| {
        c.routing.max_body_bytes = 64 * 1024;
        c.routing.max_header_bytes = 4 * 1024;
        c.routing.max_sessions = 2;
    })
    .await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();

    let big = mcp_gateway_testkit::tool_call(1, "echo", json!({"text": "x".repeat(100 * 1024)}));
    let reply = http.post_json(&url, &[], &big).await.unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.text().contains("larger than the limit"));

    let huge = "y".repeat(5000);
    let reply = http
        .post_json(&url, &[("x-big", &huge)], &initialize_request(1))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let _a = McpSession::open(&url).await.unwrap();
    let _b = McpSession::open(&url).await.unwrap();
    let reply = http
        .post_json(&url, &[], &initialize_request(1))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.text().contains("limit of 2 live sessions"));

    let metrics = http
        .send(
            Method::GET,
            &format!("http://{}/metrics", gw.admin_addr),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap()
        .text();
    for reason in ["body_too_large", "headers_too_large", "too_many_sessions"] {
        assert!(
            metrics.contains(&format!(
                "mcp_gateway_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted"
        );
    }
}

#[tokio::test]
async fn dns_rebinding_protection_checks_host_and_origin() {
    let (_replicas, gw) = two_replicas().await;
    let url = mcp_url(&gw, "demo");
    let http = Http::default();
    let init = initialize_request(1);
    let reply = http
        .post_json(&url, &[("host", "evil.example")], &init)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = http
        .post_json(&url, &[("origin", "https://evil.example")], &init)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = http
        .post_json(&url, &[("origin", "http://localhost:6274")], &init)
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a local browser tool may connect"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |_| {}).await;
    let mut s = McpSession::open(&mcp_url(&gw, "demo")).await.unwrap();
    let text = "z".repeat(3 * 1024 * 1024);
    let echoed = s.call_text("echo", json!({"text": text})).await.unwrap();
    assert_eq!(echoed.len(), text.len());
    let big = s.call_text("big", json!({"kib": 8192})).await.unwrap();
    assert_eq!(big.len(), 8192 * 1024);
}

#[tokio::test]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let (_replicas, gw) = two_replicas().await;
    let mut s = McpSession::open(&mcp_url(&gw, "demo")).await.unwrap();
    s.call_text("whoami", json!({})).await.unwrap();
    let http = Http::default();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("http://{}{path}", gw.admin_addr));
        async move {
            http.send(Method::GET, &url, &[], Bytes::new())
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    assert_eq!(get("/readyz").await.status, StatusCode::OK);
    let metrics = get("/metrics").await.text();
    assert!(
        metrics.contains(r#"mcp_gateway_requests_total{adapter="demo",route="mcp",status="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mcp_gateway_sessions_live{adapter="demo",replica="0"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_gateway_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_closes_streams() {
    let (_replicas, gw) = {
        let replicas = Replicas::start(1).await.unwrap();
        let gw = gateway(vec![adapter("demo", replicas.urls())], |c| {
            c.shutdown_grace = Duration::from_secs(2);
        })
        .await;
        (replicas, gw)
    };
    let url = mcp_url(&gw, "demo");
    let data_addr = gw.data_addr;
    let mut slow = McpSession::open(&url).await.unwrap();
    let stream_session = McpSession::open(&url).await.unwrap();
    let stream = stream_session
        .http
        .open(
            Method::GET,
            &url,
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &stream_session.id),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    let in_flight =
        tokio::spawn(async move { slow.call_text("slow", json!({"ms": 800, "steps": 1})).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    gw.shutdown().await;
    let took = started.elapsed();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        "done",
        "in-flight request finished"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The open stream was closed at the deadline, and nothing accepts any more.
    let mut events = EventReader::new(stream.into_body());
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.next(Duration::from_secs(2)).await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "stream ended");
    assert!(tokio::net::TcpStream::connect(data_addr).await.is_err());
}

async fn readyz(admin: std::net::SocketAddr) -> Option<StatusCode> {
    Http::default()
        .send(
            Method::GET,
            &format!("http://{admin}/readyz"),
            &[],
            Bytes::new(),
        )
        .await
        .ok()
        .map(|r| r.status)
}

#[tokio::test]
async fn readyz_turns_503_at_sigterm_while_connections_drain_and_new_ones_are_served_for_the_delay()
{
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |c| {
        c.shutdown_grace = Duration::from_secs(2);
        c.shutdown_delay = Duration::from_millis(600);
    })
    .await;
    let url = mcp_url(&gw, "demo");
    let (admin, data_addr) = (gw.admin_addr, gw.data_addr);
    assert_eq!(readyz(admin).await, Some(StatusCode::OK));
    let mut slow = McpSession::open(&url).await.unwrap();
    let in_flight = tokio::spawn(async move {
        slow.call_text("slow", json!({"ms": 1500, "steps": 1}))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // At once: not ready, so the load balancer stops sending; yet a new connection (sent
    // before it noticed) is still served during the delay.
    assert_eq!(readyz(admin).await, Some(StatusCode::SERVICE_UNAVAILABLE));
    let mut late = McpSession::open(&url)
        .await
        .expect("served during the delay");
    assert_eq!(late.call_text("whoami", json!({})).await.unwrap(), "r0");
    // After the delay: no new connections, in-flight requests draining, still not ready.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(tokio::net::TcpStream::connect(data_addr).await.is_err());
    assert_eq!(readyz(admin).await, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(in_flight.await.unwrap().unwrap(), "done");
    stopping.await.unwrap();
    assert_eq!(readyz(admin).await, None, "admin listener closed last");
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `conn`: its head, or
/// `None` when the connection was closed or reset first.
async fn read_response(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(head);
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A load balancer's pooled keep-alive connection, idle when the gateway is told to stop, then
/// used for one more request (nginx does exactly this): it gets a whole answer with
/// `Connection: close` and is then closed cleanly, rather than being closed under the request
/// (which nginx answers 502 for a POST, since it cannot know whether it was processed).
#[tokio::test]
async fn an_idle_keep_alive_connection_used_right_after_sigterm_gets_its_answer_and_a_clean_close()
{
    use tokio::io::AsyncWriteExt as _;
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |c| {
        c.shutdown_grace = Duration::from_secs(3);
    })
    .await;
    let addr = gw.data_addr;
    let body = initialize_request(1).to_string();
    let request = format!(
        "POST /adapters/demo/mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut pooled = tokio::net::TcpStream::connect(addr).await.unwrap();
    pooled.write_all(request.as_bytes()).await.unwrap();
    let first = read_response(&mut pooled).await.expect("first answer");
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");
    // The connection is idle in the pool; the gateway is told to stop.
    let stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    pooled.write_all(request.as_bytes()).await.unwrap();
    let second = read_response(&mut pooled)
        .await
        .expect("the pooled connection was closed under a request sent on it after SIGTERM");
    assert!(second.starts_with("http/1.1 200"), "{second}");
    assert!(second.contains("connection: close"), "{second}");
    // Then the gateway closes it, cleanly (EOF), and stops.
    assert_eq!(read_response(&mut pooled).await, None);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the gateway stops")
        .unwrap();
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (_replicas, gw) = two_replicas().await;
    let http = Http::http2();
    let reply = http
        .post_json(&mcp_url(&gw, "demo"), &[], &initialize_request(1))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.header("mcp-session-id").is_some());
}

/// Per-CPU data threads (the default; each its own SO_REUSEPORT socket, runtime and replica
/// pool) and the shared runtime (`data_threads = 0`) both keep sessions on their replica with
/// their state, serve legacy streams, and shut down gracefully.
#[tokio::test]
async fn data_threads_and_the_shared_runtime_serve_sessions_and_streams_and_shut_down() {
    assert!(
        Config::for_tests().data_threads >= 1,
        "data threads are the default"
    );
    for threads in [3, 0] {
        serve_sessions_and_streams_and_shut_down(threads).await;
    }
}

async fn serve_sessions_and_streams_and_shut_down(threads: usize) {
    let replicas = Replicas::start(2).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |c| {
        c.data_threads = threads;
    })
    .await;
    let url = mcp_url(&gw, "demo");
    let runs = (0..16).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut s = McpSession::open(&url).await?;
            for i in 1..=5 {
                let text = s.call_text("counter_increment", json!({})).await?;
                let (_, count) = text.rsplit_once(':').expect("replica:count");
                assert_eq!(count, i.to_string(), "session state lost: {text}");
            }
            anyhow::Ok(())
        })
    });
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let stream = open_legacy_stream(&gw).await;
    assert!(stream.contains("/adapters/demo/messages"), "{stream}");
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("the data threads finish on shutdown");
}

/// Opens `GET /adapters/demo/sse` over a raw socket and reads up to the endpoint event.
async fn open_legacy_stream(gw: &Handle) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.data_addr).await.unwrap();
    let head = format!(
        "GET /adapters/demo/sse HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        gw.data_addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("messages?") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("endpoint event within 5 s")
            .unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A request the gateway refuses before reading its body (here: an unknown adapter), whose
/// body the client sends after the headers, as clients that wait before streaming an upload
/// do: the client still reads the refusal, and the connection serves the next request.
/// (hyper alone closed the connection at the answer; the body arriving after that made the
/// kernel reset it, and the client lost the answer.)
#[tokio::test]
async fn a_refusal_sent_before_the_body_arrives_still_reaches_the_client_on_a_kept_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let replicas = Replicas::start(1).await.unwrap();
    let gw = gateway(vec![adapter("demo", replicas.urls())], |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(gw.data_addr).await.unwrap();
    let body = initialize_request(1).to_string();
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            gw.data_addr,
            body.len()
        )
    };
    s.write_all(head("/adapters/nope/mcp").as_bytes())
        .await
        .unwrap();
    // The gateway has answered by now, without the body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    // The same connection carries the next request.
    s.write_all(format!("{}{body}", head("/adapters/demo/mcp")).as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");

    /// Reads one response with a Content-Length body.
    async fn read_response(s: &mut tokio::net::TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                });
                if len.is_some_and(|n| rest.len() >= n) {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap_or_else(|e| {
                    panic!(
                        "connection failed after {:?}: {e}",
                        String::from_utf8_lossy(&seen)
                    )
                });
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    }
}
