//! The upstream client: the one place that talks to a replica. It sends a request to one
//! replica or to the first of several candidates that accepts it, feeds each exchange's outcome
//! to the replica's outlier detection, and wraps the replica's response for the client.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, Response, Uri};
use http_body_util::BodyExt;
use mcp_gateway_core::{AdapterTarget, Principal, Replica};

use crate::RoutingConfig;
use crate::body::{BodyTooLarge, ForwardBody, Tracked};
use crate::error::{ProxyError, find_source};
use crate::gateway::{ClientAddr, Gateway};
use crate::h1::{self, AnswerBody, Conn};
use crate::headers;
use crate::observe::{self, Probe};
use crate::placement::{InFlight, Outcome, ReplicaHealth};

/// The gateway's connections to replicas: HTTP/1.1 ([`h1`]), kept alive and reused, per base
/// URL. A request drives its connection itself (no task per connection), so a pool of its own
/// per single-threaded runtime ([`Gateway::with_own_upstream_pool`]) keeps a request and its
/// replica connection on one thread; in a multi-threaded runtime one pool serves all workers.
///
/// - A connection is taken from the pool for a request and given back when the answer's body
///   has been read to its end; a body dropped before its end takes its connection with it
///   (closed, never reused with bytes left unread).
/// - Idle connections are reused newest first, never once idle for `upstream_idle_timeout`
///   (the replica may be closing them) nor once the replica closed them or sent a byte, and
///   are closed by a sweep at that pace.
/// - An idle connection the replica closed (or sent a byte on) is seen before a request is
///   written on it, at no cost while its socket was not readable. One closed as the request
///   went out (the race every keep-alive client meets) leaves the request unanswered: sent
///   again on another connection when its method is idempotent (GET, DELETE), an error
///   otherwise, since a POST the replica may have run is not run twice (nginx's and Go's rule).
pub(crate) struct Pool {
    connect_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
    /// Idle connections by base URL, oldest first.
    idle: Mutex<HashMap<Arc<str>, Vec<IdleConn>, foldhash::fast::RandomState>>,
    /// Whether the sweep of idle connections runs (started with the first idle connection, on
    /// the runtime of the request that gave it back).
    sweeping: AtomicBool,
    /// By base URL. Names come from the resolver, not from callers; the map is emptied when
    /// it reaches [`MAX_ADDRS`] (replicas come and go in Kubernetes).
    addrs: RwLock<HashMap<Arc<str>, Arc<Addr>, foldhash::fast::RandomState>>,
}

const MAX_ADDRS: usize = 4096;

/// An attempt's times: when it started (idle connections are judged by it, so that the clock
/// is not read again for them) and when the answer's head must have come.
#[derive(Clone, Copy)]
struct When {
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

struct IdleConn {
    conn: Conn,
    since: std::time::Instant,
}

impl IdleConn {
    /// Neither idle for `timeout` at `now` (the replica may be closing it) nor closed already.
    fn usable(&self, now: std::time::Instant, timeout: std::time::Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout && self.conn.is_reusable()
    }
}

/// A replica's base URL, parsed once: where to connect, what its requests' paths start with,
/// and their `Host`.
struct Addr {
    /// The host as a name or address to resolve (IPv6 without brackets), and the port.
    host: Arc<str>,
    port: u16,
    /// The base URL's path, without its trailing `/` (usually empty).
    prefix: Box<str>,
    /// The authority, without the scheme's default port (as a client sets it).
    host_header: HeaderValue,
}

/// Why a request could not be sent to a replica.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// The replica's URL or the request's path cannot make a request.
    Target(String),
    /// No connection could be made: refused, timed out (`TimedOut`), not resolved. The body
    /// was not touched.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Exchange(h1::Error),
}

impl Pool {
    pub(crate) fn new(config: &RoutingConfig) -> Self {
        Self {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.upstream_idle_timeout,
            idle: Mutex::default(),
            sweeping: AtomicBool::new(false),
            addrs: RwLock::default(),
        }
    }

    fn addr(&self, base_url: &Arc<str>) -> Result<Arc<Addr>, String> {
        let known = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = known.get(&**base_url) {
            return Ok(addr.clone());
        }
        drop(known);
        let addr = Arc::new(Addr::parse(base_url)?);
        let mut known = self.addrs.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_ADDRS {
            known.clear();
        }
        known.insert(base_url.clone(), addr.clone());
        Ok(addr)
    }

