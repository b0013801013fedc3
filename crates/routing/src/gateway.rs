//! The gateway service: routes each request of the data plane to a replica.
//!
//! Reading order: [`Gateway::handle`] (which route; metrics and the one error conversion in
//! `finish`), `prepare` (the checks that need no waiting), then one method per kind of
//! request: `post_mcp`, `stream_or_delete` and `to_session` here, `open_legacy` and
//! `post_legacy` in [`crate::legacy`]; `send` in [`crate::upstream`] is the single place that
//! talks to a replica, and [`crate::stats`] holds the gateway's own metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use mcp_gateway_core::{
    Action, AdapterName, AdapterTarget, AuditSink, Authorizer, Principal, ReplicaResolver,
    SessionId, SessionKey, SessionRecord, SessionStore,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::RoutingConfig;
use crate::body::{BodyTooLarge, BoxError, ForwardBody, ProxyBody, Tracked};
use crate::error::{ProxyError, find_source};
use crate::headers::{self, MCP_SESSION_ID, Seen};
use crate::jsonrpc::{self, Envelope, Scan};
use crate::observe::{self, Observer, Probe, TracePropagator};
use crate::placement::{self, Candidates, HealthTable, Placing, ReplicaHealth};
use crate::stats::Meters;
use crate::upstream::{self, SendError};

/// Request extension: the peer address of the client connection, for `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The MCP-aware reverse proxy, as a cloneable [`tower::Service`].
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    /// The pool of replica connections (shared by clones; see [`Gateway::with_own_upstream_pool`]).
    pub(crate) upstream: Arc<upstream::Pool>,
    authorizer: Option<Arc<dyn Authorizer>>,
    pub(crate) observer: Arc<Observer>,
}

pub(crate) struct Shared {
    pub(crate) config: RoutingConfig,
    resolver: Arc<dyn ReplicaResolver>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) health: HealthTable,
    meters: Meters,
}

/// A failed request: the error and the JSON-RPC id to answer, when known.
pub(crate) struct Fail {
    pub(crate) err: ProxyError,
    pub(crate) id: Option<Value>,
}

impl From<ProxyError> for Fail {
    fn from(err: ProxyError) -> Self {
        Fail { err, id: None }
    }
}

impl From<mcp_gateway_core::StoreError> for Fail {
    fn from(err: mcp_gateway_core::StoreError) -> Self {
        ProxyError::from(err).into()
    }
}

pub(crate) trait WithId<T> {
    fn with_id(self, id: &Option<Value>) -> Result<T, Fail>;
}

impl<T, E: Into<Fail>> WithId<T> for Result<T, E> {
    fn with_id(self, id: &Option<Value>) -> Result<T, Fail> {
        self.map_err(|e| {
            let mut f = e.into();
            f.id = f.id.or_else(|| id.clone());
            f
        })
    }
}

/// Which route of an adapter a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mcp,
    Sse,
    Messages,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Mcp => "mcp",
            Kind::Sse => "sse",
            Kind::Messages => "messages",
        }
    }
}

/// `/adapters/{name}/{mcp|sse|messages}` (a trailing `/` is accepted).
fn parse_route(path: &str) -> Option<(&str, Kind)> {
    let rest = path.strip_prefix("/adapters/")?;
    let (name, route) = rest.split_once('/')?;
    let kind = match route.strip_suffix('/').unwrap_or(route) {
        "mcp" => Kind::Mcp,
        "sse" => Kind::Sse,
        "messages" | "message" => Kind::Messages,
        _ => return None,
    };
    Some((name, kind))
}

/// Where on the replica a session-bound request goes.
pub(crate) enum UpstreamPath {
    /// The adapter's streamable HTTP endpoint, with the client's query.
    Mcp,
    /// The path and query the legacy session's `endpoint` event announced.
    Legacy,
}

/// A request whose adapter and route are known, taken apart for the half of routing that
/// waits.
struct Routed {
    target: Arc<AdapterTarget>,
    kind: Kind,
    parts: http::request::Parts,
    seen: Seen,
    body: ProxyBody,
}

