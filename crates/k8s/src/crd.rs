//! The `McpAdapter` custom resource: the record of an adapter in a cluster. Its spec holds the
//! adapter fields of the management API (microsoft/mcp-gateway's names); environment values are
//! never in it, only references to keys of a Secret. The controller writes the status.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the gateway's resources.
pub const GROUP: &str = "mcp-gateway.io";

/// An MCP server run as a StatefulSet behind a headless Service, reached through the gateway
/// at `/adapters/{metadata.name}/mcp`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mcp-gateway.io",
    version = "v1alpha1",
    kind = "McpAdapter",
    plural = "mcpadapters",
    singular = "mcpadapter",
    shortname = "mcpa",
    namespaced,
    status = "McpAdapterStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".status.image"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicaCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.replicaStatus"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct McpAdapterSpec {
    /// Container image, without the tag (a registry prefix may be added by the gateway's
    /// configuration).
    #[schemars(length(min = 1, max = 255))]
    pub image_name: String,
    /// Image tag.
    #[serde(default = "latest")]
    #[schemars(length(min = 1, max = 128))]
    pub image_version: String,
    /// Desired replicas.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 50))]
    pub replica_count: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Runs the pods with the configured workload-identity service account (Azure AD
    /// workload identity: the pods get the `azure.workload.identity/use` label). Fixed at
    /// creation.
    #[serde(default)]
    pub use_workload_identity: bool,
    /// Roles any of which lets a principal read and use the adapter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Overrides the image's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default)]
    pub transport: Transport,
    /// The port the server listens on (default 8000); the readiness probe checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The server's MCP endpoint path (default `/mcp`, `/sse` for the `sse` transport).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[!-~]*$"))]
    pub path: Option<String>,
    /// Environment variables, each read from a key of a Secret (the management API keeps the
    /// values it is given in the Secret `<name>-env`, which the adapter owns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<SecretEnv>,
    /// How long a replica being removed or replaced keeps its live sessions before it goes
    /// anyway (default: the controller's, 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: Option<u32>,
    /// CPU and memory of each replica (default: requests of 50m CPU and 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// An environment variable whose value is a key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnv {
    #[schemars(regex(pattern = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"))]
    pub name: String,
    pub secret_key_ref: SecretKey,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKey {
    /// The Secret, in the adapter's namespace.
    pub name: String,
    pub key: String,
}

/// How the server speaks MCP (stdio servers are not run by this runtime).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    StreamableHttp,
    Sse,
}

fn one() -> i32 {
    1
}

fn latest() -> String {
    "latest".into()
}

/// What the controller observed, written through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpAdapterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The image the pods run (`registry/name:version`).
    #[serde(default)]
    pub image: String,
    /// Pods the StatefulSet is asked for now (differs from `spec.replicaCount` while a
    /// scale-down drains).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the current spec.
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// `Healthy` or `Degraded: x/y ready` (microsoft/mcp-gateway's words).
    #[serde(default)]
    pub replica_status: String,
    /// Each pod, by ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodStatus>,
    /// Why the adapter cannot be deployed, when it cannot (an invalid name, a missing image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub ordinal: u32,
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub restarts: i32,
    /// The waiting reason of its container (`ImagePullBackOff`, `CrashLoopBackOff`...) or
    /// `Unschedulable`, `Terminating`, `Draining`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the container's last termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// The StatefulSet revision it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Takes no new sessions: it is about to be removed or replaced.
    #[serde(default)]
    pub draining: bool,
    /// Sessions the session store holds for it.
    #[serde(default)]
    pub live_sessions: u64,
}