    /// Sends a request to the replica at `base_url` on an idle connection, else a new one;
    /// returns the answer's head and the connection, to read its body from.
    async fn request(
        &self,
        base_url: &Arc<str>,
        method: &Method,
        path_and_query: &str,
        headers: &dyn h1::WriteHeaders,
        body: &mut ForwardBody,
        when: When,
    ) -> Result<(h1::Answer, Conn), PoolError> {
        let When { started, deadline } = when;
        let addr = self.addr(base_url).map_err(PoolError::Target)?;
        h1::check_target(&addr.prefix, path_and_query).map_err(PoolError::Target)?;
        let head = h1::Head {
            method,
            prefix: &addr.prefix,
            path_and_query,
            host: &addr.host_header,
            headers,
        };
        while let Some(mut conn) = self.take_idle(base_url, started.into_std()) {
            match conn.exchange(&head, body, Some(deadline)).await {
                Ok(answer) => return Ok((answer, conn)),
                Err(h1::Error::Unanswered) if method.is_idempotent() && body.rewind() => {
                    tracing::debug!(replica = %base_url, "kept-alive connection closed unanswered; sending again");
                }
                Err(e) => return Err(PoolError::Exchange(e)),
            }
        }
        let mut conn = self.connect(&addr).await.map_err(PoolError::Connect)?;
        match conn.exchange(&head, body, Some(deadline)).await {
            Ok(answer) => Ok((answer, conn)),
            Err(e) => Err(PoolError::Exchange(e)),
        }
    }

    fn take_idle(&self, base_url: &str, now: std::time::Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(base_url)?;
        while let Some(conn) = conns.pop() {
            if conn.usable(now, self.idle_timeout) {
                return Some(conn.conn);
            }
        }
        None
    }

    /// A connection whose answer was read to its end, for the next request.
    fn give_back(self: &Arc<Self>, base_url: &Arc<str>, conn: Conn) {
        let conn = IdleConn {
            conn,
            since: std::time::Instant::now(),
        };
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.get_mut(&**base_url) {
                Some(conns) => conns.push(conn),
                None => {
                    idle.insert(base_url.clone(), vec![conn]);
                }
            }
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Closes connections idle for the idle timeout; whether any are left.
    fn sweep_once(&self) -> bool {
        let now = std::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, conns| {
            conns.retain(|c| c.usable(now, self.idle_timeout));
            !conns.is_empty()
        });
        !idle.is_empty()
    }

    async fn connect(&self, addr: &Addr) -> Result<Conn, std::io::Error> {
        let timed_out = || {
            std::io::Error::new(
                ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            )
        };
        let stream = tokio::time::timeout(self.connect_timeout, open(addr))
            .await
            .map_err(|_| timed_out())??;
        Ok(Conn::new(stream))
    }
}

/// Resolves the replica's host (an address literal needs no lookup) and connects to its
/// addresses in turn, with `TCP_NODELAY`.
async fn open(addr: &Addr) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for a in tokio::net::lookup_host((&*addr.host, addr.port)).await? {
        match tokio::net::TcpStream::connect(a).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(ErrorKind::NotFound, format!("{} has no address", addr.host))
    }))
}

/// Closes idle connections past their time, every idle timeout, while the pool lives and
/// holds any.
async fn sweep(pool: std::sync::Weak<Pool>) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.idle_timeout) else {
            return;
        };
        tokio::time::sleep(every.max(std::time::Duration::from_millis(100))).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep_once() {
            pool.sweeping.store(false, Ordering::Relaxed);
            // A connection given back between the sweep and the flag restarts it.
            if pool.sweep_once() && !pool.sweeping.swap(true, Ordering::Relaxed) {
                continue;
            }
            return;
        }
    }
}

