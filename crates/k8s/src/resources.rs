//! What the controller applies for an adapter: a headless Service and a StatefulSet, both
//! owned by the `McpAdapter`. Pure functions of the resource and the options, so they are
//! tested without a cluster.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use serde_json::{Value, json};

use crate::crd::{McpAdapter, Transport};

/// Label on every object of an adapter, and the selector of its pods.
pub const ADAPTER_LABEL: &str = "mcp-gateway.io/adapter";
/// Annotation of a pod that takes no new sessions: it is being removed or replaced; the value
/// is when draining began (Unix milliseconds).
pub const DRAINING_ANNOTATION: &str = "mcp-gateway.io/draining";
/// Annotations of the `McpAdapter` with its creator (set by the management API).
pub const CREATED_BY_ANNOTATION: &str = "mcp-gateway.io/created-by";
pub const CREATED_BY_ISSUER_ANNOTATION: &str = "mcp-gateway.io/created-by-issuer";
pub const UPDATED_AT_ANNOTATION: &str = "mcp-gateway.io/last-updated-at";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "mcp-gateway";
/// Port of servers that name none.
pub const DEFAULT_PORT: u16 = 8000;
/// Longest adapter name: the StatefulSet's pods carry a `controller-revision-hash` label of
/// `<name>-<10 characters>`, which must fit a label value (63).
pub const MAX_NAME_LEN: usize = 52;

/// How the runtime deploys adapters (from the gateway's configuration).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Namespace of the adapters and their objects.
    pub namespace: String,
    /// Prefixed to every `imageName` (`registry.example.com/mcp`).
    pub registry: Option<String>,
    /// Secrets for pulling images, given to every pod.
    pub image_pull_secrets: Vec<String>,
    /// Service account of adapters with `useWorkloadIdentity` (none: they are refused).
    pub workload_identity_service_account: Option<String>,
    /// Service account of the others (none: the namespace's `default`).
    pub service_account: Option<String>,
    /// How long a pod being removed keeps its sessions when the adapter names no timeout.
    pub drain_timeout: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            registry: None,
            image_pull_secrets: Vec::new(),
            workload_identity_service_account: None,
            service_account: None,
            drain_timeout: Duration::from_secs(300),
        }
    }
}

impl RuntimeOptions {
    /// `registry/imageName:imageVersion`.
    pub fn image(&self, adapter: &McpAdapter) -> String {
        let s = &adapter.spec;
        match &self.registry {
            Some(r) => format!(
                "{}/{}:{}",
                r.trim_end_matches('/'),
                s.image_name,
                s.image_version
            ),
            None => format!("{}:{}", s.image_name, s.image_version),
        }
    }

    pub fn drain_timeout(&self, adapter: &McpAdapter) -> Duration {
        adapter
            .spec
            .drain_timeout_seconds
            .map_or(self.drain_timeout, |s| Duration::from_secs(u64::from(s)))
    }
}

/// The adapter's name (= the names of its StatefulSet and Service).
pub fn name(adapter: &McpAdapter) -> String {
    adapter.metadata.name.clone().unwrap_or_default()
}

pub fn port(adapter: &McpAdapter) -> u16 {
    adapter.spec.port.unwrap_or(DEFAULT_PORT)
}

/// The server's MCP endpoint path.
pub fn mcp_path(adapter: &McpAdapter) -> String {
    match (&adapter.spec.path, adapter.spec.transport) {
        (Some(p), _) => p.clone(),
        (None, Transport::Sse) => "/sse".into(),
        (None, Transport::StreamableHttp) => "/mcp".into(),
    }
}

fn labels(adapter: &McpAdapter) -> Value {
    json!({
        ADAPTER_LABEL: name(adapter),
        "app.kubernetes.io/name": "mcp-adapter",
        "app.kubernetes.io/instance": name(adapter),
        "app.kubernetes.io/managed-by": "mcp-gateway",
    })
}

/// The owner reference of everything made for `adapter` (deleted with it).
pub fn owner(adapter: &McpAdapter) -> Value {
    json!([{
        "apiVersion": McpAdapter::api_version(&()),
        "kind": McpAdapter::kind(&()),
        "name": name(adapter),
        "uid": adapter.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Checks what the API server cannot: the name's length, a workload identity to use.
pub fn check(adapter: &McpAdapter, opts: &RuntimeOptions) -> Result<(), String> {
    let n = name(adapter);
    if n.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {n:?} is {} characters; the Kubernetes runtime allows at most {MAX_NAME_LEN} \
             (its StatefulSet's revision label must fit 63)",
            n.len()
        ));
    }
    if adapter.spec.use_workload_identity && opts.workload_identity_service_account.is_none() {
        return Err("useWorkloadIdentity is set but the gateway has no \
                    workload_identity_service_account configured"
            .into());
    }
    Ok(())
}

/// The headless Service: one DNS name per pod (`<name>-N.<name>`), no cluster IP.
pub fn service(adapter: &McpAdapter) -> Service {
    let v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name(adapter),
            "labels": labels(adapter),
            "ownerReferences": owner(adapter),
        },
        "spec": {
            "clusterIP": "None",
            // Pods are addressed while they start and drain, not only when ready.
            "publishNotReadyAddresses": false,
            "selector": { ADAPTER_LABEL: name(adapter) },
            "ports": [{ "name": "mcp", "port": port(adapter), "targetPort": "mcp", "protocol": "TCP" }],
        },
    });
    serde_json::from_value(v).expect("a valid Service")
}

