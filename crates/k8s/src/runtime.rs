//! The management API over the cluster: [`KubeRuntime`] is the [`AdapterStore`] and the
//! [`Provisioner`] of the Kubernetes runtime, a façade over `McpAdapter` resources.
//!
//! - create: the environment values go to a Secret `<name>-env` (owned by the adapter once it
//!   exists), the spec references its keys; then the `McpAdapter` is created with its creator
//!   in annotations. The controller does the rest.
//! - update: the spec is replaced with the `resourceVersion` it was read at, so of two
//!   concurrent writers one wins and the other gets [`AdapterError::Conflict`] (409).
//! - delete: the `McpAdapter` is deleted and the call waits (up to 60 s) until its finalizer has
//!   seen its pods gone.
//! - status: the status the controller wrote, in the API's shape; logs: the pod log API.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use mcp_gateway_core::{
    Adapter, AdapterError, AdapterName, AdapterSpec, AdapterStatus, AdapterStore, LogLine,
    LogQuery, LogStream, Provisioner, ReplicaState, ReplicaStatus, Transport, rfc3339,
};
use serde_json::json;

use crate::crd::{self, McpAdapter, McpAdapterSpec, SecretEnv, SecretKey};
use crate::resources::{
    self, ADAPTER_LABEL, CREATED_BY_ANNOTATION, CREATED_BY_ISSUER_ANNOTATION, FIELD_MANAGER,
    MAX_NAME_LEN, RuntimeOptions, UPDATED_AT_ANNOTATION,
};

/// The Kubernetes runtime as the management API sees it.
#[derive(Clone)]
pub struct KubeRuntime {
    opts: RuntimeOptions,
    adapters: Api<McpAdapter>,
    secrets: Api<Secret>,
    pods: Api<Pod>,
}

fn unavailable(e: kube::Error) -> AdapterError {
    AdapterError::Unavailable(format!("Kubernetes API: {e}"))
}

/// The Secret holding an adapter's environment values.
pub fn env_secret(name: &str) -> String {
    format!("{name}-env")
}