impl Addr {
    fn parse(base_url: &str) -> Result<Self, String> {
        let uri: Uri = base_url.parse().map_err(|e| format!("{e}"))?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err("no scheme and authority".into());
        };
        if scheme != Scheme::HTTP {
            return Err(format!("scheme {scheme} is not supported (http only)"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host_header = if port == 80 {
            authority.host()
        } else {
            authority.as_str()
        };
        let host_header = HeaderValue::from_str(host_header).map_err(|e| e.to_string())?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').into())
            .unwrap_or_default();
        Ok(Self {
            host: host.into(),
            port,
            prefix,
            host_header,
        })
    }
}

/// The body of a replica's answer, which gives its connection back to the pool once read to
/// its end; a body that fails, idles out or is dropped first takes its connection with it
/// (closed, never reused with bytes unread).
fn answer_body(pool: Arc<Pool>, base_url: Arc<str>, conn: Conn, answer: &h1::Answer) -> AnswerBody {
    AnswerBody::new(
        conn,
        answer,
        Box::new(move |conn| pool.give_back(&base_url, conn)),
    )
}

/// Why a request could not be sent to a replica.
pub(crate) enum SendError {
    /// No connection could be made (refused, or timed out). The body comes back untouched,
    /// for another replica.
    NotConnected {
        err: ProxyError,
        body: ForwardBody,
        /// The connection was refused: nothing listens there, so whatever lived there (a
        /// session) is gone. Not said of a timeout or a DNS failure, which may pass.
        refused: bool,
    },
    Other(ProxyError),
}

impl SendError {
    pub(crate) fn into_error(self) -> ProxyError {
        match self {
            SendError::NotConnected { err, .. } | SendError::Other(err) => err,
        }
    }
}

// === impl Gateway: the upstream side ===

impl Gateway {
    /// Sends to the first candidate that accepts the connection; a connection refused or timed
    /// out moves on to the next (the body was never read, so nothing was half-sent). With
    /// `retry_5xx` (the opening of a new session, whose body is held whole), a 5xx answer moves
    /// on too: a replica that cannot open sessions does not fail the client's.
    // Not an `async fn`: it would keep each by-value argument twice (see `Gateway::handle`).
    #[allow(clippy::manual_async_fn)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_any<'r>(
        &self,
        target: &AdapterTarget,
        candidates: &[&'r Replica],
        parts: &http::request::Parts,
        body: ForwardBody,
        path: &str,
        retry_5xx: bool,
        probe: &Probe,
    ) -> impl Future<Output = Result<(&'r Replica, Response<Tracked>), ProxyError>> + Send {
        async move {
            let mut body = Some(body);
            let mut last = None;
            // A 5xx answer passed over, returned should no later candidate answer at all.
            let mut last_res = None;
            for (i, &replica) in candidates.iter().enumerate() {
                let Some(b) = body.take() else { break };
                let is_last = i + 1 == candidates.len();
                let copy = if retry_5xx && !is_last {
                    b.try_clone()
                } else {
                    None
                };
                match self.send(target, replica, parts, b, path, probe).await {
                    Ok(res) if res.status().is_server_error() && copy.is_some() => {
                        tracing::info!(adapter = %target.name, replica = %replica.id,
                        status = %res.status(), "replica could not open a session; trying the next");
                        body = copy;
                        last_res = Some((replica, res));
                    }
                    Ok(res) => return Ok((replica, res)),
                    Err(SendError::NotConnected {
                        err, body: again, ..
                    }) => {
                        last = Some(err);
                        body = Some(again);
                    }
                    Err(e) => return Err(e.into_error()),
                }
            }
            if let Some(answer) = last_res {
                return Ok(answer);
            }
            Err(last.unwrap_or_else(|| ProxyError::NoReadyReplica(target.name.to_string())))
        }
    }

    /// Sends one request to one replica and wraps its response for the client.
    // Not an `async fn`: it would keep each by-value argument twice (see `Gateway::handle`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send(
        &self,
        target: &AdapterTarget,
        replica: &Replica,
        parts: &http::request::Parts,
        mut body: ForwardBody,
        path_and_query: &str,
        probe: &Probe,
    ) -> impl Future<Output = Result<Response<Tracked>, SendError>> + Send {
        async move {
            let config = &self.shared.config;
            let adapter = target.name.as_str();
            let upstream_error = |kind: &'static str| {
                metrics::counter!(
                    "mcp_gateway_upstream_errors_total",
                    "adapter" => adapter.to_owned(),
                    "replica" => replica.id.to_string(),
                    "kind" => kind
                )
                .increment(1);
            };
            let mut trace_context = HeaderMap::new();
            // One reading of the clock for the attempt's start and its deadline.
            let started = tokio::time::Instant::now();
            let attempt = observe::client_attempt(
                &self.observer,
                probe,
                replica,
                &parts.headers,
                &mut trace_context,
                started,
            );
            let headers = headers::Forward {
                headers: &parts.headers,
                client: parts.extensions.get::<ClientAddr>().map(|a| a.0),
                names: config.identity_headers.as_ref(),
                principal: Principal::of(&parts.extensions),
                upstream: &target.upstream_headers,
                extra: &trace_context,
            };

            // The guard holds the replica's health: one reference count for both.
            let in_flight = self
                .shared
                .health
                .with(adapter, &replica.id, ReplicaHealth::start);
            let health = in_flight.health();
            // The answer's head must come within the request timeout; the connection's own timer
            // keeps it (no timer per request).
            let deadline = started + config.request_timeout;
            let sent = self
                .upstream
                .request(
                    &replica.base_url,
                    &parts.method,
                    path_and_query,
                    &headers,
                    &mut body,
                    When { started, deadline },
                )
                .await;
            let err = match sent {
                Ok((answer, conn)) => {
                    let outcome = if answer.status.is_server_error() {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    };
                    record_outcome(config, adapter, replica, health, outcome);
                    let mut res = self.respond(answer, conn, replica.base_url.clone(), in_flight);
                    attempt.attach(&mut res);
                    return Ok(res);
                }
                Err(PoolError::Connect(e)) => e,
                Err(PoolError::Target(reason)) => {
                    observe::client_failed(probe, adapter, &self.observer, attempt, "io_error");
                    return Err(SendError::Other(ProxyError::BadUpstreamResponse {
                        adapter: adapter.to_owned(),
                        replica: replica.id.to_string(),
                        reason: format!("invalid upstream URL: {reason}"),
                    }));
                }
                Err(PoolError::Exchange(h1::Error::TimedOut)) => {
                    observe::client_failed(probe, adapter, &self.observer, attempt, "timeout");
                    upstream_error("timeout");
                    return Err(SendError::Other(ProxyError::UpstreamTimeout {
                        adapter: adapter.to_owned(),
                        replica: replica.id.to_string(),
                        after: config.request_timeout,
                    }));
                }
                Err(PoolError::Exchange(e)) => {
                    if let Some(limit) = find_source::<BodyTooLarge>(&e) {
                        observe::client_failed(
                            probe,
                            adapter,
                            &self.observer,
                            attempt,
                            "body_too_large",
                        );
                        return Err(SendError::Other(ProxyError::BodyTooLarge(limit.0)));
                    }
                    observe::client_failed(probe, adapter, &self.observer, attempt, "io_error");
                    upstream_error("io");
                    return Err(SendError::Other(match e {
                        h1::Error::Protocol(reason) => {
                            record_outcome(config, adapter, replica, health, Outcome::ServerError);
                            ProxyError::BadUpstreamResponse {
                                adapter: adapter.to_owned(),
                                replica: replica.id.to_string(),
                                reason,
                            }
                        }
                        e => ProxyError::UpstreamUnavailable {
                            adapter: adapter.to_owned(),
                            replica: replica.id.to_string(),
                            reason: error_chain(&e),
                        },
                    }));
                }
            };
            let kind = err.kind();
            let error_type = if kind == ErrorKind::TimedOut {
                "connect_timeout"
            } else {
                "connect_error"
            };
            observe::client_failed(probe, adapter, &self.observer, attempt, error_type);
            record_outcome(config, adapter, replica, health, Outcome::ConnectFailure);
            let err = if kind == ErrorKind::TimedOut {
                upstream_error("connect_timeout");
                ProxyError::UpstreamTimeout {
                    adapter: adapter.to_owned(),
                    replica: replica.id.to_string(),
                    after: config.connect_timeout,
                }
            } else {
                upstream_error("connect");
                ProxyError::UpstreamUnavailable {
                    adapter: adapter.to_owned(),
                    replica: replica.id.to_string(),
                    reason: format!("cannot connect: {}", error_chain(&err)),
                }
            };
            tracing::warn!(adapter, replica = %replica.id, error = %err, "no connection to the replica");
            Err(SendError::NotConnected {
                err,
                // No byte of the body was read: the connection never opened.
                body,
                refused: kind == ErrorKind::ConnectionRefused,
            })
        }
    }

