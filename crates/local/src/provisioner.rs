//! [`LocalProvisioner`]: the [`Provisioner`] that runs adapters as local child processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use mcp_gateway_core::{
    Adapter, AdapterError, AdapterName, AdapterSpec, AdapterStatus, AdapterTarget, LogQuery,
    LogStream, Provisioner, Replica, ReplicaState, ReplicaStatus, SessionStore, StaticResolver,
    Transport,
};

use crate::logs::{AdapterLogs, Source};
use crate::runtime::AdapterRuntime;
use crate::validate::validate;

/// Settings of the local runtime. `LocalOptions::default()` runs on a laptop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Output lines kept per replica (older ones are dropped). Default 1000.
    pub log_lines: usize,
    /// Time between SIGTERM and SIGKILL when a replica is stopped. Default 5 s.
    pub kill_grace: Duration,
    /// How long a replaced or scaled-away replica keeps serving its sessions before it is
    /// stopped (sooner once it has none, when a session store is given). Default 30 s.
    pub drain_period: Duration,
    /// How often the session store is asked whether a draining replica has sessions left.
    /// Default 1 s.
    pub drain_check_interval: Duration,
    /// Time between readiness probes of a starting replica. Default 200 ms.
    pub probe_interval: Duration,
    /// How long one readiness probe may take. Default 1 s.
    pub probe_timeout: Duration,
    /// Wait before the first restart of a crashed replica; doubled after each crash. Default 1 s.
    pub restart_backoff: Duration,
    /// Longest wait between restarts; a replica that was ready this long before it crashed
    /// starts again from `restart_backoff`. Default 30 s.
    pub restart_backoff_max: Duration,
    /// Environment variables of the gateway passed to every replica (the rest of the
    /// gateway's environment, secrets included, is not). The adapter's
    /// `environmentVariables` and `PORT` are added. Default: `PATH`, `HOME`, `USER`,
    /// `LOGNAME`, `SHELL`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR`.
    pub pass_env: Vec<String>,
    /// How long `apply` of a changed spec waits for its roll-out: until `replicaCount`
    /// replicas of the new spec are ready. Beyond it (or once a new replica crashed 3 times in
    /// a row) `apply` fails, and the API puts the previous spec back. Default 2 minutes.
    pub rollout_timeout: Duration,
    /// Where each running replica's pid file is kept (see [`reap_orphans`]); `None` (the
    /// default): none are written, and replicas of a gateway killed with SIGKILL outlive it.
    ///
    /// [`reap_orphans`]: crate::reap_orphans
    pub run_dir: Option<std::path::PathBuf>,
    /// Names this runtime must not deploy: adapters the gateway serves from its configuration
    /// file. A record with such a name is refused (409), so nobody can take over a configured
    /// adapter's route by creating a namesake. Default: none.
    pub reserved_names: Vec<AdapterName>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            log_lines: 1000,
            kill_grace: Duration::from_secs(5),
            drain_period: Duration::from_secs(30),
            drain_check_interval: Duration::from_secs(1),
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
            rollout_timeout: Duration::from_secs(120),
            run_dir: None,
            pass_env: [
                "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR",
            ]
            .map(String::from)
            .to_vec(),
            reserved_names: Vec::new(),
        }
    }
}

/// Hook for running `stdio` adapters: the stdio↔HTTP bridge implements it.
#[async_trait::async_trait]
pub trait StdioLauncher: Send + Sync + 'static {
    /// Starts serving a (validated) stdio adapter over HTTP on loopback. Called again with the
    /// changed adapter on every update, after the previous bridge was stopped.
    /// `logs` keeps what the bridged processes write, for the logs endpoint.
    async fn launch(&self, adapter: &Adapter, logs: LogSink) -> Result<StdioBridge, AdapterError>;
}

/// Where a stdio bridge writes what its processes print.
#[derive(Clone)]
pub struct LogSink {
    logs: Arc<AdapterLogs>,
}

impl LogSink {
    pub fn stdout(&self, line: &str) {
        self.logs.push(0, Source::Stdout, line);
    }

    pub fn stderr(&self, line: &str) {
        self.logs.push(0, Source::Stderr, line);
    }
}

/// A running bridge of one stdio adapter, as a [`StdioLauncher`] returns it.
pub struct StdioBridge {
    /// Base URLs the bridge serves on (`http://127.0.0.1:PORT`, no path), one per replica
    /// the data plane sees (usually one: the bridge runs a process per MCP session itself).
    pub base_urls: Vec<String>,
    /// The bridge's streamable HTTP path (`/mcp`).
    pub mcp_path: String,
    /// The bridge's legacy HTTP+SSE path (`/sse`).
    pub sse_path: String,
    /// Headers the data plane must add to every request it forwards to the bridge (its access
    /// token): the bridge refuses requests without them, so only the gateway reaches it.
    pub upstream_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Stops the bridge and every process it runs; awaited on update, remove and shutdown.
    pub stop: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for StdioBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioBridge")
            .field("base_urls", &self.base_urls)
            .field("mcp_path", &self.mcp_path)
            .field("sse_path", &self.sse_path)
            .finish_non_exhaustive()
    }
}

