//! Every refusal and failure of the data plane, and the one place that turns them into an HTTP
//! status and a JSON-RPC error body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::body::ProxyBody;

/// JSON-RPC code of "session not found" (as the official SDKs use it).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// JSON-RPC code of MCP 2026-07-28 `HEADER_MISMATCH`.
pub const HEADER_MISMATCH: i64 = -32020;
/// JSON-RPC code of "invalid request".
pub const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;
const INTERNAL_ERROR: i64 = -32603;

/// Why the gateway answered instead of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "no route for {0}: use /adapters/{{name}}/mcp, /adapters/{{name}}/sse or /adapters/{{name}}/messages"
    )]
    NoRoute(String),
    #[error("method {0} is not allowed on this route (allowed: {1})")]
    MethodNotAllowed(http::Method, &'static str),
    #[error("adapter {0:?} does not exist")]
    UnknownAdapter(String),
    #[error(
        "session not found: it expired, was deleted, or its replica is gone; start a new session with initialize"
    )]
    SessionNotFound,
    #[error("invalid Mcp-Session-Id: {0}")]
    BadSessionId(mcp_gateway_core::InvalidSessionId),
    #[error(
        "missing session id: POST /messages needs the sessionId query parameter of the endpoint event"
    )]
    MissingSessionParam,
    #[error("invalid JSON-RPC message: {0}")]
    BadMessage(&'static str),
    #[error("{0}")]
    HeaderMismatch(String),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("request headers are larger than the limit of {0} bytes")]
    HeadersTooLarge(usize),
    #[error("Host {0:?} is not allowed (DNS rebinding protection); add it to allowed_hosts")]
    HostNotAllowed(String),
    #[error("Origin {0:?} is not allowed; add it to allowed_origins")]
    OriginNotAllowed(String),
    #[error("the gateway's limit of {0} live sessions is reached; try again later")]
    TooManySessions(u64),
    #[error(
        "{owner} holds {limit} live sessions, the most one caller may; end one (DELETE with its \
         Mcp-Session-Id) or retry after {} s, when the oldest unused one expires",
        retry_after.as_secs()
    )]
    TooManySessionsForCaller {
        owner: String,
        limit: u64,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("adapter {0:?} has no ready replica")]
    NoReadyReplica(String),
    #[error("replica {replica} of adapter {adapter:?} is unreachable: {reason}")]
    UpstreamUnavailable {
        adapter: String,
        replica: String,
        reason: String,
    },
    #[error("replica {replica} of adapter {adapter:?} did not answer within {after:?}")]
    UpstreamTimeout {
        adapter: String,
        replica: String,
        after: std::time::Duration,
    },
    #[error("replica {replica} of adapter {adapter:?} sent an invalid response: {reason}")]
    BadUpstreamResponse {
        adapter: String,
        replica: String,
        reason: String,
    },
    #[error("session store unavailable: {0}")]
    Store(#[from] mcp_gateway_core::StoreError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            NoRoute(_) | UnknownAdapter(_) | SessionNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            BadSessionId(_) | MissingSessionParam | BadMessage(_) | HeaderMismatch(_) => {
                StatusCode::BAD_REQUEST
            }
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HostNotAllowed(_) | OriginNotAllowed(_) | Forbidden(_) => StatusCode::FORBIDDEN,
            TooManySessions(_) | NoReadyReplica(_) | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            TooManySessionsForCaller { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnavailable { .. } | BadUpstreamResponse { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(&self) -> i64 {
        use ProxyError::*;
        match self {
            SessionNotFound => SESSION_NOT_FOUND,
            HeaderMismatch(_) => HEADER_MISMATCH,
            BadMessage(_) => PARSE_ERROR,
            NoRoute(_) | MethodNotAllowed(..) | UnknownAdapter(_) | BadSessionId(_)
            | MissingSessionParam | BodyTooLarge(_) | HeadersTooLarge(_) | HostNotAllowed(_)
            | OriginNotAllowed(_) | Forbidden(_) => INVALID_REQUEST,
            _ => INTERNAL_ERROR,
        }
    }

    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        use ProxyError::*;
        match self {
            NoRoute(_) => "no_route",
            MethodNotAllowed(..) => "method_not_allowed",
            UnknownAdapter(_) => "unknown_adapter",
            SessionNotFound => "session_not_found",
            BadSessionId(_) => "bad_session_id",
            MissingSessionParam => "missing_session_param",
            BadMessage(_) => "bad_message",
            HeaderMismatch(_) => "header_mismatch",
            BodyTooLarge(_) => "body_too_large",
            HeadersTooLarge(_) => "headers_too_large",
            HostNotAllowed(_) => "host_not_allowed",
            OriginNotAllowed(_) => "origin_not_allowed",
            Forbidden(_) => "forbidden",
            TooManySessions(_) => "too_many_sessions",
            TooManySessionsForCaller { .. } => "too_many_sessions_for_caller",
            NoReadyReplica(_) => "no_ready_replica",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout { .. } => "upstream_timeout",
            BadUpstreamResponse { .. } => "bad_upstream_response",
            Store(_) => "store_unavailable",
        }
    }

    /// The response: the status of [`status`](Self::status) and a JSON-RPC error body that
    /// answers the request's `id` when it is known.
    pub fn into_response(self, id: Option<Value>) -> Response<ProxyBody> {
        let mut res = json_rpc_error(self.status(), self.code(), &self.to_string(), id);
        match self {
            ProxyError::MethodNotAllowed(_, allow) => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ProxyError::TooManySessionsForCaller { retry_after, .. } => {
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs()),
                );
            }
            _ => {}
        }
        res
    }
}

/// A response with a JSON-RPC error body answering `id` (or `null`), as the gateway answers
/// when it refuses a request itself.
pub fn json_rpc_error(
    status: StatusCode,
    code: i64,
    message: &str,
    id: Option<Value>,
) -> Response<ProxyBody> {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    });
    json_response(status, "application/json", &body)
}

/// A response with `body` as JSON of the given content type.
pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &Value,
) -> Response<ProxyBody> {
    let mut res = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// The first error of type `T` in `err`'s chain of sources.
pub(crate) fn find_source<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}
