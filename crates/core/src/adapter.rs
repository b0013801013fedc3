//! Adapters as the management API sees them, and the ports that keep and deploy them.
//!
//! The resource keeps the field names of microsoft/mcp-gateway's API (`name`, `imageName`,
//! `imageVersion`, `environmentVariables`, `replicaCount`, `description`,
//! `useWorkloadIdentity`, `requiredRoles`; server-set `createdBy`, `createdAt`,
//! `lastUpdatedAt`) so its clients work unchanged, and adds what a local runtime and servers
//! deployed elsewhere need (`command`, `args`, `transport`, `port`, `path`, `upstreams`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::AdapterName;

/// How the adapter's server speaks MCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Streamable HTTP (and, usually, legacy HTTP+SSE) on `port` at `path`.
    #[default]
    StreamableHttp,
    /// Legacy HTTP+SSE only (2024-11-05) on `port` at `path`.
    Sse,
    /// Newline-delimited JSON-RPC on stdin/stdout; the gateway bridges it to HTTP, one process
    /// per MCP session.
    Stdio,
}

/// What a client sends to create or replace an adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdapterSpec {
    /// DNS-1123 label: lowercase letters, digits and '-', at most 63 characters.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", example = "everything"))]
    pub name: AdapterName,
    /// Container image (Kubernetes runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Container image tag (Kubernetes runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Environment of every replica. Only its creator and admins read the values back; other
    /// readers get each value as `***`.
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
    /// Desired replicas (1 to 50).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 50, default = 1))]
    #[serde(default = "one")]
    pub replica_count: u32,
    #[serde(default)]
    pub description: String,
    /// Run replicas with the cluster's workload identity (Kubernetes; admin only).
    #[serde(default)]
    pub use_workload_identity: bool,
    /// Roles any of which lets a principal read and use the adapter.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Program to run (local runtime). `{port}` in `args` is replaced by the replica's port,
    /// which is also given as the `PORT` environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub transport: Transport,
    /// Port the server listens on (Kubernetes runtime; the local runtime picks free ports).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The server's MCP endpoint path (default `/mcp`, or `/sse` for the `sse` transport).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r#"^/[!-"$->@-~]*$"#, example = "/mcp")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Base URLs of servers deployed elsewhere, one per replica: nothing is run, the gateway
    /// fronts them.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Headers the gateway adds to every request it sends to the replicas (credentials of
    /// servers deployed elsewhere), each read from a secret of the gateway's host: an
    /// environment variable of the gateway or a file. Values never appear in the resource.
    /// Setting them needs the admin role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_headers: BTreeMap<String, SecretRef>,
}

/// Where the gateway reads a secret value from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable of the gateway process.
    Env(String),
    /// A file on the gateway's host (trailing newlines are trimmed).
    File(String),
}

fn one() -> u32 {
    1
}

impl AdapterSpec {
    /// The MCP endpoint path of the replicas.
    pub fn mcp_path(&self) -> &str {
        match (&self.path, self.transport) {
            (Some(p), _) => p,
            (None, Transport::Sse) => "/sse",
            (None, _) => "/mcp",
        }
    }
}

/// An adapter as stored and returned by the API: the spec plus server-set fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Adapter {
    #[serde(flatten)]
    pub spec: AdapterSpec,
    /// Subject of the principal that created it.
    pub created_by: String,
    /// Issuer of that principal (the token's `iss`, or `api-key`), so a namesake from another
    /// issuer is not the creator. Absent on records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by_issuer: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub last_updated_at: String,
    /// Changes whenever the adapter is changed (the local store counts writes; on Kubernetes it
    /// is the `McpAdapter`'s `metadata.generation`). The API sends it as the `ETag`; a client
    /// that sends it back in `If-Match` changes the adapter only if nobody did since it read it.
    /// Given to [`AdapterStore::update`], it is the precondition of the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl Adapter {
    /// Who may do what with it.
    pub fn access(&self) -> crate::AdapterAccess {
        crate::AdapterAccess {
            created_by: Some(self.created_by.clone()),
            created_by_issuer: self.created_by_issuer.clone(),
            required_roles: self.spec.required_roles.clone(),
        }
    }
}