enum Deployed {
    Processes(AdapterRuntime),
    Bridge {
        status: AdapterStatus,
        stop: BoxFuture<'static, ()>,
        logs: Arc<AdapterLogs>,
    },
}

/// Runs adapters as child processes of the gateway (or fronts their `upstreams`) and keeps
/// the data plane's [`StaticResolver`] current.
///
/// Replica `N` of an adapter is a process started with `PORT` (and `{port}` in `args`) set to
/// a free loopback port, and `{replica}` in `args` set to `N`; its resolver id is `"N.G.I"`:
/// `G` counts the processes started for that ordinal (a replica being replaced and its
/// successor never share an id), `I` is unique to this deployment of the adapter (a deleted
/// and re-created namesake, or the adapter after a gateway restart, never inherits the
/// sessions of its predecessor's replicas).
pub struct LocalProvisioner {
    resolver: Arc<StaticResolver>,
    options: Arc<LocalOptions>,
    stdio: Option<Arc<dyn StdioLauncher>>,
    sessions: Option<Arc<dyn SessionStore>>,
    /// Serialises apply, remove and shutdown.
    ops: tokio::sync::Mutex<()>,
    deployed: Mutex<HashMap<AdapterName, Arc<DeployedCell>>>,
}

/// One adapter's deployment; `None` while it is being replaced.
type DeployedCell = tokio::sync::Mutex<Option<Deployed>>;

impl LocalProvisioner {
    /// A provisioner keeping `resolver` (the data plane's) current.
    pub fn new(resolver: Arc<StaticResolver>, options: LocalOptions) -> Self {
        Self {
            resolver,
            options: Arc::new(options),
            stdio: None,
            sessions: None,
            ops: tokio::sync::Mutex::new(()),
            deployed: Mutex::default(),
        }
    }

    /// Runs `stdio` adapters through this launcher (without one, applying them fails).
    pub fn with_stdio_launcher(mut self, launcher: Arc<dyn StdioLauncher>) -> Self {
        self.stdio = Some(launcher);
        self
    }

    /// Stops a draining replica as soon as this store counts no live session on it, rather
    /// than only after [`LocalOptions::drain_period`].
    pub fn with_session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.sessions = Some(store);
        self
    }

    pub fn options(&self) -> &LocalOptions {
        &self.options
    }

    /// Stops every adapter's processes (TERM, then KILL after the grace period) and drops them
    /// from the resolver. The gateway calls it on exit; records are untouched, so `apply` of
    /// each stored adapter brings them back at the next start.
    pub async fn shutdown(&self) {
        let _ops = self.ops.lock().await;
        let cells: Vec<_> = self.map().drain().collect();
        let stops = cells.into_iter().map(|(_, cell)| async move {
            if let Some(deployed) = cell.lock().await.take() {
                undeploy(&self.resolver, deployed).await;
            }
        });
        futures_util::future::join_all(stops).await;
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<AdapterName, Arc<DeployedCell>>> {
        self.deployed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cell(&self, name: &AdapterName) -> Result<Arc<DeployedCell>, AdapterError> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| AdapterError::NotFound(name.clone()))
    }

    async fn launch_bridge(&self, adapter: &Adapter) -> Result<Deployed, AdapterError> {
        let Some(launcher) = &self.stdio else {
            return Err(AdapterError::Invalid(
                "stdio adapters are not supported by this runtime yet".into(),
            ));
        };
        let logs = Arc::new(AdapterLogs::new(self.options.log_lines));
        let bridge = launcher
            .launch(adapter, LogSink { logs: logs.clone() })
            .await?;
        let incarnation = crate::runtime::incarnation();
        let replicas: Vec<Replica> = (0u32..)
            .zip(&bridge.base_urls)
            .map(|(i, url)| Replica {
                id: format!("{i}.0.{incarnation}").into(),
                ordinal: i,
                base_url: url.trim_end_matches('/').into(),
                ready: true,
                draining: false,
            })
            .collect();
        let ready = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
        let status = AdapterStatus {
            name: adapter.spec.name.clone(),
            // The bridge runs a process per session: `replicaCount` does not apply.
            replica_count: ready,
            ready_replicas: ready,
            updated_replicas: ready,
            available_replicas: ready,
            image: AdapterStatus::image_of(&adapter.spec),
            replica_status: AdapterStatus::health(ready, ready),
            replicas: replicas
                .iter()
                .map(|r| ReplicaStatus {
                    index: r.ordinal,
                    id: None,
                    reason: None,
                    message: None,
                    state: ReplicaState::Ready,
                    url: Some(r.base_url.to_string()),
                    exit_code: None,
                    restarts: 0,
                    live_sessions: 0,
                })
                .collect(),
        };
        self.resolver.upsert(AdapterTarget {
            name: adapter.spec.name.clone(),
            replicas,
            mcp_path: bridge.mcp_path,
            sse_path: bridge.sse_path,
            access: adapter.access(),
            upstream_headers: bridge.upstream_headers,
        });
        Ok(Deployed::Bridge {
            status,
            stop: bridge.stop,
            logs,
        })
    }
}

