//! One adapter's replicas: a task that converges them on the adapter's latest spec (scale,
//! roll out, drain) and a shared view that status, logs and the resolver read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mcp_gateway_core::{
    Adapter, AdapterAccess, AdapterName, AdapterStatus, AdapterTarget, Replica, ReplicaState,
    ReplicaStatus, SessionStore, StaticResolver, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::LocalOptions;
use crate::logs::AdapterLogs;
use crate::process::{Launch, ProcessContext, ReplicaProcess, Snapshot};

/// Handle of one adapter's runtime.
pub(crate) struct AdapterRuntime {
    pub view: Arc<View>,
    desired: watch::Sender<Option<Desired>>,
    /// The generation of the last spec the reconciler has acted on.
    processed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// A spec to converge on, numbered so `apply` can wait until it has been acted on.
#[derive(Clone)]
struct Desired {
    adapter: Arc<Adapter>,
    generation: u64,
}

impl AdapterRuntime {
    /// Starts converging on `adapter`; returns once the replicas are started (not ready).
    pub(crate) async fn start(
        adapter: Arc<Adapter>,
        resolver: Arc<StaticResolver>,
        options: Arc<LocalOptions>,
        sessions: Option<Arc<dyn SessionStore>>,
    ) -> Self {
        let name = adapter.spec.name.clone();
        let logs = Arc::new(AdapterLogs::new(options.log_lines));
        let view = Arc::new(View {
            name: name.clone(),
            resolver,
            logs: logs.clone(),
            inner: Mutex::default(),
        });
        let on_change: Arc<dyn Fn() + Send + Sync> = {
            let view = Arc::downgrade(&view);
            Arc::new(move || {
                if let Some(view) = view.upgrade() {
                    view.publish();
                }
            })
        };
        let ctx = Arc::new(ProcessContext {
            adapter: name,
            logs,
            options: options.clone(),
            on_change,
        });
        let (desired, desired_rx) = watch::channel(Some(Desired {
            adapter,
            generation: 1,
        }));
        let (processed_tx, processed) = watch::channel(0);
        let reconciler = Reconciler {
            view: view.clone(),
            ctx,
            options,
            sessions,
            desired: desired_rx,
            processed: processed_tx,
            active: BTreeMap::new(),
            pending: None,
            draining: Vec::new(),
            stopping: Vec::new(),
            generations: HashMap::new(),
            incarnation: incarnation(),
            synced: 0,
        };
        let task = tokio::spawn(reconciler.run());
        let mut runtime = Self {
            view,
            desired,
            processed,
            task,
        };
        runtime.wait_processed(1).await;
        runtime
    }

    /// Converges on a changed spec: returns once replicas are started, scaled or draining as
    /// the spec asks; a rollout goes on in the background.
    pub(crate) async fn update(&mut self, adapter: Arc<Adapter>) {
        let generation = self.desired.borrow().as_ref().map_or(0, |d| d.generation) + 1;
        self.desired.send_replace(Some(Desired {
            adapter,
            generation,
        }));
        self.wait_processed(generation).await;
    }

    async fn wait_processed(&mut self, generation: u64) {
        // Fails only if the reconciler is gone, which `status` then shows.
        let _ = self.processed.wait_for(|&g| g >= generation).await;
    }

    /// Drops the adapter from the resolver and stops every process it runs; returns once
    /// they are gone.
    pub(crate) async fn shutdown(self) {
        self.view.retire();
        self.desired.send_replace(None);
        if let Err(err) = self.task.await {
            tracing::error!(adapter = %self.view.name, error = %err, "adapter runtime failed");
        }
    }
}

// === View ===

/// What status, logs and the resolver see of an adapter's replicas.
pub(crate) struct View {
    pub name: AdapterName,
    pub logs: Arc<AdapterLogs>,
    resolver: Arc<StaticResolver>,
    inner: Mutex<ViewInner>,
}

#[derive(Default)]
struct ViewInner {
    retired: bool,
    replica_count: u32,
    mcp_path: String,
    sse_path: String,
    access: AdapterAccess,
    upstream_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    image: String,
    members: Vec<Member>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Active,
    /// Started to replace the active replica of its ordinal once ready.
    Pending,
    Draining,
}

struct Member {
    ordinal: u32,
    id: Arc<str>,
    role: Role,
    /// Started from the latest spec.
    updated: bool,
    kind: MemberKind,
}

enum MemberKind {
    Process(watch::Receiver<Snapshot>),
    External(Arc<str>),
}

impl View {
    fn inner(&self) -> std::sync::MutexGuard<'_, ViewInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retire(&self) {
        let mut inner = self.inner();
        inner.retired = true;
        self.resolver.remove(self.name.as_str());
    }

