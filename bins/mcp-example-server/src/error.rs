//! The server's one error type and its two mappings: to a JSON-RPC error object
//! ([`Error::to_response`]) and to an HTTP status ([`Error::status`]).
//!
//! Codes and statuses follow the official Python SDK (2.3): its `ERROR_CODE_HTTP_STATUS`
//! table for the stateless revision, `-32600` with `400`/`404` for session failures.

use http::StatusCode;
use serde_json::{Value, json};

/// JSON-RPC 2.0 and MCP error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// An `MCP-Protocol-Version` / `Mcp-Method` / `Mcp-Name` header disagrees with the body (2026-07-28).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// The requested protocol revision is not served; `data` lists the supported ones.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// Everything that can go wrong while serving one message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Parse error")]
    Parse,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Method not found")]
    MethodNotFound(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    HeaderMismatch(String),
    #[error("Unsupported protocol version")]
    UnsupportedVersion {
        requested: String,
        supported: &'static [&'static str],
    },
    #[error("Bad Request: Missing session ID")]
    MissingSession,
    #[error("Session not found")]
    SessionNotFound,
    #[error("Request body too large")]
    BodyTooLarge,
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse => code::PARSE_ERROR,
            Self::InvalidRequest(_)
            | Self::MissingSession
            | Self::SessionNotFound
            | Self::BodyTooLarge => code::INVALID_REQUEST,
            Self::MethodNotFound(_) => code::METHOD_NOT_FOUND,
            Self::InvalidParams(_) => code::INVALID_PARAMS,
            Self::HeaderMismatch(_) => code::HEADER_MISMATCH,
            Self::UnsupportedVersion { .. } => code::UNSUPPORTED_PROTOCOL_VERSION,
            Self::Internal(_) => code::INTERNAL_ERROR,
        }
    }

    /// The HTTP status of a response that carries only this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::SessionNotFound => StatusCode::NOT_FOUND,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => status_for_code(self.code()),
        }
    }

    /// The JSON-RPC error response for the request `id` (`null` when it could not be read).
    pub fn to_response(&self, id: Option<&Value>) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        match self {
            Self::MethodNotFound(method) => error["data"] = json!(method),
            Self::UnsupportedVersion {
                requested,
                supported,
            } => {
                error["data"] = json!({ "supported": supported, "requested": requested });
            }
            _ => {}
        }
        json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
    }
}

/// HTTP status for a JSON-RPC error code (the SDK's `ERROR_CODE_HTTP_STATUS`); unlisted codes get `200`.
pub fn status_for_code(code: i64) -> StatusCode {
    match code {
        code::PARSE_ERROR
        | code::INVALID_REQUEST
        | code::INVALID_PARAMS
        | code::HEADER_MISMATCH
        | code::UNSUPPORTED_PROTOCOL_VERSION => StatusCode::BAD_REQUEST,
        code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_errors_keep_the_invalid_request_code_but_differ_in_status() {
        assert_eq!(Error::SessionNotFound.code(), code::INVALID_REQUEST);
        assert_eq!(Error::SessionNotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(Error::MissingSession.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unsupported_version_names_what_is_supported() {
        let err = Error::UnsupportedVersion {
            requested: "1999-01-01".into(),
            supported: &["2026-07-28"],
        };
        let body = err.to_response(Some(&json!(3)));
        assert_eq!(body["id"], 3);
        assert_eq!(body["error"]["code"], code::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(body["error"]["data"]["supported"][0], "2026-07-28");
        assert_eq!(body["error"]["data"]["requested"], "1999-01-01");
    }

    #[test]
    fn parse_errors_carry_a_null_id() {
        let body = Error::Parse.to_response(None);
        assert!(body["id"].is_null());
        assert_eq!(Error::Parse.status(), StatusCode::BAD_REQUEST);
    }
}
