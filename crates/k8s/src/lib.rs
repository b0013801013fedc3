//! The Kubernetes runtime of the MCP gateway.
//!
//! - [`crd`]: the `McpAdapter` custom resource, the record of an adapter in the cluster (the
//!   cluster is the source of truth; there is no second database).
//! - [`controller`]: reconciles each `McpAdapter` into a StatefulSet and a headless Service,
//!   with session-aware scale-down and rollout, and writes its status.
//! - [`discovery`]: keeps the data plane's resolver current from reflectors (adapters and
//!   their pods), so the request path never calls the API server; a replica is a pod's name
//!   *and* UID.
//! - [`runtime`]: the management API's [`AdapterStore`](mcp_gateway_core::AdapterStore) and
//!   [`Provisioner`](mcp_gateway_core::Provisioner) as a façade over the custom resources.
//! - [`leader`]: a Lease, so one of several `gateway-management` replicas runs the controller.
//!
//! It is not the data plane and holds no HTTP server.

pub mod controller;
pub mod crd;
pub mod discovery;
pub mod leader;
pub mod resources;
pub mod runtime;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

pub use crd::{McpAdapter, McpAdapterSpec, McpAdapterStatus};
pub use resources::RuntimeOptions;

/// Errors of the Kubernetes runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Not an error: work that waits for the cluster (pods still terminating).
    #[error("{0}")]
    Pending(String),
}

/// The replica id of a pod in session records: its name and UID, so a pod replaced under the
/// same name is another replica (its sessions get 404 and their clients start new ones).
pub fn replica_id(pod: &Pod) -> String {
    format!(
        "{}@{}",
        pod.name_any(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The pod's StatefulSet ordinal (the `apps.kubernetes.io/pod-index` label, else the name's
/// suffix).
pub fn pod_ordinal(pod: &Pod) -> u32 {
    pod.labels()
        .get("apps.kubernetes.io/pod-index")
        .and_then(|i| i.parse().ok())
        .or_else(|| pod.name_any().rsplit('-').next()?.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
