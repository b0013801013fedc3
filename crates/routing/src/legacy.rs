//! The legacy HTTP+SSE transport (MCP 2024-11-05): `GET /adapters/{name}/sse` opens a session
//! on a replica, whose `endpoint` event is rewritten to point back at the gateway once the
//! session is recorded; `POST /adapters/{name}/messages?sessionId=…` carries the client's
//! messages to the replica that owns the session. The session ends with the stream.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use http::{Response, header};
use http_body_util::BodyExt;
use mcp_gateway_core::{AdapterTarget, LegacyEndpoint, SessionId, SessionKey, SessionRecord};

use crate::body::{EndpointRewriter, ForwardBody, OnClose, OnEndpoint, ProxyBody, Tracked};
use crate::error::ProxyError;
use crate::gateway::{Fail, Gateway, UpstreamPath, principal};
use crate::headers::Seen;
use crate::observe::Probe;
use crate::sse;

impl Gateway {
    /// `GET /adapters/{name}/sse`: opens a legacy HTTP+SSE session on a replica.
    pub(crate) async fn open_legacy(
        &self,
        target: Arc<AdapterTarget>,
        parts: http::request::Parts,
        probe: &Probe,
    ) -> Result<Response<Tracked>, Fail> {
        self.check_session_limit(&parts).await?;
        let (candidates, placing) = self.session_candidates(&target).await?;
        let path = match parts.uri.query() {
            Some(q) => format!("{}?{q}", target.sse_path),
            None => target.sse_path.clone(),
        };
        let body = ForwardBody::new(Vec::new(), None, 0);
        let (replica, res) = self
            .send_any(&target, &candidates, &parts, body, &path, true, probe)
            .await?;
        let is_stream = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !res.status().is_success() || !is_stream {
            return Ok(res);
        }

        // The session is known once the endpoint event names it; it ends with the stream.
        let opened: Arc<Mutex<Option<SessionKey>>> = Arc::default();
        let store = self.shared.store.clone();
        let on_endpoint: OnEndpoint = {
            let (store, opened) = (store.clone(), opened.clone());
            let (target, replica_id, principal) =
                (target.clone(), replica.id.clone(), principal(&parts));
            Box::new(
                move |data: String| -> BoxFuture<'static, Result<String, ProxyError>> {
                    Box::pin(async move {
                        let bad = |reason: &str| ProxyError::BadUpstreamResponse {
                            adapter: target.name.to_string(),
                            replica: replica_id.to_string(),
                            reason: reason.to_owned(),
                        };
                        let endpoint = sse::parse_endpoint(&data)
                            .ok_or_else(|| bad("endpoint event does not hold a URL"))?;
                        let (_, sid) = sse::session_param(endpoint.query)
                            .ok_or_else(|| bad("endpoint URL carries no session id"))?;
                        let sid = SessionId::new(&sid)
                            .map_err(|_| bad("session id is not a short visible-ASCII token"))?;
                        let key = SessionKey {
                            adapter: target.name.clone(),
                            id: sid,
                        };
                        let mut record = SessionRecord::new(key.clone(), replica_id, principal);
                        record.legacy = Some(LegacyEndpoint {
                            path_and_query: endpoint.path_and_query.to_owned(),
                        });
                        store.put(record).await?;
                        drop(placing);
                        *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
                        Ok(format!(
                            "/adapters/{}/messages?{}",
                            target.name, endpoint.query
                        ))
                    })
                },
            )
        };
        let close = OnClose::new(move |_| {
            let Some(key) = opened.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return;
            };
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = store.remove(&key).await {
                        tracing::warn!(error = %e, "could not remove an ended legacy session");
                    }
                });
            }
        });
        // The rewriter goes inside the replica stream's timeout and hooks.
        Ok(res.map(|body| {
            let mut body =
                body.map_inner(|inner| EndpointRewriter::new(inner, on_endpoint).boxed_unsync());
            body.on_close(close);
            body
        }))
    }

    /// `POST /adapters/{name}/messages?sessionId=…`: a client message of a legacy session.
    pub(crate) async fn post_legacy(
        &self,
        target: Arc<AdapterTarget>,
        parts: http::request::Parts,
        seen: &Seen,
        body: ProxyBody,
        probe: &Probe,
    ) -> Result<Response<Tracked>, Fail> {
        let limit = self.body_limit(seen)?;
        let (_, sid) = sse::session_param(parts.uri.query().unwrap_or(""))
            .ok_or(ProxyError::MissingSessionParam)?;
        let sid = SessionId::new(&sid).map_err(ProxyError::BadSessionId)?;
        let body = ForwardBody::new(Vec::new(), Some(body), limit);
        self.to_session(&target, parts, body, sid, UpstreamPath::Legacy, probe)
            .await
    }
}