    fn respond(
        &self,
        answer: h1::Answer,
        conn: Conn,
        base_url: Arc<str>,
        in_flight: InFlight,
    ) -> Response<Tracked> {
        let inner = answer_body(self.upstream.clone(), base_url, conn, &answer);
        let mut body = Tracked::new(inner.boxed_unsync(), self.shared.config.stream_idle_timeout);
        body.in_flight = Some(in_flight);
        let mut res = Response::new(body);
        *res.status_mut() = answer.status;
        *res.headers_mut() = answer.headers;
        headers::strip_hop_by_hop(res.headers_mut());
        res
    }
}

/// Feeds one exchange's outcome to the replica's outlier detection.
fn record_outcome(
    config: &RoutingConfig,
    adapter: &str,
    replica: &Replica,
    health: &ReplicaHealth,
    outcome: Outcome,
) {
    if let Some(for_) = health.record(outcome, &config.ejection()) {
        metrics::counter!("mcp_gateway_replica_ejections_total",
            "adapter" => adapter.to_owned(), "replica" => replica.id.to_string())
        .increment(1);
        tracing::warn!(adapter, replica = %replica.id, ?outcome, ejected_for = ?for_,
            "replica ejected from placement");
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// An attempt starting now whose deadline no test reaches.
    fn far() -> When {
        let started = tokio::time::Instant::now();
        When {
            started,
            deadline: started + Duration::from_secs(60),
        }
    }

    /// A replica over real sockets: answers every request with its path, counts the
    /// connections it accepted, and with `close_after_answer` closes each connection after its
    /// first answer without saying so (as a server whose keep-alive timeout just passed).
    struct Replica {
        base_url: Arc<str>,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
    }

    async fn replica(close_after_answer: bool) -> Replica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap()).into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from(path),
                        )))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close_after_answer)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Replica {
            base_url,
            accepted,
            open,
        }
    }

    fn pool(idle: Duration) -> Arc<Pool> {
        Arc::new(Pool::new(&RoutingConfig {
            upstream_idle_timeout: idle,
            connect_timeout: Duration::from_secs(2),
            ..RoutingConfig::default()
        }))
    }

    fn no_body() -> ForwardBody {
        ForwardBody::new(Vec::new(), None, 0)
    }

    /// Sends GET `path` and reads the answer through the pool's body, as the gateway does.
    async fn call(pool: &Arc<Pool>, r: &Replica, path: &str) -> String {
        let (answer, conn) = pool
            .request(
                &r.base_url,
                &Method::GET,
                path,
                &HeaderMap::new(),
                &mut no_body(),
                far(),
            )
            .await
            .unwrap();
        let body = answer_body(pool.clone(), r.base_url.clone(), conn, &answer);
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 2 s");
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let r = replica(false).await;
        let pool = pool(Duration::from_secs(30));
        for i in 0..20 {
            assert_eq!(call(&pool, &r, &format!("/{i}")).await, format!("/{i}"));
        }
        assert_eq!(
            r.accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        // Concurrent requests each need a connection; afterwards they are all reused.
        let calls = (0..4).map(|i| {
            let (pool, r) = (pool.clone(), &r);
            async move { call(&pool, r, &format!("/c{i}")).await }
        });
        futures_util::future::join_all(calls).await;
        let after_burst = r.accepted.load(Ordering::SeqCst);
        assert!((2..=4).contains(&after_burst), "{after_burst}");
        for _ in 0..10 {
            call(&pool, &r, "/again").await;
        }
        assert_eq!(r.accepted.load(Ordering::SeqCst), after_burst);
    }

    #[tokio::test]
    async fn idle_connections_are_not_used_past_the_idle_timeout_and_are_closed() {
        let r = replica(false).await;
        let pool = pool(Duration::from_millis(150));
        call(&pool, &r, "/a").await;
        eventually("the idle connection closed by the sweep", || {
            r.open.load(Ordering::SeqCst) == 0
        })
        .await;
        call(&pool, &r, "/b").await;
        assert_eq!(r.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
        let r = replica(false).await;
        let pool = pool(Duration::from_secs(30));
        let (answer, conn) = pool
            .request(
                &r.base_url,
                &Method::GET,
                "/x",
                &HeaderMap::new(),
                &mut no_body(),
                far(),
            )
            .await
            .unwrap();
        drop(answer_body(pool.clone(), r.base_url.clone(), conn, &answer));
        assert!(
            pool.take_idle(&r.base_url, std::time::Instant::now())
                .is_none(),
            "not given back"
        );
        assert_eq!(call(&pool, &r, "/y").await, "/y");
        assert_eq!(r.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_replica_closed_unseen_costs_the_request_nothing() {
        let r = replica(true).await;
        let pool = pool(Duration::from_secs(30));
        for i in 0..5 {
            assert_eq!(call(&pool, &r, &format!("/{i}")).await, format!("/{i}"));
            eventually("the replica closed it", || {
                r.open.load(Ordering::SeqCst) == 0
            })
            .await;
        }
        assert_eq!(r.accepted.load(Ordering::SeqCst), 5);
    }

    /// A replica that answers the first request of each connection and reads the second one
    /// without answering, closing the connection (a keep-alive close racing a request).
    async fn closing_replica() -> (Arc<str>, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap()).into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let _ = s.write_all(ok).await;
                    let _ = s.read(&mut buf).await;
                    // Closed with the second request read and unanswered.
                });
            }
        });
        (base_url, accepted)
    }

    #[tokio::test]
    async fn an_unanswered_request_on_a_kept_alive_connection_is_sent_again_only_when_idempotent() {
        let (base_url, accepted) = closing_replica().await;
        let pool = pool(Duration::from_secs(30));
        let r = Replica {
            base_url: base_url.clone(),
            accepted: accepted.clone(),
            open: Arc::new(AtomicUsize::new(0)),
        };
        assert_eq!(call(&pool, &r, "/a").await, "ok");
        // The GET on the kept-alive connection is unanswered, then answered on a new one.
        assert_eq!(call(&pool, &r, "/b").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST there is not sent twice.
        let mut body = ForwardBody::new(vec![Bytes::from_static(b"{}")], None, 2);
        let sent = pool
            .request(
                &base_url,
                &Method::POST,
                "/mcp",
                &HeaderMap::new(),
                &mut body,
                far(),
            )
            .await;
        assert!(
            matches!(sent, Err(PoolError::Exchange(h1::Error::Unanswered))),
            "{:?}",
            sent.err()
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_gives_the_request_back() {
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Arc<str> = format!("http://{}", free.local_addr().unwrap()).into();
        drop(free);
        let pool = pool(Duration::from_secs(30));
        let mut body = ForwardBody::new(vec![Bytes::from_static(b"{}")], None, 2);
        let sent = pool
            .request(
                &base,
                &Method::POST,
                "/mcp",
                &HeaderMap::new(),
                &mut body,
                far(),
            )
            .await;
        let Err(PoolError::Connect(e)) = sent else {
            panic!("a refused connection is a connect error");
        };
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            "{}",
            "the body is whole"
        );
    }

    #[test]
    fn a_replica_request_joins_its_base_path_and_the_path_and_sends_the_host_a_client_would() {
        let pool = Pool::new(&RoutingConfig::default());
        for (base, path, target, host) in [
            ("http://127.0.0.1:9001", "/mcp", "/mcp", "127.0.0.1:9001"),
            (
                "http://echo-0.echo:8080",
                "/messages?sessionId=a",
                "/messages?sessionId=a",
                "echo-0.echo:8080",
            ),
            ("http://[::1]:80", "/mcp", "/mcp", "[::1]"),
            ("http://[::1]:9001", "/mcp", "/mcp", "[::1]:9001"),
            ("http://host", "/mcp", "/mcp", "host"),
            ("http://host:8080/base/", "/mcp", "/base/mcp", "host:8080"),
        ] {
            let base: Arc<str> = base.into();
            // The second time from the parsed address.
            for _ in 0..2 {
                let addr = pool.addr(&base).unwrap();
                h1::check_target(&addr.prefix, path).unwrap();
                assert_eq!(format!("{}{path}", addr.prefix), target);
                assert_eq!(addr.host_header, host);
            }
        }
        let v6 = pool.addr(&"http://[::1]:9001".into()).unwrap();
        assert_eq!((&*v6.host, v6.port), ("::1", 9001));
        let err = pool.addr(&"https://host:443".into()).err().unwrap();
        assert!(err.contains("http only"), "{err}");
        assert!(pool.addr(&"not a url".into()).is_err());
        assert!(h1::check_target("", "/a b").is_err());
        assert!(h1::check_target("", "mcp").is_err());
    }
}
