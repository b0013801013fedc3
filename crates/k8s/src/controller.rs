//! The controller: reconciles each `McpAdapter` into a headless Service and a StatefulSet
//! (server-side apply, owner references, a finalizer), drains pods before they go, and writes
//! the status back.
//!
//! Session-aware scale-down and rollout: the StatefulSet's `replicas` and the replacement of
//! its pods (`updateStrategy: OnDelete`) are driven from here, one pod at a time. The pod that
//! goes next (the highest ordinal on a scale-down; the highest ordinal of an old revision on a
//! rollout) is annotated `mcp-gateway.io/draining`; every gateway's discovery sees the
//! annotation and places no new session on it; the pod stays until the session store holds
//! none of its sessions, or the adapter's drain timeout has passed, and at least
//! [`DRAIN_NOTICE`] after the annotation (so gateways have seen it); only then is `replicas`
//! lowered or the pod deleted (and recreated by the StatefulSet at the new revision).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use mcp_gateway_core::{AdapterName, SessionStore, unix_millis};
use serde_json::json;

use crate::crd::{McpAdapter, McpAdapterStatus, PodStatus};
use crate::resources::{
    self, ADAPTER_LABEL, DRAINING_ANNOTATION, FIELD_MANAGER, RuntimeOptions, name,
};
use crate::{Error, pod_ordinal, pod_ready, replica_id};

/// The finalizer: a deleted adapter's CR stays until its pods are gone.
pub const FINALIZER: &str = "mcp-gateway.io/cleanup";
/// Least time between marking a pod draining and removing it, so every gateway's discovery
/// has seen the mark before the pod goes.
pub const DRAIN_NOTICE: Duration = Duration::from_secs(2);

struct Ctx {
    client: kube::Client,
    opts: RuntimeOptions,
    sessions: Arc<dyn SessionStore>,
}