async fn undeploy(resolver: &StaticResolver, deployed: Deployed) {
    match deployed {
        Deployed::Processes(runtime) => runtime.shutdown().await,
        Deployed::Bridge { status, stop, .. } => {
            resolver.remove(status.name.as_str());
            stop.await;
            tracing::info!(adapter = %status.name, "stdio bridge stopped");
        }
    }
}

impl LocalProvisioner {
    fn check_reserved(&self, name: &AdapterName) -> Result<(), AdapterError> {
        if self.options.reserved_names.contains(name) {
            return Err(AdapterError::Reserved(name.clone()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provisioner for LocalProvisioner {
    fn validate(&self, spec: &AdapterSpec) -> Result<(), AdapterError> {
        self.check_reserved(&spec.name)?;
        validate(spec)
    }

    async fn apply(&self, adapter: &Adapter) -> Result<(), AdapterError> {
        self.check_reserved(&adapter.spec.name)?;
        validate(&adapter.spec)?;
        let _ops = self.ops.lock().await;
        let name = adapter.spec.name.clone();
        let cell = self.map().entry(name.clone()).or_default().clone();
        let mut slot = cell.lock().await;
        let stdio = adapter.spec.transport == Transport::Stdio;
        if stdio && self.stdio.is_none() {
            if slot.is_none() {
                self.map().remove(&name);
            }
            return Err(AdapterError::Invalid(
                "stdio adapters are not supported by this runtime yet".into(),
            ));
        }
        let adapter = Arc::new(adapter.clone());
        match slot.take() {
            Some(Deployed::Processes(mut runtime)) if !stdio => {
                runtime.update(adapter).await;
                let view = runtime.view.clone();
                *slot = Some(Deployed::Processes(runtime));
                // Waited for without the locks: status and other adapters stay available.
                drop(slot);
                drop(_ops);
                return crate::runtime::wait_rolled_out(
                    &view,
                    self.options.rollout_timeout,
                    self.options.probe_interval,
                )
                .await;
            }
            Some(old) => undeploy(&self.resolver, old).await,
            None => {}
        }
        let deployed = if stdio {
            match self.launch_bridge(&adapter).await {
                Ok(deployed) => deployed,
                Err(err) => {
                    self.resolver.remove(name.as_str());
                    self.map().remove(&name);
                    return Err(err);
                }
            }
        } else {
            Deployed::Processes(
                AdapterRuntime::start(
                    adapter,
                    self.resolver.clone(),
                    self.options.clone(),
                    self.sessions.clone(),
                )
                .await,
            )
        };
        *slot = Some(deployed);
        Ok(())
    }

    async fn remove(&self, name: &AdapterName) -> Result<(), AdapterError> {
        let _ops = self.ops.lock().await;
        let Some(cell) = self.map().remove(name) else {
            // Nothing deployed: removing is idempotent.
            self.resolver.remove(name.as_str());
            return Ok(());
        };
        if let Some(deployed) = cell.lock().await.take() {
            undeploy(&self.resolver, deployed).await;
        }
        Ok(())
    }

    async fn status(&self, name: &AdapterName) -> Result<AdapterStatus, AdapterError> {
        let cell = self.cell(name)?;
        let slot = cell.lock().await;
        match &*slot {
            Some(Deployed::Processes(runtime)) => Ok(runtime.view.status()),
            Some(Deployed::Bridge { status, .. }) => Ok(status.clone()),
            None => Err(AdapterError::NotFound(name.clone())),
        }
    }

    async fn logs(&self, name: &AdapterName, query: LogQuery) -> Result<LogStream, AdapterError> {
        let cell = self.cell(name)?;
        let slot = cell.lock().await;
        match &*slot {
            Some(Deployed::Processes(runtime)) => {
                let view = &runtime.view;
                if let Some(r) = query.replica
                    && !view.has_ordinal(r)
                    && !view.logs.has_replica(r)
                {
                    return Err(AdapterError::Invalid(format!(
                        "adapter {name} has no replica {r}"
                    )));
                }
                Ok(view.logs.stream(&query))
            }
            // Every bridged process counts as replica 0: sessions come and go too fast to be
            // replicas of their own (each line names the session's process).
            Some(Deployed::Bridge { logs, .. }) => Ok(logs.stream(&query)),
            None => Err(AdapterError::NotFound(name.clone())),
        }
    }
}
