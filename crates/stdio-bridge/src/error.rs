//! Every failure of the bridge, and the one place that turns it into an HTTP status and a
//! JSON-RPC error body.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::{Body, json_response};

/// JSON-RPC code of "session not found" (as the official SDKs use it).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// JSON-RPC code of MCP 2026-07-28 `UnsupportedProtocolVersion`.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INTERNAL_ERROR: i64 = -32603;

/// The session-era revisions a bridged stdio server is offered (newest first).
pub const SESSION_REVISIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Why the bridge failed to start, or answered a request itself instead of the process.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "process limit reached: this stdio server runs at most {0} processes (one per session); try again later"
    )]
    ProcessLimit(usize),
    #[error("the bridge is shutting down")]
    ShuttingDown,
    #[error(
        "session not found: it ended, expired, or its process exited; start a new session with initialize"
    )]
    SessionNotFound,
    #[error("missing Mcp-Session-Id header: start a session with initialize first")]
    MissingSession,
    #[error("missing sessionId query parameter: use the URL of the endpoint event")]
    MissingSessionParam,
    #[error(
        "protocol version {requested} is not served: this is a stdio MCP server bridged one process per session; start a session with initialize"
    )]
    StatelessNotSupported { requested: String },
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid JSON-RPC message: {0}")]
    InvalidMessage(&'static str),
    #[error("request id {0} is already in flight in this session")]
    DuplicateId(String),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("this stream needs Accept: text/event-stream")]
    NotAcceptable,
    #[error("a GET stream is already open for this session")]
    StreamAlreadyOpen,
    #[error("method {0} is not allowed here (allowed: {1})")]
    MethodNotAllowed(http::Method, &'static str),
    #[error("no route for {0}: use /mcp, /sse or /messages")]
    NoRoute(String),
    #[error("the MCP server process exited ({0}) before answering")]
    ProcessExited(String),
    #[error("the MCP server process did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot write to the MCP server process: {0}")]
    Stdin(String),
    /// The caller is not the gateway: no (or a wrong) access token, or a `Host` that is not
    /// the bridge's loopback address (DNS rebinding).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

impl BridgeError {
    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        use BridgeError::*;
        match self {
            Bind { .. } | Spawn { .. } | ProcessExited(_) | Stdin(_) => StatusCode::BAD_GATEWAY,
            ProcessLimit(_) | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            SessionNotFound | NoRoute(_) => StatusCode::NOT_FOUND,
            MissingSession
            | MissingSessionParam
            | StatelessNotSupported { .. }
            | Parse(_)
            | InvalidMessage(_)
            | DuplicateId(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            StreamAlreadyOpen => StatusCode::CONFLICT,
            MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The JSON-RPC error code of this failure.
    pub fn code(&self) -> i64 {
        use BridgeError::*;
        match self {
            SessionNotFound => SESSION_NOT_FOUND,
            StatelessNotSupported { .. } => UNSUPPORTED_PROTOCOL_VERSION,
            Parse(_) => PARSE_ERROR,
            MissingSession | MissingSessionParam | InvalidMessage(_) | DuplicateId(_)
            | BodyTooLarge(_) | NotAcceptable | StreamAlreadyOpen | MethodNotAllowed(..)
            | NoRoute(_) | Forbidden(_) => INVALID_REQUEST,
            Bind { .. }
            | Spawn { .. }
            | ProcessLimit(_)
            | ShuttingDown
            | ProcessExited(_)
            | Timeout(_)
            | Stdin(_) => INTERNAL_ERROR,
        }
    }

    /// The JSON-RPC error response for request `id` (`null` when unknown).
    pub fn to_message(&self, id: Option<&Value>) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let Self::StatelessNotSupported { requested } = self {
            error["data"] = json!({ "supported": SESSION_REVISIONS, "requested": requested });
        }
        json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
    }

    /// The HTTP response: status and JSON-RPC error body.
    pub(crate) fn into_response(self, id: Option<&Value>) -> Response<Body> {
        let mut res = json_response(self.status(), &self.to_message(id));
        if let Self::MethodNotAllowed(_, allowed) = self
            && let Ok(value) = http::HeaderValue::from_str(allowed)
        {
            res.headers_mut().insert(http::header::ALLOW, value);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateless_refusal_names_the_session_revisions() {
        let err = BridgeError::StatelessNotSupported {
            requested: "2026-07-28".into(),
        };
        let body = err.to_message(Some(&json!(7)));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(body["error"]["data"]["supported"][0], "2025-11-25");
    }

    #[test]
    fn unknown_session_is_404_with_the_sdk_code() {
        let err = BridgeError::SessionNotFound;
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(err.to_message(None)["error"]["code"], SESSION_NOT_FOUND);
    }

    #[test]
    fn process_limit_is_503() {
        let err = BridgeError::ProcessLimit(2);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_string().contains("process limit reached"));
    }
}
