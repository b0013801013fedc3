//! The upstream client: the one place that talks to a replica. It sends a request to one
//! replica or to the first of several candidates that accepts it, feeds each exchange's outcome
//! to the replica's outlier detection, and wraps the replica's response for the client.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_gateway_core::{AdapterTarget, Principal, Replica};

use crate::RoutingConfig;
use crate::body::{BodyTooLarge, BoxError, ForwardBody, Replayable, Tracked};
use crate::error::{ProxyError, find_source};
use crate::gateway::{ClientAddr, Gateway};
use crate::headers;
use crate::observe::{self, Probe};
use crate::placement::{InFlight, Outcome, ReplicaHealth};

/// The pooled HTTP/1.1 client of a gateway (keep-alive, `TCP_NODELAY`, the configured connect
/// and idle timeouts), and the replicas' addresses it has parsed.
pub(crate) struct Pool {
    client: Client<HttpConnector, Replayable>,
    /// By base URL. Names come from the resolver, not from callers; the map is emptied when
    /// it reaches [`MAX_ADDRS`] (replicas come and go in Kubernetes).
    addrs: RwLock<HashMap<Arc<str>, Addr, foldhash::fast::RandomState>>,
}

const MAX_ADDRS: usize = 4096;

/// A replica's base URL, parsed once: what its requests' URIs start with and their `Host`.
#[derive(Clone)]
struct Addr {
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path, without its trailing `/` (usually empty).
    prefix: Box<str>,
    /// The authority, without the scheme's default port (as a client sets it).
    host: HeaderValue,
}

impl Pool {
    pub(crate) fn new(config: &RoutingConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.upstream_idle_timeout)
            .build(connector);
        Self {
            client,
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

    /// The URI of `path_and_query` on the replica at `base_url`, and the `Host` to send.
    fn uri(&self, base_url: &Arc<str>, path_and_query: &str) -> Result<(Uri, HeaderValue), String> {
        let addr = self.addr(base_url)?;
        let path = if addr.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", addr.prefix))
        }
        .map_err(|e| e.to_string())?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(addr.scheme);
        parts.authority = Some(addr.authority);
        parts.path_and_query = Some(path);
        let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        Ok((uri, addr.host))
    }
}

impl Addr {
    fn parse(base_url: &str) -> Result<Self, String> {
        let uri: Uri = base_url.parse().map_err(|e| format!("{e}"))?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err("no scheme and authority".into());
        };
        let default_port = match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        let host = if authority.port_u16().is_some() && authority.port_u16() != default_port {
            authority.as_str()
        } else {
            authority.host()
        };
        let host = HeaderValue::from_str(host).map_err(|e| e.to_string())?;
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').into())
            .unwrap_or_default();
        Ok(Self {
            scheme,
            authority,
            prefix,
            host,
        })
    }
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
        let (body, slot) = Replayable::new(body);
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
        let sent =
            tokio::time::timeout(config.request_timeout, self.upstream.client.request(req)).await;
        let err = match sent {
            Ok(Ok(res)) => {
                let outcome = if res.status().is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                record_outcome(config, adapter, replica, &health, outcome);
                let mut res = self.respond(res, in_flight);
                attempt.attach(&mut res);
                return Ok(res);
            }
            Ok(Err(e)) => e,
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
        if let Some(limit) = find_source::<BodyTooLarge>(&err) {
            observe::client_failed(probe, adapter, &self.observer, attempt, "body_too_large");
            return Err(SendError::Other(ProxyError::BodyTooLarge(limit.0)));
        }
        let io_kind = find_source::<std::io::Error>(&err).map(std::io::Error::kind);
        let error_type = match (err.is_connect(), io_kind) {
            (true, Some(std::io::ErrorKind::TimedOut)) => "connect_timeout",
            (true, _) => "connect_error",
            _ => "io_error",
        };
        observe::client_failed(probe, adapter, &self.observer, attempt, error_type);
        let reason = error_chain(&err);
        if !err.is_connect() {
            upstream_error("io");
            return Err(SendError::Other(ProxyError::UpstreamUnavailable {
                adapter: adapter.to_owned(),
                replica: replica.id.to_string(),
                reason,
            }));
        }
        record_outcome(config, adapter, replica, &health, Outcome::ConnectFailure);
        let err = if io_kind == Some(std::io::ErrorKind::TimedOut) {
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
                reason,
            }
        };
        tracing::warn!(adapter, replica = %replica.id, error = %err, "no connection to the replica");
        Err(SendError::NotConnected {
            err,
            // No byte of the body was read: the connection never opened.
            body: slot.reclaim(),
            refused: io_kind == Some(std::io::ErrorKind::ConnectionRefused),
        })
    }

    pub(crate) fn respond(
        &self,
        res: Response<Incoming>,
        in_flight: InFlight,
    ) -> Response<Tracked> {
        let (mut parts, body) = res.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let mut body = Tracked::new(
            body.map_err(BoxError::from).boxed_unsync(),
            self.shared.config.stream_idle_timeout,
            Vec::new(),
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
    use super::*;

    #[test]
    fn a_replica_uri_joins_its_base_and_the_path_and_sends_the_host_a_client_would() {
        let pool = Pool::new(&RoutingConfig::default());
        for (base, path, uri, host) in [
            (
                "http://127.0.0.1:9001",
                "/mcp",
                "http://127.0.0.1:9001/mcp",
                "127.0.0.1:9001",
            ),
            (
                "http://echo-0.echo:8080",
                "/messages?sessionId=a",
                "http://echo-0.echo:8080/messages?sessionId=a",
                "echo-0.echo:8080",
            ),
            ("http://[::1]:80", "/mcp", "http://[::1]:80/mcp", "[::1]"),
            ("http://host", "/mcp", "http://host/mcp", "host"),
            ("https://host:443", "/mcp", "https://host:443/mcp", "host"),
            (
                "http://host:8080/base/",
                "/mcp",
                "http://host:8080/base/mcp",
                "host:8080",
            ),
        ] {
            let base: Arc<str> = base.into();
            // The second time from the parsed address.
            for _ in 0..2 {
                let (u, h) = pool.uri(&base, path).unwrap();
                assert_eq!(u.to_string(), uri);
                assert_eq!(h, host);
            }
        }
        assert!(pool.uri(&"not a url".into(), "/mcp").is_err());
        assert!(pool.uri(&"http://h:1".into(), "/a b").is_err());
    }
}