/// What [`Gateway::prepare`] decided: the request to forward, or its refusal before anything
/// was sent, with the request when its refusal is audited (the record names the operation,
/// read from the body; boxed, as it is rare).
type Prepared = Result<Routed, (Fail, Option<Box<Routed>>)>;

/// What a routed request asks of its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    PostMcp,
    StreamOrDelete,
    OpenLegacy,
    PostLegacy,
}

impl Operation {
    fn of(kind: Kind, method: &Method) -> Result<Operation, ProxyError> {
        match (kind, method) {
            (Kind::Mcp, &Method::POST) => Ok(Operation::PostMcp),
            (Kind::Mcp, &Method::GET | &Method::DELETE) => Ok(Operation::StreamOrDelete),
            (Kind::Mcp, m) => Err(ProxyError::MethodNotAllowed(m.clone(), "GET, POST, DELETE")),
            (Kind::Sse, &Method::GET) => Ok(Operation::OpenLegacy),
            (Kind::Sse, m) => Err(ProxyError::MethodNotAllowed(m.clone(), "GET")),
            (Kind::Messages, &Method::POST) => Ok(Operation::PostLegacy),
            (Kind::Messages, m) => Err(ProxyError::MethodNotAllowed(m.clone(), "POST")),
        }
    }
}

// === impl Gateway ===

impl Gateway {
    pub fn new(
        config: RoutingConfig,
        resolver: Arc<dyn ReplicaResolver>,
        store: Arc<dyn SessionStore>,
    ) -> Self {
        let upstream = Arc::new(upstream::Pool::new(&config));
        Self {
            shared: Arc::new(Shared {
                config,
                resolver,
                store,
                health: HealthTable::default(),
                meters: Meters::default(),
            }),
            upstream,
            authorizer: None,
            observer: Arc::default(),
        }
    }

    /// Traces every MCP message: a SERVER span per message and a CLIENT span per attempt on a
    /// replica (see [`observe`](crate::observe)), linked to the client's and the replica's
    /// trace context through `propagator`.
    pub fn with_tracing(mut self, propagator: Arc<dyn TracePropagator>) -> Self {
        self.observer = Arc::new(Observer {
            propagator: Some(propagator),
            audit: self.observer.audit.clone(),
            audit_arguments: self.observer.audit_arguments,
            ..Observer::default()
        });
        self
    }

