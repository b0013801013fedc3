//! The streamable HTTP endpoint `/mcp`, both eras.
//!
//! A `POST` is stateless (revision 2026-07-28) when it has no `Mcp-Session-Id`, is not an
//! `initialize`, and its `MCP-Protocol-Version` header is not a handshake revision (the Python
//! SDK's rule, so unknown versions get the stateless `-32022` answer). Everything else is the
//! session era: `initialize` creates a session, later requests must name it.
//!
//! A request is answered with `application/json` unless it produces notifications before its
//! result (progress, when the client accepts `text/event-stream`): then the answer commits to
//! an SSE stream at the first notification and ends after the response.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{Error, status_for_code};
use crate::http::{Body, accepts, empty, error, header_str, json, sse};
use crate::protocol::{self, HANDSHAKE_VERSIONS, MODERN_VERSIONS, Message, Request, Scope, Server};
use crate::session::Session;
use crate::sse::SseBody;

pub const SESSION_ID: &str = "mcp-session-id";
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const METHOD: &str = "mcp-method";
pub const NAME: &str = "mcp-name";

/// `POST /mcp`.
pub async fn post(server: &Arc<Server>, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let message = match Message::parse(&body) {
        Ok(message) => message,
        Err(err) => return error(&err, None),
    };
    let session_id = header_str(headers, SESSION_ID);
    let version = header_str(headers, PROTOCOL_VERSION);
    let initialize = match &message {
        Message::Request(request) => request.method == "initialize",
        _ => false,
    };
    if session_id.is_none() && !initialize && version.is_some_and(protocol::is_stateless_version) {
        return stateless(server, headers, message).await;
    }

    let request = match message {
        Message::Request(request) => request,
        Message::Notification { .. } | Message::Response => {
            return match session(server, headers) {
                Ok(_) => empty(StatusCode::ACCEPTED),
                Err(err) => error(&err, None),
            };
        }
    };
    if let Some(version) = version.filter(|v| !initialize && protocol::is_stateless_version(v)) {
        let err = Error::UnsupportedVersion {
            requested: version.to_owned(),
            supported: HANDSHAKE_VERSIONS,
        };
        return error(&err, Some(&request.id));
    }
    let session = if initialize {
        server.sessions().create(None)
    } else {
        match session(server, headers) {
            Ok(session) => session,
            Err(err) => return error(&err, Some(&request.id)),
        }
    };
    let mut response = answer(
        server,
        request,
        Scope::Session(session.clone()),
        accepts_sse(headers),
    )
    .await;
    if initialize && let Ok(id) = HeaderValue::from_str(session.id()) {
        response.headers_mut().insert(SESSION_ID, id);
    }
    response
}

/// `GET /mcp`: the session's server-to-client stream. Nothing is sent on it but keep-alives (this
/// server makes no requests of the client); it ends with the session. `Last-Event-ID` is
/// accepted and ignored: there is nothing to replay.
pub fn get(server: &Server, headers: &HeaderMap) -> Response<Body> {
    if !accepts_sse(headers) {
        return empty(StatusCode::NOT_ACCEPTABLE);
    }
    let session = match session(server, headers) {
        Ok(session) => session,
        Err(err) => return error(&err, None),
    };
    let (tx, rx) = mpsc::channel(1);
    session.add_listener(tx);
    let mut body = SseBody::new(rx);
    // 2025-11-25 clients expect a priming event (an id, empty data) to resume from.
    if session
        .protocol_version()
        .is_some_and(|v| v.as_str() >= "2025-11-25")
    {
        body = body.with_preamble(Bytes::from(format!(
            "id: {}\ndata: \n\n",
            session.next_event_id()
        )));
    }
    sse(body.with_event_ids(session))
}

/// `DELETE /mcp`: ends the session.
pub fn delete(server: &Server, headers: &HeaderMap) -> Response<Body> {
    match header_str(headers, SESSION_ID) {
        None => error(&Error::MissingSession, None),
        Some(id) if server.sessions().remove(id) => empty(StatusCode::OK),
        Some(_) => error(&Error::SessionNotFound, None),
    }
}

