//! The upstream client: the one place that talks to a replica. It sends a request to one
//! replica or to the first of several candidates that accepts it, feeds each exchange's outcome
//! to the replica's outlier detection, and wraps the replica's response for the client.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mcp_gateway_core::{AdapterTarget, Principal, Replica};

use crate::RoutingConfig;
use crate::body::{BodyTooLarge, BoxError, ForwardBody, OnClose, Tracked};
use crate::error::{ProxyError, find_source};
use crate::gateway::{ClientAddr, Gateway};
use crate::headers;
use crate::observe::{self, Probe};
use crate::placement::{InFlight, Outcome, ReplicaHealth};

/// The gateway's connections to replicas: HTTP/1.1 over hyper's connection API, kept alive
/// and reused, per base URL. A connection is driven by a task of the runtime that opened it, so
/// a pool of its own per single-threaded runtime ([`Gateway::with_own_upstream_pool`]) keeps a
/// request and its replica connection on one thread; in a multi-threaded runtime one pool
/// serves all workers (the same as a shared client's).
///
/// - A connection is taken from the pool for a request and given back when the response body
///   has been read to its end; a body dropped before its end takes its connection with it
///   (closed, never reused with bytes left unread).
/// - Idle connections are reused newest first, never once idle for `upstream_idle_timeout`
///   (the replica may be closing them), and closed by a sweep at that pace.
/// - A request the pooled connection never wrote (the replica closed it just then) is sent
///   again on a new connection, the race every keep-alive client must handle.
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
    addrs: RwLock<HashMap<Arc<str>, Addr, foldhash::fast::RandomState>>,
}

const MAX_ADDRS: usize = 4096;

type Sender = hyper::client::conn::http1::SendRequest<ForwardBody>;

struct IdleConn {
    sender: Sender,
    since: std::time::Instant,
}

impl IdleConn {
    /// Neither idle for `timeout` (the replica may be closing it) nor closed already.
    fn usable(&self, timeout: std::time::Duration) -> bool {
        self.since.elapsed() < timeout && !self.sender.is_closed()
    }
}

/// A replica's base URL, parsed once: where to connect, what its requests' paths start with,
/// and their `Host`.
#[derive(Clone)]
struct Addr {
    /// The host as a name or address to resolve (IPv6 without brackets), and the port.
    host: Arc<str>,
    port: u16,
    /// The base URL's path, without its trailing `/` (usually empty).
    prefix: Box<str>,
    /// The authority, without the scheme's default port (as a client sets it).
    host_header: HeaderValue,
}

/// Why a connection to a replica could not be used.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be made: refused, timed out (`TimedOut`), not resolved.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Request(hyper::Error),
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

    fn addr(&self, base_url: &Arc<str>) -> Result<Addr, String> {
        let known = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = known.get(&**base_url) {
            return Ok(addr.clone());
        }
        drop(known);
        let addr = Addr::parse(base_url)?;
        let mut known = self.addrs.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_ADDRS {
            known.clear();
        }
        known.insert(base_url.clone(), addr.clone());
        Ok(addr)
    }

    /// The origin-form URI of `path_and_query` on the replica at `base_url`, and the `Host` to
    /// send.
    fn uri(&self, base_url: &Arc<str>, path_and_query: &str) -> Result<(Uri, HeaderValue), String> {
        let addr = self.addr(base_url)?;
        let path = if addr.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", addr.prefix))
        }
        .map_err(|e| e.to_string())?;
        Ok((Uri::from(path), addr.host_header))
    }

    /// Sends `req` to the replica at `base_url` on an idle connection, else a new one; returns
    /// the response and the connection, to give back with [`Pool::give_back`] once the
    /// response's body has been read.
    ///
    /// A request no connection was made for comes back with the error, untouched.
    async fn request(
        &self,
        base_url: &Arc<str>,
        mut req: Request<ForwardBody>,
    ) -> Result<(Response<Incoming>, Sender), (PoolError, Option<Request<ForwardBody>>)> {
        // A pooled connection the replica closed unseen gives the request back: once more on
        // each further idle one, then on a new connection.
        while let Some(mut sender) = self.take_idle(base_url) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, sender)),
                Err(mut e) => match e.take_message() {
                    Some(again) => req = again,
                    None => return Err((PoolError::Request(e.into_error()), None)),
                },
            }
        }
        let mut sender = match self.connect(base_url).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        match sender.send_request(req).await {
            Ok(res) => Ok((res, sender)),
            Err(e) => Err((PoolError::Request(e), None)),
        }
    }

    fn take_idle(&self, base_url: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(base_url)?;
        while let Some(conn) = conns.pop() {
            if conn.usable(self.idle_timeout) {
                return Some(conn.sender);
            }
        }
        None
    }

    /// A connection whose response was read to its end, for the next request.
    fn give_back(self: &Arc<Self>, base_url: &Arc<str>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let conn = IdleConn {
            sender,
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
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, conns| {
            conns.retain(|c| c.usable(self.idle_timeout));
            !conns.is_empty()
        });
        !idle.is_empty()
    }

    async fn connect(&self, base_url: &Arc<str>) -> Result<Sender, PoolError> {
        let addr = self
            .addr(base_url)
            .map_err(|e| PoolError::Connect(std::io::Error::new(ErrorKind::InvalidInput, e)))?;
        let timed_out = || {
            std::io::Error::new(
                ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            )
        };
        let stream = tokio::time::timeout(self.connect_timeout, open(&addr))
            .await
            .map_err(|_| PoolError::Connect(timed_out()))?
            .map_err(PoolError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Request)?;
        let replica = base_url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%replica, error = %e, "replica connection ended");
            }
        });
        Ok(sender)
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

