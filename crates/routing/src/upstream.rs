//! The upstream client: the one place that talks to a replica. It sends a request to one
//! replica or to the first of several candidates that accepts it, feeds each exchange's outcome
//! to the replica's outlier detection, and wraps the replica's response for the client.

use http::{Request, Response, Uri};
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
/// and idle timeouts).
pub(crate) fn client(config: &RoutingConfig) -> Client<HttpConnector, Replayable> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.upstream_idle_timeout)
        .build(connector)
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
        let uri: Uri = format!("{}{}", replica.base_url, path_and_query)
            .parse()
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
        let sent = tokio::time::timeout(config.request_timeout, self.client.request(req)).await;
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