impl KubeRuntime {
    pub fn new(client: kube::Client, opts: RuntimeOptions) -> Self {
        let ns = opts.namespace.clone();
        Self {
            adapters: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client, &ns),
            opts,
        }
    }

    /// The adapter's resource, or [`AdapterError::NotFound`].
    async fn existing(&self, name: &AdapterName) -> Result<McpAdapter, AdapterError> {
        self.adapters
            .get_opt(name.as_str())
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdapterError::NotFound(name.clone()))
    }

    /// The values of an adapter's Secret.
    async fn env_values(&self, a: &McpAdapter) -> Result<BTreeMap<String, String>, AdapterError> {
        let mut out = BTreeMap::new();
        let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for e in &a.spec.env {
            let secret = &e.secret_key_ref.name;
            if !secrets.contains_key(secret) {
                let data = self
                    .secrets
                    .get_opt(secret)
                    .await
                    .map_err(unavailable)?
                    .and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                secrets.insert(secret.clone(), data);
            }
            let value = secrets[secret]
                .get(&e.secret_key_ref.key)
                .cloned()
                .unwrap_or_default();
            out.insert(e.name.clone(), value);
        }
        Ok(out)
    }

    async fn to_adapter(&self, a: &McpAdapter) -> Result<Adapter, AdapterError> {
        let name =
            AdapterName::new(&a.name_any()).map_err(|e| AdapterError::Invalid(e.to_string()))?;
        let s = &a.spec;
        let ann = a.annotations();
        let created = a
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| rfc3339(SystemTime::from(t.0)))
            .unwrap_or_default();
        Ok(Adapter {
            spec: AdapterSpec {
                name,
                image_name: Some(s.image_name.clone()),
                image_version: Some(s.image_version.clone()),
                environment_variables: self.env_values(a).await?,
                replica_count: s.replica_count.max(0) as u32,
                description: s.description.clone(),
                use_workload_identity: s.use_workload_identity,
                required_roles: s.required_roles.clone(),
                command: s.command.clone(),
                args: s.args.clone(),
                transport: match s.transport {
                    crd::Transport::StreamableHttp => Transport::StreamableHttp,
                    crd::Transport::Sse => Transport::Sse,
                },
                port: s.port,
                path: s.path.clone(),
                upstreams: Vec::new(),
                upstream_headers: BTreeMap::new(),
            },
            created_by: ann.get(CREATED_BY_ANNOTATION).cloned().unwrap_or_default(),
            created_by_issuer: ann.get(CREATED_BY_ISSUER_ANNOTATION).cloned(),
            last_updated_at: ann
                .get(UPDATED_AT_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| created.clone()),
            created_at: created,
            revision: a.metadata.generation.map(|g| g.to_string()),
        })
    }

    fn spec_of(&self, adapter: &Adapter, previous: Option<&McpAdapterSpec>) -> McpAdapterSpec {
        let s = &adapter.spec;
        let name = s.name.as_str();
        McpAdapterSpec {
            image_name: s.image_name.clone().unwrap_or_default(),
            image_version: s.image_version.clone().unwrap_or_else(|| "latest".into()),
            replica_count: s.replica_count as i32,
            description: s.description.clone(),
            use_workload_identity: s.use_workload_identity,
            required_roles: s.required_roles.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            transport: match s.transport {
                Transport::Sse => crd::Transport::Sse,
                _ => crd::Transport::StreamableHttp,
            },
            port: s.port,
            path: s.path.clone(),
            env: s
                .environment_variables
                .keys()
                .map(|k| SecretEnv {
                    name: k.clone(),
                    secret_key_ref: SecretKey {
                        name: env_secret(name),
                        key: k.clone(),
                    },
                })
                .collect(),
            drain_timeout_seconds: previous.and_then(|p| p.drain_timeout_seconds),
            resources: previous.and_then(|p| p.resources.clone()),
        }
    }

    /// Writes the Secret of an adapter's environment (server-side apply), owned by `owner`
    /// when it is known; deletes it when there is nothing to keep.
    async fn write_env(
        &self,
        adapter: &Adapter,
        owner: Option<&McpAdapter>,
    ) -> Result<(), AdapterError> {
        let name = adapter.spec.name.as_str();
        let secret = env_secret(name);
        if adapter.spec.environment_variables.is_empty() {
            match self.secrets.delete(&secret, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(unavailable(e)),
            }
            return Ok(());
        }
        let mut meta = json!({ "name": secret, "labels": { ADAPTER_LABEL: name } });
        if let Some(o) = owner {
            meta["ownerReferences"] = resources::owner(o);
        }
        let body = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta,
            "stringData": adapter.spec.environment_variables,
        });
        self.secrets
            .patch(
                &secret,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl AdapterStore for KubeRuntime {
    async fn list(&self) -> Result<Vec<Adapter>, AdapterError> {
        let mut out = Vec::new();
        for a in self
            .adapters
            .list(&ListParams::default())
            .await
            .map_err(unavailable)?
        {
            if a.metadata.deletion_timestamp.is_none()
                && let Ok(adapter) = self.to_adapter(&a).await
            {
                out.push(adapter);
            }
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    async fn get(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        match self
            .adapters
            .get_opt(name.as_str())
            .await
            .map_err(unavailable)?
        {
            Some(a) if a.metadata.deletion_timestamp.is_none() => {
                Ok(Some(self.to_adapter(&a).await?))
            }
            _ => Ok(None),
        }
    }

    async fn create(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        let name = adapter.spec.name.as_str();
        if self
            .adapters
            .get_opt(name)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(AdapterError::Exists(adapter.spec.name.clone()));
        }
        // The values first, so the pods find them; owned once the adapter exists.
        self.write_env(adapter, None).await?;
        let mut cr = McpAdapter::new(name, self.spec_of(adapter, None));
        let mut ann =
            BTreeMap::from([(CREATED_BY_ANNOTATION.to_owned(), adapter.created_by.clone())]);
        if let Some(issuer) = &adapter.created_by_issuer {
            ann.insert(CREATED_BY_ISSUER_ANNOTATION.to_owned(), issuer.clone());
        }
        ann.insert(
            UPDATED_AT_ANNOTATION.to_owned(),
            adapter.last_updated_at.clone(),
        );
        cr.metadata.annotations = Some(ann);
        let created = match self.adapters.create(&PostParams::default(), &cr).await {
            Ok(c) => c,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Err(AdapterError::Exists(adapter.spec.name.clone()));
            }
            Err(kube::Error::Api(e)) if e.code == 422 => {
                let _ = self.write_env(&without_env(adapter), None).await;
                return Err(AdapterError::Invalid(e.message));
            }
            Err(e) => return Err(unavailable(e)),
        };
        self.write_env(adapter, Some(&created)).await?;
        Ok(revision_of(&created))
    }

    async fn update(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        let name = adapter.spec.name.as_str();
        // The generation of the spec this update is based on (the caller's revision, else the
        // first read): a write by someone else bumps it (a real conflict, 409); the
        // controller's status writes do not (they only change the resourceVersion, so the
        // replace is retried on a fresh read).
        let mut based_on = adapter.revision.clone();
        for _ in 0..10 {
            let Some(mut cr) = self.adapters.get_opt(name).await.map_err(unavailable)? else {
                return Err(AdapterError::NotFound(adapter.spec.name.clone()));
            };
            let current = revision_of(&cr);
            if *based_on.get_or_insert_with(|| current.clone()) != current {
                return Err(AdapterError::Conflict(format!(
                    "adapter {name} is at revision {current}, not {}: it was changed \
                     meanwhile; read it again and retry",
                    based_on.unwrap_or_default()
                )));
            }
            if cr.spec.use_workload_identity != adapter.spec.use_workload_identity {
                return Err(AdapterError::Invalid(
                    "useWorkloadIdentity cannot change after creation (the pods' identity and \
                     labels are fixed): delete and re-create the adapter"
                        .into(),
                ));
            }
            cr.spec = self.spec_of(adapter, Some(&cr.spec));
            cr.annotations_mut().insert(
                UPDATED_AT_ANNOTATION.to_owned(),
                adapter.last_updated_at.clone(),
            );
            cr.status = None;
            // `replace` sends the resourceVersion just read: any change meanwhile is a 409.
            match self
                .adapters
                .replace(name, &PostParams::default(), &cr)
                .await
            {
                Ok(updated) => {
                    self.write_env(adapter, Some(&updated)).await?;
                    return Ok(revision_of(&updated));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 422 => {
                    return Err(AdapterError::Invalid(e.message));
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(AdapterError::Conflict(format!(
            "adapter {name} kept changing while it was written (10 tries): retry"
        )))
    }

    async fn delete(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        let Some(cr) = self
            .adapters
            .get_opt(name.as_str())
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let previous = self.to_adapter(&cr).await.ok();
        match self
            .adapters
            .delete(name.as_str(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        }
        // The finalizer holds the resource until the pods are gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            match self
                .adapters
                .get_opt(name.as_str())
                .await
                .map_err(unavailable)?
            {
                Some(a) if a.metadata.uid == cr.metadata.uid => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => break,
            }
        }
        Ok(previous)
    }
}

/// An adapter's revision: its `metadata.generation`, which the API server bumps on every change
/// of the spec and not on status writes (the controller writes status all the time).
fn revision_of(a: &McpAdapter) -> String {
    a.metadata.generation.unwrap_or_default().to_string()
}

fn without_env(adapter: &Adapter) -> Adapter {
    let mut a = adapter.clone();
    a.spec.environment_variables.clear();
    a
}

#[async_trait::async_trait]
impl Provisioner for KubeRuntime {
    fn validate(&self, spec: &AdapterSpec) -> Result<(), AdapterError> {
        let mut problems = Vec::new();
        if spec.name.as_str().len() > MAX_NAME_LEN {
            problems.push(format!(
                "name: at most {MAX_NAME_LEN} characters on the Kubernetes runtime (its \
                 StatefulSet's revision label must fit 63)"
            ));
        }
        if spec.image_name.as_deref().is_none_or(str::is_empty) {
            problems.push(
                "imageName: required on the Kubernetes runtime (the container image to run)".into(),
            );
        }
        if spec.transport == Transport::Stdio {
            problems.push(
                "transport: stdio is not run by the Kubernetes runtime; use an image that serves \
                 streamable HTTP or SSE on its port"
                    .into(),
            );
        }
        if !spec.upstreams.is_empty() {
            problems.push(
                "upstreams: not used by the Kubernetes runtime (it runs the image); front \
                 servers deployed elsewhere from the gateway's configuration file"
                    .into(),
            );
        }
        if !spec.upstream_headers.is_empty() {
            problems.push(
                "upstreamHeaders: not supported by the Kubernetes runtime yet; give the server \
                 its credentials as environmentVariables (kept in a Secret)"
                    .into(),
            );
        }
        if spec.use_workload_identity && self.opts.workload_identity_service_account.is_none() {
            problems.push(
                "useWorkloadIdentity: this gateway has no workload-identity service account \
                 configured (kubernetes.workload_identity_service_account)"
                    .into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AdapterError::Invalid(problems.join("; ")))
        }
    }

    /// The controller rolls changes out; the API answers once the resource is stored, and
    /// `status` shows the roll-out.
    async fn apply(&self, _adapter: &Adapter) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Deleting the resource removes everything (owner references, the finalizer).
    async fn remove(&self, _name: &AdapterName) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn status(&self, name: &AdapterName) -> Result<AdapterStatus, AdapterError> {
        let a = self.existing(name).await?;
        let st = a.status.clone().unwrap_or_default();
        let desired = a.spec.replica_count.max(0) as u32;
        let replicas = st
            .pods
            .iter()
            .map(|p| ReplicaStatus {
                index: p.ordinal,
                id: Some(format!("{}@{}", p.name, p.uid)),
                state: if p.reason.as_deref() == Some("Terminating") || p.draining {
                    ReplicaState::Draining
                } else if p.ready {
                    ReplicaState::Ready
                } else if p.reason.as_deref() == Some("CrashLoopBackOff") {
                    ReplicaState::Crashed
                } else {
                    ReplicaState::Starting
                },
                url: None,
                exit_code: p.last_exit_code,
                restarts: p.restarts.max(0) as u32,
                live_sessions: p.live_sessions,
                reason: p.reason.clone(),
                message: p.message.clone(),
            })
            .collect();
        let ready = st.ready_replicas.max(0) as u32;
        Ok(AdapterStatus {
            name: name.clone(),
            replica_count: desired,
            ready_replicas: ready,
            updated_replicas: st.updated_replicas.max(0) as u32,
            available_replicas: st.available_replicas.max(0) as u32,
            image: if st.image.is_empty() {
                self.opts.image(&a)
            } else {
                st.image
            },
            replica_status: AdapterStatus::health(ready, desired),
            replicas,
        })
    }

    async fn logs(&self, name: &AdapterName, query: LogQuery) -> Result<LogStream, AdapterError> {
        let a = self.existing(name).await?;
        let selector = format!("{ADAPTER_LABEL}={}", a.name_any());
        let mut pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(unavailable)?
            .items;
        pods.sort_by_key(crate::pod_ordinal);
        if let Some(r) = query.replica {
            pods.retain(|p| crate::pod_ordinal(p) == r);
            if pods.is_empty() {
                return Err(AdapterError::Invalid(format!(
                    "replica {r}: adapter {name} has no such replica"
                )));
            }
        }
        let params = LogParams {
            follow: query.follow,
            previous: query.previous,
            tail_lines: query.tail.map(|t| t as i64),
            since_seconds: query.since.map(|s| {
                SystemTime::now()
                    .duration_since(s)
                    .unwrap_or_default()
                    .as_secs()
                    .max(1) as i64
            }),
            timestamps: true,
            ..LogParams::default()
        };
        let mut streams = Vec::new();
        for p in pods {
            let ordinal = crate::pod_ordinal(&p);
            let reader = match self.pods.log_stream(&p.name_any(), &params).await {
                Ok(r) => r,
                // A pod that has not started (or has no previous instance) has no log.
                Err(kube::Error::Api(e)) if e.code == 400 => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let lines = reader
                .lines()
                .into_stream()
                .filter_map(move |line| async move {
                    let line = line.ok()?;
                    let (time, text) = match line.split_once(' ') {
                        Some((t, rest)) if t.parse::<Timestamp>().is_ok() => {
                            let ts: Timestamp = t.parse().ok()?;
                            (rfc3339(SystemTime::from(ts)), rest.to_owned())
                        }
                        _ => (rfc3339(SystemTime::now()), line),
                    };
                    Some(LogLine {
                        replica: ordinal,
                        stream: "stdout".into(),
                        time,
                        line: text,
                    })
                });
            streams.push(lines.boxed());
        }
        Ok(Box::pin(futures_util::stream::select_all(streams)))
    }
}
