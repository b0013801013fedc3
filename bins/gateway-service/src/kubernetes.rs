//! The Kubernetes runtime in the binaries: discovery of adapter pods for the data plane, the
//! management API over `McpAdapter` resources, and the controller (behind a Lease, so one of
//! several `gateway-management` replicas runs it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mcp_gateway_core::{AdapterName, Authorizer, SessionStore, StaticResolver};
use mcp_gateway_k8s::runtime::KubeRuntime;
use mcp_gateway_k8s::{RuntimeOptions, controller, discovery, leader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::KubernetesConfig;

/// What the runtime runs for this process; dropping it stops the watches and the controller.
pub struct Kubernetes {
    pub router: Option<axum::Router>,
    _discovery: Option<discovery::Discovery>,
    tasks: Vec<JoinHandle<()>>,
    /// Tells the controller's task to stop and give up the Lease.
    stop: watch::Sender<bool>,
}

impl Kubernetes {
    /// Stops the controller, giving up its Lease so another replica takes over at once (within
    /// 5 s), then the watches.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("the controller did not stop within 5 s");
            }
        }
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn options(config: &KubernetesConfig) -> RuntimeOptions {
    RuntimeOptions {
        namespace: config.namespace.clone(),
        registry: config.image_registry.clone(),
        image_pull_secrets: config.image_pull_secrets.clone(),
        workload_identity_service_account: config.workload_identity_service_account.clone(),
        service_account: None,
        drain_timeout: config.drain_timeout,
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: &KubernetesConfig,
    data_plane: bool,
    management: bool,
    resolver: Arc<StaticResolver>,
    sessions: Arc<dyn SessionStore>,
    authorizer: Arc<dyn Authorizer>,
    options_api: mcp_gateway_api::ApiOptions,
    configured: Vec<AdapterName>,
    audit: Option<Arc<dyn mcp_gateway_core::AuditSink>>,
) -> anyhow::Result<Kubernetes> {
    let client = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            let c = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(c)?
        }
        None => kube::Client::try_default().await.context(
            "runtime = kubernetes: no cluster found (set KUBECONFIG, or run in a pod with a service account)",
        )?,
    };
    let opts = options(config);
    let mut tasks = Vec::new();
    let (stop, mut stopping) = watch::channel(false);
    let discovery = if data_plane {
        let d = discovery::start(client.clone(), &config.namespace, resolver, configured);
        tokio::time::timeout(Duration::from_secs(30), d.ready())
            .await
            .context("runtime = kubernetes: the adapters and pods could not be listed within 30 s (RBAC: list/watch mcpadapters and pods)")?;
        Some(d)
    } else {
        None
    };
    let router = if management {
        let runtime = Arc::new(KubeRuntime::new(client.clone(), opts.clone()));
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("gateway-{}", std::process::id()));
        let identity = format!("{identity}-{}", uuid::Uuid::new_v4().simple());
        let (c, ns, s) = (client.clone(), config.namespace.clone(), sessions.clone());
        tasks.push(tokio::spawn(async move {
            let mut election = leader::LeaderElection::start(
                c.clone(),
                &ns,
                "mcp-gateway-controller",
                identity,
                Duration::from_secs(15),
            );
            loop {
                tokio::select! {
                    () = election.until_leading() => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                tracing::info!("leading: running the McpAdapter controller");
                let mut leading = election.leading.clone();
                tokio::select! {
                    () = controller::run(c.clone(), opts.clone(), s.clone()) => {}
                    _ = leading.wait_for(|l| !*l) => {
                        tracing::warn!("lost the controller lease; stopping the controller");
                    }
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
            // The controller is stopped (its future dropped): only now give the Lease up.
            election.release().await;
        }));
        tracing::info!(namespace = %config.namespace, "management API enabled (Kubernetes runtime)");
        let mut state = mcp_gateway_api::ApiState::new(runtime.clone(), runtime, sessions)
            .with_options(options_api)
            .with_authorizer(authorizer);
        if let Some(sink) = audit {
            state = state.with_audit(sink);
        }
        Some(mcp_gateway_api::router(state))
    } else {
        None
    };
    Ok(Kubernetes {
        router,
        _discovery: discovery,
        tasks,
        stop,
    })
}
