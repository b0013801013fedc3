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
//!   [`ApiOptions::allowed_commands`](crate::ApiOptions::allowed_commands)); with a command,
//!   any environment variable its entry does not list. An allowlist, not a denylist of
//!   "dangerous" names: too many variables make some program load other code
//!   (`LD_PRELOAD`, `NODE_OPTIONS`, `JDK_JAVA_OPTIONS`, `GIT_CONFIG_*`, `LUA_INIT`, `HOME`…)
//!   for any list of them to be complete;
//! - `upstreams`: makes the gateway send requests to any address it can reach;
//! - `upstreamHeaders`: reads the gateway's secrets;
//! - `useWorkloadIdentity`: gives replicas the cluster identity.

use mcp_gateway_core::{Action, Adapter, AdapterSpec, Principal};

use crate::ApiState;
use crate::error::ApiError;

/// What a caller who may read an adapter but not change it sees instead of each
/// `environmentVariables` value: the names stay, the values (secrets, often) do not.
pub const REDACTED: &str = "***";

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
        tracing::info!(principal = %caller, adapter = %adapter.spec.name, action = action.as_str(),
            required_roles = ?adapter.spec.required_roles, "refused");
        // The adapter's roles are logged, not told: a caller without rights learns no more.
        let why = match action {
            Action::Read | Action::Use => "ask its owner or an admin for access",
            Action::Write => "only its creator or an admin may change it or read its logs",
        };
        Err(ApiError::Forbidden(format!(
            "{} may not {} adapter \"{}\": {why}",
            caller.subject,
            action.as_str(),
            adapter.spec.name
        )))
    }

    /// The adapter as `caller` may see it: whole for its creator and admins (who may change
    /// it, and so already know its secrets), with every `environmentVariables` value replaced
    /// by [`REDACTED`] for everyone else.
    pub(crate) fn shown(&self, caller: &Principal, mut adapter: Adapter) -> Adapter {
        if !self.allows(caller, &adapter, Action::Write) {
            for value in adapter.spec.environment_variables.values_mut() {
                REDACTED.clone_into(value);
            }
        }
        adapter
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
        let allowed = spec.command.as_ref().and_then(|c| {
            self.options
                .allowed_commands
                .iter()
                .find(|a| a.command == *c)
        });
        if let Some(allowed) = allowed
            && let Some(var) = spec
                .environment_variables
                .keys()
                .find(|k| !allowed.env.contains(k))
        {
            let listed = if allowed.env.is_empty() {
                "it lists none for this command".to_owned()
            } else {
                format!("it lists only {} for this command", allowed.env.join(", "))
            };
            return Err(ApiError::Forbidden(format!(
                "{} may not set environmentVariables.{var}: with a command, only admins may set \
                 variables the operator did not allow in allowed_commands ({listed}), since a \
                 variable can change which code the command loads",
                caller.subject
            )));
        }
        if let Some(image) = &spec.image_name
            && !self.options.allowed_images.is_empty()
            && !crate::image_allowed(&self.options.allowed_images, image)
        {
            return Err(ApiError::Forbidden(format!(
                "{} may not run image \"{image}\": the operator allows only {} (allowed_images); \
                 ask an admin to deploy it or to allow it",
                caller.subject,
                self.options.allowed_images.join(", ")
            )));
        }
        let field = if spec.command.as_ref().is_some_and(|_| allowed.is_none()) {
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
