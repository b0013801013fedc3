//! The bridge with real processes: `mcp-example-server --transport stdio`, built from this
//! workspace, one process per session.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use mcp_gateway_stdio::{BridgeConfig, BridgeHandle, LogSource, StdioBridge, Transport};
use mcp_gateway_testkit::{EventReader, Http, McpSession, initialize_request, result_text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

// === fixtures ===

use mcp_gateway_testkit::example_server;

fn config() -> BridgeConfig {
    let mut config =
        BridgeConfig::new(example_server().to_string_lossy(), ["--transport", "stdio"]);
    config.env.insert("RUST_LOG".into(), "info".into());
    config.stop_grace = Duration::from_secs(2);
    config
}

async fn start(config: BridgeConfig) -> anyhow::Result<(BridgeHandle, String)> {
    let bridge = StdioBridge::start(config).await?;
    let url = format!("http://{}/mcp", bridge.local_addr());
    Ok((bridge, url))
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn wait_gone(pid: u32) -> anyhow::Result<()> {
    for _ in 0..200 {
        if !alive(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("process {pid} is still alive")
}

/// The pid the example server reports (`pid<N>`).
async fn whoami(session: &mut McpSession) -> anyhow::Result<u32> {
    let text = session.call_text("whoami", json!({})).await?;
    text.strip_prefix("pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("unexpected whoami: {text}"))
}

// === streamable HTTP ===

#[tokio::test]
async fn two_sessions_get_two_processes_and_their_own_counters() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let (a, b) = tokio::join!(McpSession::open(&url), McpSession::open(&url));
    let (mut a, mut b) = (a?, b?);
    assert_ne!(a.id, b.id);
    let (pa, pb) = (whoami(&mut a).await?, whoami(&mut b).await?);
    assert_ne!(pa, pb, "two sessions share a process");
    let mut pids: Vec<_> = bridge.sessions().iter().map(|s| s.pid).collect();
    pids.sort();
    let mut expected = vec![pa, pb];
    expected.sort();
    assert_eq!(pids, expected);
    assert_eq!(bridge.live_sessions(), 2);

    for n in 1..=3 {
        let (ta, tb) = tokio::join!(
            a.call_text("counter_increment", json!({})),
            b.call_text("counter_increment", json!({}))
        );
        assert_eq!(ta?, format!("pid{pa}:{n}"));
        assert_eq!(tb?, format!("pid{pb}:{n}"));
    }
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn progress_arrives_before_the_result_over_sse() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let session = McpSession::open(&url).await?;
    let call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "slow", "arguments": { "ms": 900, "steps": 3 },
                    "_meta": { "progressToken": "p1" } }
    });
    let res = session
        .http
        .open(
            Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-session-id", &session.id),
            ],
            call.to_string(),
        )
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut events = EventReader::new(res.into_body());
    let mut progress = Vec::new();
    let result = loop {
        let (event, at) = events
            .next(Duration::from_secs(10))
            .await?
            .context("stream ended before the result")?;
        let message: Value = serde_json::from_str(&event.data)?;
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "p1");
            progress.push(at);
        } else {
            break (message, at);
        }
    };
    assert_eq!(result.0["id"], 7);
    assert_eq!(result_text(&result.0)?, "done");
    assert!(!progress.is_empty(), "no progress notification");
    assert!(
        result.1 - progress[0] >= Duration::from_millis(200),
        "the first progress ({:?}) was not sent ahead of the result ({:?})",
        progress[0],
        result.1
    );
    assert!(events.next(Duration::from_secs(5)).await?.is_none());
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_accepts_only_json_gets_json() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let session = McpSession::open(&url).await?;
    let call = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "slow", "arguments": { "ms": 100, "steps": 2 },
                    "_meta": { "progressToken": 1 } }
    });
    let reply = session
        .http
        .send(
            Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("mcp-session-id", &session.id),
            ],
            call.to_string(),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(result_text(&reply.message()?)?, "done");
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn delete_stops_the_process_and_forgets_the_session() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let mut session = McpSession::open(&url).await?;
    let pid = whoami(&mut session).await?;
    assert!(alive(pid));
    let reply = session.delete().await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!alive(pid), "process {pid} survived DELETE");
    assert_eq!(bridge.live_sessions(), 0);
    let reply = session.call("whoami", json!({})).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.message()?["error"]["code"], -32001);
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_process_limit_gives_503() -> anyhow::Result<()> {
    let mut config = config();
    config.max_processes = 1;
    let (bridge, url) = start(config).await?;
    let first = McpSession::open(&url).await?;
    let http = Http::default();
    let reply = http.post_json(&url, &[], &initialize_request(1)).await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let message = reply.message()?;
    assert!(
        message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("process limit reached")),
        "{message}"
    );
    assert!(reply.header("mcp-session-id").is_none());
    // The legacy transport counts against the same limit.
    let reply = http
        .send(Method::GET, &url.replace("/mcp", "/sse"), &[], Bytes::new())
        .await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);

    first.delete().await?;
    let mut again = McpSession::open(&url).await?;
    whoami(&mut again).await?;
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn idle_sessions_are_reaped() -> anyhow::Result<()> {
    let mut config = config();
    config.idle_timeout = Duration::from_millis(400);
    let (bridge, url) = start(config).await?;
    let mut session = McpSession::open(&url).await?;
    let pid = whoami(&mut session).await?;
    // Busy sessions are not idle: a call longer than the idle timeout completes.
    assert_eq!(
        session
            .call_text("slow", json!({ "ms": 800, "steps": 0 }))
            .await?,
        "done"
    );
    wait_gone(pid).await?;
    assert_eq!(bridge.live_sessions(), 0);
    let reply = session.call("whoami", json!({})).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_crashed_process_fails_its_pending_request_and_then_404() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let mut logs = bridge.logs();
    let mut session = McpSession::open(&url).await?;
    let pid = whoami(&mut session).await?;
    let pending = {
        let http = session.http.clone();
        let (url, id) = (url.clone(), session.id.clone());
        tokio::spawn(async move {
            let call =
                mcp_gateway_testkit::tool_call(50, "slow", json!({ "ms": 20000, "steps": 0 }));
            http.post_json(&url, &[("mcp-session-id", &id)], &call)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    let reply = tokio::time::timeout(Duration::from_secs(10), pending).await???;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let message = reply.message()?;
    assert_eq!(message["id"], 50);
    assert!(
        message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exited"))
    );

    let reply = session.call("whoami", json!({})).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(bridge.live_sessions(), 0);

    // The exit was logged for the runtime.
    let exit = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = logs.recv().await?;
            if line.source == LogSource::Bridge && line.line.contains("exited") {
                return anyhow::Ok(line);
            }
        }
    })
    .await??;
    assert_eq!(exit.pid, pid);
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn refusals_are_json_rpc_errors() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let http = Http::default();
    let call = mcp_gateway_testkit::tool_call(1, "whoami", json!({}));

    // No session: 400, or -32022 for the stateless revision so that clients fall back.
    let reply = http.post_json(&url, &[], &call).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = mcp_gateway_testkit::stateless_call(&http, &url, "whoami", json!({})).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.message()?;
    assert_eq!(message["error"]["code"], -32022);
    assert_eq!(message["error"]["data"]["supported"][0], "2025-11-25");

    let reply = http
        .post_json(&url, &[("mcp-session-id", "nope")], &call)
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = http
        .send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            "{oops",
        )
        .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.message()?["error"]["code"], -32700);
    let reply = http.send(Method::PUT, &url, &[], Bytes::new()).await?;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(bridge.live_sessions(), 0, "a refusal started a process");
    bridge.shutdown().await;
    Ok(())
}

