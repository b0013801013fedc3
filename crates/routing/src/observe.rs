//! What the data plane tells operators about each MCP operation: spans, metrics and audit
//! records that follow the OpenTelemetry semantic conventions for MCP
//! (`semantic-conventions-genai` v0.1.0).
//!
//! Per JSON-RPC message posted to a streamable HTTP endpoint:
//! - a SERVER span (the client's call) and, per attempt on a replica, a CLIENT span (the call to
//!   the replica), named `{mcp.method.name} {tool or prompt name}`, when a
//!   [`TracePropagator`] is configured; the client's W3C trace context (`params._meta` first, as
//!   SEP-414 defines, else the `traceparent`/`tracestate` headers) is the SERVER span's parent,
//!   and the CLIENT span's context goes to the replica in `traceparent`;
//! - `mcp.server.operation.duration` / `mcp.client.operation.duration` histograms, in Prometheus
//!   naming (`mcp_server_operation_duration_seconds`, …), with bounded labels: the method among
//!   the conventions' well-known names (else `_OTHER`), the tool or prompt name only when the
//!   adapter's replicas listed it (`tools/list`, `prompts/list` answers seen here; else
//!   `_OTHER`), never a session id;
//! - an [`AuditEvent`] for `tools/call`, `resources/read` and `prompts/get`, allowed or refused,
//!   when an [`AuditSink`] is configured.
//!
//! How an operation ended (`error.type`: the JSON-RPC error code, `tool_error` for a tool result
//! with `isError: true`) is read from the response as it streams to the client; nothing is
//! held back. An answer that arrives whole in one frame (the usual `application/json` answer)
//! is read by one scan of that frame (`jsonrpc::answer`); any other (split over
//! frames, an SSE stream, a listing whose names are learnt) by the incremental reader
//! (`jsonwalk`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use http_body_util::BodyExt;
use mcp_gateway_core::{AuditEvent, AuditPrincipal, AuditSink, Principal, SessionRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::Span;

use crate::body::{ProxyBody, Tracked, Watch};
use crate::jsonrpc::Envelope;
use crate::jsonwalk::{Frame as Path, Interest, MAX_SCALAR, SseData, Visit, Walker, path_is};
use crate::stats::Handles;
use metrics::Histogram;

/// Target of the spans this module creates, so a subscriber can route them to its exporter
/// (and keep them out of log lines).
pub const SPAN_TARGET: &str = "mcp_gateway::otel";

/// Histogram of one MCP operation as the gateway serves it (receipt to end of response).
pub const SERVER_OPERATION_DURATION: &str = "mcp_server_operation_duration_seconds";
/// Histogram of one MCP operation as a replica serves it (request sent to end of response).
pub const CLIENT_OPERATION_DURATION: &str = "mcp_client_operation_duration_seconds";
/// Histogram of MCP sessions, from `initialize` to their end as the gateway sees it.
pub const SERVER_SESSION_DURATION: &str = "mcp_server_session_duration_seconds";
/// The conventions' bucket boundaries for all three, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The conventions' well-known `mcp.method.name` values (plus the 2026-07-28 additions); any
/// other method is counted as `_OTHER`.
const WELL_KNOWN_METHODS: &[&str] = &[
    "completion/complete",
    "elicitation/create",
    "initialize",
    "logging/setLevel",
    "notifications/cancelled",
    "notifications/initialized",
    "notifications/message",
    "notifications/progress",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "ping",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/templates/list",
    "resources/unsubscribe",
    "roots/list",
    "sampling/createMessage",
    "tools/call",
    "tools/list",
    "server/discover",
    "subscriptions/listen",
];

/// The fallback label value of the conventions.
const OTHER: &str = "_OTHER";
/// Names learned per adapter and kind, at most (a replica is trusted, but not unboundedly).
const MAX_NAMES: usize = 1024;
/// Largest `arguments` copied into an audit record when the operator asks for them.
const MAX_AUDIT_ARGUMENTS: usize = 64 * 1024;

/// Connects spans to the trace context of the client and the replica. Implemented where the
/// OpenTelemetry SDK lives (`mcp-gateway-telemetry`), so this crate needs none.
pub trait TracePropagator: Send + Sync {
    /// Makes `span` a child of the remote context `get` yields (`traceparent`, `tracestate`).
    fn set_parent(&self, span: &Span, get: &dyn Fn(&str) -> Option<String>);
    /// Writes `span`'s context into the headers of the request to a replica.
    fn inject(&self, span: &Span, headers: &mut HeaderMap);
}

/// The observability settings of a [`Gateway`](crate::Gateway).
#[derive(Default)]
pub(crate) struct Observer {
    pub propagator: Option<Arc<dyn TracePropagator>>,
    pub audit: Option<Arc<dyn AuditSink>>,
    pub audit_arguments: bool,
    /// The tools and prompts each adapter's replicas listed (at most [`MAX_NAMES`] of each),
    /// looked up for every `tools/call` and `prompts/get`. Hashed with foldhash, seeded per
    /// process: the names come from replicas, not from callers, and are bounded.
    pub(crate) names: RwLock<HashMap<Arc<str>, Names, foldhash::fast::RandomState>>,
    /// The operation histograms (SERVER, CLIENT) by label set, registered once.
    pub(crate) operations: Handles<(Histogram, Histogram)>,
}

#[derive(Default)]
pub(crate) struct Names {
    tools: HashSet<Box<str>, foldhash::fast::RandomState>,
    prompts: HashSet<Box<str>, foldhash::fast::RandomState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Tools,
    Prompts,
}

impl Observer {
    fn label_for(&self, adapter: &str, listing: Listing, name: &str) -> metrics::SharedString {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let known = names.get(adapter).is_some_and(|n| match listing {
            Listing::Tools => n.tools.contains(name),
            Listing::Prompts => n.prompts.contains(name),
        });
        if known {
            metrics::SharedString::from(name.to_owned())
        } else {
            metrics::SharedString::const_str(OTHER)
        }
    }

    fn knows(&self, adapter: &str, listing: Listing, name: &str) -> bool {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names.get(adapter).is_some_and(|n| match listing {
            Listing::Tools => n.tools.contains(name),
            Listing::Prompts => n.prompts.contains(name),
        })
    }

    /// Records into the SERVER and CLIENT operation histograms of a label set (the CLIENT one
    /// a no-op without a replica), from the cache: `record` is given both.
    fn operation_histograms(
        &self,
        adapter: &str,
        replica: Option<&Arc<str>>,
        method: &str,
        target: Option<&str>,
        error_type: Option<&str>,
        record: impl FnOnce(&Histogram, &Histogram),
    ) {
        let listed = match (method, target) {
            ("tools/call", Some(t)) => Some((Listing::Tools, t)),
            ("prompts/get", Some(t)) => Some((Listing::Prompts, t)),
            _ => None,
        };
        let (kind, name) = match listed {
            Some((listing, t)) if self.knows(adapter, listing, t) => ("listed", t),
            Some(_) => ("listed", OTHER),
            None => ("", ""),
        };
        let key = [
            adapter,
            replica.map_or("", |r| r),
            method_label(method),
            kind,
            name,
            error_type.unwrap_or("\0"),
        ];
        let register = || {
            let labels = labels(self, adapter, replica, method, target, error_type);
            let client = match replica {
                Some(_) => metrics::histogram!(CLIENT_OPERATION_DURATION, labels.clone()),
                None => Histogram::noop(),
            };
            (
                metrics::histogram!(SERVER_OPERATION_DURATION, labels),
                client,
            )
        };
        self.operations
            .with(&key, register, |(server, client)| record(server, client));
    }

    fn learn(&self, adapter: &Arc<str>, listing: Listing, found: Vec<String>) {
        if found.is_empty() {
            return;
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        let entry = names.entry(adapter.clone()).or_default();
        let set = match listing {
            Listing::Tools => &mut entry.tools,
            Listing::Prompts => &mut entry.prompts,
        };
        for name in found {
            if set.len() >= MAX_NAMES {
                break;
            }
            set.insert(name.into_boxed_str());
        }
    }

    pub fn audits(&self) -> bool {
        self.audit.is_some()
    }
}

fn method_label(method: &str) -> &'static str {
    WELL_KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or(OTHER)
}

fn audited(method: &str) -> bool {
    matches!(method, "tools/call" | "resources/read" | "prompts/get")
}

// === impl Probe ===

/// What a request turned out to be, gathered while it is routed. Held by the request's future
/// and lent to the routing code, which fills it wherever it learns something.
#[derive(Default)]
pub(crate) struct Probe(Mutex<Facts>);

#[derive(Default)]
struct Facts {
    /// Held once for the conventions' methods (they are most of them), copied for others.
    method: Option<Cow<'static, str>>,
    target: Option<Arc<str>>,
    /// As the message wrote it (a number's copy costs nothing); text only where it is shown.
    request_id: Option<Value>,
    server: Option<Span>,
    arguments: Option<Arc<Mutex<ArgumentDigest>>>,
}

impl Probe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records what the envelope of a posted message says, and opens its SERVER span.
pub(crate) fn on_envelope(
    observer: &Observer,
    probe: &Probe,
    env: Option<&Envelope>,
    headers: &HeaderMap,
    adapter: &str,
) {
    let Some(env) = env else {
        return;
    };
    let Some(method) = env.method.as_deref() else {
        return;
    };
    let mut facts = probe.lock();
    facts.method = Some(match method_label(method) {
        OTHER => Cow::Owned(method.to_owned()),
        known => Cow::Borrowed(known),
    });
    facts.target = env.name.clone();
    facts.request_id = env.id.clone().filter(|id| !id.is_null());
    if let Some(propagator) = &observer.propagator {
        let span = server_span(method, env, &facts, headers, adapter);
        // `params._meta` first (SEP-414), else the HTTP headers; never a mix of both.
        if let Some(tp) = &env.traceparent {
            let (tp, ts) = (tp.clone(), env.tracestate.clone());
            propagator.set_parent(&span, &move |k| match k {
                "traceparent" => Some(tp.clone()),
                "tracestate" => ts.clone(),
                _ => None,
            });
        } else if headers.contains_key("traceparent") {
            propagator.set_parent(&span, &|k| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        }
        facts.server = Some(span);
    }
}

/// A JSON-RPC id as spans and audit records show it: a string without its quotes.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.as_u64().unwrap_or_default().to_string(),
        other => other.to_string(),
    }
}

