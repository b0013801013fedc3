//! Streamable HTTP on `/mcp` (session era): `initialize` starts a process, later requests go to
//! the process of their `Mcp-Session-Id`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::{Body, empty, json_response, sse_response};
use crate::bridge::Shared;
use crate::error::BridgeError;
use crate::jsonrpc::{ClientMessage, id_key, parse_client};
use crate::session::{Delivery, Session, Transport, message_event};

pub(crate) const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// The first revision without sessions.
const STATELESS_REVISION: &str = "2026-07-28";

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn session_of(shared: &Shared, headers: &HeaderMap) -> Result<Arc<Session>, BridgeError> {
    let id = header_str(headers, SESSION_ID).ok_or(BridgeError::MissingSession)?;
    shared.get(id, Transport::StreamableHttp)
}

/// `POST /mcp`.
pub(crate) async fn post(shared: &Arc<Shared>, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let (message, kind) = match parse_client(&body) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(None),
    };
    let request_id = match &kind {
        ClientMessage::Request { id, .. } => Some(id.clone()),
        _ => None,
    };
    match handle_post(shared, headers, message, kind).await {
        Ok(response) => response,
        Err(err) => err.into_response(request_id.as_ref()),
    }
}

async fn handle_post(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    message: Value,
    kind: ClientMessage,
) -> Result<Response<Body>, BridgeError> {
    let ClientMessage::Request {
        id,
        method,
        progress_token,
    } = kind
    else {
        // A notification or a response of the client: the process reads it, nobody waits.
        session_of(shared, headers)?.write(&message).await?;
        return Ok(empty(StatusCode::ACCEPTED));
    };
    if method == "initialize" {
        return initialize(shared, headers, &message, &id, progress_token).await;
    }
    let session = match session_of(shared, headers) {
        Err(BridgeError::MissingSession) => {
            return Err(match header_str(headers, PROTOCOL_VERSION) {
                // ISO dates compare as strings.
                Some(v) if v >= STATELESS_REVISION => BridgeError::StatelessNotSupported {
                    requested: v.to_owned(),
                },
                _ => BridgeError::MissingSession,
            });
        }
        other => other?,
    };
    let sse = accepts_sse(headers);
    let rx = session.request(&message, &id, progress_token, sse).await?;
    answer(shared, session, rx, id, sse).await
}

async fn initialize(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    message: &Value,
    id: &Value,
    progress_token: Option<String>,
) -> Result<Response<Body>, BridgeError> {
    let session = shared.open(Transport::StreamableHttp)?;
    // Until the client has its session id, nobody else can use the process: if this handler
    // is dropped (the client gave up on a slow first start), the process is stopped.
    let mut unclaimed = StopOnDrop(Some(session.clone()));
    let sse = accepts_sse(headers);
    let rx = match session.request(message, id, progress_token, sse).await {
        Ok(rx) => rx,
        Err(err) => {
            session.stop().await;
            return Err(err);
        }
    };
    let mut response = answer(shared, session.clone(), rx, id.clone(), sse).await;
    // An SSE answer cannot be judged before it ends; a JSON one can.
    let accepted = matches!(&response, Ok(r) if r.status() == StatusCode::OK
        && r.extensions().get::<RpcError>().is_none());
    if let (Ok(res), true) = (&mut response, accepted)
        && let Ok(value) = HeaderValue::from_str(&session.id)
    {
        res.headers_mut().insert(SESSION_ID, value);
        unclaimed.0 = None;
    }
    // Otherwise no session came of it: `unclaimed` stops the process as it goes.
    response
}

/// Stops the session's process when dropped, unless emptied first.
struct StopOnDrop(Option<Arc<Session>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.request_stop();
        }
    }
}

/// Armed while a handler waits for the process's answer: if the handler is dropped (its client,
/// or the gateway, went away), the request is forgotten and the process told to stop working on
/// it, so an abandoned request keeps neither the session nor its process busy.
struct Abandoned {
    session: Arc<Session>,
    id: Option<Value>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        self.session.forget(&id_key(&id));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            runtime.spawn(async move { cancel(&session, &id, "the client went away").await });
        }
    }
}

/// Marks a JSON answer that carries a JSON-RPC error.
#[derive(Clone, Copy)]
struct RpcError;