// === legacy HTTP+SSE ===

#[tokio::test]
async fn legacy_sse_round_trip_and_closing_the_stream_ends_the_process() -> anyhow::Result<()> {
    let (bridge, url) = start(config()).await?;
    let base = url.trim_end_matches("/mcp").to_owned();
    let http = Http::default();
    let res = http
        .open(
            Method::GET,
            &format!("{base}/sse"),
            &[("accept", "text/event-stream")],
            Bytes::new(),
        )
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    let mut events = EventReader::new(res.into_body());
    let (endpoint, _) = events
        .next(Duration::from_secs(5))
        .await?
        .context("no endpoint")?;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    assert!(
        endpoint.data.starts_with("/messages?sessionId="),
        "{}",
        endpoint.data
    );
    let post_url = format!("{base}{}", endpoint.data);

    let mut next_message = async || -> anyhow::Result<Value> {
        loop {
            let (event, _) = events
                .next(Duration::from_secs(10))
                .await?
                .context("stream ended")?;
            if event.event.as_deref() == Some("message") {
                return Ok(serde_json::from_str(&event.data)?);
            }
        }
    };
    let reply = http
        .post_json(&post_url, &[], &initialize_request(1))
        .await?;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(next_message().await?["id"], 1);
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        http.post_json(&post_url, &[], &note).await?.status,
        StatusCode::ACCEPTED
    );
    let call = mcp_gateway_testkit::tool_call(2, "whoami", json!({}));
    assert_eq!(
        http.post_json(&post_url, &[], &call).await?.status,
        StatusCode::ACCEPTED
    );
    let answer = next_message().await?;
    assert_eq!(answer["id"], 2);
    let pid: u32 = result_text(&answer)?
        .strip_prefix("pid")
        .and_then(|p| p.parse().ok())
        .context("whoami")?;
    assert_eq!(bridge.sessions()[0].transport, Transport::LegacySse);

    // The session's id is not a streamable HTTP session.
    let sid = post_url.split('=').nth(1).unwrap_or_default().to_owned();
    let reply = http
        .post_json(&url, &[("mcp-session-id", &sid)], &call)
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    drop(events);
    wait_gone(pid).await?;
    for _ in 0..100 {
        if bridge.live_sessions() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bridge.live_sessions(), 0);
    let reply = http.post_json(&post_url, &[], &call).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    bridge.shutdown().await;
    Ok(())
}

