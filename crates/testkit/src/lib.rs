//! Test helpers of the MCP gateway (never used outside tests).
//!
//! - [`Replicas`]: real MCP servers (`mcp-example-server`, in-process) on `127.0.0.1:0`.
//! - [`Http`] and [`McpSession`]: a small MCP client over raw HTTP, so tests can assert status
//!   codes, headers and stream timing that a full SDK client hides. The end-to-end tests use the
//!   official Python SDK client instead (`tests/e2e`).
//! - [`sse_events`]: splits an SSE body into events.
//! - With the `cluster` feature: [`cluster::TestCluster`], a real Kubernetes control plane
//!   built from source, [`kubelet::TestKubelet`], a node that runs pods as local processes, and
//!   [`netns::run`], which runs a test in a network namespace of its own.

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cluster")]
pub mod kubelet;
#[cfg(feature = "cluster")]
pub mod netns;
pub mod oidc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub use mcp_example_server;

/// The session-era revision the test client speaks.
pub const SESSION_REVISION: &str = "2025-11-25";
/// The stateless revision.
pub const STATELESS_REVISION: &str = "2026-07-28";

// === Replicas ===

/// Replicas of `mcp-example-server`, each serving streamable HTTP (`/mcp`) and HTTP+SSE
/// (`/sse`, `/messages`) on its own loopback port; replica ids are `r0`, `r1`, ...
pub struct Replicas {
    handles: Vec<Option<mcp_example_server::Handle>>,
    addrs: Vec<SocketAddr>,
}

impl Replicas {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let config = mcp_example_server::Config {
                transport: mcp_example_server::Transport::All,
                host: "127.0.0.1".into(),
                port: 0,
                replica: Some(format!("r{i}")),
            };
            let handle = mcp_example_server::start_http(&config).await?;
            addrs.push(handle.local_addr());
            handles.push(Some(handle));
        }
        Ok(Self { handles, addrs })
    }

    /// `http://127.0.0.1:PORT` of each replica (also of stopped ones).
    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    /// Stops replica `i` (its port then refuses connections).
    pub async fn kill(&mut self, i: usize) {
        if let Some(h) = self.handles.get_mut(i).and_then(Option::take) {
            h.shutdown().await;
        }
    }
}

// === Http ===

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC response in the body: the body itself (`application/json`) or the last
    /// event of an SSE body that carries an `id` and a `result` or `error`.
    pub fn message(&self) -> anyhow::Result<Value> {
        let is_sse = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if !is_sse {
            return serde_json::from_slice(&self.body)
                .with_context(|| format!("body is not JSON: {}", self.text()));
        }
        sse_events(&self.body)
            .into_iter()
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .rfind(|m| m.get("result").is_some() || m.get("error").is_some())
            .ok_or_else(|| anyhow!("SSE body holds no response: {}", self.text()))
    }
}

/// Polls `check` every 100 ms until it gives a value, or fails after `within` naming `what`
/// and the last error `check` returned.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `mcp-example-server` binary beside the running test (`<target>/debug`), built once if
/// it is missing, for tests that run it as a child process (`MCP_EXAMPLE_SERVER` names
/// another).
pub fn example_server() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("MCP_EXAMPLE_SERVER") {
            return path.into();
        }
        // The test binary lives in <target>/debug/deps.
        let exe = std::env::current_exe().expect("current_exe");
        let debug = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test binary under <target>/debug/deps")
            .to_path_buf();
        let server = debug.join("mcp-example-server");
        if !server.is_file() {
            let target = debug.parent().expect("target dir");
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-p", "mcp-example-server", "--target-dir"])
                .arg(target)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p mcp-example-server failed");
        }
        server.canonicalize().expect("mcp-example-server path")
    })
    .clone()
}

/// A plain HTTP client over hyper.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// A client speaking HTTP/2 with prior knowledge (h2c), as gRPC-style clients do.
    pub fn http2() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into()))?;
        Ok(self.client.request(req).await?)
    }

    /// Sends a request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let res = self.open(method, url, headers, body).await?;
        let (parts, body) = res.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    /// POSTs a JSON-RPC message the way MCP clients do.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        message: &Value,
    ) -> anyhow::Result<Reply> {
        let mut all = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        all.extend_from_slice(headers);
        self.send(Method::POST, url, &all, message.to_string())
            .await
    }
}

// === McpSession ===

/// One MCP session of the session era over streamable HTTP.
pub struct McpSession {
    pub http: Http,
    pub url: String,
    pub id: String,
    /// Sent with every request of the session (`Authorization`, say).
    pub headers: Vec<(String, String)>,
    next_id: u64,
}

pub fn initialize_request(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": SESSION_REVISION,
            "capabilities": {},
            "clientInfo": { "name": "mcp-gateway-testkit", "version": "0" }
        }
    })
}

pub fn tool_call(id: u64, name: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": { "name": name, "arguments": arguments }
    })
}

/// The text of a `tools/call` result.
pub fn result_text(message: &Value) -> anyhow::Result<String> {
    if let Some(err) = message.get("error") {
        bail!("JSON-RPC error: {err}");
    }
    let content = message["result"]["content"]
        .as_array()
        .ok_or_else(|| anyhow!("no result content in {message}"))?;
    Ok(content.iter().filter_map(|c| c["text"].as_str()).collect())
}