/// The hook of a replica's response ([`Tracked`]) that gives its connection back to the pool
/// when the body has been read to its end; a body that fails, idles out or is dropped first
/// takes its connection with it (closed, never reused with bytes unread).
fn give_back_at_end(pool: Arc<Pool>, base_url: Arc<str>, sender: Sender) -> OnClose {
    OnClose::new(move |complete| {
        if complete {
            pool.give_back(&base_url, sender);
        }
    })
}

/// Why a request could not be sent to a replica.
pub(crate) enum SendError {
    /// No connection could be made (refused, or timed out). The body, if the client never read
    /// it, comes back for another replica.
    NotConnected {
        err: ProxyError,
        body: Option<ForwardBody>,
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
    pub(crate) async fn send_any<'r>(
        &self,
        target: &AdapterTarget,
        candidates: &'r [Replica],
        parts: &http::request::Parts,
        body: ForwardBody,
        path: &str,
        retry_5xx: bool,
    ) -> Result<(&'r Replica, Response<Tracked>), ProxyError> {
        let mut body = Some(body);
        let mut last = None;
        // A 5xx answer passed over, returned should no later candidate answer at all.
        let mut last_res = None;
        for (i, replica) in candidates.iter().enumerate() {
            let Some(b) = body.take() else { break };
            let is_last = i + 1 == candidates.len();
            let copy = if retry_5xx && !is_last {
                b.try_clone()
            } else {
                None
            };
            match self.send(target, replica, parts, b, path).await {
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
                    body = again.or(copy);
                }
                Err(e) => return Err(e.into_error()),
            }
        }
        if let Some(answer) = last_res {
            return Ok(answer);
        }
        Err(last.unwrap_or_else(|| ProxyError::NoReadyReplica(target.name.to_string())))
    }

    /// Sends one request to one replica and wraps its response for the client.
    pub(crate) async fn send(
        &self,
        target: &AdapterTarget,
        replica: &Replica,
        parts: &http::request::Parts,
        body: ForwardBody,
        path_and_query: &str,
    ) -> Result<Response<Tracked>, SendError> {
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
        let (uri, host) = self
            .upstream
            .uri(&replica.base_url, path_and_query)
            .map_err(|e| {
                SendError::Other(ProxyError::BadUpstreamResponse {
                    adapter: adapter.to_owned(),
                    replica: replica.id.to_string(),
                    reason: format!("invalid upstream URL: {e}"),
                })
            })?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers.clone();
        headers::to_upstream(
            req.headers_mut(),
            parts.extensions.get::<ClientAddr>().map(|a| a.0),
        );
        req.headers_mut().insert(http::header::HOST, host);
        headers::identity_to_upstream(
            req.headers_mut(),
            config.identity_headers.as_ref(),
            parts.extensions.get::<Principal>(),
            &target.upstream_headers,
        );

        let probe = parts.extensions.get::<Probe>();
        let attempt = observe::client_attempt(&self.observer, probe, replica, req.headers_mut());

        let health = self.shared.health.get(adapter, &replica.id);
        let in_flight = health.start();
        let sent = tokio::time::timeout(
            config.request_timeout,
            self.upstream.request(&replica.base_url, req),
        )
        .await;
        let (err, unsent) = match sent {
            Ok(Ok((res, sender))) => {
                let outcome = if res.status().is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                record_outcome(config, adapter, replica, &health, outcome);
                let back = (self.upstream.clone(), replica.base_url.clone(), sender);
                let mut res = self.respond(res, back, in_flight);
                attempt.attach(&mut res);
                return Ok(res);
            }
            Ok(Err(failed)) => failed,
            Err(_) => {
                observe::client_failed(probe, adapter, &self.observer, attempt, "timeout");
                upstream_error("timeout");
                return Err(SendError::Other(ProxyError::UpstreamTimeout {
                    adapter: adapter.to_owned(),
                    replica: replica.id.to_string(),
                    after: config.request_timeout,
                }));
            }
        };
        let err = match err {
            PoolError::Connect(e) => e,
            PoolError::Request(e) => {
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
                return Err(SendError::Other(ProxyError::UpstreamUnavailable {
                    adapter: adapter.to_owned(),
                    replica: replica.id.to_string(),
                    reason: error_chain(&e),
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
        record_outcome(config, adapter, replica, &health, Outcome::ConnectFailure);
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
            body: unsent.map(Request::into_body),
            refused: kind == ErrorKind::ConnectionRefused,
        })
    }

    fn respond(
        &self,
        res: Response<Incoming>,
        back: (Arc<Pool>, Arc<str>, Sender),
        in_flight: InFlight,
    ) -> Response<Tracked> {
        let (mut parts, inner) = res.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let (pool, base_url, sender) = back;
        let mut body = Tracked::new(
            inner.map_err(BoxError::from).boxed_unsync(),
            self.shared.config.stream_idle_timeout,
            vec![give_back_at_end(pool, base_url, sender)],
        );
        body.in_flight = Some(in_flight);
        Response::from_parts(parts, body)
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

    use super::*;

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

    fn get(path: &str) -> Request<ForwardBody> {
        let mut req = Request::new(ForwardBody::new(Vec::new(), None, 0));
        *req.uri_mut() = Uri::try_from(path).unwrap();
        req
    }

    /// Sends GET `path` and reads the answer through the pool's body, as the gateway does.
    async fn call(pool: &Arc<Pool>, r: &Replica, path: &str) -> String {
        let (res, sender) = pool
            .request(&r.base_url, get(path))
            .await
            .map_err(|e| e.0)
            .unwrap();
        let body = tracked(pool, r, res, sender);
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// The answer's body as the gateway wraps it, with the hook that gives its connection back.
    fn tracked(pool: &Arc<Pool>, r: &Replica, res: Response<Incoming>, sender: Sender) -> Tracked {
        Tracked::new(
            res.into_body().map_err(BoxError::from).boxed_unsync(),
            Duration::from_secs(30),
            vec![give_back_at_end(pool.clone(), r.base_url.clone(), sender)],
        )
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
        let (res, sender) = pool
            .request(&r.base_url, get("/x"))
            .await
            .map_err(|e| e.0)
            .unwrap();
        drop(tracked(&pool, &r, res, sender));
        assert!(pool.take_idle(&r.base_url).is_none(), "not given back");
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

    #[tokio::test]
    async fn a_refused_connection_gives_the_request_back() {
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Arc<str> = format!("http://{}", free.local_addr().unwrap()).into();
        drop(free);
        let pool = pool(Duration::from_secs(30));
        let Err((PoolError::Connect(e), Some(req))) = pool.request(&base, get("/mcp")).await else {
            panic!("a refused connection is a connect error with the request");
        };
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(req.uri(), "/mcp");
    }

    #[test]
    fn a_replica_uri_joins_its_base_path_and_the_path_and_sends_the_host_a_client_would() {
        let pool = Pool::new(&RoutingConfig::default());
        for (base, path, uri, host) in [
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
                let (u, h) = pool.uri(&base, path).unwrap();
                assert_eq!(u.to_string(), uri);
                assert_eq!(h, host);
            }
        }
        let v6 = pool.addr(&"http://[::1]:9001".into()).unwrap();
        assert_eq!((&*v6.host, v6.port), ("::1", 9001));
        let err = pool.uri(&"https://host:443".into(), "/mcp").unwrap_err();
        assert!(err.contains("http only"), "{err}");
        assert!(pool.uri(&"not a url".into(), "/mcp").is_err());
        assert!(pool.uri(&"http://h:1".into(), "/a b").is_err());
    }
}