    /// Writes an audit record per `tools/call`, `resources/read` and `prompts/get`, allowed or
    /// refused, with the SHA-256 of its arguments; the arguments themselves only when
    /// `include_arguments`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>, include_arguments: bool) -> Self {
        self.observer = Arc::new(Observer {
            propagator: self.observer.propagator.clone(),
            audit: Some(sink),
            audit_arguments: include_arguments,
            ..Observer::default()
        });
        self
    }

    /// Checks every request against `authorizer`: the request's [`Principal`] extension (set
    /// by the authentication layer in front) must be allowed to use the adapter, else 403. A
    /// request with no principal is refused. Without an authorizer every request may use every
    /// adapter (the embedder decides elsewhere).
    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// The same gateway (sessions, health, metrics, settings) with a pool of replica
    /// connections of its own. A replica connection is registered with the runtime that opened
    /// it and driven by the request that uses it; a server that runs one single-threaded
    /// runtime per core gives each its own clone, so a request and its replica connection stay
    /// on one thread. Clones made with
    /// `clone()` share one pool, which is right in one multi-threaded runtime.
    pub fn with_own_upstream_pool(mut self) -> Self {
        self.upstream = Arc::new(upstream::Pool::new(&self.shared.config));
        self
    }

    /// Whether `path` is a data-plane route, for embedders that serve other paths beside it.
    pub fn handles_path(path: &str) -> bool {
        parse_route(path).is_some()
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.shared.config
    }

    /// Routes one request. Never fails: refusals and upstream failures become responses with
    /// a JSON-RPC error body.
    ///
    /// What needs no waiting (the route, the adapter, the checks of the head, the caller's
    /// right to the adapter) is decided before the future is made, in [`prepare`](Self::prepare):
    /// the future then holds the request once, taken apart, and each kind of request awaits its
    /// own method directly. Every level of nested futures is moved whole as it starts, so
    /// fewer and smaller levels are less copying per request. For the same reason the methods
    /// on the way to a replica return an `async` block instead of being `async fn`s: an
    /// `async fn` keeps each argument it takes by value twice in its state (as the argument and
    /// as the local it is moved to), and a request's parts are 224 bytes.
    pub fn handle<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + '_
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let caller = self
            .observer
            .audits()
            .then(|| Principal::of(req.extensions()).cloned())
            .flatten();
        let (route, adapter, prepared) = self.prepare(req);
        // Two futures, so that each captures only what it needs. The routed request's fields
        // are captured one by one and moved into the method that takes them; a match on one
        // enum of both outcomes inside a single future kept a second copy of the parts in its
        // state (`-Zprint-type-sizes`).
        match prepared {
            Ok(routed) => Either::Left(async move {
                let probe = Probe::default();
                let op = match Operation::of(routed.kind, &routed.parts.method) {
                    Ok(op) => op,
                    Err(e) => {
                        return self.finish(Err(e.into()), probe, route, adapter, caller, started);
                    }
                };
                let (target, parts, seen, body) =
                    (routed.target, routed.parts, &routed.seen, routed.body);
                let outcome = match op {
                    Operation::PostMcp => self.post_mcp(target, parts, seen, body, &probe).await,
                    Operation::StreamOrDelete => {
                        self.stream_or_delete(target, parts, seen, body, &probe)
                            .await
                    }
                    Operation::OpenLegacy => self.open_legacy(target, parts, &probe).await,
                    Operation::PostLegacy => {
                        self.post_legacy(target, parts, seen, body, &probe).await
                    }
                };
                self.finish(outcome, probe, route, adapter, caller, started)
            }),
            Err((fail, audited)) => Either::Right(async move {
                let probe = Probe::default();
                if let Some(routed) = audited {
                    self.audit_refusal(routed, &probe).await;
                }
                self.finish(Err(fail), probe, route, adapter, caller, started)
            }),
        }
    }

    /// The half of routing that needs no waiting: the checks of the head, the route, the
    /// adapter and the caller's right to use it. Returns the route's label and the adapter
    /// (for metrics, whatever the outcome) and what to do.
    fn prepare<B>(&self, req: Request<B>) -> (&'static str, Option<AdapterName>, Prepared)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let config = &self.shared.config;
        let (mut parts, body) = req.into_parts();
        let route = parse_route(parts.uri.path());
        let label = route.map_or("none", |(_, k)| k.label());
        let refuse = |err: ProxyError| (label, None, Err((err.into(), None)));
        let mut seen = Seen::of(&parts.headers);
        if seen.size > config.max_header_bytes {
            return refuse(ProxyError::HeadersTooLarge(config.max_header_bytes));
        }
        // HTTP/2 carries the host in `:authority`, not `Host`: treat them alike.
        if seen.host.is_none()
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host.clone());
            seen.host = Some(host);
        }
        if let Err(e) =
            headers::check_host_and_origin_of(seen.host.as_ref(), seen.origin.as_ref(), config)
        {
            return refuse(e);
        }
        let Some((name, kind)) = route else {
            return refuse(ProxyError::NoRoute(
                parts.uri.path().chars().take(200).collect(),
            ));
        };
        let Some(target) = self.shared.resolver.resolve(name) else {
            return refuse(ProxyError::UnknownAdapter(name.chars().take(80).collect()));
        };
        let adapter = Some(target.name.clone());
        let refused = self.authorize(&target, Principal::of(&parts.extensions));
        let routed = Routed {
            target,
            kind,
            parts,
            seen,
            body: body.map_err(Into::into).boxed_unsync(),
        };
        match refused {
            Ok(()) => (label, adapter, Ok(routed)),
            Err(e) => {
                // The refusal is audited with the operation it refused.
                let audited = self.observer.audits()
                    && kind == Kind::Mcp
                    && routed.parts.method == Method::POST;
                (
                    label,
                    adapter,
                    Err((e.into(), audited.then(|| Box::new(routed)))),
                )
            }
        }
    }

    /// Reads the envelope of a refused message, so its audit record names the operation.
    async fn audit_refusal(&self, routed: Box<Routed>, probe: &Probe) {
        let limit = self.shared.config.max_body_bytes;
        if let Ok((_, _, env)) = read_envelope(routed.body, limit).await {
            observe::on_envelope(
                &self.observer,
                probe,
                env.as_ref(),
                &routed.parts.headers,
                routed.target.name.as_str(),
            );
        }
    }

    /// The response to the client, with the request's metrics and the operation's record.
    fn finish(
        &self,
        outcome: Result<Response<Tracked>, Fail>,
        probe: Probe,
        route: &'static str,
        adapter: Option<AdapterName>,
        caller: Option<Principal>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let mut refused = None;
        let res = match outcome {
            Ok(res) => res,
            Err(Fail { err, id }) => {
                if !matches!(err.status().as_u16(), 502 | 504) {
                    refused = Some(err.kind());
                }
                let level_warn = err.status().is_server_error();
                if level_warn {
                    tracing::warn!(error = %err, route, "request failed");
                } else {
                    tracing::debug!(error = %err, route, "request refused");
                }
                metrics::counter!("mcp_gateway_refusals_total", "reason" => err.kind())
                    .increment(1);
                err.into_response(id).map(Tracked::plain)
            }
        };
        let res = observe::observe_response(
            &self.observer,
            probe,
            adapter.as_ref().map(AdapterName::shared),
            caller.as_ref(),
            started,
            refused,
            res,
        );
        let adapter: Arc<str> = adapter.map_or_else(|| Arc::from("unknown"), |a| a.shared());
        self.shared.meters.request(
            &adapter,
            route,
            res.status(),
            started.elapsed().as_secs_f64(),
        );
        res.map(BodyExt::boxed_unsync)
    }

    /// `GET` (the server's stream) or `DELETE` (the end) of `/adapters/{name}/mcp`.
    // Not an `async fn`: it would keep each by-value argument twice (see `Gateway::handle`).
    #[allow(clippy::manual_async_fn)]
    fn stream_or_delete(
        &self,
        target: Arc<AdapterTarget>,
        parts: http::request::Parts,
        seen: &Seen,
        body: ProxyBody,
        probe: &Probe,
    ) -> impl Future<Output = Result<Response<Tracked>, Fail>> + Send {
        async move {
            let body = ForwardBody::new(Vec::new(), Some(body), self.shared.config.max_body_bytes);
            // Bound first: a scrutinee's temporaries would live across the await below.
            let sid = session_id(seen)?;
            match sid {
                Some(sid) => {
                    self.to_session(&target, parts, body, sid, UpstreamPath::Mcp, probe)
                        .await
                }
                // No session: let a replica give its own answer (400 or 405).
                None => {
                    let candidates = self.stateless_candidates(&target);
                    let path = mcp_path(&target, parts.uri.query());
                    let (_, res) = self
                        .send_any(&target, &candidates, &parts, body, &path, false, probe)
                        .await?;
                    Ok(res)
                }
            }
        }
    }

    /// Whether the caller may use the adapter; checked on every request, so a principal that
    /// loses its role loses its open sessions too.
    fn authorize(
        &self,
        target: &AdapterTarget,
        principal: Option<&Principal>,
    ) -> Result<(), ProxyError> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        let Some(principal) = principal else {
            return Err(ProxyError::Forbidden(
                "the request carries no authenticated principal".into(),
            ));
        };
        if authorizer.allows(principal, &target.access, Action::Use) {
            return Ok(());
        }
        tracing::info!(adapter = %target.name, principal = %principal,
            required_roles = ?target.access.required_roles, "use of adapter refused");
        // The adapter's roles are logged, not told: a caller without rights learns no more.
        Err(ProxyError::Forbidden(format!(
            "{} may not use adapter {:?}; ask its owner or an admin for access",
            principal.subject,
            target.name.as_str()
        )))
    }

    /// `POST /adapters/{name}/mcp`: a message of a session, a new session, or a stateless
    /// request.
    // Not an `async fn`: it would keep each by-value argument twice (see `Gateway::handle`).
    #[allow(clippy::manual_async_fn)]
    fn post_mcp(
        &self,
        target: Arc<AdapterTarget>,
        parts: http::request::Parts,
        seen: &Seen,
        body: ProxyBody,
        probe: &Probe,
    ) -> impl Future<Output = Result<Response<Tracked>, Fail>> + Send {
        async move {
            let limit = self.body_limit(seen)?;
            let (prefix, rest, env) = read_envelope(body, limit).await?;
            let id = env.as_ref().and_then(|e| e.id.clone());
            observe::on_envelope(
                &self.observer,
                probe,
                env.as_ref(),
                &parts.headers,
                target.name.as_str(),
            );
            let rest = observe::digest_arguments(&self.observer, probe, &prefix, rest);
            check_mcp_headers(seen, env.as_ref()).with_id(&id)?;
            self.shared
                .meters
                .mcp_request(&target.name.shared(), env.as_ref());
            let initialize = env.as_ref().is_some_and(Envelope::is_initialize);
            let (prefix, rest) = match rest {
                // Held whole (it is small), so a replica's 5xx can be retried on the next one.
                Some(rest) if initialize => {
                    let whole = read_rest(prefix, rest, limit).await;
                    (whole.with_id(&id)?, None)
                }
                rest => (prefix, rest),
            };
            let body = ForwardBody::new(prefix, rest, limit);
            let sid = session_id(seen).with_id(&id)?;
            if let Some(sid) = sid {
                return self
                    .to_session(&target, parts, body, sid, UpstreamPath::Mcp, probe)
                    .await
                    .with_id(&id);
            }
            let (candidates, _placing) = if initialize {
                self.check_session_limit(&parts).await.with_id(&id)?;
                self.session_candidates(&target).await.with_id(&id)?
            } else {
                (self.stateless_candidates(&target), None)
            };
            let path = mcp_path(&target, parts.uri.query());
            let (replica, res) = self
                .send_any(&target, &candidates, &parts, body, &path, initialize, probe)
                .await
                .with_id(&id)?;
            // Any answer that opens a session (normally to `initialize`) is recorded before the
            // client can learn the session id.
            if res.status().is_success()
                && let Some(value) = res.headers().get(MCP_SESSION_ID)
            {
                let sid = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| SessionId::new(s).ok())
                    .ok_or_else(|| ProxyError::BadUpstreamResponse {
                        adapter: target.name.to_string(),
                        replica: replica.id.to_string(),
                        reason: "Mcp-Session-Id is not a short visible-ASCII token".into(),
                    })
                    .with_id(&id)?;
                let key = SessionKey {
                    adapter: target.name.clone(),
                    id: sid,
                };
                let record = SessionRecord::new(key, replica.id.clone(), principal(&parts));
                self.shared.store.put(record).await.with_id(&id)?;
                tracing::debug!(adapter = %target.name, replica = %replica.id, "session opened");
            }
            Ok(res)
        }
    }

    /// A request of an existing session: to the replica that owns it, or 404.
    // Not an `async fn`: it would keep each by-value argument twice (see `Gateway::handle`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn to_session(
        &self,
        target: &AdapterTarget,
        parts: http::request::Parts,
        body: ForwardBody,
        sid: SessionId,
        upstream: UpstreamPath,
        probe: &Probe,
    ) -> impl Future<Output = Result<Response<Tracked>, Fail>> + Send {
        async move {
            let store = &self.shared.store;
            let key = SessionKey {
                adapter: target.name.clone(),
                id: sid,
            };
            let record = store.get(&key).await?.ok_or(ProxyError::SessionNotFound)?;
            let owner = match (
                record.principal.as_deref(),
                Principal::of(&parts.extensions),
            ) {
                (Some(owner), Some(caller)) => caller.is_session_owner(owner),
                (None, None) => true,
                _ => false,
            };
            if !owner {
                return Err(ProxyError::SessionNotFound.into());
            }
            let path = match (&upstream, &record.legacy) {
                (UpstreamPath::Mcp, None) => mcp_path(target, parts.uri.query()),
                (UpstreamPath::Legacy, Some(legacy)) => {
                    Cow::Borrowed(legacy.path_and_query.as_str())
                }
                // A legacy session id on the streamable route, or the reverse.
                _ => return Err(ProxyError::SessionNotFound.into()),
            };
            let Some(replica) = target.replica(&record.replica) else {
                observe::session_ended(&record, Some("replica_gone"));
                store.remove(&key).await?;
                return Err(ProxyError::SessionNotFound.into());
            };
            match self.send(target, replica, &parts, body, &path, probe).await {
                Ok(res) => {
                    let ended = res.status() == StatusCode::NOT_FOUND
                        || (parts.method == Method::DELETE && res.status().is_success());
                    if ended {
                        let deleted = parts.method == Method::DELETE;
                        observe::session_ended(&record, (!deleted).then_some("session_not_found"));
                        store.remove(&key).await?;
                    }
                    Ok(res)
                }
                Err(SendError::NotConnected {
                    err, refused: true, ..
                }) => {
                    // Nothing listens where the session lived: its state is gone with the process.
                    tracing::info!(adapter = %target.name, replica = %replica.id, error = %err,
                    "session's replica is gone; client must start a new session");
                    observe::session_ended(&record, Some("replica_gone"));
                    store.remove(&key).await?;
                    Err(ProxyError::SessionNotFound.into())
                }
                Err(e) => Err(e.into_error().into()),
            }
        }
    }

    /// The body size limit, refusing at once a request whose `Content-Length` exceeds it
    /// (bodies without one are cut off while streaming).
    pub(crate) fn body_limit(&self, seen: &Seen) -> Result<u64, ProxyError> {
        let limit = self.shared.config.max_body_bytes;
        if content_length(seen).is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        Ok(limit)
    }

    /// The gateway's session limit, then the caller's quota.
    pub(crate) async fn check_session_limit(
        &self,
        parts: &http::request::Parts,
    ) -> Result<(), ProxyError> {
        let config = &self.shared.config;
        let store = &self.shared.store;
        let max = config.max_sessions;
        if store.total_sessions().await? >= max {
            return Err(ProxyError::TooManySessions(max));
        }
        let Some(caller) = Principal::of(&parts.extensions) else {
            return Ok(());
        };
        if caller.issuer.is_none() && caller.subject == Principal::ANONYMOUS {
            // Authentication is off: every caller is this one.
            return Ok(());
        }
        let owner = caller.session_owner();
        let limit = config.max_sessions_per_principal;
        let Some(held) = store.owner_sessions(&owner).await? else {
            return Ok(());
        };
        if held.live < limit {
            return Ok(());
        }
        let now = mcp_gateway_core::unix_millis();
        let wait_ms = held
            .next_expiry_ms
            .map_or(store.idle_ttl().as_millis() as u64, |at| {
                at.saturating_sub(now)
            });
        tracing::info!(principal = %caller, live = held.live, limit, "per-caller session quota reached");
        Err(ProxyError::TooManySessionsForCaller {
            owner: caller.subject.clone(),
            limit,
            retry_after: std::time::Duration::from_secs(wait_ms.div_ceil(1000).max(1)),
        })
    }

    /// Candidates for a new session, best first, and a guard that counts the session on the
    /// first candidate until its record is written.
    pub(crate) async fn session_candidates<'t>(
        &self,
        target: &'t AdapterTarget,
    ) -> Result<(Candidates<'t>, Option<Placing>), ProxyError> {
        let counts: HashMap<Arc<str>, u64> = self.shared.store.live_sessions(&target.name).await?;
        let health = &self.shared.health;
        let name = target.name.as_str();
        let candidates = placement::for_new_session(
            target,
            &counts,
            |r| health.with(name, &r.id, |h| h.placing()),
            |r| health.with(name, &r.id, |h| h.ejected()),
        );
        let placing = candidates
            .first()
            .map(|r| health.with(name, &r.id, ReplicaHealth::start_placing));
        Ok((candidates, placing))
    }

    fn stateless_candidates<'t>(&self, target: &'t AdapterTarget) -> Candidates<'t> {
        let health = &self.shared.health;
        let name = target.name.as_str();
        placement::for_stateless(
            target,
            |r| health.with(name, &r.id, |h| h.in_flight()),
            |r| health.with(name, &r.id, |h| h.ejected()),
        )
    }
}