/// The StatefulSet: `replicas` pods of the image, with the adapter's environment from its
/// Secret, a readiness probe on the MCP port, a restricted security context. Updates are
/// `OnDelete`: the controller replaces pods one at a time once their sessions are drained.
pub fn stateful_set(adapter: &McpAdapter, opts: &RuntimeOptions, replicas: i32) -> StatefulSet {
    let s = &adapter.spec;
    let env: Vec<Value> = s
        .env
        .iter()
        .map(|e| {
            json!({ "name": e.name, "valueFrom": { "secretKeyRef": {
                "name": e.secret_key_ref.name, "key": e.secret_key_ref.key } } })
        })
        .collect();
    let mut pod_labels = labels(adapter);
    let mut service_account = opts.service_account.clone();
    if s.use_workload_identity {
        pod_labels["azure.workload.identity/use"] = json!("true");
        service_account = opts.workload_identity_service_account.clone();
    }
    let resources = s.resources.as_ref().map_or_else(
        || json!({ "requests": { "cpu": "50m", "memory": "64Mi" } }),
        |r| serde_json::to_value(r).expect("resources serialize"),
    );
    let mut container = json!({
        "name": "mcp",
        "image": opts.image(adapter),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{ "name": "mcp", "containerPort": port(adapter), "protocol": "TCP" }],
        "env": env,
        "readinessProbe": {
            "tcpSocket": { "port": "mcp" },
            "periodSeconds": 5, "failureThreshold": 2, "timeoutSeconds": 2,
        },
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
    });
    if let Some(cmd) = &s.command {
        container["command"] = json!([cmd]);
    }
    if !s.args.is_empty() {
        container["args"] = json!(s.args);
    }
    let mut pod_spec = json!({
        "containers": [container],
        "enableServiceLinks": false,
        "automountServiceAccountToken": s.use_workload_identity,
        // Drains happen before a pod is deleted; this is only the server's own shutdown.
        "terminationGracePeriodSeconds": 30,
        "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
    });
    if let Some(sa) = service_account {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    if !opts.image_pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = json!(
            opts.image_pull_secrets
                .iter()
                .map(|n| json!({ "name": n }))
                .collect::<Vec<_>>()
        );
    }
    let v = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {
            "name": name(adapter),
            "labels": labels(adapter),
            "ownerReferences": owner(adapter),
        },
        "spec": {
            "replicas": replicas,
            "serviceName": name(adapter),
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": { "type": "OnDelete" },
            "selector": { "matchLabels": { ADAPTER_LABEL: name(adapter) } },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(v).expect("a valid StatefulSet")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{McpAdapterSpec, SecretEnv, SecretKey};

    fn adapter(name: &str) -> McpAdapter {
        let mut a = McpAdapter::new(
            name,
            serde_json::from_value::<McpAdapterSpec>(json!({
                "imageName": "ghcr.io/acme/github-mcp", "imageVersion": "1.2.0", "replicaCount": 2,
            }))
            .unwrap(),
        );
        a.metadata.uid = Some("u-1".into());
        a
    }

    #[test]
    fn the_stateful_set_selects_its_pods_runs_the_image_and_reads_env_from_the_secret() {
        let mut a = adapter("github");
        a.spec.env = vec![SecretEnv {
            name: "GITHUB_TOKEN".into(),
            secret_key_ref: SecretKey {
                name: "github-env".into(),
                key: "GITHUB_TOKEN".into(),
            },
        }];
        let opts = RuntimeOptions {
            registry: Some("registry.example.com/".into()),
            image_pull_secrets: vec!["pull".into()],
            ..RuntimeOptions::default()
        };
        let sts = serde_json::to_value(stateful_set(&a, &opts, 2)).unwrap();
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 2);
        assert_eq!(spec["updateStrategy"]["type"], "OnDelete");
        let selector = &spec["selector"]["matchLabels"];
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&spec["template"]["metadata"]["labels"][k], v, "{k}");
        }
        let c = &spec["template"]["spec"]["containers"][0];
        assert_eq!(
            c["image"],
            "registry.example.com/ghcr.io/acme/github-mcp:1.2.0"
        );
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "github-env"
        );
        assert!(
            c["env"][0].get("value").is_none(),
            "no value in the pod spec"
        );
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "mcp");
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(
            spec["template"]["spec"]["imagePullSecrets"][0]["name"],
            "pull"
        );
        assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "McpAdapter");
    }

    #[test]
    fn workload_identity_needs_a_configured_service_account_and_labels_the_pods() {
        let mut a = adapter("azure");
        a.spec.use_workload_identity = true;
        assert!(check(&a, &RuntimeOptions::default()).is_err());
        let opts = RuntimeOptions {
            workload_identity_service_account: Some("mcp-wi".into()),
            ..RuntimeOptions::default()
        };
        check(&a, &opts).unwrap();
        let sts = serde_json::to_value(stateful_set(&a, &opts, 1)).unwrap();
        let pod = &sts["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"]["azure.workload.identity/use"],
            "true"
        );
        assert_eq!(pod["spec"]["serviceAccountName"], "mcp-wi");
    }

    #[test]
    fn names_longer_than_52_are_refused_before_anything_is_sent() {
        let long = "a".repeat(53);
        let err = check(&adapter(&long), &RuntimeOptions::default()).unwrap_err();
        assert!(err.contains("at most 52"), "{err}");
        check(&adapter(&"a".repeat(52)), &RuntimeOptions::default()).unwrap();
    }
}