fn span_name(method: &str, env: &Envelope) -> String {
    match (method, env.name.as_deref()) {
        ("tools/call" | "prompts/get", Some(name)) => format!("{method} {name}"),
        _ => method.to_owned(),
    }
}

fn server_span(
    method: &str,
    env: &Envelope,
    facts: &Facts,
    headers: &HeaderMap,
    adapter: &str,
) -> Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "mcp.server",
        otel.name = span_name(method, env),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        mcp.method.name = method,
        gen_ai.tool.name = tracing::field::Empty,
        gen_ai.prompt.name = tracing::field::Empty,
        gen_ai.operation.name = tracing::field::Empty,
        mcp.resource.uri = tracing::field::Empty,
        jsonrpc.request.id = facts.request_id.as_ref().map(id_text).as_deref(),
        mcp.protocol.version = header_str(headers, "mcp-protocol-version"),
        mcp.session.id = header_str(headers, "mcp-session-id"),
        error.type = tracing::field::Empty,
        network.transport = "tcp",
        network.protocol.name = "http",
        client.address = tracing::field::Empty,
        client.port = tracing::field::Empty,
        mcp_gateway.adapter = adapter,
        mcp_gateway.replica = tracing::field::Empty,
    );
    target_fields(&span, method, env.name.as_deref());
    span
}