    /// Writes the adapter's current replicas into the resolver.
    fn publish(&self) {
        let inner = self.inner();
        if inner.retired {
            return;
        }
        let replicas = inner
            .members
            .iter()
            .filter_map(|m| {
                let (base_url, ready) = match &m.kind {
                    MemberKind::External(url) => (url.clone(), true),
                    MemberKind::Process(rx) => {
                        let s = rx.borrow();
                        // A crashed replica is left out: its sessions are gone, and clients
                        // told so (404) start new ones at once.
                        let port = s.port.filter(|_| s.state != ReplicaState::Crashed)?;
                        let url: Arc<str> = format!("http://127.0.0.1:{port}").into();
                        (url, s.state == ReplicaState::Ready)
                    }
                };
                Some(Replica {
                    id: m.id.clone(),
                    ordinal: m.ordinal,
                    base_url,
                    ready,
                    draining: m.role == Role::Draining,
                })
            })
            .collect();
        self.resolver.upsert(AdapterTarget {
            name: self.name.clone(),
            replicas,
            mcp_path: inner.mcp_path.clone(),
            sse_path: inner.sse_path.clone(),
            access: inner.access.clone(),
            upstream_headers: inner.upstream_headers.clone(),
        });
    }

    pub(crate) fn status(&self) -> AdapterStatus {
        let inner = self.inner();
        let replicas: Vec<ReplicaStatus> = inner
            .members
            .iter()
            .map(|m| match &m.kind {
                MemberKind::External(url) => ReplicaStatus {
                    index: m.ordinal,
                    id: None,
                    reason: None,
                    message: None,
                    state: ReplicaState::External,
                    url: Some(url.to_string()),
                    exit_code: None,
                    restarts: 0,
                    live_sessions: 0,
                },
                MemberKind::Process(rx) => {
                    let s = rx.borrow();
                    ReplicaStatus {
                        index: m.ordinal,
                        id: None,
                        reason: None,
                        message: None,
                        state: if m.role == Role::Draining {
                            ReplicaState::Draining
                        } else {
                            s.state
                        },
                        url: s.port.map(|p| format!("http://127.0.0.1:{p}")),
                        exit_code: s.exit_code.filter(|_| s.state == ReplicaState::Crashed),
                        restarts: s.restarts,
                        live_sessions: 0,
                    }
                }
            })
            .collect();
        let ready_replicas = inner
            .members
            .iter()
            .zip(&replicas)
            .filter(|(m, r)| {
                m.role == Role::Active
                    && matches!(r.state, ReplicaState::Ready | ReplicaState::External)
            })
            .count();
        let ready_replicas = u32::try_from(ready_replicas).unwrap_or(u32::MAX);
        let updated_replicas = inner.members.iter().filter(|m| m.updated).count();
        AdapterStatus {
            name: self.name.clone(),
            replica_count: inner.replica_count,
            ready_replicas,
            updated_replicas: u32::try_from(updated_replicas).unwrap_or(u32::MAX),
            available_replicas: ready_replicas,
            image: inner.image.clone(),
            replica_status: AdapterStatus::health(ready_replicas, inner.replica_count),
            replicas,
        }
    }

