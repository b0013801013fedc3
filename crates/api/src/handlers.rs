//! The handlers of the management API, one per endpoint, each documented for the OpenAPI
//! document with `#[utoipa::path]`.
//!
//! Every change follows the same order so a refused request changes nothing: parse and check
//! the body (extractors, [`check_spec`]), ask the runtime ([`Provisioner::validate`]), store
//! the record, deploy it; when deploying fails the record is put back as it was.
//!
//! [`Provisioner::validate`]: mcp_gateway_core::Provisioner::validate

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mcp_gateway_core::{Action, Adapter, AdapterError, AdapterName, AdapterStatus, rfc3339};

use crate::error::{ApiError, Problem};
use crate::extract::{AdapterPath, Caller, Query, SpecJson};
use crate::logs::{self, LogsParams};
use crate::validate::check_spec;
use crate::{ApiState, TAG};

/// Create and deploy an adapter.
///
/// The adapter is checked, stored with `createdBy` set to the caller, then deployed. If the
/// deployment fails, nothing is left behind (the record is deleted again) and the error is
/// returned.
#[utoipa::path(
    post,
    path = "/adapters",
    tag = TAG,
    operation_id = "createAdapter",
    request_body(content = mcp_gateway_core::AdapterSpec, content_type = "application/json"),
    responses(
        (status = 201, description = "Created and deployed", body = Adapter,
            headers(("Location" = String, description = "URL of the new adapter"),
                ("ETag" = String, description = "The adapter's revision, for `If-Match`"))),
        (status = 400, description = "Malformed JSON, unknown field, or an invalid value", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An adapter with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the configured limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the runtime failed; nothing was changed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_adapter(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    SpecJson(spec): SpecJson,
) -> Result<Response, ApiError> {
    state.require_create(&caller)?;
    state.require_privileged_fields(&caller, &spec)?;
    check_spec(&spec)?;
    state.provisioner.validate(&spec)?;
    let name = spec.name.clone();
    let adapter = to_completion(async move {
        let _guard = state.locks.lock(&name).await;
        let now = rfc3339(SystemTime::now());
        let mut adapter = Adapter {
            spec,
            created_by: caller.subject,
            created_by_issuer: caller.issuer,
            created_at: now.clone(),
            last_updated_at: now,
            revision: None,
        };
        adapter.revision = Some(state.adapters.create(&adapter).await?);
        if let Err(err) = state.provisioner.apply(&adapter).await {
            tracing::warn!(adapter = %name, error = %err, "deploying a new adapter failed; removing it");
            if let Err(e) = state.provisioner.remove(&name).await {
                tracing::warn!(adapter = %name, error = %e, "cleaning up a failed deployment failed");
            }
            if let Err(e) = state.adapters.delete(&name).await {
                tracing::error!(adapter = %name, error = %e, "deleting the record of a failed deployment failed");
            }
            return Err(deploy_error(&name, err));
        }
        Ok(adapter)
    })
    .await?;
    let name = &adapter.spec.name;
    let location = HeaderValue::try_from(format!("/adapters/{name}"))
        .map_err(|_| ApiError::invalid("invalid-name", "name cannot appear in a URL"))?;
    let mut response = (StatusCode::CREATED, Resource::of(adapter)).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// List adapters, sorted by name.
#[utoipa::path(
    get,
    path = "/adapters",
    tag = TAG,
    operation_id = "listAdapters",
    responses(
        (status = 200, description = "Every adapter the caller may read", body = Vec<Adapter>),
        (status = 503, description = "The store failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_adapters(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<Resource>>, ApiError> {
    let adapters = state.adapters.list().await?;
    Ok(Json(
        adapters
            .into_iter()
            .filter(|a| state.allows(&caller, a, Action::Read))
            .map(|a| Resource::of(state.shown(&caller, a)))
            .collect(),
    ))
}

/// One adapter.
#[utoipa::path(
    get,
    path = "/adapters/{name}",
    tag = TAG,
    operation_id = "getAdapter",
    params(("name" = String, Path, description = "Adapter name (DNS-1123 label)")),
    responses(
        (status = 200, description = "The adapter", body = Adapter,
            headers(("ETag" = String, description = "The adapter's revision, for `If-Match`"))),
        (status = 400, description = "The name is not a DNS-1123 label", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_adapter(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    AdapterPath(name): AdapterPath,
) -> Result<Resource, ApiError> {
    let adapter = existing(&state, &name).await?;
    state.require(&caller, &adapter, Action::Read)?;
    Ok(Resource::of(state.shown(&caller, adapter)))
}

/// Replace an adapter's spec and roll the change out.
///
/// `createdBy` and `createdAt` are kept, `lastUpdatedAt` is set. The body's `name` must be the
/// path's. Answers once the roll-out is done (the new spec's replicas are ready); if it fails
/// (a new replica keeps crashing, or is not ready in time), the previous spec is stored and
/// applied again and the answer says why. The change runs to its end even if the client
/// hangs up.
///
/// With `If-Match` (the `ETag` of a GET), the adapter is changed only if it is still at that
/// revision (412 otherwise); without it, only if nobody changed it between this request's
/// read and its write (409 otherwise: several management replicas may write at once).
#[utoipa::path(
    put,
    path = "/adapters/{name}",
    tag = TAG,
    operation_id = "updateAdapter",
    params(("name" = String, Path, description = "Adapter name (DNS-1123 label)"),
        ("If-Match" = Option<String>, Header, description = "Change it only if its `ETag` is this one (or `*`: if it exists)")),
    request_body(content = mcp_gateway_core::AdapterSpec, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated and rolled out: the new spec's replicas are ready", body = Adapter,
            headers(("ETag" = String, description = "The adapter's new revision"))),
        (status = 400, description = "Malformed JSON, unknown field, an invalid value, a `name` other than the path's, or a spec whose replicas keep crashing (the previous spec is back)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed by someone else between this request's read and its write; nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision: changed since the client read it; nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the configured limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the runtime failed, or the new replicas were not ready in time; the previous spec is back", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_adapter(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    AdapterPath(name): AdapterPath,
    headers: HeaderMap,
    SpecJson(spec): SpecJson,
) -> Result<Resource, ApiError> {
    let if_match = IfMatch::of(&headers)?;
    state.require(&caller, &existing(&state, &name).await?, Action::Write)?;
    state.require_privileged_fields(&caller, &spec)?;
    if spec.name != name {
        return Err(ApiError::field(
            "name-mismatch",
            "name",
            format!(
                "the body's name \"{}\" differs from the path's \"{name}\"; an adapter cannot be renamed (create a new one and delete this one)",
                spec.name
            ),
        ));
    }
    check_spec(&spec)?;
    state.provisioner.validate(&spec)?;
    to_completion(async move {
        let _guard = state.locks.lock(&name).await;
        let previous = existing(&state, &name).await?;
        // Checked again under the lock: the record may have changed hands meanwhile.
        state.require(&caller, &previous, Action::Write)?;
        if_match.check(&name, &previous)?;
        let mut adapter = Adapter {
            spec,
            created_by: previous.created_by.clone(),
            created_by_issuer: previous.created_by_issuer.clone(),
            created_at: previous.created_at.clone(),
            last_updated_at: rfc3339(SystemTime::now()),
            // The write's precondition: the record is still the one just read (another
            // management replica may be writing it too).
            revision: previous.revision.clone(),
        };
        let revision = state
            .adapters
            .update(&adapter)
            .await
            .map_err(|e| if_match.stale(e))?;
        adapter.revision = Some(revision.clone());
        if let Err(err) = state.provisioner.apply(&adapter).await {
            tracing::warn!(adapter = %name, error = %err, "rolling out an update failed; restoring the previous spec");
            let mut previous = previous;
            previous.revision = Some(revision);
            if let Err(e) = state.adapters.update(&previous).await {
                tracing::error!(adapter = %name, error = %e, "restoring the previous record failed");
            }
            if let Err(e) = state.provisioner.apply(&previous).await {
                tracing::error!(adapter = %name, error = %e, "re-applying the previous spec failed");
            }
            return Err(rollout_error(&name, err));
        }
        Ok(Resource::of(adapter))
    })
    .await
}

/// Delete an adapter and everything deployed for it.
///
/// With `If-Match`, only if the adapter is still at that revision when this request reads it.
#[utoipa::path(
    delete,
    path = "/adapters/{name}",
    tag = TAG,
    operation_id = "deleteAdapter",
    params(("name" = String, Path, description = "Adapter name (DNS-1123 label)"),
        ("If-Match" = Option<String>, Header, description = "Delete it only if its `ETag` is this one")),
    responses(
        (status = 204, description = "Deleted; its replicas are stopped"),
        (status = 400, description = "The name is not a DNS-1123 label", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision; nothing was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The runtime could not stop it; the record stays, retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_adapter(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    AdapterPath(name): AdapterPath,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let if_match = IfMatch::of(&headers)?;
    to_completion(async move {
        let _guard = state.locks.lock(&name).await;
        let adapter = existing(&state, &name).await?;
        state.require(&caller, &adapter, Action::Write)?;
        if_match.check(&name, &adapter)?;
        // Stop first: if that fails the record stays, so the DELETE can be retried.
        match state.provisioner.remove(&name).await {
            Ok(()) | Err(AdapterError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        state.adapters.delete(&name).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Desired and ready replicas, each replica's state and live sessions.
#[utoipa::path(
    get,
    path = "/adapters/{name}/status",
    tag = TAG,
    operation_id = "getAdapterStatus",
    params(("name" = String, Path, description = "Adapter name (DNS-1123 label)")),
    responses(
        (status = 200, description = "The adapter's status", body = AdapterStatus),
        (status = 400, description = "The name is not a DNS-1123 label", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the runtime failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn adapter_status(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    AdapterPath(name): AdapterPath,
) -> Result<Json<AdapterStatus>, ApiError> {
    state.require(&caller, &existing(&state, &name).await?, Action::Read)?;
    let mut status = state.provisioner.status(&name).await?;
    match state.sessions.live_sessions(&name).await {
        Ok(live) => {
            // Session records name replica ids that begin with the ordinal: "1", or "1.G.I"
            // in the local runtime (G-th process of the ordinal, deployment I); all count for
            // ordinal 1.
            for replica in &mut status.replicas {
                // A runtime that names the replica's id (Kubernetes: `<pod>@<uid>`) is
                // matched exactly.
                if let Some(id) = &replica.id {
                    replica.live_sessions = live.get(id.as_str()).copied().unwrap_or(0);
                    continue;
                }
                let index = replica.index.to_string();
                replica.live_sessions = live
                    .iter()
                    .filter(|(id, _)| id.split('.').next() == Some(index.as_str()))
                    .map(|(_, n)| n)
                    .sum();
            }
        }
        // A degraded session store should not hide the replicas: keep the runtime's counts.
        Err(err) => {
            tracing::warn!(adapter = %name, error = %err, "live sessions unavailable for status")
        }
    }
    Ok(Json(status))
}

/// Lines the adapter's replicas wrote to stdout and stderr.
///
/// `text/plain` by default (one line per log line, prefixed with `[N] ` unless one replica is
/// selected); `application/x-ndjson` (one `LogLine` object per line) when `Accept` asks for
/// it. With `follow=true` the response stays open and lines arrive as they are written.
#[utoipa::path(
    get,
    path = "/adapters/{name}/logs",
    tag = TAG,
    operation_id = "getAdapterLogs",
    params(("name" = String, Path, description = "Adapter name (DNS-1123 label)"), LogsParams),
    responses(
        (status = 200, description = "Log lines",
            content(
                (String = "text/plain"),
                (mcp_gateway_core::LogLine = "application/x-ndjson"),
            )),
        (status = 400, description = "A bad name or query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter (or replica)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the runtime failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn adapter_logs(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    AdapterPath(name): AdapterPath,
    Query(params): Query<LogsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.require(&caller, &existing(&state, &name).await?, Action::Write)?;
    let query = params.to_query(SystemTime::now())?;
    let lines = state.provisioner.logs(&name, query.clone()).await?;
    Ok(logs::response(&headers, &query, lines))
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = TAG,
    operation_id = "getOpenApi",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
}

/// Answers unknown routes.
pub async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}; see GET /openapi.json", uri.path()))
}

/// Answers known routes with another method.
pub async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; see GET /openapi.json for the methods it takes",
        uri.path()
    ))
}

/// An adapter as the API returns it: `id` (its name: microsoft/mcp-gateway's resources carry
/// one, and its clients key on it), then the record's fields.
#[derive(Debug, serde::Serialize)]
pub struct Resource {
    id: AdapterName,
    #[serde(flatten)]
    adapter: Adapter,
}

impl Resource {
    fn of(adapter: Adapter) -> Self {
        Self {
            id: adapter.spec.name.clone(),
            adapter,
        }
    }
}

/// One adapter answers with its revision as the `ETag`.
impl IntoResponse for Resource {
    fn into_response(self) -> Response {
        let etag = self
            .adapter
            .revision
            .as_deref()
            .and_then(|r| HeaderValue::try_from(format!("\"{r}\"")).ok());
        let mut response = Json(self).into_response();
        if let Some(etag) = etag {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response
    }
}

/// A request's `If-Match` (RFC 9110 13.1.1): `*`, or a list of entity tags compared strongly
/// with the adapter's revision.
#[derive(Debug)]
enum IfMatch {
    Absent,
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut tags = Vec::new();
        let mut any = false;
        for value in headers.get_all(header::IF_MATCH) {
            let value = value.to_str().map_err(|_| {
                ApiError::invalid("invalid-header", "If-Match is not visible ASCII")
            })?;
            for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    any = true;
                } else if let Some(weak) = tag.strip_prefix("W/") {
                    // A weak tag never matches strongly (RFC 9110 8.8.3.2); kept so the
                    // answer is 412 rather than a change the client did not mean.
                    tags.push(format!("W/{weak}"));
                } else if tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"') {
                    tags.push(tag[1..tag.len() - 1].to_owned());
                } else {
                    return Err(ApiError::invalid(
                        "invalid-header",
                        format!(
                            "If-Match {tag:?} is not an entity tag: send the ETag of a GET as it \
                             came (with its quotes), or *"
                        ),
                    ));
                }
            }
        }
        Ok(match (any, tags.is_empty()) {
            (true, _) => Self::Any,
            (false, true) => Self::Absent,
            (false, false) => Self::Tags(tags),
        })
    }

    /// 412 unless `adapter` is at a revision this precondition names.
    fn check(&self, name: &AdapterName, adapter: &Adapter) -> Result<(), ApiError> {
        let Self::Tags(tags) = self else {
            return Ok(());
        };
        let current = adapter.revision.as_deref().unwrap_or_default();
        if tags.iter().any(|t| t == current) {
            return Ok(());
        }
        Err(ApiError::PreconditionFailed(format!(
            "adapter \"{name}\" is at revision \"{current}\", not {}: it was changed since you \
             read it; GET it again, re-apply your change and send its new ETag",
            tags.iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// A store's refusal of a stale write: 412 when the client named a revision (it read an
    /// older one than the store has), else the store's 409.
    fn stale(&self, err: AdapterError) -> ApiError {
        match (self, err) {
            (Self::Tags(_), AdapterError::Conflict(detail)) => ApiError::PreconditionFailed(detail),
            (_, err) => err.into(),
        }
    }
}

/// The stored adapter, or 404.
async fn existing(state: &ApiState, name: &AdapterName) -> Result<Adapter, ApiError> {
    state
        .adapters
        .get(name)
        .await?
        .ok_or_else(|| AdapterError::NotFound(name.clone()).into())
}

/// Runs a change (store, deploy, and the compensation of a failure) to its end in a task of
/// its own. Hyper drops a handler whose client went away; a change dropped halfway (record
/// stored, deployment taken down and not replaced, rollback never run) would leave the
/// adapter broken, so the handler only waits for the task.
async fn to_completion<T: Send + 'static>(
    change: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change)
        .await
        .unwrap_or_else(|e| Err(ApiError::Unavailable(format!("the change failed: {e}"))))
}

/// A failed roll-out as the client sees it: the runtime's words; the previous spec is back.
fn rollout_error(name: &AdapterName, err: AdapterError) -> ApiError {
    match err {
        AdapterError::Invalid(detail) => ApiError::invalid(
            "invalid-adapter",
            format!(
                "adapter \"{name}\" was not changed: {detail}; the previous spec is stored and \
                 running again"
            ),
        ),
        other => ApiError::Unavailable(format!(
            "adapter \"{name}\" was not changed: {other}; the previous spec is stored and \
             running again"
        )),
    }
}

/// A deployment failure as the client sees it: the runtime's own words, saying nothing changed.
fn deploy_error(name: &AdapterName, err: AdapterError) -> ApiError {
    match err {
        AdapterError::Invalid(detail) => ApiError::invalid(
            "invalid-adapter",
            format!("adapter \"{name}\" could not be deployed: {detail}"),
        ),
        other => ApiError::Unavailable(format!(
            "adapter \"{name}\" could not be deployed, nothing was changed: {other}"
        )),
    }
}
