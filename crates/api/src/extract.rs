//! Extractors whose every refusal is an [`ApiError`] (so a problem+json body), never axum's
//! plain-text rejections: the caller, the adapter name in the path, the adapter spec in the
//! body, and query strings.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::{StatusCode, header, request::Parts};
use mcp_gateway_core::{AdapterName, AdapterSpec, InvalidName, Principal};
use serde::de::DeserializeOwned;

use crate::ApiState;
use crate::error::ApiError;

/// Who is calling: the [`Principal`] the authentication layer in front inserted as a request
/// extension. Without one the caller is `anonymous` with no roles (which an authorizer, when
/// the state has one, lets do nothing but what every principal may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            Principal::of(&parts.extensions)
                .cloned()
                .unwrap_or_else(|| Principal::anonymous(Vec::new())),
        ))
    }
}

/// The message for a bad adapter name, naming the value and the rule it breaks.
pub(crate) fn name_detail(err: &InvalidName) -> String {
    format!("name {:?} is invalid: {}", err.name, err.reason)
}

/// The `{name}` path segment, validated as a DNS-1123 label.
pub struct AdapterPath(pub AdapterName);

impl<S: Send + Sync> FromRequestParts<S> for AdapterPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(name) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::field("invalid-name", "name", e.body_text()))?;
        AdapterName::new(&name)
            .map(AdapterPath)
            .map_err(|e| ApiError::field("invalid-name", "name", name_detail(&e)))
    }
}

/// A query string, refused as a problem naming the parameter when it does not parse.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let field = e.path().to_string();
                let detail = format!("query parameter {field}: {}", e.inner());
                ApiError::field("invalid-query", field, detail)
            })
    }
}

/// An [`AdapterSpec`] from a JSON body: content type, size, syntax, the name and every field
/// are checked, each refusal naming what to change.
pub struct SpecJson(pub AdapterSpec);

impl FromRequest<ApiState> for SpecJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the adapter as a JSON object with `Content-Type: application/json`".into(),
            ));
        }
        let limit = state.options.max_body_bytes;
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::invalid(
                    "invalid-body",
                    format!("could not read the body: {}", e.body_text()),
                )
            }
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "invalid-json",
                "the request has no body; send the adapter as a JSON object",
            ));
        }
        let mut value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid("invalid-json", format!("body is not valid JSON: {e}"))
        })?;
        drop_server_fields(&mut value)?;
        // The name first, for a message that quotes it (serde's would be less direct).
        if let Some(serde_json::Value::String(name)) = value.get("name")
            && let Err(e) = AdapterName::new(name)
        {
            return Err(ApiError::field("invalid-adapter", "name", name_detail(&e)));
        }
        serde_path_to_error::deserialize(value)
            .map(SpecJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.inner().to_string();
                if path == "." {
                    ApiError::invalid("invalid-adapter", format!("adapter: {msg}"))
                } else {
                    ApiError::field("invalid-adapter", path.clone(), format!("{path}: {msg}"))
                }
            })
    }
}

/// The fields of a returned adapter that the server sets. A client that reads an adapter,
/// changes a field and sends the object back (as microsoft/mcp-gateway's clients do) sends
/// them too: they are ignored, not refused, and `id` must name the adapter the body names.
const SERVER_FIELDS: [&str; 5] = [
    "createdBy",
    "createdByIssuer",
    "createdAt",
    "lastUpdatedAt",
    "revision",
];

fn drop_server_fields(value: &mut serde_json::Value) -> Result<(), ApiError> {
    let Some(object) = value.as_object_mut() else {
        return Ok(());
    };
    for field in SERVER_FIELDS {
        object.remove(field);
    }
    let Some(id) = object.remove("id") else {
        return Ok(());
    };
    let name = object.get("name").and_then(|n| n.as_str());
    match (id.as_str(), name) {
        (Some(id), Some(name)) if id == name => Ok(()),
        (_, None) => Ok(()),
        (_, Some(name)) => Err(ApiError::field(
            "invalid-adapter",
            "id",
            format!(
                "id {id} differs from name \"{name}\": an adapter's id is its name (leave id out, \
                 or give the name)"
            ),
        )),
    }
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let mut h = http::HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), ok, "{ct}");
        }
    }
}