fn target_fields(span: &Span, method: &str, name: Option<&str>) {
    let Some(name) = name else { return };
    match method {
        "tools/call" => {
            span.record("gen_ai.tool.name", name);
            span.record("gen_ai.operation.name", "execute_tool");
        }
        "prompts/get" => {
            span.record("gen_ai.prompt.name", name);
        }
        m if m.starts_with("resources/") => {
            span.record("mcp.resource.uri", name);
        }
        _ => {}
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

// === the CLIENT side ===

/// Response extension: the attempt on a replica that produced the response.
pub(crate) struct Upstream {
    replica: Arc<str>,
    started: Instant,
    span: Option<Span>,
}

/// Opens the CLIENT span of an attempt on `replica` (a request with `headers`), begun at
/// `started`, and writes its context into `trace_context`, sent with the request.
pub(crate) fn client_attempt(
    observer: &Observer,
    probe: &Probe,
    replica: &mcp_gateway_core::Replica,
    headers: &HeaderMap,
    trace_context: &mut HeaderMap,
    started: Instant,
) -> Upstream {
    let span = observer.propagator.as_ref().and_then(|propagator| {
        let facts = probe.lock();
        let parent = facts.server.clone()?;
        let method = facts.method.clone().unwrap_or_default();
        let method = &*method;
        let name = facts.target.clone();
        let name = name.as_deref();
        let otel_name = match (method, name) {
            ("tools/call" | "prompts/get", Some(n)) => format!("{method} {n}"),
            _ => method.to_owned(),
        };
        let (address, port) = server_address(&replica.base_url);
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            parent: &parent,
            "mcp.client",
            otel.name = otel_name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            mcp.method.name = method,
            gen_ai.tool.name = tracing::field::Empty,
            gen_ai.prompt.name = tracing::field::Empty,
            gen_ai.operation.name = tracing::field::Empty,
            mcp.resource.uri = tracing::field::Empty,
            jsonrpc.request.id = facts.request_id.as_ref().map(id_text).as_deref(),
            mcp.protocol.version = header_str(headers, "mcp-protocol-version"),
            mcp.session.id = header_str(headers, "mcp-session-id"),
            error.type = tracing::field::Empty,
            network.transport = "tcp",
            network.protocol.name = "http",
            server.address = address,
            server.port = port,
            mcp_gateway.replica = &*replica.id,
        );
        drop(facts);
        target_fields(&span, method, name);
        parent.record("mcp_gateway.replica", &*replica.id);
        propagator.inject(&span, trace_context);
        Some(span)
    });
    Upstream {
        replica: replica.id.clone(),
        started,
        span,
    }
}

fn server_address(base_url: &str) -> (&str, Option<u16>) {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}

/// An attempt that got no response (refused, timed out): its CLIENT span and histogram.
pub(crate) fn client_failed(
    probe: &Probe,
    adapter: &str,
    observer: &Observer,
    upstream: Upstream,
    error_type: &'static str,
) {
    let facts = probe.lock();
    let Some(method) = facts.method.as_deref() else {
        return;
    };
    let labels = labels(
        observer,
        adapter,
        Some(&upstream.replica),
        method,
        facts.target.as_deref(),
        Some(error_type),
    );
    metrics::histogram!(CLIENT_OPERATION_DURATION, labels)
        .record(upstream.started.elapsed().as_secs_f64());
    if let Some(span) = &upstream.span {
        span_error(span, error_type, None);
    }
}

fn span_error(span: &Span, error_type: &str, message: Option<&str>) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
    if let Some(m) = message {
        span.record("otel.status_description", m);
    }
}