impl<B> tower::Service<Request<B>> for Gateway
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gateway = self.clone();
        Box::pin(async move { Ok(gateway.handle(req).await) })
    }
}

/// The owner a session is bound to: the principal's issuer and subject.
pub(crate) fn principal(parts: &http::request::Parts) -> Option<String> {
    Principal::of(&parts.extensions).map(Principal::session_owner)
}

/// The replica's MCP path with the client's query; borrowed when there is none (most requests).
pub(crate) fn mcp_path<'a>(target: &'a AdapterTarget, query: Option<&str>) -> Cow<'a, str> {
    match query {
        Some(q) => Cow::Owned(format!("{}?{q}", target.mcp_path)),
        None => Cow::Borrowed(&target.mcp_path),
    }
}

fn content_length(seen: &Seen) -> Option<u64> {
    seen.content_length.as_ref()?.to_str().ok()?.parse().ok()
}

/// The `Mcp-Session-Id` of a request, validated.
fn session_id(seen: &Seen) -> Result<Option<SessionId>, ProxyError> {
    let Some(v) = &seen.session_id else {
        return Ok(None);
    };
    SessionId::check(v.as_bytes()).map_err(ProxyError::BadSessionId)?;
    let s = std::str::from_utf8(v.as_bytes())
        .map_err(|_| ProxyError::BadSessionId(mcp_gateway_core::InvalidSessionId::BadChar))?;
    SessionId::new(s)
        .map(Some)
        .map_err(ProxyError::BadSessionId)
}

