//! The legacy HTTP+SSE transport (revision 2024-11-05).
//!
//! `GET /sse` opens a session whose stream starts with an `endpoint` event naming
//! `/messages?sessionId=<id>`; each `POST` there is acknowledged with `202` and answered on the
//! stream as an `event: message`. The session ends when its stream goes away.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::http::{Body, empty, error, sse};
use crate::protocol::{self, Message, Server};
use crate::sse::{SseBody, event};

/// Messages a session may have queued on its stream before senders wait for the client.
const STREAM_BUFFER: usize = 64;

/// `GET /sse`.
pub fn open(server: &Server) -> Response<Body> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let session = server.sessions().create(Some(tx));
    tracing::debug!(session = session.id(), "legacy SSE session opened");
    let endpoint = event(
        Some("endpoint"),
        None,
        &format!("/messages?sessionId={}", session.id()),
    );
    sse(SseBody::new(rx)
        .with_preamble(endpoint)
        .with_guard(server.sessions().guard(session.id())))
}

/// `POST /messages?sessionId=…` (`session_id`, the Python SDK's key, is accepted too).
pub fn post(server: &Arc<Server>, query: Option<&str>, body: Bytes) -> Response<Body> {
    let Some(id) = query.and_then(session_id) else {
        return error(&Error::InvalidRequest("sessionId is required".into()), None);
    };
    let Some((session, out)) = server
        .sessions()
        .get(id)
        .and_then(|s| s.outbound().map(|out| (s, out)))
    else {
        return error(&Error::SessionNotFound, None);
    };
    let request = match Message::parse(&body) {
        Ok(Message::Request(request)) => request,
        Ok(Message::Notification { .. } | Message::Response) => return empty(StatusCode::ACCEPTED),
        Err(err) => return error(&err, None),
    };
    let server = server.clone();
    tokio::spawn(async move {
        let response = match protocol::scope_for(&request, &session) {
            Ok(scope) => server.handle(&request, &scope, Some(out.clone())).await,
            Err(err) => err.to_response(Some(&request.id)),
        };
        // Fails only when the stream has closed, which ends the session anyway.
        let _ = out.send(response).await;
    });
    empty(StatusCode::ACCEPTED)
}

fn session_id(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| matches!(key, "sessionId" | "session_id").then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_is_read_from_either_key() {
        assert_eq!(session_id("sessionId=abc"), Some("abc"));
        assert_eq!(session_id("x=1&session_id=def"), Some("def"));
        assert_eq!(session_id("x=1"), None);
    }

    #[tokio::test]
    async fn unknown_and_missing_sessions_are_refused() {
        let server = Arc::new(Server::new("r".into()));
        let ping = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert_eq!(
            post(&server, Some("sessionId=nope"), ping.clone()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(post(&server, None, ping).status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn dropping_the_stream_ends_the_session() {
        let server = Server::new("r".into());
        let response = open(&server);
        assert_eq!(server.sessions().len(), 1);
        drop(response);
        assert_eq!(server.sessions().len(), 0);
    }
}
