//! Runs the real binary on port 0 and drives every transport over real sockets and pipes with a
//! plain hyper client: status codes, headers, SSE framing and timing, stdio lines, shutdown.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-example-server");
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const MODERN: &str = "2026-07-28";

struct Server {
    child: Child,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Server {
    async fn start(transport: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(["--port", "0", "--replica", "it", "--transport", transport])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the server prints its address")
        .expect("read stdout");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            child,
            base,
            client,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> hyper::Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("timely answer")
            .expect("answer")
    }

    /// A POST to /mcp, read whole.
    async fn post(
        &self,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = self
            .send(Method::POST, "/mcp", headers, &body.to_string())
            .await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    async fn initialize(&self, version: &str) -> String {
        let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "it", "version": "0" } } });
        let (status, headers, body) = self.post(&[("accept", ACCEPT_BOTH)], init).await;
        assert_eq!(status, StatusCode::OK);
        let result: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(result["result"]["protocolVersion"], version);
        headers
            .get("mcp-session-id")
            .expect("session header")
            .to_str()
            .expect("ASCII")
            .to_owned()
    }
}

fn call(id: u64, name: &str, arguments: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": arguments } })
}

fn text(message: &Value) -> &str {
    message["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

fn envelope() -> Value {
    json!({ "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {} })
}

/// Reads SSE events (`(event, id, data)`) from a streaming body as they arrive.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    async fn next(&mut self) -> Option<(String, Option<String>, String)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let raw = String::from_utf8(raw).expect("UTF-8");
                let (mut event, mut id, mut data) = ("message".to_owned(), None, String::new());
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if raw.starts_with(':') {
                    continue; // keep-alive comment
                }
                return Some((event, id, data));
            }
            let frame = timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("timely event")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test]
async fn streamable_http_session_era() {
    let server = Server::start("all").await;
    let sid = server.initialize("2025-06-18").await;
    assert_eq!(sid.len(), 32);
    let on = |sid| {
        [
            ("accept", ACCEPT_BOTH),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-06-18"),
        ]
    };
    let sid = sid.as_str();

    let (status, _, body) = server
        .post(
            &on(sid),
            json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        )
        .await;
    assert_eq!((status, body.len()), (StatusCode::ACCEPTED, 0));

    for n in 1..=3 {
        let (status, headers, body) = server
            .post(&on(sid), call(n, "counter_increment", json!({})))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        let message: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            (message["id"].as_u64(), text(&message)),
            (Some(n), format!("it:{n}").as_str())
        );
    }

    let (status, _, body) = server
        .post(
            &on(sid),
            json!({ "jsonrpc": "2.0", "id": 9, "method": "nope" }),
        )
        .await;
    let message: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        (status, message["error"]["code"].as_i64()),
        (StatusCode::OK, Some(-32601))
    );

    let (status, _, _) = server
        .post(
            &[("accept", ACCEPT_BOTH)],
            json!({ "jsonrpc": "2.0", "id": 2, "method": "ping" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing session");
    let (status, _, body) = server
        .post(
            &on("0000"),
            json!({ "jsonrpc": "2.0", "id": 2, "method": "ping" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown session");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON")["error"]["code"],
        -32600
    );

    let response = server
        .send(
            Method::POST,
            "/mcp",
            &[("accept", ACCEPT_BOTH)],
            "{not json",
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON")["error"]["code"],
        -32700
    );

    let stream = server
        .send(
            Method::GET,
            "/mcp",
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", sid),
                ("last-event-id", "7"),
            ],
            "",
        )
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    let delete = server
        .send(Method::DELETE, "/mcp", &[("mcp-session-id", sid)], "")
        .await;
    assert_eq!(delete.status(), StatusCode::OK);
    // Ending the session ends its GET stream.
    let mut events = Events {
        body: stream.into_body(),
        buf: Vec::new(),
    };
    assert!(events.next().await.is_none());
    let delete = server
        .send(Method::DELETE, "/mcp", &[("mcp-session-id", sid)], "")
        .await;
    assert_eq!(delete.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn progress_streams_as_sse_before_the_result() {
    let server = Server::start("streamable-http").await;
    let sid = server.initialize("2025-11-25").await;
    let mut slow = call(5, "slow", json!({ "ms": 600, "steps": 3 }));
    slow["params"]["_meta"] = json!({ "progressToken": "p" });
    let start = Instant::now();
    let response = server
        .send(
            Method::POST,
            "/mcp",
            &[("accept", ACCEPT_BOTH), ("mcp-session-id", &sid)],
            &slow.to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        body: response.into_body(),
        buf: Vec::new(),
    };
    let mut arrivals = Vec::new();
    while let Some((event, id, data)) = events.next().await {
        assert_eq!(event, "message");
        assert!(id.is_some(), "session-era events carry ids");
        arrivals.push((
            start.elapsed(),
            serde_json::from_str::<Value>(&data).expect("JSON"),
        ));
    }
    assert_eq!(
        arrivals.len(),
        4,
        "three progress notifications, then the response"
    );
    for (i, (_, note)) in arrivals[..3].iter().enumerate() {
        assert_eq!(note["method"], "notifications/progress");
        assert_eq!(note["params"]["progress"], i + 1);
    }
    assert_eq!(text(&arrivals[3].1), "done");
    // Spread over time, each flushed as it happened.
    assert!(
        arrivals[0].0 < Duration::from_millis(450),
        "{:?}",
        arrivals[0].0
    );
    assert!(arrivals[3].0 >= Duration::from_millis(600));
    assert!(arrivals[3].0 - arrivals[0].0 >= Duration::from_millis(300));

    // Without the SSE accept the same call is plain JSON.
    let (status, headers, body) = server
        .post(
            &[("accept", "application/json"), ("mcp-session-id", &sid)],
            slow,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(text(&serde_json::from_slice(&body).expect("JSON")), "done");
}

#[tokio::test]
async fn stateless_2026_07_28_requests() {
    let server = Server::start("all").await;
    let headers = |method: &'static str, name: Option<&'static str>| {
        let mut h = vec![
            ("accept", ACCEPT_BOTH),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", method),
        ];
        h.extend(name.map(|n| ("mcp-name", n)));
        h
    };
    let discover = json!({ "jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": { "_meta": envelope() } });
    let (status, response_headers, body) = server
        .post(&headers("server/discover", None), discover)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        response_headers.get("mcp-session-id").is_none(),
        "no session in the stateless era"
    );
    let result = &serde_json::from_slice::<Value>(&body).expect("JSON")["result"];
    assert_eq!(result["supportedVersions"], json!([MODERN]));
    assert_eq!(result["resultType"], "complete");

    let mut echo = call(2, "echo", json!({ "text": "hi" }));
    echo["params"]["_meta"] = envelope();
    let (status, _, body) = server
        .post(&headers("tools/call", Some("echo")), echo.clone())
        .await;
    let message: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!((status, text(&message)), (StatusCode::OK, "hi"));

    let (status, _, body) = server
        .post(&headers("tools/call", Some("whoami")), echo.clone())
        .await;
    let message: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        (status, message["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32020))
    );
    let (status, _, _) = server.post(&headers("tools/list", None), echo).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "Mcp-Method must mirror the body"
    );

    let mut unknown =
        json!({ "jsonrpc": "2.0", "id": 3, "method": "nope", "params": { "_meta": envelope() } });
    let (status, _, _) = server.post(&headers("nope", None), unknown.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    unknown["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let (status, _, body) = server
        .post(
            &[
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "nope"),
            ],
            unknown,
        )
        .await;
    let message: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        (status, message["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32022))
    );
    assert_eq!(message["error"]["data"]["supported"], json!([MODERN]));

    let mut slow = call(4, "slow", json!({ "ms": 100, "steps": 2 }));
    slow["params"]["_meta"] = envelope();
    slow["params"]["_meta"]["progressToken"] = json!(1);
    let response = server
        .send(
            Method::POST,
            "/mcp",
            &headers("tools/call", Some("slow")),
            &slow.to_string(),
        )
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        body: response.into_body(),
        buf: Vec::new(),
    };
    let mut last = Value::Null;
    while let Some((_, _, data)) = events.next().await {
        last = serde_json::from_str(&data).expect("JSON");
    }
    assert_eq!(
        (text(&last), &last["result"]["resultType"]),
        ("done", &json!("complete"))
    );
}

#[tokio::test]
async fn legacy_http_sse() {
    let server = Server::start("all").await;
    let stream = server
        .send(Method::GET, "/sse", &[("accept", "text/event-stream")], "")
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut events = Events {
        body: stream.into_body(),
        buf: Vec::new(),
    };
    let (event, _, endpoint) = events.next().await.expect("endpoint event");
    assert_eq!(event, "endpoint");
    assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");

    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2024-11-05" } });
    let accepted = server
        .send(Method::POST, &endpoint, &[], &init.to_string())
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let (event, _, data) = events.next().await.expect("response event");
    let message: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(
        (
            event.as_str(),
            message["result"]["protocolVersion"].as_str()
        ),
        ("message", Some("2024-11-05"))
    );

    for n in 1..=2 {
        let accepted = server
            .send(
                Method::POST,
                &endpoint,
                &[],
                &call(n, "counter_increment", json!({})).to_string(),
            )
            .await;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let (_, _, data) = events.next().await.expect("response event");
        assert_eq!(
            text(&serde_json::from_str(&data).expect("JSON")),
            format!("it:{n}")
        );
    }

    let unknown = server
        .send(
            Method::POST,
            "/messages?sessionId=nope",
            &[],
            &init.to_string(),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // Closing the stream ends the session.
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = server
            .send(Method::POST, &endpoint, &[], &init.to_string())
            .await
            .status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session still alive after its stream closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stdio_speaks_json_lines_only() {
    let mut child = Command::new(BIN)
        .args(["--transport", "stdio", "--replica", "s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let input = [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-03-26" } }),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        call(2, "counter_increment", json!({})),
    ];
    for message in input {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
    }
    let mut read = async || -> Value {
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("timely")
            .expect("read");
        serde_json::from_str(&line.expect("a line")).expect("stdout carries JSON only")
    };
    assert_eq!(read().await["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(text(&read().await), "s:1");
    stdin.write_all(b"garbage\n").await.expect("write");
    assert_eq!(read().await["error"]["code"], -32700);
    stdin
        .write_all(format!("{}\n", call(3, "counter_increment", json!({}))).as_bytes())
        .await
        .expect("write");
    assert_eq!(text(&read().await), "s:2");
    drop(stdin);
    let status = timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits at EOF")
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_ends_the_server_even_with_open_streams() {
    let mut server = Server::start("all").await;
    let stream = server.send(Method::GET, "/sse", &[], "").await;
    assert_eq!(stream.status(), StatusCode::OK);
    let pid = server.child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let mut events = Events {
        body: stream.into_body(),
        buf: Vec::new(),
    };
    assert_eq!(
        events.next().await.map(|e| e.0).as_deref(),
        Some("endpoint")
    );
    assert!(events.next().await.is_none(), "the stream ended");
}