/// `Mcp-Method` / `Mcp-Name` (MCP 2026-07-28) may only be trusted when they agree with the
/// body. Values in the spec's Base64 form (`=?base64?…?=`) are not decoded here: the gateway
/// never routes on them, and the replica checks them itself.
fn check_mcp_headers(seen: &Seen, env: Option<&Envelope>) -> Result<(), ProxyError> {
    let Some(env) = env else { return Ok(()) };
    fn plain(value: &Option<http::HeaderValue>) -> Option<&str> {
        value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.starts_with("=?"))
    }
    if let Some(m) = plain(&seen.mcp_method)
        && env.method.as_deref() != Some(m)
    {
        return Err(ProxyError::HeaderMismatch(format!(
            "Mcp-Method header {m:?} does not match the body's method {:?}",
            env.method.as_deref().unwrap_or("")
        )));
    }
    if let Some(n) = plain(&seen.mcp_name)
        && env.name.as_deref() != Some(n)
    {
        return Err(ProxyError::HeaderMismatch(format!(
            "Mcp-Name header {n:?} does not match the body's name/uri {:?}",
            env.name.as_deref().unwrap_or("")
        )));
    }
    Ok(())
}

/// Reads the front of a request body until [`jsonrpc::scan`] knows what routing needs.
/// Returns the bytes read (to be replayed), the unread rest, and the envelope when the body is
/// a JSON-RPC message (`None` otherwise: the replica gives its own error).
async fn read_envelope(
    mut body: ProxyBody,
    limit: u64,
) -> Result<(Vec<Bytes>, Option<ProxyBody>, Option<Envelope>), ProxyError> {
    let mut buf = BytesMut::new();
    let mut next_scan = 0;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                return Err(ProxyError::BadMessage(
                    if find_source::<BodyTooLarge>(&*e).is_some() {
                        "request body too large"
                    } else {
                        "request body could not be read"
                    },
                ));
            }
            None => {
                let env = decided(jsonrpc::scan(&buf, true)).flatten();
                return Ok((vec![buf.freeze()], None, env));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let ended = body.is_end_stream();
        let rest = |body| (!ended).then_some(body);
        if buf.is_empty() && data.len() as u64 <= limit {
            // Most messages come in one frame: it is scanned where it lies, not copied.
            if let Some(env) = decided(jsonrpc::scan(&data, ended)) {
                return Ok((vec![data], rest(body), env));
            }
            next_scan = data.len() * 2;
        }
        buf.extend_from_slice(&data);
        if buf.len() as u64 > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        if buf.len() < next_scan {
            continue;
        }
        // Rescan from the start only when the buffer has doubled: linear in the body size.
        next_scan = buf.len() * 2;
        if let Some(env) = decided(jsonrpc::scan(&buf, ended)) {
            return Ok((vec![buf.freeze()], rest(body), env));
        }
    }
}