fn session(server: &Server, headers: &HeaderMap) -> Result<Arc<Session>, Error> {
    let id = header_str(headers, SESSION_ID).ok_or(Error::MissingSession)?;
    server.sessions().get(id).ok_or(Error::SessionNotFound)
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    accepts(headers, "text/event-stream")
}

// === Stateless era (2026-07-28) ===

async fn stateless(server: &Arc<Server>, headers: &HeaderMap, message: Message) -> Response<Body> {
    let request = match message {
        Message::Request(request) => request,
        // The revision defines no client notifications over HTTP: acknowledged and dropped.
        Message::Notification { .. } => {
            return match header_str(headers, PROTOCOL_VERSION) {
                Some(v) if MODERN_VERSIONS.contains(&v) => empty(StatusCode::ACCEPTED),
                v => error(
                    &Error::UnsupportedVersion {
                        requested: v.unwrap_or_default().to_owned(),
                        supported: MODERN_VERSIONS,
                    },
                    None,
                ),
            };
        }
        Message::Response => {
            return error(
                &Error::InvalidRequest(
                    "Body must be a single JSON-RPC request or notification".into(),
                ),
                None,
            );
        }
    };
    let checked = check_duplicates(headers)
        .and_then(|()| protocol::envelope_version(&request))
        .and_then(|version| check_headers(headers, &request, version).map(|()| version))
        .and_then(protocol::check_version);
    if let Err(err) = checked {
        return error(&err, Some(&request.id));
    }
    answer(server, request, Scope::Stateless, accepts_sse(headers)).await
}

/// Routing headers sent twice are refused: first-copy and last-copy readers would disagree.
fn check_duplicates(headers: &HeaderMap) -> Result<(), Error> {
    for name in [PROTOCOL_VERSION, METHOD, NAME] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Error::HeaderMismatch(format!(
                "{name} header appears more than once"
            )));
        }
    }
    Ok(())
}

/// The header rung of the ladder: `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` must
/// mirror the body, so that an intermediary routing on them routes on the truth.
pub fn check_headers(headers: &HeaderMap, request: &Request, version: &Value) -> Result<(), Error> {
    if header_str(headers, PROTOCOL_VERSION).is_none_or(|h| version.as_str() != Some(h)) {
        return Err(Error::HeaderMismatch(format!(
            "{PROTOCOL_VERSION} header does not match the request envelope's protocol version"
        )));
    }
    if header_str(headers, METHOD) != Some(request.method.as_str()) {
        return Err(Error::HeaderMismatch(format!(
            "{METHOD} header does not match the request body's method"
        )));
    }
    if let Some(name) = request.name_param() {
        let header = header_str(headers, NAME).and_then(decode_header_value);
        if header.is_none_or(|h| name.as_str() != Some(h.as_str())) {
            return Err(Error::HeaderMismatch(format!(
                "{NAME} header does not match the request body's name"
            )));
        }
    }
    Ok(())
}

// === Answering a request ===

/// Runs a request and answers it: JSON, or an SSE stream once it emits a notification.
async fn answer(
    server: &Arc<Server>,
    request: Request,
    scope: Scope,
    accepts_sse: bool,
) -> Response<Body> {
    let stateless = matches!(scope, Scope::Stateless);
    let ids = match &scope {
        Scope::Session(session) => Some(session.clone()),
        Scope::Stateless => None,
    };
    if !accepts_sse || request.progress_token().is_none() {
        // Nothing can be streamed: answer inline, no task, no channel.
        let response = server.handle(&request, &scope, None).await;
        return json(status(&response, stateless), &response);
    }
    let (tx, mut rx) = mpsc::channel(32);
    let server = server.clone();
    tokio::spawn(async move {
        let response = server.handle(&request, &scope, Some(tx.clone())).await;
        // Fails only when the client went away; nobody is left to tell.
        let _ = tx.send(response).await;
    });
    match rx.recv().await {
        Some(first) if is_response(&first) => json(status(&first, stateless), &first),
        Some(first) => {
            let body = SseBody::new(rx);
            let body = match ids {
                Some(session) => body.with_event_ids(session),
                None => body,
            };
            sse(body.with_first(&first))
        }
        None => error(
            &Error::Internal("the request handler stopped without answering".into()),
            None,
        ),
    }
}