/// Errors of adapter stores and provisioners.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter {0} already exists")]
    Exists(AdapterName),
    /// The name belongs to an adapter of the gateway's configuration file.
    #[error("adapter {0} is declared in the gateway's configuration file")]
    Reserved(AdapterName),
    #[error("adapter {0} does not exist")]
    NotFound(AdapterName),
    #[error("invalid adapter: {0}")]
    Invalid(String),
    /// Changed by someone else since it was read (optimistic concurrency).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Port: where adapter records are kept (files of the data directory; the Kubernetes cluster).
#[async_trait::async_trait]
pub trait AdapterStore: Send + Sync + 'static {
    /// All adapters, sorted by name.
    async fn list(&self) -> Result<Vec<Adapter>, AdapterError>;
    async fn get(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError>;
    /// Fails with [`AdapterError::Exists`] if the name is taken. Returns the new record's
    /// revision (the `revision` given is ignored).
    async fn create(&self, adapter: &Adapter) -> Result<String, AdapterError>;
    /// Fails with [`AdapterError::NotFound`] if there is no such adapter. When
    /// `adapter.revision` is set, the write happens only if the stored record still has that
    /// revision, atomically with the check (else [`AdapterError::Conflict`]): several
    /// management replicas may write at once. Returns the new revision.
    async fn update(&self, adapter: &Adapter) -> Result<String, AdapterError>;
    /// Returns the removed adapter, if there was one.
    async fn delete(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError>;
}

/// State of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Started, not answering on its MCP endpoint yet.
    Starting,
    Ready,
    /// Being replaced or removed: takes no new sessions.
    Draining,
    /// Exited; restarted after a backoff.
    Crashed,
    /// Fronted server (upstreams): not run by the gateway.
    External,
}

/// One replica in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replica ordinal.
    pub index: u32,
    /// Its id in session records, when the runtime names it (Kubernetes: `<pod>@<uid>`); the
    /// live sessions of the replica are those of this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub state: ReplicaState,
    /// Where it listens, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Exit code of the last exit, for a crashed replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub live_sessions: u64,
    /// Why it is not ready, when the runtime knows (`ImagePullBackOff`, `CrashLoopBackOff`,
    /// `Unschedulable`, `Terminating`, `Draining`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What `GET /adapters/{name}/status` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AdapterStatus {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub name: AdapterName,
    /// Desired replicas.
    pub replica_count: u32,
    /// Replicas that serve the latest spec and answer.
    pub ready_replicas: u32,
    /// Replicas started from the latest spec, ready or not (microsoft/mcp-gateway's field,
    /// as in a StatefulSet's status).
    pub updated_replicas: u32,
    /// Replicas available to new sessions: here the same as `readyReplicas` (microsoft/mcp-gateway's
    /// field).
    pub available_replicas: u32,
    /// What the replicas run: `imageName:imageVersion`, else the command, else `Unknown`
    /// (microsoft/mcp-gateway's field).
    pub image: String,
    /// `Healthy` when `readyReplicas` equals `replicaCount`, else `Degraded: R/N ready`
    /// (microsoft/mcp-gateway's field and wording).
    pub replica_status: String,
    pub replicas: Vec<ReplicaStatus>,
}

impl AdapterStatus {
    /// `Healthy`, or `Degraded: {ready}/{desired} ready`.
    pub fn health(ready: u32, desired: u32) -> String {
        if ready == desired {
            "Healthy".to_owned()
        } else {
            format!("Degraded: {ready}/{desired} ready")
        }
    }