/// What a scan decided: `None` while it needs more bytes, else the envelope, or `None` inside
/// when the body is not a JSON-RPC message.
fn decided(scan: Scan) -> Option<Option<Envelope>> {
    match scan {
        Scan::NeedMore => None,
        Scan::Done(env) => Some(Some(env)),
        Scan::Invalid(_) => Some(None),
    }
}

/// The rest of a body after `prefix`, read to its end (within `limit` in all).
async fn read_rest(
    mut prefix: Vec<Bytes>,
    mut rest: ProxyBody,
    limit: u64,
) -> Result<Vec<Bytes>, ProxyError> {
    let mut seen: u64 = prefix.iter().map(|b| b.len() as u64).sum();
    while let Some(frame) = rest.frame().await {
        let Ok(data) = frame
            .map_err(|_| ProxyError::BadMessage("request body could not be read"))?
            .into_data()
        else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        prefix.push(data);
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed() {
        assert_eq!(parse_route("/adapters/a/mcp"), Some(("a", Kind::Mcp)));
        assert_eq!(parse_route("/adapters/a/mcp/"), Some(("a", Kind::Mcp)));
        assert_eq!(parse_route("/adapters/a/sse"), Some(("a", Kind::Sse)));
        assert_eq!(
            parse_route("/adapters/a/messages/"),
            Some(("a", Kind::Messages))
        );
        assert_eq!(parse_route("/adapters/a/other"), None);
        assert_eq!(parse_route("/adapters/a"), None);
        assert_eq!(parse_route("/mcp"), None);
    }

    fn env(method: &str, name: Option<&str>) -> Envelope {
        Envelope {
            method: Some(method.into()),
            id: Some(Value::from(1)),
            name: name.map(Into::into),
            ..Envelope::default()
        }
    }

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// What routing reads of such headers.
    fn seen(pairs: &[(&'static str, &'static str)]) -> Seen {
        Seen::of(&hdrs(pairs))
    }

    #[test]
    fn mcp_headers_must_match_the_body() {
        let call = env("tools/call", Some("echo"));
        assert!(check_mcp_headers(&seen(&[]), Some(&call)).is_ok());
        assert!(
            check_mcp_headers(
                &seen(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]),
                Some(&call)
            )
            .is_ok()
        );
        assert!(matches!(
            check_mcp_headers(&seen(&[("mcp-method", "tools/list")]), Some(&call)),
            Err(ProxyError::HeaderMismatch(_))
        ));
        assert!(matches!(
            check_mcp_headers(&seen(&[("mcp-name", "rm_rf")]), Some(&call)),
            Err(ProxyError::HeaderMismatch(_))
        ));
        // Encoded values are left to the replica.
        assert!(
            check_mcp_headers(&seen(&[("mcp-name", "=?base64?ZWNobw==?=")]), Some(&call)).is_ok()
        );
    }

    #[test]
    fn session_ids_are_validated() {
        assert!(
            session_id(&seen(&[("mcp-session-id", "abc-123")]))
                .unwrap()
                .is_some()
        );
        assert!(session_id(&seen(&[])).unwrap().is_none());
        assert!(session_id(&seen(&[("mcp-session-id", "a b")])).is_err());
        let long: &'static str = Box::leak("x".repeat(200).into_boxed_str());
        assert!(session_id(&seen(&[("mcp-session-id", long)])).is_err());
    }

    #[tokio::test]
    async fn envelope_is_read_from_a_chunked_body_and_the_rest_is_kept() {
        use http_body::Frame;
        use http_body_util::StreamBody;
        let chunks = [
            r#"{"jsonrpc":"2.0","id":1,"#,
            r#""method":"tools/call","params":{"name":"echo","#,
            r#""arguments":{"text":"hi"}}}"#,
        ];
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let (prefix, rest, env) = read_envelope(body, 1 << 20).await.unwrap();
        let env = env.unwrap();
        assert_eq!(env.name.as_deref(), Some("echo"));
        let mut all = prefix.concat();
        if let Some(rest) = rest {
            all.extend_from_slice(&rest.collect().await.unwrap().to_bytes());
        }
        assert_eq!(all, chunks.concat().as_bytes());
    }
}