impl Upstream {
    /// Attaches this attempt to the response it produced.
    pub fn attach(self, res: &mut Response<Tracked>) {
        res.body_mut().attempt = Some(self);
    }
}

fn labels(
    observer: &Observer,
    adapter: &str,
    replica: Option<&Arc<str>>,
    method: &str,
    target: Option<&str>,
    error_type: Option<&str>,
) -> Vec<metrics::Label> {
    let mut labels = Vec::with_capacity(6);
    labels.push(metrics::Label::new("adapter", adapter.to_owned()));
    if let Some(r) = replica {
        labels.push(metrics::Label::new("replica", r.to_string()));
    }
    labels.push(metrics::Label::from_static_parts(
        "mcp_method_name",
        method_label(method),
    ));
    match (method, target) {
        ("tools/call", Some(t)) => labels.push(metrics::Label::new(
            "gen_ai_tool_name",
            observer.label_for(adapter, Listing::Tools, t),
        )),
        ("prompts/get", Some(t)) => labels.push(metrics::Label::new(
            "gen_ai_prompt_name",
            observer.label_for(adapter, Listing::Prompts, t),
        )),
        _ => {}
    }
    if let Some(e) = error_type {
        labels.push(metrics::Label::new("error_type", e.to_owned()));
    }
    labels
}

// === sessions ===

/// How a session ended, as the gateway saw it; `None` for a client's `DELETE`.
pub(crate) fn session_ended(record: &SessionRecord, error_type: Option<&'static str>) {
    let secs = mcp_gateway_core::unix_millis().saturating_sub(record.created_ms) as f64 / 1000.0;
    let adapter = record.key.adapter.shared();
    let replica = record.replica.to_string();
    match error_type {
        None => metrics::histogram!(SERVER_SESSION_DURATION,
            "adapter" => adapter, "replica" => replica)
        .record(secs),
        Some(e) => metrics::histogram!(SERVER_SESSION_DURATION,
            "adapter" => adapter, "replica" => replica, "error_type" => e)
        .record(secs),
    }
}

// === arguments ===

/// The SHA-256 (and, when configured, a copy) of a request's `params.arguments`, taken as the
/// request body streams to the replica.
#[derive(Default)]
pub(crate) struct ArgumentDigest {
    walker: Walker,
    sha: Sha256,
    copy: Option<Vec<u8>>,
    done: Option<String>,
}

impl Visit for ArgumentDigest {
    fn interest(&mut self, path: &[Path]) -> Interest {
        if self.done.is_none() && path_is(path, &["params", "arguments"]) {
            Interest::Raw
        } else if path.is_empty() || path_is(path, &["params"]) {
            Interest::None
        } else {
            // Nothing else holds the arguments.
            Interest::Skip
        }
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        if let Some(copy) = &mut self.copy {
            let room = MAX_AUDIT_ARGUMENTS.saturating_sub(copy.len());
            copy.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }
    fn raw_end(&mut self) {
        let sha = std::mem::take(&mut self.sha);
        self.done = Some(hex(&sha.finalize()));
    }
}

impl ArgumentDigest {
    fn feed(&mut self, chunk: &[u8]) {
        if self.done.is_some() {
            return;
        }
        let mut walker = std::mem::take(&mut self.walker);
        walker.feed(chunk, self);
        self.walker = walker;
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// When the message is audited, hashes its `arguments` as the body streams: `prefix` (already
/// read for routing) now, the rest as the replica reads it. Returns the body to forward.
pub(crate) fn digest_arguments(
    observer: &Observer,
    probe: &Probe,
    prefix: &[Bytes],
    rest: Option<ProxyBody>,
) -> Option<ProxyBody> {
    if !observer.audits() {
        return rest;
    }
    let mut facts = probe.lock();
    if !facts.method.as_deref().is_some_and(audited) {
        return rest;
    }
    let mut digest = ArgumentDigest {
        copy: observer.audit_arguments.then(Vec::new),
        ..ArgumentDigest::default()
    };
    for chunk in prefix {
        digest.feed(chunk);
    }
    let digest = Arc::new(Mutex::new(digest));
    facts.arguments = Some(digest.clone());
    drop(facts);
    rest.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                digest.lock().unwrap_or_else(|e| e.into_inner()).feed(data);
            }
            frame
        })
        .boxed_unsync()
    })
}