    /// The `image` of a spec: `imageName:imageVersion`, else the command, else `Unknown`.
    pub fn image_of(spec: &AdapterSpec) -> String {
        match (&spec.image_name, &spec.image_version, &spec.command) {
            (Some(name), Some(version), _) => format!("{name}:{version}"),
            (Some(name), None, _) => name.clone(),
            (None, _, Some(command)) => command.clone(),
            (None, _, None) => "Unknown".to_owned(),
        }
    }
}

/// Which log lines to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only this replica (default: all).
    pub replica: Option<u32>,
    /// Only the last N lines (per the selection).
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Keep the stream open and send new lines as they are written.
    pub follow: bool,
    /// The previous instance's lines (a container that restarted; Kubernetes runtime).
    pub previous: bool,
}

/// One line a replica wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub replica: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339.
    pub time: String,
    pub line: String,
}

/// A stream of log lines (ends unless the query follows).
pub type LogStream = Pin<Box<dyn futures_core::Stream<Item = LogLine> + Send>>;

/// Port: deploys adapters and reports on them (local processes; Kubernetes).
///
/// `apply` is idempotent: called with a new adapter it deploys it (and returns once it is
/// started), with a changed one it rolls the change out replica by replica and returns once the
/// roll-out is done, with an error when it fails or takes too long (the caller then applies
/// the previous adapter again); `remove` stops everything deployed for it. A runtime
/// keeps the data plane's [`ReplicaResolver`](crate::ReplicaResolver) current itself.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Checks what only the runtime can check (a command exists, an image is given) before
    /// anything is stored, so a refused request changes nothing.
    fn validate(&self, spec: &AdapterSpec) -> Result<(), AdapterError>;
    async fn apply(&self, adapter: &Adapter) -> Result<(), AdapterError>;
    async fn remove(&self, name: &AdapterName) -> Result<(), AdapterError>;
    async fn status(&self, name: &AdapterName) -> Result<AdapterStatus, AdapterError>;
    async fn logs(&self, name: &AdapterName, query: LogQuery) -> Result<LogStream, AdapterError>;
}

/// RFC 3339 (UTC, seconds) of a time, as the API shows times.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_764_000_000)),
            "2025-11-24T16:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn specs_use_the_anchor_field_names_and_refuse_unknown_fields() {
        let spec: AdapterSpec = serde_json::from_str(
            r#"{"name":"x","imageName":"img","imageVersion":"1","environmentVariables":{"A":"b"},
                "replicaCount":2,"description":"d","useWorkloadIdentity":false,"requiredRoles":["r"]}"#,
        )
        .unwrap();
        assert_eq!(spec.replica_count, 2);
        assert_eq!(spec.transport, Transport::StreamableHttp);
        assert_eq!(spec.mcp_path(), "/mcp");
        let err = serde_json::from_str::<AdapterSpec>(r#"{"name":"x","replicas":2}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `replicas`"),
            "{err}"
        );
        let spec: AdapterSpec =
            serde_json::from_str(r#"{"name":"x","transport":"stdio","command":"npx"}"#).unwrap();
        assert_eq!(spec.transport, Transport::Stdio);
        assert_eq!(spec.replica_count, 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary JSON bodies (of the API's create and update requests) never panic the spec
        /// parser: they are a spec or an error saying what is wrong.
        #[test]
        fn adapter_specs_from_arbitrary_json_never_panic(text in "[{}\\[\\]\":,a-zA-Z0-9 ._/-]{0,200}") {
            let _ = serde_json::from_str::<AdapterSpec>(&text);
        }

        #[test]
        fn adapter_specs_from_spec_like_json_never_panic(
            name in "[a-z0-9-]{0,12}",
            image in prop::option::of("[ -~]{0,20}"),
            command in prop::option::of("[ -~]{0,20}"),
            replicas in any::<i64>(),
            extra in "[a-zA-Z]{0,8}",
        ) {
            let body = serde_json::json!({
                "name": name, "image": image, "command": command, "replicas": replicas,
                extra: 1,
            });
            let _ = serde_json::from_value::<AdapterSpec>(body);
        }
    }
}
