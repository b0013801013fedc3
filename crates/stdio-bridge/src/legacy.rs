//! HTTP+SSE of revision 2024-11-05: `GET /sse` starts a process and streams everything it
//! writes; `POST /messages?sessionId=…` feeds its stdin. Closing the stream ends the session.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::body::{Body, empty, sse_event, sse_response};
use crate::bridge::Shared;
use crate::error::BridgeError;
use crate::jsonrpc::{ClientMessage, parse_client};
use crate::session::Transport;

/// `GET /sse`.
pub(crate) async fn open(shared: &Arc<Shared>) -> Response<Body> {
    let session = match shared.open(Transport::LegacySse) {
        Ok(session) => session,
        Err(err) => return err.into_response(None),
    };
    let (tx, res) = sse_response(true);
    let endpoint = format!("/messages?sessionId={}", session.id);
    // The channel is new and empty: the endpoint event always fits and always comes first.
    let _ = tx.try_send(sse_event(Some("endpoint"), &endpoint));
    if let Err(err) = session.open_stream(tx.clone()).await {
        session.stop().await;
        return err.into_response(None);
    }
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => session.stop().await,
            () = session.ended() => {}
        }
    });
    res
}

/// The session id of a `/messages` query (`sessionId`, or `session_id` as the Python SDK
/// names it).
fn session_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "sessionId" || *key == "session_id")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// `POST /messages?sessionId=…`: 202, the answer goes out on the session's stream.
pub(crate) async fn post(shared: &Arc<Shared>, query: Option<&str>, body: Bytes) -> Response<Body> {
    let (message, kind) = match parse_client(&body) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(None),
    };
    let id = match &kind {
        ClientMessage::Request { id, .. } => Some(id),
        _ => None,
    };
    let result = async {
        let session_id = session_param(query).ok_or(BridgeError::MissingSessionParam)?;
        let session = shared.get(session_id, Transport::LegacySse)?;
        session.write(&message).await
    };
    match result.await {
        Ok(()) => empty(StatusCode::ACCEPTED),
        Err(err) => err.into_response(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_is_read_under_either_name() {
        assert_eq!(session_param(Some("sessionId=abc")), Some("abc"));
        assert_eq!(session_param(Some("x=1&session_id=abc")), Some("abc"));
        assert_eq!(session_param(Some("sessionId=")), None);
        assert_eq!(session_param(Some("other")), None);
        assert_eq!(session_param(None), None);
    }
}