// === ends ===

#[tokio::test]
async fn shutdown_and_drop_leave_no_process() -> anyhow::Result<()> {
    for polite in [true, false] {
        let (bridge, url) = start(config()).await?;
        let mut pids = Vec::new();
        for _ in 0..3 {
            let mut session = McpSession::open(&url).await?;
            pids.push(whoami(&mut session).await?);
        }
        let sse = Http::default()
            .open(Method::GET, &url.replace("/mcp", "/sse"), &[], Bytes::new())
            .await?;
        pids.extend(bridge.sessions().iter().map(|s| s.pid));
        assert_eq!(bridge.live_sessions(), 4);
        if polite {
            bridge.shutdown().await;
            for pid in &pids {
                assert!(!alive(*pid), "process {pid} survived shutdown");
            }
        } else {
            drop(bridge);
            for pid in &pids {
                wait_gone(*pid).await?;
            }
        }
        drop(sse);
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_command_fails_at_start() {
    let config = BridgeConfig::new("no-such-mcp-server-anywhere", Vec::<String>::new());
    let err = StdioBridge::start(config)
        .await
        .err()
        .expect("start must fail");
    assert!(
        err.to_string().contains("no-such-mcp-server-anywhere"),
        "{err}"
    );
}

/// The runtime keeps handles in shared state and boxes `shutdown()` as a `'static` future.
#[test]
fn handles_and_their_futures_are_send() {
    fn send_static<T: Send + 'static>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<BridgeHandle>();
    send_static(&StdioBridge::start(config()));
    let _ = |handle: BridgeHandle| {
        let stop = handle.shutdown();
        send_static(&stop);
    };
}

#[tokio::test]
async fn stdout_noise_and_stderr_are_logged_and_a_silent_process_times_out() -> anyhow::Result<()> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hooked = seen.clone();
    let mut config = BridgeConfig::new("sh", ["-c", "echo not-json; echo oops >&2; exec sleep 30"])
        .on_log(move |line| {
            if let Ok(mut seen) = hooked.lock() {
                seen.push((line.source, line.line.clone()));
            }
        });
    config.request_timeout = Duration::from_millis(500);
    let (bridge, url) = start(config).await?;
    let reply = Http::default()
        .post_json(&url, &[], &initialize_request(1))
        .await?;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.message()?["id"], 1);
    assert!(reply.header("mcp-session-id").is_none());
    for _ in 0..100 {
        if bridge.live_sessions() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        bridge.live_sessions(),
        0,
        "a failed initialize left its process"
    );
    let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert!(
        seen.contains(&(LogSource::Stdout, "not-json".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(LogSource::Stderr, "oops".into())),
        "{seen:?}"
    );
    bridge.shutdown().await;
    Ok(())
}

/// Everything `tracing` writes, as one string.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|b| b.clone()).unwrap_or_default()).into_owned()
    }
}