    /// Where the roll-out of the latest spec stands: done once `replicaCount` replicas of it
    /// serve and answer; failed once one of them crashed [`CRASHES_BEFORE_FAILED`] times in a
    /// row (or the adapter was removed meanwhile).
    pub(crate) fn rollout(&self) -> Rollout {
        let inner = self.inner();
        if inner.retired {
            return Rollout::Failed("the adapter was removed meanwhile".to_owned());
        }
        let mut ready = 0;
        for m in inner.members.iter().filter(|m| m.updated) {
            match &m.kind {
                MemberKind::External(_) => ready += u32::from(m.role == Role::Active),
                MemberKind::Process(rx) => {
                    let s = rx.borrow();
                    if s.state == ReplicaState::Crashed && s.restarts + 1 >= CRASHES_BEFORE_FAILED {
                        let how = s.exit_code.map_or_else(
                            || "could not be started".to_owned(),
                            |c| format!("exited with code {c}"),
                        );
                        return Rollout::Failed(format!(
                            "replica {} of the new spec {how} {} times in a row (its logs say \
                             why)",
                            m.ordinal,
                            s.restarts + 1
                        ));
                    }
                    ready += u32::from(m.role == Role::Active && s.state == ReplicaState::Ready);
                }
            }
        }
        if ready >= inner.replica_count {
            Rollout::Done
        } else {
            Rollout::InProgress
        }
    }

    /// The ordinals that exist now.
    pub(crate) fn has_ordinal(&self, ordinal: u32) -> bool {
        self.inner().members.iter().any(|m| m.ordinal == ordinal)
    }
}

/// Crashes of a replica of a new spec, one after the other, after which its roll-out has
/// failed (rather than waiting for the timeout).
pub(crate) const CRASHES_BEFORE_FAILED: u32 = 3;

/// See [`View::rollout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rollout {
    Done,
    InProgress,
    Failed(String),
}

/// Waits until the roll-out of the latest spec is done, has failed, or `timeout` passed.
pub(crate) async fn wait_rolled_out(
    view: &View,
    timeout: std::time::Duration,
    poll: std::time::Duration,
) -> Result<(), mcp_gateway_core::AdapterError> {
    let deadline = Instant::now() + timeout;
    loop {
        match view.rollout() {
            Rollout::Done => return Ok(()),
            Rollout::Failed(why) => {
                return Err(mcp_gateway_core::AdapterError::Invalid(format!(
                    "the new spec does not run: {why}"
                )));
            }
            Rollout::InProgress if Instant::now() >= deadline => {
                return Err(mcp_gateway_core::AdapterError::Unavailable(format!(
                    "the replicas of the new spec were not all ready within {timeout:?}"
                )));
            }
            Rollout::InProgress => tokio::time::sleep(poll).await,
        }
    }
}

// === Reconciler ===

enum Slot {
    Process(ReplicaProcess),
    External(Arc<str>),
}

struct Reconciler {
    view: Arc<View>,
    ctx: Arc<ProcessContext>,
    options: Arc<LocalOptions>,
    sessions: Option<Arc<dyn SessionStore>>,
    desired: watch::Receiver<Option<Desired>>,
    processed: watch::Sender<u64>,
    /// The replica serving each ordinal.
    active: BTreeMap<u32, Slot>,
    /// A new replica for one ordinal, promoted once ready (one at a time: a rollout).
    pending: Option<ReplicaProcess>,
    /// Replaced or scaled-away replicas: serve their sessions until the deadline.
    draining: Vec<(ReplicaProcess, Instant)>,
    /// Replicas told to stop whose process group may not be gone yet.
    stopping: Vec<JoinHandle<()>>,
    /// Processes started per ordinal, so a replacement never reuses a live replica's id.
    generations: HashMap<u32, u32>,
    /// Unique to this deployment of the adapter, in every replica id: a deleted and
    /// re-created adapter of the same name (or the same adapter after a restart) never has
    /// a replica id of its predecessor, so the old sessions' records match no replica (404)
    /// instead of sending their requests to the new processes.
    incarnation: Arc<str>,
    /// The spec generation whose access and upstream headers the view holds: secrets are
    /// read once per spec, not on every pass of the loop.
    synced: u64,
}

