//! One error type for the whole API, answered as `application/problem+json` (RFC 9457).
//!
//! Every refusal, including axum's own (bad JSON, wrong content type, unknown route, wrong
//! method), goes through [`ApiError`], so a client always gets the same body shape with a
//! `detail` that says what to change.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use mcp_gateway_core::AdapterError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem detail (RFC 9457), the body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:mcp-gateway:problem:invalid-adapter",
    "title": "Invalid adapter",
    "status": 400,
    "detail": "name \"Bad_Name\" is invalid: may contain only lowercase letters, digits and '-' (a DNS-1123 label)",
    "field": "name",
    "errors": [{"field": "name", "detail": "name \"Bad_Name\" is invalid: may contain only lowercase letters, digits and '-' (a DNS-1123 label)"}]
}))]
pub struct Problem {
    /// A URN naming the kind of problem (`urn:mcp-gateway:problem:<kind>`); stable, for
    /// programs to branch on.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this request and what to change.
    pub detail: String,
    /// The request field the problem is about (JSON path such as `environmentVariables.1X`, or
    /// a query parameter), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem found, when the request had several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field in the body, or the name of the query parameter.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// Every way a management API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or the query is malformed or fails validation (400).
    #[error("{detail}")]
    Invalid {
        /// Short kind, the last part of the problem `type` URN.
        kind: &'static str,
        detail: String,
        field: Option<String>,
        errors: Vec<FieldError>,
    },
    /// The body is not JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the configured limit (413).
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The caller may not do this (403). Used by auth (issue 6).
    #[error("{0}")]
    Forbidden(String),
    /// No such adapter, or no such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The adapter already exists (409).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` names another revision than the adapter's (412): someone changed it since
    /// the client read it.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The store or the runtime failed (503): the request may be retried.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 about one field.
    pub fn field(kind: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        let (field, detail) = (field.into(), detail.into());
        Self::Invalid {
            kind,
            errors: vec![FieldError {
                field: field.clone(),
                detail: detail.clone(),
            }],
            detail,
            field: Some(field),
        }
    }

    /// A 400 not tied to one field.
    pub fn invalid(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            kind,
            detail: detail.into(),
            field: None,
            errors: Vec::new(),
        }
    }

    /// A 400 listing several field errors (at least one).
    pub fn fields(kind: &'static str, errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| e.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let field = match errors.as_slice() {
            [one] => Some(one.field.clone()),
            _ => None,
        };
        Self::Invalid {
            kind,
            detail,
            field,
            errors,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The problem body of this error.
    pub fn problem(&self) -> Problem {
        let (kind, title) = match self {
            Self::Invalid { kind, .. } => (*kind, title_of(kind)),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge(_) => ("payload-too-large", "Request body too large"),
            Self::Forbidden(_) => ("forbidden", "Forbidden"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::PreconditionFailed(_) => ("precondition-failed", "Precondition failed"),
            Self::Unavailable(_) => ("unavailable", "Service unavailable"),
        };
        let (field, errors) = match self {
            Self::Invalid { field, errors, .. } => (field.clone(), errors.clone()),
            _ => (None, Vec::new()),
        };
        Problem {
            kind: format!("urn:mcp-gateway:problem:{kind}"),
            title: title.to_owned(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            field,
            errors,
        }
    }
}

fn title_of(kind: &str) -> &'static str {
    match kind {
        "invalid-json" => "Malformed JSON body",
        "invalid-adapter" => "Invalid adapter",
        "invalid-query" => "Invalid query parameter",
        "invalid-name" => "Invalid adapter name",
        "name-mismatch" => "Name in body differs from the path",
        "invalid-header" => "Invalid request header",
        _ => "Bad request",
    }
}

impl From<AdapterError> for ApiError {
    fn from(err: AdapterError) -> Self {
        match err {
            AdapterError::Exists(name) => Self::Conflict(format!(
                "adapter \"{name}\" already exists; use PUT /adapters/{name} to change it, or pick another name"
            )),
            AdapterError::Reserved(name) => Self::Conflict(format!(
                "adapter \"{name}\" is declared in the gateway's configuration file and cannot be \
                 created or changed through the API; pick another name"
            )),
            AdapterError::NotFound(name) => {
                Self::NotFound(format!("adapter \"{name}\" does not exist"))
            }
            AdapterError::Invalid(detail) => Self::invalid("invalid-adapter", detail),
            AdapterError::Conflict(detail) => Self::Conflict(detail),
            AdapterError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "management API request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "management API request refused");
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_type_title_status_and_detail() {
        let p = ApiError::field(
            "invalid-adapter",
            "replicaCount",
            "replicaCount 0 is out of range",
        )
        .problem();
        assert_eq!(p.kind, "urn:mcp-gateway:problem:invalid-adapter");
        assert_eq!(p.status, 400);
        assert_eq!(p.field.as_deref(), Some("replicaCount"));
        assert_eq!(p.errors.len(), 1);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "urn:mcp-gateway:problem:invalid-adapter");
    }

    #[test]
    fn adapter_errors_map_to_statuses() {
        let name = mcp_gateway_core::AdapterName::new("a").unwrap();
        assert_eq!(
            ApiError::from(AdapterError::Exists(name.clone())).status(),
            409
        );
        assert_eq!(ApiError::from(AdapterError::NotFound(name)).status(), 404);
        assert_eq!(
            ApiError::from(AdapterError::Invalid("x".into())).status(),
            400
        );
        assert_eq!(
            ApiError::from(AdapterError::Unavailable("x".into())).status(),
            503
        );
    }
}