/// Waits for the answer to a request: JSON when the response comes first, an SSE stream when
/// the process writes notifications before it (and the client accepts SSE).
async fn answer(
    shared: &Arc<Shared>,
    session: Arc<Session>,
    mut rx: mpsc::Receiver<Delivery>,
    id: Value,
    sse: bool,
) -> Result<Response<Body>, BridgeError> {
    let timeout = shared.config.request_timeout;
    let deadline = Instant::now() + timeout;
    let mut abandoned = Abandoned {
        session: session.clone(),
        id: Some(id.clone()),
    };
    let first = tokio::time::timeout_at(deadline, rx.recv()).await;
    abandoned.id = None;
    let first = match first {
        Err(_) => {
            give_up(&session, &id).await;
            return Err(BridgeError::Timeout(timeout));
        }
        Ok(None) => {
            let reason = session.end_reason().unwrap_or_else(|| "unknown".into());
            return Err(BridgeError::ProcessExited(reason));
        }
        Ok(Some(first)) => first,
    };
    let note = match first {
        Delivery::Done(message) => {
            session.touch();
            let mut res = json_response(StatusCode::OK, &message);
            if message.get("error").is_some() {
                res.extensions_mut().insert(RpcError);
            }
            return Ok(res);
        }
        Delivery::Failed(reason) => return Err(BridgeError::ProcessExited(reason)),
        Delivery::Note(note) => note,
    };
    debug_assert!(sse, "notes are only routed to requests that accept SSE");
    let (tx, res) = sse_response(false);
    tokio::spawn(async move {
        let _ = tx.send(message_event(&note)).await;
        loop {
            tokio::select! {
                delivery = tokio::time::timeout_at(deadline, rx.recv()) => match delivery {
                    Ok(Some(Delivery::Note(note))) => {
                        if tx.send(message_event(&note)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(Delivery::Done(message))) => {
                        let _ = tx.send(message_event(&message)).await;
                        session.touch();
                        return;
                    }
                    Ok(Some(Delivery::Failed(reason))) => {
                        let err = BridgeError::ProcessExited(reason).to_message(Some(&id));
                        let _ = tx.send(message_event(&err)).await;
                        return;
                    }
                    Ok(None) => {
                        let reason = session.end_reason().unwrap_or_else(|| "unknown".into());
                        let err = BridgeError::ProcessExited(reason).to_message(Some(&id));
                        let _ = tx.send(message_event(&err)).await;
                        return;
                    }
                    Err(_) => {
                        give_up(&session, &id).await;
                        let err = BridgeError::Timeout(timeout).to_message(Some(&id));
                        let _ = tx.send(message_event(&err)).await;
                        return;
                    }
                },
                () = tx.closed() => break,
            }
        }
        // The client went away: the answer has nowhere to go.
        session.forget(&id_key(&id));
        session.touch();
    });
    Ok(res)
}

/// The request timed out: stop waiting and tell the process to stop working on it.
async fn give_up(session: &Session, id: &Value) {
    session.forget(&id_key(id));
    cancel(session, id, "request timed out at the gateway").await;
}

/// Tells the process to stop working on request `id`.
async fn cancel(session: &Session, id: &Value, reason: &str) {
    let cancel = json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": id, "reason": reason }
    });
    let _ = session.write(&cancel).await;
}

/// `GET /mcp`: the session's stream of messages tied to no request.
pub(crate) async fn get(shared: &Arc<Shared>, headers: &HeaderMap) -> Response<Body> {
    let result = async {
        let session = session_of(shared, headers)?;
        if !accepts_sse(headers) {
            return Err(BridgeError::NotAcceptable);
        }
        let (tx, res) = sse_response(true);
        session.open_stream(tx.clone()).await?;
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => session.touch(),
                () = session.ended() => {}
            }
        });
        Ok(res)
    };
    result
        .await
        .unwrap_or_else(|err: BridgeError| err.into_response(None))
}

/// `DELETE /mcp`: ends the session; answers once its process is gone.
pub(crate) async fn delete(shared: &Arc<Shared>, headers: &HeaderMap) -> Response<Body> {
    match session_of(shared, headers) {
        Ok(session) => {
            session.stop().await;
            empty(StatusCode::OK)
        }
        Err(err) => err.into_response(None),
    }
}