impl Reconciler {
    async fn run(mut self) {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            let Some(Desired {
                adapter,
                generation,
            }) = desired
            else {
                break;
            };
            self.converge(&adapter);
            self.sync_view(&adapter, generation);
            self.view.publish();
            self.processed.send_replace(generation);
            self.stopping.retain(|t| !t.is_finished());

            let mut pending = self.pending.as_ref().map(ReplicaProcess::watch);
            if self.pending.as_ref().is_some_and(ReplicaProcess::is_ready) {
                continue;
            }
            let next_deadline = self.draining.iter().map(|(_, t)| *t).min();
            let check_sessions = self.sessions.is_some() && !self.draining.is_empty();
            tokio::select! {
                changed = self.desired.changed() => if changed.is_err() { break },
                _ = async { pending.as_mut()?.changed().await.ok() }, if pending.is_some() => {}
                () = sleep_until(next_deadline), if next_deadline.is_some() => {}
                () = tokio::time::sleep(self.options.drain_check_interval), if check_sessions => {
                    self.stop_idle_drains().await;
                }
            }
        }
        self.stop_everything().await;
    }

    /// Moves towards the spec as far as it can without waiting.
    fn converge(&mut self, adapter: &Adapter) {
        let spec = &adapter.spec;
        let Some(launch) = Launch::of(spec) else {
            // Upstreams: nothing runs, the gateway fronts them.
            if let Some(p) = self.pending.take() {
                self.stop(p);
            }
            for (_, slot) in std::mem::take(&mut self.active) {
                if let Slot::Process(p) = slot {
                    self.retire(p);
                }
            }
            for (i, url) in spec.upstreams.iter().enumerate() {
                let url: Arc<str> = url.trim_end_matches('/').into();
                self.active
                    .insert(u32::try_from(i).unwrap_or(u32::MAX), Slot::External(url));
            }
            self.expire_drains();
            return;
        };
        let launch = Arc::new(launch);
        let count = spec.replica_count;

        self.active.retain(|_, s| matches!(s, Slot::Process(_)));
        // Scale down: the highest ordinals go first.
        for (_, slot) in self.active.split_off(&count) {
            if let Slot::Process(p) = slot {
                self.retire(p);
            }
        }
        if let Some(p) = self.pending.take() {
            if p.ordinal >= count || p.launch != launch {
                self.stop(p);
            } else if p.is_ready() {
                if let Some(Slot::Process(old)) = self.active.insert(p.ordinal, Slot::Process(p)) {
                    self.retire(old);
                }
            } else {
                self.pending = Some(p);
            }
        }
        // Scale up.
        for i in 0..count {
            if !self.active.contains_key(&i) {
                let p = self.spawn(i, &launch);
                self.active.insert(i, Slot::Process(p));
            }
        }
        // Roll out, lowest ordinal first: a replica that is not ready is replaced at once; a
        // ready one only once its successor is ready.
        for i in 0..count {
            let outdated_ready = match self.active.get(&i) {
                Some(Slot::Process(p)) if p.launch != launch => p.is_ready(),
                _ => continue,
            };
            if !outdated_ready {
                let p = self.spawn(i, &launch);
                if let Some(Slot::Process(old)) = self.active.insert(i, Slot::Process(p)) {
                    self.stop(old);
                }
            } else if self.pending.is_none() {
                self.pending = Some(self.spawn(i, &launch));
            }
        }
        self.expire_drains();
    }

    fn spawn(&mut self, ordinal: u32, launch: &Arc<Launch>) -> ReplicaProcess {
        let generation = self.generations.entry(ordinal).or_default();
        let id: Arc<str> = format!("{ordinal}.{generation}.{}", self.incarnation).into();
        *generation += 1;
        ReplicaProcess::spawn(self.ctx.clone(), ordinal, id, launch.clone())
    }

    /// A ready replica drains (keeps its sessions, takes no new ones) before it is stopped;
    /// any other is stopped at once.
    fn retire(&mut self, p: ReplicaProcess) {
        if p.is_ready() {
            tracing::info!(adapter = %self.view.name, replica = %p.id, "replica draining");
            let deadline = Instant::now() + self.options.drain_period;
            self.draining.push((p, deadline));
        } else {
            self.stop(p);
        }
    }

    fn stop(&mut self, p: ReplicaProcess) {
        self.stopping.push(p.stop());
    }

    fn expire_drains(&mut self) {
        let now = Instant::now();
        let (expired, kept) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(_, deadline)| *deadline <= now);
        self.draining = kept;
        for (p, _) in expired {
            self.stop(p);
        }
    }

    /// Stops draining replicas that have no live sessions left.
    async fn stop_idle_drains(&mut self) {
        let Some(sessions) = &self.sessions else {
            return;
        };
        let live = match sessions.live_sessions(&self.view.name).await {
            Ok(live) => live,
            Err(err) => {
                tracing::debug!(adapter = %self.view.name, error = %err, "session counts unavailable");
                return;
            }
        };
        let (idle, busy) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(p, _)| live.get(&p.id).copied().unwrap_or(0) == 0);
        self.draining = busy;
        for (p, _) in idle {
            tracing::info!(adapter = %self.view.name, replica = %p.id, "drained replica has no sessions left");
            self.stop(p);
        }
    }

    fn sync_view(&mut self, adapter: &Adapter, generation: u64) {
        let spec = &adapter.spec;
        let latest = Launch::of(spec);
        let process = |p: &ReplicaProcess, role| Member {
            ordinal: p.ordinal,
            id: p.id.clone(),
            role,
            updated: role != Role::Draining && latest.as_ref() == Some(&*p.launch),
            kind: MemberKind::Process(p.watch()),
        };
        let mut members: Vec<Member> = self
            .active
            .iter()
            .map(|(&ordinal, slot)| match slot {
                Slot::Process(p) => process(p, Role::Active),
                Slot::External(url) => Member {
                    ordinal,
                    id: format!("{ordinal}.0.{}", self.incarnation).into(),
                    role: Role::Active,
                    updated: true,
                    kind: MemberKind::External(url.clone()),
                },
            })
            .chain(self.pending.iter().map(|p| process(p, Role::Pending)))
            .chain(
                self.draining
                    .iter()
                    .map(|(p, _)| process(p, Role::Draining)),
            )
            .collect();
        members.sort_by_key(|m| (m.ordinal, m.role));
        let mut inner = self.view.inner();
        inner.members = members;
        inner.image = AdapterStatus::image_of(spec);
        inner.replica_count = if spec.upstreams.is_empty() {
            spec.replica_count
        } else {
            u32::try_from(spec.upstreams.len()).unwrap_or(u32::MAX)
        };
        inner.mcp_path = match spec.transport {
            Transport::Sse => "/mcp".to_owned(),
            _ => spec.mcp_path().to_owned(),
        };
        inner.sse_path = match spec.transport {
            Transport::Sse => spec.mcp_path().to_owned(),
            _ => "/sse".to_owned(),
        };
        if self.synced != generation {
            self.synced = generation;
            inner.access = adapter.access();
            // Checked when the spec was validated; a secret gone since then leaves the header
            // out (the replica answers as it does without it) rather than stopping the adapter.
            inner.upstream_headers = crate::secrets::upstream_headers(&spec.upstream_headers)
                .unwrap_or_else(|e| {
                    tracing::warn!(adapter = %spec.name, error = %e, "upstream header left out");
                    Vec::new()
                });
        }
    }

    async fn stop_everything(mut self) {
        self.view.retire();
        let mut tasks = std::mem::take(&mut self.stopping);
        tasks.extend(self.pending.take().map(ReplicaProcess::stop));
        tasks.extend(self.draining.drain(..).map(|(p, _)| p.stop()));
        tasks.extend(
            std::mem::take(&mut self.active)
                .into_values()
                .filter_map(|s| match s {
                    Slot::Process(p) => Some(p.stop()),
                    Slot::External(_) => None,
                }),
        );
        futures_util::future::join_all(tasks).await;
        self.view.inner().members.clear();
    }
}

/// A token no other deployment of this gateway's lifetime, nor of an earlier run, shares:
/// the wall clock in microseconds and a counter of this process, in base 36.
pub(crate) fn incarnation() -> Arc<str> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}{}", base36(micros), base36(n)).into()
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