impl McpSession {
    /// `initialize` + `notifications/initialized`.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &[]).await
    }

    /// `initialize` + `notifications/initialized`, sending `headers` with every request.
    pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let http = Http::default();
        let reply = http.post_json(url, headers, &initialize_request(0)).await?;
        if reply.status != StatusCode::OK {
            bail!("initialize: {} {}", reply.status, reply.text());
        }
        let id = reply
            .header("mcp-session-id")
            .ok_or_else(|| anyhow!("initialize answered without Mcp-Session-Id"))?
            .to_owned();
        let session = Self {
            http,
            url: url.to_owned(),
            id,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            next_id: 1,
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let reply = session.post(&note).await?;
        if reply.status != StatusCode::ACCEPTED {
            bail!(
                "notifications/initialized: {} {}",
                reply.status,
                reply.text()
            );
        }
        Ok(session)
    }

    /// The session `id`, continued at `url` (through another gateway, say).
    pub fn resume(url: &str, id: &str) -> Self {
        Self {
            http: Http::default(),
            url: url.to_owned(),
            id: id.to_owned(),
            headers: Vec::new(),
            next_id: 100,
        }
    }

    /// The session's headers and the session's own.
    fn request_headers(&self) -> Vec<(&str, &str)> {
        let mut all = vec![
            ("mcp-session-id", self.id.as_str()),
            ("mcp-protocol-version", SESSION_REVISION),
        ];
        all.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        all
    }

    /// POSTs a message in this session.
    pub async fn post(&self, message: &Value) -> anyhow::Result<Reply> {
        self.http
            .post_json(&self.url, &self.request_headers(), message)
            .await
    }

    /// Calls a tool; returns the raw reply.
    pub async fn call(&mut self, name: &str, arguments: Value) -> anyhow::Result<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        self.post(&tool_call(id, name, arguments)).await
    }

    /// Calls a tool and returns its text, failing on any non-200 or error.
    pub async fn call_text(&mut self, name: &str, arguments: Value) -> anyhow::Result<String> {
        let reply = self.call(name, arguments).await?;
        if reply.status != StatusCode::OK {
            bail!("{name}: {} {}", reply.status, reply.text());
        }
        result_text(&reply.message()?)
    }

    /// Ends the session.
    pub async fn delete(&self) -> anyhow::Result<Reply> {
        self.http
            .send(
                Method::DELETE,
                &self.url,
                &self.request_headers(),
                Bytes::new(),
            )
            .await
    }
}

/// A `tools/call` of the stateless revision: envelope in `params._meta`, mirrored headers.
pub async fn stateless_call(
    http: &Http,
    url: &str,
    name: &str,
    arguments: Value,
) -> anyhow::Result<Reply> {
    let message = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": name, "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": STATELESS_REVISION,
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    http.post_json(
        url,
        &[
            ("mcp-protocol-version", STATELESS_REVISION),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ],
        &message,
    )
    .await
}

// === SSE ===

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Splits an SSE body into its events (comments dropped).
pub fn sse_events(body: &[u8]) -> Vec<Event> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|block| {
            let mut ev = Event {
                event: None,
                data: String::new(),
                id: None,
            };
            let mut any = false;
            for line in block.lines().filter(|l| !l.starts_with(':')) {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                any = true;
                match field {
                    "event" => ev.event = Some(value.to_owned()),
                    "id" => ev.id = Some(value.to_owned()),
                    "data" => {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                    }
                    _ => {}
                }
            }
            any.then_some(ev)
        })
        .collect()
}

/// Reads an SSE response body as it arrives: each complete event with the time it arrived.
pub struct EventReader {
    body: Incoming,
    buf: Vec<u8>,
    started: Instant,
}

impl EventReader {
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The next event and when it arrived (since the reader was made), or `None` at the end.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<(Event, Duration)>> {
        loop {
            let text = String::from_utf8_lossy(&self.buf).replace("\r\n", "\n");
            if let Some(end) = text.find("\n\n") {
                let block = text[..end + 2].to_owned();
                self.buf = text.as_bytes()[end + 2..].to_vec();
                if let Some(ev) = sse_events(block.as_bytes()).into_iter().next() {
                    return Ok(Some((ev, self.started.elapsed())));
                }
                continue;
            }
            let frame = tokio::time::timeout(timeout, self.body.frame())
                .await
                .map_err(|_| anyhow!("no SSE event within {timeout:?}"))?;
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// A TCP listener that accepts connections and never answers: an upstream that hangs.
pub async fn black_hole() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok((addr, task))
}

/// An HTTP server that answers every request with `status` (a broken replica: a crashed
/// dependency behind it, a full disk): what a gateway must route around. Counts the requests it
/// answered.
pub async fn failing_server(
    status: u16,
) -> anyhow::Result<(
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#;
                        http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, hits, task))
}

/// A loopback port where connections time out instead of opening, as to a dead node behind a
/// firewall: the listener's accept queue is full and never drained, so the kernel drops further
/// SYNs. Connections time out while this lives.
pub struct DeadNode {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _filler: std::net::TcpStream,
}

impl DeadNode {
    pub fn start() -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        // Fills the accept queue (of length one with a backlog of 0).
        let filler = std::net::TcpStream::connect(addr)?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            bail!("the kernel accepted a connection beyond the listen backlog: no dead node");
        }
        Ok(Self {
            addr,
            _listener: listener,
            _filler: filler,
        })
    }
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

// === Redis ===

/// A real `redis-server` on a free loopback port, for tests of the shared session store.
/// Persistence is off; the server is killed when this is dropped.
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH). Fails with install instructions when it is missing:
    /// tests that need Redis must not pass silently without it.
    pub fn start() -> anyhow::Result<Self> {
        let port = closed_port()?.port();
        let mut server = Self { port, child: None };
        server.restart()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow!(
                    "cannot start redis-server ({e}): install it with `apt-get install -y redis-server` \
                     (.ci/run does this)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server did not answer PING on port {} within 10 s",
            self.port
        )
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