// === the response ===

/// How a response says the operation ended, and the names a listing announces.
#[derive(Default)]
struct Outcome {
    listing: Option<Listing>,
    found: Vec<String>,
    code: Option<String>,
    message: Option<String>,
    is_error: bool,
    responded: bool,
}

impl Visit for Outcome {
    /// Everything but `result`, `error` and the listing's array is skipped: a tool's content
    /// (most of a response's bytes) is passed over at a byte scan's cost.
    fn interest(&mut self, path: &[Path]) -> Interest {
        let listed: &[u8] = match self.listing {
            Some(Listing::Tools) => b"tools",
            Some(Listing::Prompts) => b"prompts",
            None => b"",
        };
        match path.len() {
            0 => Interest::None,
            1 => match path[0].key() {
                Some(b"result" | b"error") => {
                    self.responded = true;
                    Interest::None
                }
                Some(_) => Interest::Skip,
                None => Interest::None,
            },
            2 if path_is(path, &["error", "code"])
                || path_is(path, &["error", "message"])
                || path_is(path, &["result", "isError"]) =>
            {
                Interest::Scalar
            }
            2 if path[0].key() == Some(b"result")
                && !listed.is_empty()
                && path[1].key() == Some(listed) =>
            {
                Interest::None
            }
            // An entry of the listing (only reached under `result.<listed>`).
            3 if path[2].key().is_none() => Interest::None,
            4 if path[3].key() == Some(b"name") => Interest::Scalar,
            _ => Interest::Skip,
        }
    }

    fn scalar(&mut self, path: &[Path], text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        match (path.len(), path[path.len() - 1].key()) {
            (2, Some(b"code")) => self.code = Some(text.into_owned()),
            (2, Some(b"message")) => self.message = Some(text.into_owned()),
            (2, Some(b"isError")) => self.is_error = text == "true",
            (4, _) if self.found.len() < MAX_NAMES => self.found.push(text.into_owned()),
            _ => {}
        }
    }
}

enum Reader {
    /// `application/json` at the start of a message: a frame that holds a whole message is
    /// read by [`jsonrpc::answer`](crate::jsonrpc::answer), anything else by a walker.
    JsonFirst,
    Json(Walker),
    Sse(SseData, Walker),
    None,
}

impl Reader {
    /// The reader of an `application/json` answer: a listing's names are read by the walker
    /// alone.
    fn json(listing: Option<Listing>) -> Self {
        match listing {
            Some(_) => Reader::Json(Walker::default()),
            None => Reader::JsonFirst,
        }
    }

    fn read(&mut self, data: &[u8], outcome: &mut Outcome) {
        match self {
            Reader::JsonFirst => {
                if let Some(answer) = crate::jsonrpc::answer(data) {
                    // The message ended with the frame: whatever comes next starts another.
                    outcome.answered(&answer);
                    return;
                }
                let mut walker = Walker::default();
                walker.feed(data, outcome);
                *self = Reader::Json(walker);
            }
            Reader::Json(w) => w.feed(data, outcome),
            Reader::Sse(sse, w) => sse.feed(data, w, outcome),
            Reader::None => {}
        }
    }
}

impl Outcome {
    /// What a whole message read at once says, as the walker reports it. (One difference:
    /// the scan also passes over values nested deeper than the walker follows, where the walker
    /// stops reporting.)
    fn answered(&mut self, a: &crate::jsonrpc::Answer<'_>) {
        let text = |t: &[u8]| String::from_utf8_lossy(&t[..t.len().min(MAX_SCALAR)]).into_owned();
        self.responded |= a.responded;
        if let Some(code) = a.code {
            self.code = Some(text(code));
        }
        if let Some(message) = a.message {
            self.message = Some(text(message));
        }
        if let Some(is_error) = a.is_error {
            self.is_error = is_error;
        }
    }
}