fn is_response(message: &Value) -> bool {
    message.get("id").is_some() && message.get("method").is_none()
}

/// Session era: a JSON-RPC error is still a `200` (as the SDK answers). Stateless: by error code.
fn status(response: &Value, stateless: bool) -> StatusCode {
    match response
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
    {
        Some(code) if stateless => status_for_code(code),
        _ => StatusCode::OK,
    }
}

/// Decodes an `Mcp-Name` value: verbatim, or the `=?base64?…?=` form clients use for values that
/// are not plain printable ASCII. `None` when the sentinel is malformed (never matches a body).
fn decode_header_value(value: &str) -> Option<String> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    String::from_utf8(base64_decode(payload)?).ok()
}

/// Strict standard base64 (padded, canonical), as the SDK's `b64decode(validate=True)` plus its
/// canonical-form check.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = input.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks_exact(4);
    let last = chunks.len().checked_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && Some(i) != last) {
            return None;
        }
        let mut n = 0u32;
        for c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(*c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Canonical: the bits the padding hides must be zero.
        if decoded[3 - pad..].iter().any(|b| *b != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn call(name: &str) -> Request {
        Request {
            id: json!(1),
            method: "tools/call".into(),
            params: json!({ "name": name }),
        }
    }

    #[test]
    fn headers_must_mirror_the_body() {
        let version = json!("2026-07-28");
        let ok = headers(&[
            (PROTOCOL_VERSION, "2026-07-28"),
            (METHOD, "tools/call"),
            (NAME, "echo"),
        ]);
        assert!(check_headers(&ok, &call("echo"), &version).is_ok());
        let wrong_name = headers(&[
            (PROTOCOL_VERSION, "2026-07-28"),
            (METHOD, "tools/call"),
            (NAME, "whoami"),
        ]);
        assert_eq!(
            check_headers(&wrong_name, &call("echo"), &version)
                .unwrap_err()
                .code(),
            code::HEADER_MISMATCH
        );
        let no_name = headers(&[(PROTOCOL_VERSION, "2026-07-28"), (METHOD, "tools/call")]);
        assert!(check_headers(&no_name, &call("echo"), &version).is_err());
        let wrong_method = headers(&[
            (PROTOCOL_VERSION, "2026-07-28"),
            (METHOD, "tools/list"),
            (NAME, "echo"),
        ]);
        assert!(check_headers(&wrong_method, &call("echo"), &version).is_err());
        let wrong_version = headers(&[
            (PROTOCOL_VERSION, "2026-07-29"),
            (METHOD, "tools/call"),
            (NAME, "echo"),
        ]);
        assert!(check_headers(&wrong_version, &call("echo"), &version).is_err());
    }

    #[test]
    fn base64_names_are_decoded() {
        let encoded = headers(&[
            (PROTOCOL_VERSION, "2026-07-28"),
            (METHOD, "tools/call"),
            (NAME, "=?base64?w6ljaG8=?="),
        ]);
        assert!(check_headers(&encoded, &call("écho"), &json!("2026-07-28")).is_ok());
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("aGl="), None, "non-canonical");
        assert_eq!(base64_decode("aG=k"), None);
        assert_eq!(base64_decode("aGk"), None);
        assert_eq!(decode_header_value("=?base64?***?="), None);
    }

    #[test]
    fn duplicated_routing_headers_are_refused() {
        let twice = headers(&[(METHOD, "ping"), (METHOD, "ping")]);
        assert!(matches!(
            check_duplicates(&twice),
            Err(Error::HeaderMismatch(_))
        ));
    }

    #[test]
    fn session_era_errors_are_200_and_stateless_ones_mapped() {
        let not_found = Error::MethodNotFound("x".into()).to_response(Some(&json!(1)));
        assert_eq!(status(&not_found, false), StatusCode::OK);
        assert_eq!(status(&not_found, true), StatusCode::NOT_FOUND);
        assert_eq!(status(&json!({ "result": {} }), true), StatusCode::OK);
    }
}
