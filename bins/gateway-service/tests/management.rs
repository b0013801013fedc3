//! Standalone mode: the management API and the data plane on one listener, adapters run by
//! the local runtime, records kept in the data directory.

use std::time::Duration;

use bytes::Bytes;
use gateway_service::{Config, Handle};
use http::{Method, StatusCode};
use mcp_gateway_testkit::{Http, McpSession, Reply, initialize_request};
use serde_json::{Value, json};

/// The example server binary, as a command.
fn example_server() -> String {
    mcp_gateway_testkit::example_server().display().to_string()
}

async fn standalone(data_dir: &std::path::Path) -> Handle {
    let mut config = Config::for_tests();
    config.management = true;
    config.data_dir = data_dir.to_path_buf();
    gateway_service::run(config).await.expect("gateway starts")
}

async fn api(gw: &Handle, method: Method, path: &str, body: Option<Value>) -> Reply {
    let url = format!("http://{}{path}", gw.data_addr);
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    Http::default()
        .send(method, &url, &[("content-type", "application/json")], body)
        .await
        .unwrap()
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.text()))
}

async fn wait_ready(gw: &Handle, name: &str, want: u64) -> Value {
    for _ in 0..100 {
        let status =
            json_of(&api(gw, Method::GET, &format!("/adapters/{name}/status"), None).await);
        if status["readyReplicas"].as_u64() == Some(want) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("adapter {name} never had {want} ready replicas");
}

/// Processes whose environment holds `marker` (the adapter's own environment variable).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn an_adapter_lives_its_whole_life_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("MCPGW_TEST_MARKER={}", std::process::id());
    let (key, value) = marker.split_once('=').unwrap();
    let gw = standalone(dir.path()).await;

    let created = api(
        &gw,
        Method::POST,
        "/adapters",
        Some(json!({
            "name": "demo",
            "command": example_server(),
            "args": ["--transport", "all", "--port", "{port}"],
            "replicaCount": 2,
            "environmentVariables": { key: value },
            "description": "two example replicas"
        })),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(json_of(&created)["createdBy"], "anonymous");
    let status = wait_ready(&gw, "demo", 2).await;
    assert_eq!(status["replicaCount"], 2);
    assert_eq!(processes_with(&marker).len(), 2);

    // Used through the data plane, on the same listener.
    let url = format!("http://{}/adapters/demo/mcp", gw.data_addr);
    let mut seen = std::collections::HashSet::new();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut s = McpSession::open(&url).await.unwrap();
        assert!(
            s.call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":1")
        );
        seen.insert(s.call_text("whoami", json!({})).await.unwrap());
        sessions.push(s);
    }
    assert_eq!(seen.len(), 2, "both replicas serve: {seen:?}");
    let status = json_of(&api(&gw, Method::GET, "/adapters/demo/status", None).await);
    let live: u64 = status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["liveSessions"].as_u64().unwrap())
        .sum();
    assert_eq!(live, 4, "{status}");

    let logs = api(&gw, Method::GET, "/adapters/demo/logs?tail=50", None).await;
    assert_eq!(logs.status, StatusCode::OK);
    assert!(logs.text().contains("listening on"), "{}", logs.text());

    // The gateway restarts: the adapter comes back as it was.
    gw.shutdown().await;
    assert!(
        processes_with(&marker).is_empty(),
        "no child outlives the gateway"
    );
    let gw = standalone(dir.path()).await;
    wait_ready(&gw, "demo", 2).await;
    let listed = json_of(&api(&gw, Method::GET, "/adapters", None).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let url = format!("http://{}/adapters/demo/mcp", gw.data_addr);
    let mut s = McpSession::open(&url).await.unwrap();
    s.call_text("whoami", json!({})).await.unwrap();

    // Scaled down by PUT.
    let mut spec = json_of(&api(&gw, Method::GET, "/adapters/demo", None).await);
    for server_set in ["createdBy", "createdAt", "lastUpdatedAt"] {
        spec.as_object_mut().unwrap().remove(server_set);
    }
    spec["replicaCount"] = json!(1);
    let updated = api(&gw, Method::PUT, "/adapters/demo", Some(spec)).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text());
    let mut one = false;
    for _ in 0..100 {
        let status = json_of(&api(&gw, Method::GET, "/adapters/demo/status", None).await);
        if status["replicaCount"] == 1 && processes_with(&marker).len() == 1 {
            one = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(one, "scaled to one replica");

    // Deleted: nothing left running, nothing routed.
    let deleted = api(&gw, Method::DELETE, "/adapters/demo", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(processes_with(&marker).is_empty(), "no process left");
    assert_eq!(
        api(&gw, Method::GET, "/adapters/demo", None).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = Http::default()
        .post_json(&url, &[], &mcp_gateway_testkit::initialize_request(0))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test]
async fn stdio_adapters_get_one_process_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let gw = standalone(dir.path()).await;
    let created = api(
        &gw,
        Method::POST,
        "/adapters",
        Some(json!({
            "name": "stdio",
            "transport": "stdio",
            "command": example_server(),
            "args": ["--transport", "stdio"]
        })),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    wait_ready(&gw, "stdio", 1).await;
    let url = format!("http://{}/adapters/stdio/mcp", gw.data_addr);
    let mut a = McpSession::open(&url).await.unwrap();
    let mut b = McpSession::open(&url).await.unwrap();
    let (pa, pb) = (
        a.call_text("whoami", json!({})).await.unwrap(),
        b.call_text("whoami", json!({})).await.unwrap(),
    );
    assert!(pa.starts_with("pid") && pb.starts_with("pid"));
    assert_ne!(pa, pb, "sessions never share a process");
    // The bridge itself (its loopback address is in the status) serves the gateway only:
    // a local user skipping the gateway's auth, roles and session checks gets 403.
    let status = api(&gw, Method::GET, "/adapters/stdio/status", None).await;
    let bridge = json_of(&status)["replicas"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let direct = Http::default()
        .post_json(&format!("{bridge}/mcp"), &[], &initialize_request(9))
        .await
        .unwrap();
    assert_eq!(direct.status, StatusCode::FORBIDDEN, "{}", direct.text());
    for i in 1..=3 {
        assert!(
            a.call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(&format!(":{i}"))
        );
    }
    assert!(
        b.call_text("counter_increment", json!({}))
            .await
            .unwrap()
            .ends_with(":1")
    );
    assert_eq!(
        api(&gw, Method::DELETE, "/adapters/stdio", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    gw.shutdown().await;
}

fn example_spec(name: &str, args: &[&str]) -> Value {
    json!({"name": name, "command": example_server(), "args": args})
}

const GOOD_ARGS: [&str; 4] = ["--transport", "all", "--port", "{port}"];

#[tokio::test]
async fn a_put_of_a_spec_that_does_not_run_is_refused_and_the_previous_spec_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let gw = standalone(dir.path()).await;
    let created = api(
        &gw,
        Method::POST,
        "/adapters",
        Some(example_spec("flaky", &GOOD_ARGS)),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    wait_ready(&gw, "flaky", 1).await;
    // The example server exits with code 2 on an unknown argument.
    let reply = api(
        &gw,
        Method::PUT,
        "/adapters/flaky",
        Some(example_spec("flaky", &["--no-such-flag"])),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let detail = json_of(&reply)["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("exited with code 2") && detail.contains("previous spec"),
        "{detail}"
    );
    let got = json_of(&api(&gw, Method::GET, "/adapters/flaky", None).await);
    assert_eq!(
        got["args"],
        json!(GOOD_ARGS),
        "the record is the previous one"
    );
    let status = wait_ready(&gw, "flaky", 1).await;
    assert_eq!(status["replicaStatus"], "Healthy");
    gw.shutdown().await;
    // After a restart the previous spec runs, not the broken one.
    let gw = standalone(dir.path()).await;
    wait_ready(&gw, "flaky", 1).await;
    let url = format!("http://{}/adapters/flaky/mcp", gw.data_addr);
    assert!(McpSession::open(&url).await.is_ok());
    gw.shutdown().await;
}

/// Sends a request on a raw connection and hangs up before any answer (as `curl -m 1`).
async fn hang_up_during(gw: &Handle, method: &str, path: &str, body: &Value) {
    use tokio::io::AsyncWriteExt as _;
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(gw.data_addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        gw.data_addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(stream);
}

#[tokio::test]
async fn a_client_that_hangs_up_during_a_put_does_not_take_the_adapter_down() {
    let dir = tempfile::tempdir().unwrap();
    let gw = standalone(dir.path()).await;
    api(
        &gw,
        Method::POST,
        "/adapters",
        Some(example_spec("hangup", &GOOD_ARGS)),
    )
    .await;
    wait_ready(&gw, "hangup", 1).await;
    let url = format!("http://{}/adapters/hangup/mcp", gw.data_addr);

    // A good change: rolled out to the end although nobody waits for the answer.
    let mut changed = example_spec("hangup", &GOOD_ARGS);
    changed["description"] = json!("v2");
    changed["environmentVariables"] = json!({"V": "2"});
    hang_up_during(&gw, "PUT", "/adapters/hangup", &changed).await;
    let mut rolled_out = false;
    for _ in 0..100 {
        let status = json_of(&api(&gw, Method::GET, "/adapters/hangup/status", None).await);
        let got = json_of(&api(&gw, Method::GET, "/adapters/hangup", None).await);
        if got["description"] == "v2"
            && status["readyReplicas"] == 1
            && status["updatedReplicas"] == 1
            && status["replicas"].as_array().unwrap().len() == 1
        {
            rolled_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rolled_out, "the change was rolled out");
    assert!(McpSession::open(&url).await.is_ok());

    // A broken change: rolled back although nobody waits for the answer.
    hang_up_during(
        &gw,
        "PUT",
        "/adapters/hangup",
        &example_spec("hangup", &["--no-such-flag"]),
    )
    .await;
    let mut rolled_back = false;
    for _ in 0..200 {
        let got = json_of(&api(&gw, Method::GET, "/adapters/hangup", None).await);
        if got["args"] == json!(GOOD_ARGS) && got["description"] == "v2" {
            rolled_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rolled_back, "the previous spec was put back");
    let status = wait_ready(&gw, "hangup", 1).await;
    assert_eq!(status["replicaStatus"], "Healthy");
    assert!(McpSession::open(&url).await.is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_re_created_adapter_does_not_inherit_the_sessions_of_the_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let gw = standalone(dir.path()).await;
    let spec = example_spec("reborn", &GOOD_ARGS);
    api(&gw, Method::POST, "/adapters", Some(spec.clone())).await;
    wait_ready(&gw, "reborn", 1).await;
    let url = format!("http://{}/adapters/reborn/mcp", gw.data_addr);
    let mut old = McpSession::open(&url).await.unwrap();
    assert!(old.call_text("whoami", json!({})).await.is_ok());
    let deleted = api(&gw, Method::DELETE, "/adapters/reborn", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    api(&gw, Method::POST, "/adapters", Some(spec)).await;
    wait_ready(&gw, "reborn", 1).await;
    // The old session's record names a replica of the deleted adapter: the gateway itself
    // answers 404, and nothing of the request reaches the new adapter's process.
    let reply = old
        .post(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}}))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert!(
        reply.text().contains("its replica is gone"),
        "answered by the gateway, not the new process: {}",
        reply.text()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = standalone(dir.path()).await;
    for (body, says) in [
        (json!({"name": "Bad_Name", "command": "true"}), "DNS-1123"),
        (
            json!({"name": "x", "command": "true", "replicas": 2}),
            "replicas",
        ),
        (
            json!({"name": "x", "command": "true", "replicaCount": 0}),
            "replicaCount",
        ),
        (
            json!({"name": "x", "command": "/no/such/program"}),
            "/no/such/program",
        ),
    ] {
        let reply = api(&gw, Method::POST, "/adapters", Some(body.clone())).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text()
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert!(reply.text().contains(says), "{body}: {}", reply.text());
    }
    let listed = json_of(&api(&gw, Method::GET, "/adapters", None).await);
    assert_eq!(listed, json!([]), "nothing half-created");

    // The API is behind the same DNS-rebinding checks as the data plane.
    let reply = Http::default()
        .send(
            Method::GET,
            &format!("http://{}/adapters", gw.data_addr),
            &[("origin", "https://evil.example")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_control_plane_alone_serves_the_api_but_no_mcp_routes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.management = true;
    config.data_plane = false;
    config.data_dir = dir.path().to_path_buf();
    let gw = gateway_service::run(config).await.unwrap();
    assert_eq!(
        api(&gw, Method::GET, "/adapters", None).await.status,
        StatusCode::OK
    );
    let reply = api(&gw, Method::POST, "/adapters/x/mcp", Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("control plane"), "{}", reply.text());
    gw.shutdown().await;
}