/// Everything needed to record an operation when its response ends.
struct Finish {
    observer: Arc<Observer>,
    facts: Facts,
    method: Cow<'static, str>,
    adapter: Arc<str>,
    upstream: Option<Upstream>,
    started: Instant,
    status: u16,
    refused: Option<&'static str>,
    principal: Option<AuditPrincipal>,
    reader: Reader,
    outcome: Outcome,
}

/// Has the response of an MCP operation read on its way and the operation recorded when it
/// ends (the body's [`Watch`]). Requests that were not JSON-RPC messages (GET streams, DELETE,
/// legacy posts) pass untouched.
#[allow(clippy::too_many_arguments)]
pub(crate) fn observe_response(
    observer: &Arc<Observer>,
    probe: Probe,
    adapter: Option<Arc<str>>,
    principal: Option<&Principal>,
    started: Instant,
    refused: Option<&'static str>,
    mut res: Response<Tracked>,
) -> Response<Tracked> {
    let upstream = res.body_mut().attempt.take();
    let mut facts = probe.0.into_inner().unwrap_or_else(|e| e.into_inner());
    let (Some(method), Some(adapter)) = (facts.method.take(), adapter) else {
        return res;
    };
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let listing = match &*method {
        "tools/list" if upstream.is_some() => Some(Listing::Tools),
        "prompts/list" if upstream.is_some() => Some(Listing::Prompts),
        _ => None,
    };
    let reader = if content_type.starts_with("application/json") {
        Reader::json(listing)
    } else if content_type.starts_with("text/event-stream") {
        Reader::Sse(SseData::default(), Walker::default())
    } else {
        Reader::None
    };
    let finish = Box::new(Finish {
        observer: observer.clone(),
        facts,
        method,
        adapter,
        upstream,
        started,
        status: res.status().as_u16(),
        refused,
        principal: principal.map(AuditPrincipal::from),
        reader,
        outcome: Outcome {
            listing,
            ..Outcome::default()
        },
    });
    res.body_mut().watch(finish);
    res
}

impl Finish {
    fn read(&mut self, data: &[u8]) {
        self.reader.read(data, &mut self.outcome);
    }

    fn error_type(&self, complete: bool) -> Option<String> {
        let o = &self.outcome;
        if let Some(code) = &o.code {
            return Some(code.clone());
        }
        if o.is_error {
            return Some("tool_error".into());
        }
        if self.status >= 400 {
            return Some(self.status.to_string());
        }
        // A request (it has an id) whose response never came: the stream broke or the client
        // left first.
        if !complete && !o.responded && self.facts.request_id.is_some() {
            return Some("incomplete".into());
        }
        None
    }

    fn record(mut self, complete: bool) {
        let error_type = self.error_type(complete);
        let observer = &self.observer;
        let adapter = &*self.adapter;
        let method = &*self.method;
        let target = self.facts.target.as_deref();
        let replica = self.upstream.as_ref().map(|u| &u.replica);
        if let Some(listing) = self.outcome.listing.filter(|_| error_type.is_none()) {
            observer.learn(
                &self.adapter,
                listing,
                std::mem::take(&mut self.outcome.found),
            );
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let upstream_elapsed = self
            .upstream
            .as_ref()
            .map(|up| now.saturating_duration_since(up.started));
        observer.operation_histograms(
            adapter,
            replica,
            method,
            target,
            error_type.as_deref(),
            |server, client| {
                if let Some(up) = upstream_elapsed {
                    client.record(up.as_secs_f64());
                }
                server.record(elapsed.as_secs_f64());
            },
        );
        if let Some(e) = &error_type {
            let message = self.outcome.message.as_deref();
            if let Some(span) = &self.facts.server {
                span_error(span, e, message);
            }
            if let Some(span) = self.upstream.as_ref().and_then(|u| u.span.as_ref()) {
                span_error(span, e, message);
            }
        }
        if let Some(sink) = observer.audit.as_ref().filter(|_| audited(method)) {
            let (arguments_sha256, arguments) = match &self.facts.arguments {
                Some(d) => {
                    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                    let copy = d.copy.take().filter(|_| d.done.is_some());
                    (
                        d.done.clone(),
                        copy.map(|c| String::from_utf8_lossy(&c).into_owned()),
                    )
                }
                None => (None, None),
            };
            sink.record(AuditEvent {
                time: mcp_gateway_core::rfc3339(std::time::SystemTime::now()),
                kind: "mcp",
                principal: self.principal.take(),
                adapter: Some(adapter.to_owned()),
                replica: replica.map(|r| r.to_string()),
                method: method.to_owned(),
                target: target.map(str::to_owned),
                request_id: self.facts.request_id.as_ref().map(id_text),
                decision: if self.refused.is_some() {
                    "refused"
                } else {
                    "allowed"
                },
                reason: self.refused.map(str::to_owned),
                outcome: error_type.unwrap_or_else(|| "ok".into()),
                status: self.status,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                arguments_sha256,
                arguments,
            });
        }
        // The spans end here, when their last handle goes.
    }
}

impl Watch for Finish {
    fn frame(&mut self, data: &Bytes) {
        self.read(data);
    }