/// Runs the controller over the adapters of `opts.namespace` until the stream ends.
pub async fn run(client: kube::Client, opts: RuntimeOptions, sessions: Arc<dyn SessionStore>) {
    let ns = opts.namespace.clone();
    let adapters: Api<McpAdapter> = Api::namespaced(client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let managed = watcher::Config::default().labels(ADAPTER_LABEL);
    let ctx = Arc::new(Ctx {
        client,
        opts,
        sessions,
    });
    Controller::new(adapters, watcher::Config::default())
        .owns(sets, managed.clone())
        .owns(services, managed.clone())
        .watches(pods, managed, move |pod: Pod| {
            let adapter = pod.labels().get(ADAPTER_LABEL)?.clone();
            Some(kube::runtime::reflector::ObjectRef::new(&adapter).within(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "adapter reconcile");
            }
        })
        .await;
}

fn error_policy(adapter: Arc<McpAdapter>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(adapter = %adapter.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(adapter: Arc<McpAdapter>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<McpAdapter> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    finalizer(&api, FINALIZER, adapter, |event| async {
        match event {
            Finalizer::Apply(a) => apply(&a, &ctx).await,
            Finalizer::Cleanup(a) => cleanup(&a, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// Deletes the StatefulSet and waits for its pods to be gone (their processes stopped).
async fn cleanup(a: &McpAdapter, ctx: &Ctx) -> Result<Action, Error> {
    let n = name(a);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    if sets.get_opt(&n).await?.is_some() {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        sets.delete(&n, &dp).await?;
    }
    let left = pods
        .list(&ListParams::default().labels(&format!("{ADAPTER_LABEL}={n}")))
        .await?
        .items
        .len();
    if left > 0 {
        // An error keeps the finalizer; the error policy retries shortly.
        return Err(Error::Pending(format!(
            "{left} pods of {n} still terminating"
        )));
    }
    Ok(Action::await_change())
}

fn draining_since(pod: &Pod) -> Option<u64> {
    pod.annotations().get(DRAINING_ANNOTATION)?.parse().ok()
}

async fn apply(a: &McpAdapter, ctx: &Ctx) -> Result<Action, Error> {
    let n = name(a);
    let ns = &ctx.opts.namespace;
    let statuses: Api<McpAdapter> = Api::namespaced(ctx.client.clone(), ns);
    if let Err(message) = resources::check(a, &ctx.opts) {
        let status = McpAdapterStatus {
            observed_generation: a.metadata.generation,
            message: Some(message),
            replica_status: "Invalid".into(),
            ..McpAdapterStatus::default()
        };
        write_status(&statuses, a, status).await?;
        return Ok(Action::await_change());
    }
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    services
        .patch(&n, &ssa, &Patch::Apply(resources::service(a)))
        .await?;

    let existing = sets.get_opt(&n).await?;
    let mut pods = pods_api
        .list(&ListParams::default().labels(&format!("{ADAPTER_LABEL}={n}")))
        .await?
        .items;
    pods.sort_by_key(pod_ordinal);
    let live: HashMap<Arc<str>, u64> = match AdapterName::new(&n) {
        Ok(adapter) => ctx
            .sessions
            .live_sessions(&adapter)
            .await
            .unwrap_or_default(),
        Err(_) => HashMap::new(),
    };
    let sessions_of = |p: &Pod| live.get(replica_id(p).as_str()).copied().unwrap_or(0);
    let now = unix_millis();
    let drain_ms = ctx.opts.drain_timeout(a).as_millis() as u64;
    let notice_ms = DRAIN_NOTICE.as_millis() as u64;
    let drained = |p: &Pod| {
        draining_since(p).is_some_and(|since| {
            let waited = now.saturating_sub(since);
            waited >= notice_ms && (sessions_of(p) == 0 || waited >= drain_ms)
        })
    };
    let by_name = |pod_name: &str| pods.iter().find(|p| p.name_any() == pod_name);

    let target = a.spec.replica_count.max(0);
    let current = existing
        .as_ref()
        .and_then(|s| s.spec.replicas)
        .unwrap_or(target);
    let mut replicas = target;
    let mut draining: Vec<String> = Vec::new();
    let mut delete: Option<&Pod> = None;
    let mut busy = false;
    if current > target {
        // Scale down one pod at a time, from the highest ordinal, each drained first.
        let victim = format!("{n}-{}", current - 1);
        replicas = current;
        match by_name(&victim) {
            None => replicas = current - 1,
            Some(p) if drained(p) => {
                replicas = current - 1;
                draining.push(victim);
            }
            Some(_) => {
                draining.push(victim);
                busy = true;
            }
        }
    } else if let Some(update) = existing
        .as_ref()
        .and_then(|s| s.status.as_ref()?.update_revision.clone())
    {
        // Roll out one pod at a time, the highest ordinal first, once the others are ready.
        let outdated = pods.iter().rev().find(|p| {
            pod_ordinal(p) < replicas as u32
                && p.metadata.deletion_timestamp.is_none()
                && p.labels().get("controller-revision-hash") != Some(&update)
        });
        if let Some(p) = outdated {
            let others_ready = (0..replicas as u32).all(|i| {
                by_name(&format!("{n}-{i}")).is_some_and(|q| {
                    q.name_any() == p.name_any()
                        || (pod_ready(q) && q.metadata.deletion_timestamp.is_none())
                })
            });
            busy = true;
            if others_ready || draining_since(p).is_some() {
                draining.push(p.name_any());
                if drained(p) {
                    delete = Some(p);
                }
            }
        }
    }

    // Mark the pod that goes next; unmark pods that stay (a scale-down undone).
    for p in &pods {
        let marked = draining_since(p).is_some();
        let wanted = draining.contains(&p.name_any());
        if marked != wanted {
            let value = wanted.then(|| now.to_string());
            let patch = json!({ "metadata": { "annotations": { DRAINING_ANNOTATION: value } } });
            pods_api
                .patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
    }
    let set = sets
        .patch(
            &n,
            &ssa,
            &Patch::Apply(resources::stateful_set(a, &ctx.opts, replicas)),
        )
        .await?;
    if let Some(p) = delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        pods_api.delete(&p.name_any(), &dp).await?;
        tracing::info!(adapter = %n, pod = %p.name_any(), "drained pod replaced by the new revision");
    }

    let st = set.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let pods_status: Vec<PodStatus> = pods
        .iter()
        .map(|p| pod_status(p, sessions_of(p), draining.contains(&p.name_any())))
        .collect();
    let status = McpAdapterStatus {
        observed_generation: a.metadata.generation,
        image: ctx.opts.image(a),
        replicas,
        ready_replicas: ready,
        updated_replicas: st.updated_replicas.unwrap_or(0),
        available_replicas: st.available_replicas.unwrap_or(0),
        current_revision: st.current_revision.clone(),
        update_revision: st.update_revision.clone(),
        replica_status: if ready >= target {
            "Healthy".into()
        } else {
            format!("Degraded: {ready}/{target} ready")
        },
        pods: pods_status,
        message: None,
    };
    write_status(&statuses, a, status).await?;
    Ok(if busy || !draining.is_empty() || delete.is_some() {
        Action::requeue(Duration::from_millis(500))
    } else {
        // Live session counts change without a watch event.
        Action::requeue(Duration::from_secs(10))
    })
}

/// Patches the status subresource when it changed.
async fn write_status(
    api: &Api<McpAdapter>,
    a: &McpAdapter,
    status: McpAdapterStatus,
) -> Result<(), Error> {
    if a.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &name(a),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn pod_status(p: &Pod, live_sessions: u64, draining: bool) -> PodStatus {
    let status = p.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let waiting = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref());
    let unschedulable = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
        c.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    });
    let (reason, message) = if p.metadata.deletion_timestamp.is_some() {
        (Some("Terminating".into()), None)
    } else if let Some(w) = waiting {
        (w.reason.clone(), w.message.clone())
    } else if let Some(c) = unschedulable {
        (
            c.reason.clone().or(Some("Unschedulable".into())),
            c.message.clone(),
        )
    } else if draining {
        (Some("Draining".into()), None)
    } else {
        (None, None)
    };
    PodStatus {
        ordinal: pod_ordinal(p),
        name: p.name_any(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        ready: pod_ready(p),
        restarts: container.map_or(0, |c| c.restart_count),
        reason,
        message,
        last_exit_code: container
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        revision: p.labels().get("controller-revision-hash").cloned(),
        draining,
        live_sessions,
    }
}
