//! What a caller may do through the API.
//!
//! The [`Authorizer`](mcp_gateway_core::Authorizer) decides per adapter: reading (list, get,
//! status) needs [`Action::Read`], updating, deleting and reading logs need [`Action::Write`]
//! (logs show what a server printed, environment and requests included, so they are the
//! owner's), creating needs [`may_create`](mcp_gateway_core::Authorizer::may_create).
//!
//! Some fields act on the gateway's host and network rather than on the adapter alone, so only
//! admins may set them, on create and on update alike:
//! - `command`: runs a program on the gateway's host (unless listed in
//!   [`ApiOptions::allowed_commands`](crate::ApiOptions::allowed_commands));
//! - `upstreams`: makes the gateway send requests to any address it can reach;
//! - `upstreamHeaders`: reads the gateway's secrets;
//! - `useWorkloadIdentity`: gives replicas the cluster identity.

use mcp_gateway_core::{Action, Adapter, AdapterSpec, Principal};

use crate::ApiState;
use crate::error::ApiError;

impl ApiState {
    /// Whether `caller` may do `action` with `adapter`.
    pub(crate) fn allows(&self, caller: &Principal, adapter: &Adapter, action: Action) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.allows(caller, &adapter.access(), action))
    }

    /// `Ok` when `caller` may do `action` with `adapter`, else 403 saying why.
    pub(crate) fn require(
        &self,
        caller: &Principal,
        adapter: &Adapter,
        action: Action,
    ) -> Result<(), ApiError> {
        if self.allows(caller, adapter, action) {
            return Ok(());
        }
        tracing::info!(principal = %caller, adapter = %adapter.spec.name, action = action.as_str(), "refused");
        let why = match action {
            Action::Read | Action::Use => format!(
                "it needs one of the roles {:?}, or to be its creator or an admin",
                adapter.spec.required_roles
            ),
            Action::Write => "only its creator or an admin may change it or read its logs".into(),
        };
        Err(ApiError::Forbidden(format!(
            "{} may not {} adapter \"{}\": {why}",
            caller.subject,
            action.as_str(),
            adapter.spec.name
        )))
    }

    pub(crate) fn require_create(&self, caller: &Principal) -> Result<(), ApiError> {
        match &self.authorizer {
            Some(a) if !a.may_create(caller) => Err(ApiError::Forbidden(format!(
                "{} may not create adapters: it lacks the creator role",
                caller.subject
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a spec setting fields only admins may set.
    pub(crate) fn require_privileged_fields(
        &self,
        caller: &Principal,
        spec: &AdapterSpec,
    ) -> Result<(), ApiError> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        if authorizer.is_admin(caller) {
            return Ok(());
        }
        let field = if spec
            .command
            .as_ref()
            .is_some_and(|c| !self.options.allowed_commands.iter().any(|a| a == c))
        {
            Some((
                "command",
                "it runs a program on the gateway's host; the operator may allow programs with \
                 allowed_commands",
            ))
        } else if !spec.upstreams.is_empty() {
            Some((
                "upstreams",
                "they make the gateway send requests to any address it can reach",
            ))
        } else if !spec.upstream_headers.is_empty() {
            Some(("upstreamHeaders", "they read the gateway's secrets"))
        } else if spec.use_workload_identity {
            Some((
                "useWorkloadIdentity",
                "it gives replicas the cluster's identity",
            ))
        } else {
            None
        };
        match field {
            Some((field, why)) => Err(ApiError::Forbidden(format!(
                "{} may not set {field}: only admins may ({why})",
                caller.subject
            ))),
            None => Ok(()),
        }
    }
}