    fn end(self: Box<Self>, complete: bool) {
        self.record(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses_are_split_for_server_attributes() {
        assert_eq!(
            server_address("http://127.0.0.1:9001"),
            ("127.0.0.1", Some(9001))
        );
        assert_eq!(
            server_address("http://everything-0.everything:8080/base"),
            ("everything-0.everything", Some(8080))
        );
        assert_eq!(server_address("http://[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(server_address("http://host"), ("host", None));
    }

    #[test]
    fn methods_outside_the_conventions_are_other() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("x/evil-unbounded"), "_OTHER");
    }

    #[test]
    fn tool_labels_are_only_names_the_replicas_listed() {
        let o = Observer::default();
        let adapter: Arc<str> = "a".into();
        assert_eq!(&*o.label_for("a", Listing::Tools, "echo"), "_OTHER");
        o.learn(&adapter, Listing::Tools, vec!["echo".into()]);
        assert_eq!(&*o.label_for("a", Listing::Tools, "echo"), "echo");
        assert_eq!(&*o.label_for("a", Listing::Prompts, "echo"), "_OTHER");
        assert_eq!(&*o.label_for("b", Listing::Tools, "echo"), "_OTHER");
        o.learn(
            &adapter,
            Listing::Tools,
            (0..2 * MAX_NAMES).map(|i| format!("t{i}")).collect(),
        );
        assert_eq!(o.names.read().unwrap()["a"].tools.len(), MAX_NAMES);
    }

    /// Reads `body` whole and byte by byte with an [`Outcome`] for `listing`.
    fn outcome_of(listing: Option<Listing>, body: &str) -> Outcome {
        let mut whole = Outcome {
            listing,
            ..Outcome::default()
        };
        Walker::default().feed(body.as_bytes(), &mut whole);
        let mut bytes = Outcome {
            listing,
            ..Outcome::default()
        };
        let mut w = Walker::default();
        for b in body.as_bytes().chunks(1) {
            w.feed(b, &mut bytes);
        }
        // As a response's reader reads it: in one frame (at once when it is a whole message),
        // then in two.
        let mut first = Outcome {
            listing,
            ..Outcome::default()
        };
        Reader::json(listing).read(body.as_bytes(), &mut first);
        let mut split = Outcome {
            listing,
            ..Outcome::default()
        };
        let mut reader = Reader::json(listing);
        let (a, b) = body.as_bytes().split_at(body.len() / 2);
        reader.read(a, &mut split);
        reader.read(b, &mut split);
        for o in [&whole, &bytes, &first, &split] {
            assert_eq!(o.found, whole.found);
            assert_eq!((&o.code, &o.message), (&whole.code, &whole.message));
            assert_eq!((o.is_error, o.responded), (whole.is_error, whole.responded));
        }
        whole
    }

    #[test]
    fn the_outcome_is_read_past_skipped_content_and_metadata() {
        let o = outcome_of(
            None,
            r#"{"_meta":{"isError":true,"error":{"code":1}},"id":2,"jsonrpc":"2.0","result":{"content":[{"type":"text","text":"\"isError\": true } ]"}],"structuredContent":{"isError":true},"isError":true}}"#,
        );
        assert!(o.responded && o.is_error);
        assert_eq!(o.code, None);
        let o = outcome_of(
            None,
            r#"{"id":2,"error":{"data":{"code":7},"code":-32602,"message":"Unknown tool: x"}}"#,
        );
        assert!(o.responded);
        assert_eq!(o.code.as_deref(), Some("-32602"));
        assert_eq!(o.message.as_deref(), Some("Unknown tool: x"));
        let o = outcome_of(
            None,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"result":{}}}"#,
        );
        assert!(!o.responded);
    }

