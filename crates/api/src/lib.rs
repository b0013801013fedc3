//! The management REST API of the MCP gateway: create, list, read, update and delete adapters,
//! read their status and logs, and the OpenAPI document that describes it all.
//!
//! [`router`] builds an axum [`Router`] over three ports of `mcp-gateway-core`: an
//! [`AdapterStore`] (where records live), a [`Provisioner`] (what runs them) and a
//! [`SessionStore`] (for live session counts). It holds no state of its own beyond a lock per
//! adapter name, binds no socket, and knows nothing of a particular runtime. Authentication is
//! not done here: a layer in front (crate `mcp-gateway-auth`) inserts the caller's
//! [`Principal`](mcp_gateway_core::Principal) as a request extension, and
//! [`ApiState::with_authorizer`] decides what it may do (see [`access`] for the rules). Without
//! an authorizer every caller may do everything.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn f(adapters: Arc<dyn mcp_gateway_core::AdapterStore>,
//! #      provisioner: Arc<dyn mcp_gateway_core::Provisioner>,
//! #      sessions: Arc<dyn mcp_gateway_core::SessionStore>) {
//! use mcp_gateway_api::{ApiOptions, ApiState, router};
//! let state = ApiState::new(adapters, provisioner, sessions)
//!     .with_options(ApiOptions { max_body_bytes: 1 << 20, ..ApiOptions::default() });
//! let app: axum::Router = router(state);
//! # }
//! ```

mod access;
pub mod audit;
mod error;
mod extract;
mod handlers;
mod locks;
mod logs;
pub mod openapi;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use mcp_gateway_core::{AdapterStore, Authorizer, Provisioner, SessionStore};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, FieldError, PROBLEM_JSON, Problem};
pub use extract::Caller;
pub use logs::NDJSON;
pub use validate::MAX_REPLICAS;

/// The OpenAPI tag of every operation.
const TAG: &str = "adapters";

/// Settings of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOptions {
    /// Largest accepted request body; larger ones get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Programs a principal without the admin role may set as an adapter's `command` (matched
    /// against the whole `command` value), each with the environment variables it may be
    /// given. Empty (the default): only admins set commands, since a command runs on the
    /// gateway's host. A listed program is trusted with any `args`.
    pub allowed_commands: Vec<AllowedCommand>,
    /// Images a principal without the admin role may run (`imageName`, before the runtime adds
    /// its registry prefix): an exact name (`ghcr.io/acme/github-server`), or a prefix ending in
    /// `*` (`ghcr.io/acme/*`). Empty (the default): any image, as in microsoft/mcp-gateway. Every
    /// tag of a listed image is allowed.
    pub allowed_images: Vec<String>,
}

/// Whether `image` is one of `allowed`'s: equal to an entry, or starting with an entry's text
/// before its trailing `*`.
pub fn image_allowed(allowed: &[String], image: &str) -> bool {
    allowed
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == pattern,
        })
}

/// A program non-admins may run as an adapter, and the only environment variable names they
/// may set for it (admins may set any).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedCommand {
    /// The whole `command` value, e.g. `/opt/mcp/bin/github-server`.
    pub command: String,
    /// Variable names (exact, case-sensitive), e.g. `["GITHUB_TOKEN", "LOG_LEVEL"]`. Default:
    /// none.
    #[serde(default)]
    pub env: Vec<String>,
}

impl AllowedCommand {
    /// `command`, with no environment variables for non-admins.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            env: Vec::new(),
        }
    }

    /// With these variable names allowed.
    pub fn with_env(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.env = names.into_iter().map(Into::into).collect();
        self
    }
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            allowed_commands: Vec::new(),
            allowed_images: Vec::new(),
        }
    }
}

/// What the handlers share: the ports and the options.
#[derive(Clone)]
pub struct ApiState {
    /// Where adapter records are kept.
    pub adapters: Arc<dyn AdapterStore>,
    /// What deploys them and reports on them.
    pub provisioner: Arc<dyn Provisioner>,
    /// The data plane's session store, read for live sessions per replica.
    pub sessions: Arc<dyn SessionStore>,
    pub options: ApiOptions,
    /// Who may do what; `None`: everyone may do everything (a gateway without auth).
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Where management changes are recorded; `None`: nowhere.
    pub audit: Option<Arc<dyn mcp_gateway_core::AuditSink>>,
    locks: locks::NameLocks,
}

impl ApiState {
    /// State with default [`ApiOptions`].
    pub fn new(
        adapters: Arc<dyn AdapterStore>,
        provisioner: Arc<dyn Provisioner>,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        Self {
            adapters,
            provisioner,
            sessions,
            options: ApiOptions::default(),
            authorizer: None,
            audit: None,
            locks: locks::NameLocks::default(),
        }
    }

    /// Checks every request against `authorizer` (see [`access`] for the rules).
    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Records every create, update and delete, allowed or refused (see [`audit`]).
    pub fn with_audit(mut self, sink: Arc<dyn mcp_gateway_core::AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    pub fn with_options(mut self, options: ApiOptions) -> Self {
        self.options = options;
        self
    }
}

/// The management API: `/adapters…` and `/openapi.json`. Unknown paths get 404 and wrong
/// methods 405, both as problem+json.
pub fn router(state: ApiState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .with_state(state)
}

/// Every route with its OpenAPI description: the one place both the router and the document
/// come from.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::create_adapter, handlers::list_adapters))
        .routes(routes!(
            handlers::get_adapter,
            handlers::update_adapter,
            handlers::delete_adapter
        ))
        .routes(routes!(handlers::adapter_status))
        .routes(routes!(handlers::adapter_logs))
        .routes(routes!(handlers::openapi_json))
}
