//! Replica discovery for the data plane: reflectors over the namespace's `McpAdapter`s and
//! their pods keep a [`StaticResolver`] current, so the request path reads memory only.
//!
//! Each adapter's target lists its pods by ordinal: id `<pod>@<uid>`, `http://<podIP>:<port>`,
//! ready from the pod's `Ready` condition, draining when the controller marked it
//! (`mcp-gateway.io/draining`) or it is terminating. A pod replaced under the same name has a
//! new UID, hence a new replica id: the old sessions get 404 and their clients re-initialize.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use mcp_gateway_core::{AdapterAccess, AdapterName, AdapterTarget, Replica, StaticResolver};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::crd::McpAdapter;
use crate::resources::{
    ADAPTER_LABEL, CREATED_BY_ANNOTATION, CREATED_BY_ISSUER_ANNOTATION, DRAINING_ANNOTATION,
    mcp_path, port,
};
use crate::{pod_ordinal, pod_ready, replica_id};

/// The running discovery; dropping it stops the watches.
pub struct Discovery {
    adapters: Store<McpAdapter>,
    pods: Store<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

impl Discovery {
    /// Waits until both reflectors have listed once.
    pub async fn ready(&self) {
        let _ = self.adapters.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts discovery of the adapters of `namespace` into `resolver`. Names in `reserved` (the
/// gateway's configured adapters) are never touched.
pub fn start(
    client: kube::Client,
    namespace: &str,
    resolver: Arc<StaticResolver>,
    reserved: Vec<AdapterName>,
) -> Discovery {
    let changed = Arc::new(Notify::new());
    let (adapters, adapters_w) = reflector::store::<McpAdapter>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let a_api: Api<McpAdapter> = Api::namespaced(client.clone(), namespace);
    let p_api: Api<Pod> = Api::namespaced(client, namespace);
    fn feed<K>(
        notify: Arc<Notify>,
    ) -> impl FnMut(Result<K, watcher::Error>) -> std::future::Ready<()> {
        move |res| {
            match res {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, "discovery watch"),
            }
            std::future::ready(())
        }
    }
    let a_task = tokio::spawn(
        watcher::watcher(a_api, watcher::Config::default())
            .default_backoff()
            .reflect(adapters_w)
            .for_each(feed(changed.clone())),
    );
    let p_task = tokio::spawn(
        watcher::watcher(p_api, watcher::Config::default().labels(ADAPTER_LABEL))
            .default_backoff()
            .reflect(pods_w)
            .for_each(feed(changed.clone())),
    );
    let sync = tokio::spawn({
        let (adapters, pods) = (adapters.clone(), pods.clone());
        async move {
            let mut known: Vec<AdapterName> = Vec::new();
            loop {
                changed.notified().await;
                // Events come in bursts (a rollout touches several objects): coalesce.
                tokio::time::sleep(Duration::from_millis(20)).await;
                known = sync(&adapters, &pods, &resolver, &reserved, &known);
            }
        }
    });
    Discovery {
        adapters,
        pods,
        tasks: vec![a_task, p_task, sync],
    }
}

/// Rebuilds every adapter's target; returns the names now published.
fn sync(
    adapters: &Store<McpAdapter>,
    pods: &Store<Pod>,
    resolver: &StaticResolver,
    reserved: &[AdapterName],
    known: &[AdapterName],
) -> Vec<AdapterName> {
    let mut by_adapter: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in pods.state() {
        if let Some(a) = p.labels().get(ADAPTER_LABEL) {
            by_adapter.entry(a.clone()).or_default().push(p);
        }
    }
    let mut published = Vec::new();
    for a in adapters.state() {
        let Ok(name) = AdapterName::new(&a.name_any()) else {
            continue;
        };
        if reserved.contains(&name) || a.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let target = target(
            &a,
            name.clone(),
            by_adapter
                .get(&a.name_any())
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        resolver.upsert(target);
        published.push(name);
    }
    for gone in known.iter().filter(|n| !published.contains(n)) {
        resolver.remove(gone.as_str());
    }
    published
}

/// The data plane's view of one adapter.
pub fn target(a: &McpAdapter, name: AdapterName, pods: &[Arc<Pod>]) -> AdapterTarget {
    let port = port(a);
    let mut replicas: Vec<Replica> = pods
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let terminating = p.metadata.deletion_timestamp.is_some();
            Some(Replica {
                id: replica_id(p).into(),
                ordinal: pod_ordinal(p),
                base_url: format!("http://{ip}:{port}").into(),
                ready: pod_ready(p) && !terminating,
                draining: terminating || p.annotations().contains_key(DRAINING_ANNOTATION),
            })
        })
        .collect();
    replicas.sort_by_key(|r| r.ordinal);
    let path = mcp_path(a);
    let sse_path = if a.spec.transport == crate::crd::Transport::Sse {
        path.clone()
    } else {
        "/sse".into()
    };
    let ann = a.annotations();
    AdapterTarget {
        name,
        replicas,
        mcp_path: path,
        sse_path,
        access: AdapterAccess {
            created_by: ann.get(CREATED_BY_ANNOTATION).cloned(),
            created_by_issuer: ann.get(CREATED_BY_ISSUER_ANNOTATION).cloned(),
            required_roles: a.spec.required_roles.clone(),
        },
        upstream_headers: Vec::new(),
    }
}