    #[test]
    fn a_whole_answer_is_read_at_once_as_the_walker_reads_it() {
        let answers = [
            r#"{"id":1,"jsonrpc":"2.0","result":{"content":[{"text":"hello","type":"text"}],"isError":false}}"#,
            r#" {"result":{"isError":"true","content":[]},"id":"a"} "#,
            r#"{"error":{"code":-32601,"message":"Method \"x\" not found"},"id":1,"jsonrpc":"2.0"}"#,
            r#"{"result":{"isError":true},"result":{"isError":false}}"#,
            r#"{"error":{"code":1},"error":{"message":"second"}}"#,
            r#"{"result":[],"id":3}"#,
            r#"{"method":"notifications/message","params":{"level":"info"}}"#,
        ];
        for body in answers {
            assert!(crate::jsonrpc::answer(body.as_bytes()).is_some(), "{body}");
            outcome_of(None, body);
        }
        let o = outcome_of(None, answers[2]);
        assert_eq!(o.code.as_deref(), Some("-32601"));
        assert_eq!(o.message.as_deref(), Some(r#"Method \"x\" not found"#));
        assert!(outcome_of(None, answers[1]).is_error);
        assert!(!outcome_of(None, answers[3]).is_error);
        // Read by the walker: not one whole message, or a value of interest that is not a
        // scalar. The outcome is the same either way.
        for body in [
            r#"{"id":1,"result":{"isError":false}}{"id":2,"result":{"isError":true}}"#,
            r#"[{"id":1,"result":{"isError":true}}]"#,
            r#"{"id":1,"error":{"code":{"n":1},"message":["x"]}}"#,
            r#"{"id":1,"result":{"isError":true}"#,
        ] {
            assert!(crate::jsonrpc::answer(body.as_bytes()).is_none(), "{body}");
            outcome_of(None, body);
        }
        let long = format!(
            r#"{{"error":{{"code":1,"message":"{}"}}}}"#,
            "é".repeat(200)
        );
        assert_eq!(outcome_of(None, &long).message.map(|m| m.len()), Some(256));
    }

    mod answers {
        use super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "[a-z\"\\\\é ]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("isError".to_owned()),
                            Just("code".to_owned()),
                            Just("message".to_owned()),
                            "[a-z]{0,4}"
                        ],
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A response, an error or anything else an answer could be, with its members (and
        /// those of `result` and `error`) of any kind.
        fn any_answer() -> impl Strategy<Value = String> {
            let member = prop_oneof![
                any_json().prop_map(|v| ("result".to_owned(), v)),
                any_json().prop_map(|v| ("error".to_owned(), v)),
                (any_json(), any_json(), any_json()).prop_map(|(code, message, data)| (
                    "error".to_owned(),
                    json!({ "code": code, "message": message, "data": data })
                )),
                (any_json(), any::<bool>()).prop_map(|(content, is_error)| (
                    "result".to_owned(),
                    json!({ "content": content, "isError": is_error })
                )),
                ("[a-z]{1,7}", any_json()),
            ];
            prop::collection::vec(member, 0..4).prop_map(|members| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                    .collect();
                format!("{{{}}}", body.join(","))
            })
        }

        proptest! {
            /// Read at once or by the walker, in any chunking, an answer says the same.
            #[test]
            fn an_answer_reads_the_same_at_once_and_incrementally(body in any_answer()) {
                outcome_of(None, &body);
            }

            /// Arbitrary bytes (cut answers, two answers, garbage) never panic either reader
            /// and leave them agreeing.
            #[test]
            fn any_bytes_read_the_same_at_once_and_incrementally(
                body in any_answer(),
                cut in 0usize..64,
                tail in "[\\[\\]{}\",:0-9a-z \\\\]{0,12}",
            ) {
                let cut = body.len().saturating_sub(cut);
                let text = format!("{}{tail}", &body[..body.floor_char_boundary(cut)]);
                outcome_of(None, &text);
            }
        }
    }

    #[test]
    fn a_listing_yields_its_entries_names_only() {
        let tools = r#"{"result":{"_meta":{"name":"no"},"tools":[{"name":"echo","inputSchema":{"properties":{"name":{"type":"string"}}}},{"inputSchema":{},"name":"add"}],"nextCursor":"x"},"id":1}"#;
        assert_eq!(
            outcome_of(Some(Listing::Tools), tools).found,
            ["echo", "add"]
        );
        assert!(outcome_of(Some(Listing::Prompts), tools).found.is_empty());
        assert!(outcome_of(None, tools).found.is_empty());
        let prompts =
            r#"{"result":{"prompts":[{"name":"greet","arguments":[{"name":"who"}]}]},"id":1}"#;
        assert_eq!(outcome_of(Some(Listing::Prompts), prompts).found, ["greet"]);
    }

    #[test]
    fn arguments_are_hashed_as_sent() {
        let mut d = ArgumentDigest::default();
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
        d.feed(&body[..50]);
        d.feed(&body[50..]);
        let expected = hex(&Sha256::digest(br#"{"text":"hi"}"#));
        assert_eq!(d.done.as_deref(), Some(expected.as_str()));
        assert!(d.copy.is_none(), "arguments are kept only when configured");

        let mut d = ArgumentDigest {
            copy: Some(Vec::new()),
            ..ArgumentDigest::default()
        };
        for byte in body.chunks(1) {
            d.feed(byte);
        }
        assert_eq!(d.done.as_deref(), Some(expected.as_str()));
        assert_eq!(d.copy.as_deref(), Some(&br#"{"text":"hi"}"#[..]));
    }
}