#[tokio::test]
async fn neither_the_arguments_nor_the_output_of_a_process_reach_the_log() -> anyhow::Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime has one thread: every task of the bridge logs through this.
    let _guard = tracing::subscriber::set_default(subscriber);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hooked = seen.clone();
    let config = BridgeConfig::new(
        "sh",
        [
            "-c".to_owned(),
            "echo printed-on-stderr-s3cret >&2; echo printed-on-stdout-s3cret; exec \"$0\" --transport stdio".to_owned(),
            example_server().to_string_lossy().into_owned(),
            "--api-key=arg-s3cret".to_owned(),
        ],
    )
    .on_log(move |line| {
        if let Ok(mut seen) = hooked.lock() {
            seen.push(line.line.clone());
        }
    });
    let (bridge, url) = start(config).await?;
    let mut session = McpSession::open(&url).await?;
    whoami(&mut session).await?;
    for _ in 0..100 {
        if seen.lock().map_err(|_| anyhow!("poisoned"))?.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bridge.shutdown().await;
    let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    // The hook (the logs endpoint, for the adapter's owner) gets the output...
    assert!(
        seen.iter().any(|l| l == "printed-on-stderr-s3cret"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "printed-on-stdout-s3cret"),
        "{seen:?}"
    );
    // ...the gateway's log only that a process started.
    let log = captured.text();
    assert!(log.contains("process started: sh"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
    Ok(())
}

#[tokio::test]
async fn with_a_token_only_callers_that_send_it_to_the_bridges_own_host_get_through()
-> anyhow::Result<()> {
    let mut config = config();
    config.access_token = Some(mcp_gateway_stdio::random_token());
    let token = config.access_token.clone().unwrap_or_default();
    let (bridge, url) = start(config).await?;
    let port = bridge.local_addr().port();
    let http = Http::default();
    let token_header = (mcp_gateway_stdio::ACCESS_TOKEN_HEADER, token.as_str());
    // Another local user, or a web page's simple POST: no token, or a guessed one.
    for headers in [
        vec![],
        vec![(mcp_gateway_stdio::ACCESS_TOKEN_HEADER, "guess")],
    ] {
        let reply = http
            .post_json(&url, &headers, &initialize_request(1))
            .await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert!(reply.text().contains("gateway only"), "{}", reply.text());
    }
    // DNS rebinding: the right token cannot come from a page, but the Host check stands alone.
    let rebound = format!("attacker.example:{port}");
    let reply = http
        .post_json(
            &url,
            &[token_header, ("host", &rebound)],
            &initialize_request(1),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(
        bridge.live_sessions(),
        0,
        "no refused request started a process"
    );
    // The gateway: token and the bridge's own address.
    let localhost = format!("localhost:{port}");
    for host in [None, Some(localhost.as_str())] {
        let mut headers = vec![token_header];
        headers.extend(host.map(|h| ("host", h)));
        let reply = http
            .post_json(&url, &headers, &initialize_request(1))
            .await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(bridge.live_sessions(), 2);
    bridge.shutdown().await;
    Ok(())
}

async fn until_no_session(bridge: &BridgeHandle, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while bridge.live_sessions() > 0 {
        if tokio::time::Instant::now() > deadline {
            bail!("{} sessions still live", bridge.live_sessions());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_initialize_the_client_gives_up_on_does_not_keep_its_process() -> anyhow::Result<()> {
    // A first start slower than the client's patience (`npx` downloading a package).
    let config = BridgeConfig::new("sh", ["-c", "exec sleep 60"]);
    let (bridge, url) = start(config).await?;
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            Http::default().post_json(&url, &[], &initialize_request(1)),
        )
        .await;
        assert!(gave_up.is_err(), "the process never answers");
    }
    // The request timeout (5 minutes) is far: the processes go because nobody waits.
    until_no_session(&bridge, Duration::from_secs(5)).await?;
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_abandoned_request_does_not_keep_its_session_from_being_reaped() -> anyhow::Result<()> {
    let mut config = config();
    config.idle_timeout = Duration::from_millis(500);
    let (bridge, url) = start(config).await?;
    let session = McpSession::open(&url).await?;
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {"ms": 30000, "steps": 1}}});
    let gave_up = tokio::time::timeout(Duration::from_millis(300), session.post(&call)).await;
    assert!(gave_up.is_err(), "the call takes 30 s");
    // Idle once the request is abandoned: reaped after the idle timeout, not after 30 s.
    until_no_session(&bridge, Duration::from_secs(5)).await?;
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn log_lines_are_capped_whatever_the_process_prints() -> anyhow::Result<()> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hooked = seen.clone();
    let script = "head -c 1000000 /dev/zero | tr '\\0' e >&2; echo >&2; \
                  head -c 1000000 /dev/zero | tr '\\0' o; echo; echo done >&2; exec sleep 30";
    let mut config = BridgeConfig::new("sh", ["-c", script]).on_log(move |line| {
        if let Ok(mut seen) = hooked.lock() {
            seen.push((line.source, line.line.clone()));
        }
    });
    config.request_timeout = Duration::from_millis(1500);
    let (bridge, url) = start(config).await?;
    let reply = Http::default()
        .post_json(&url, &[], &initialize_request(1))
        .await?;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert!(
        seen.iter().all(|(_, l)| l.len() <= 64 * 1024 + 64),
        "a line over the cap"
    );
    assert!(
        seen.iter()
            .any(|(s, l)| *s == LogSource::Bridge && l.contains("stderr line longer than 65536")),
        "{:?}",
        seen.iter()
            .map(|(s, l)| (s, &l[..l.len().min(80)]))
            .collect::<Vec<_>>()
    );
    assert!(
        seen.iter().any(|(s, l)| *s == LogSource::Stdout
            && l.starts_with("ooo")
            && l.ends_with(&format!(" [{} more bytes cut]", 1_000_000 - 64 * 1024))),
        "the stdout line is cut"
    );
    assert!(seen.contains(&(LogSource::Stderr, "done".into())));
    bridge.shutdown().await;
    Ok(())
}
