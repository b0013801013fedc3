//! Fake ports for the router tests: they record what the API asked of them and fail on demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use mcp_gateway_api::{ApiOptions, ApiState, router};
use mcp_gateway_core::{
    Adapter, AdapterError, AdapterName, AdapterSpec, AdapterStatus, AdapterStore, LogLine,
    LogQuery, LogStream, Provisioner, ReplicaState, ReplicaStatus, SessionKey, SessionRecord,
    SessionStore, StoreError,
};
use serde_json::Value;
use tokio::sync::mpsc;

pub fn line(replica: u32, time: &str, text: &str) -> LogLine {
    LogLine {
        replica,
        stream: "stdout".into(),
        time: time.into(),
        line: text.into(),
    }
}

pub struct Fakes {
    pub app: Router,
    pub store: Arc<MemoryStore>,
    pub provisioner: Arc<FakeProvisioner>,
    pub sessions: Arc<FakeSessions>,
}

impl Fakes {
    pub fn new() -> Self {
        Self::with_options(ApiOptions::default())
    }

    pub fn with_options(options: ApiOptions) -> Self {
        let store = Arc::new(MemoryStore::default());
        let provisioner = Arc::new(FakeProvisioner::default());
        let sessions = Arc::new(FakeSessions::default());
        let state = ApiState::new(store.clone(), provisioner.clone(), sessions.clone())
            .with_options(options);
        Self {
            app: router(state),
            store,
            provisioner,
            sessions,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.provisioner.calls.lock().unwrap().clone()
    }

    pub fn fail_apply(&self, err: AdapterError) {
        *self.provisioner.fail_apply.lock().unwrap() = Some(err);
    }

    pub fn fail_remove(&self, on: bool) {
        self.provisioner.fail_remove.store(on, Ordering::SeqCst);
    }

    pub fn fail_status(&self, on: bool) {
        self.provisioner.fail_status.store(on, Ordering::SeqCst);
    }

    /// The stored record as JSON (panics if absent).
    pub async fn stored(&self, name: &str) -> Value {
        let a = self.store.get(&name.parse().unwrap()).await.unwrap();
        serde_json::to_value(a.expect("stored")).unwrap()
    }
}

// === MemoryStore ===

#[derive(Default)]
pub struct MemoryStore {
    adapters: Mutex<BTreeMap<String, Adapter>>,
    fail: AtomicBool,
}

impl MemoryStore {
    pub fn fail(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), AdapterError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(AdapterError::Unavailable("adapter store: disk full".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl AdapterStore for MemoryStore {
    async fn list(&self) -> Result<Vec<Adapter>, AdapterError> {
        self.check()?;
        Ok(self.adapters.lock().unwrap().values().cloned().collect())
    }
    async fn get(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        self.check()?;
        Ok(self.adapters.lock().unwrap().get(name.as_str()).cloned())
    }
    async fn create(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        self.check()?;
        let mut map = self.adapters.lock().unwrap();
        if map.contains_key(adapter.spec.name.as_str()) {
            return Err(AdapterError::Exists(adapter.spec.name.clone()));
        }
        let mut adapter = adapter.clone();
        adapter.revision = Some("1".into());
        map.insert(adapter.spec.name.to_string(), adapter);
        Ok("1".into())
    }
    async fn update(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        self.check()?;
        let mut map = self.adapters.lock().unwrap();
        match map.get_mut(adapter.spec.name.as_str()) {
            Some(a) => {
                let current = a.revision.clone().unwrap_or_default();
                if adapter.revision.as_ref().is_some_and(|r| *r != current) {
                    return Err(AdapterError::Conflict(format!(
                        "stale revision (stored {current})"
                    )));
                }
                let next = (current.parse::<u64>().unwrap_or(0) + 1).to_string();
                *a = adapter.clone();
                a.revision = Some(next.clone());
                Ok(next)
            }
            None => Err(AdapterError::NotFound(adapter.spec.name.clone())),
        }
    }
    async fn delete(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        self.check()?;
        Ok(self.adapters.lock().unwrap().remove(name.as_str()))
    }
}

// === FakeProvisioner ===

#[derive(Default)]
pub struct FakeProvisioner {
    calls: Mutex<Vec<String>>,
    applied: Mutex<HashMap<String, Adapter>>,
    /// Fails the next `apply` only (so a rollback's re-apply succeeds).
    fail_apply: Mutex<Option<AdapterError>>,
    fail_remove: AtomicBool,
    fail_status: AtomicBool,
    logs: Mutex<Vec<LogLine>>,
    followers: Mutex<Vec<mpsc::UnboundedSender<LogLine>>>,
    last_log_query: Mutex<Option<LogQuery>>,
}

impl FakeProvisioner {
    pub fn applied(&self, name: &str) -> Option<Adapter> {
        self.applied.lock().unwrap().get(name).cloned()
    }

    pub fn set_logs(&self, lines: Vec<LogLine>) {
        *self.logs.lock().unwrap() = lines;
    }

    /// A replica writes a line: followers get it.
    pub fn write(&self, line: LogLine) {
        self.logs.lock().unwrap().push(line.clone());
        let followers = self.followers.lock().unwrap();
        for f in followers.iter() {
            let _ = f.send(line.clone());
        }
    }

    /// Ends every followed stream.
    pub fn end_follow(&self) {
        self.followers.lock().unwrap().clear();
    }

    pub fn last_log_query(&self) -> Option<LogQuery> {
        self.last_log_query.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait::async_trait]
impl Provisioner for FakeProvisioner {
    fn validate(&self, spec: &AdapterSpec) -> Result<(), AdapterError> {
        self.record(format!("validate {}", spec.name));
        match spec.command.as_deref() {
            Some("no-such-program") => Err(AdapterError::Invalid(
                "command \"no-such-program\" was not found on the PATH".into(),
            )),
            _ => Ok(()),
        }
    }

    async fn apply(&self, adapter: &Adapter) -> Result<(), AdapterError> {
        self.record(format!("apply {}", adapter.spec.name));
        if let Some(err) = self.fail_apply.lock().unwrap().take() {
            return Err(err);
        }
        self.applied
            .lock()
            .unwrap()
            .insert(adapter.spec.name.to_string(), adapter.clone());
        Ok(())
    }

    async fn remove(&self, name: &AdapterName) -> Result<(), AdapterError> {
        self.record(format!("remove {name}"));
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(AdapterError::Unavailable("replica 0 did not stop".into()));
        }
        self.applied.lock().unwrap().remove(name.as_str());
        Ok(())
    }

    async fn status(&self, name: &AdapterName) -> Result<AdapterStatus, AdapterError> {
        if self.fail_status.load(Ordering::SeqCst) {
            return Err(AdapterError::Unavailable("runtime not answering".into()));
        }
        let adapter = self
            .applied(name.as_str())
            .ok_or_else(|| AdapterError::NotFound(name.clone()))?;
        let n = adapter.spec.replica_count;
        Ok(AdapterStatus {
            name: name.clone(),
            replica_count: n,
            ready_replicas: n,
            updated_replicas: n,
            available_replicas: n,
            image: "Unknown".into(),
            replica_status: AdapterStatus::health(n, n),
            replicas: (0..n)
                .map(|index| ReplicaStatus {
                    index,
                    id: None,
                    reason: None,
                    message: None,
                    state: ReplicaState::Ready,
                    url: Some(format!("http://127.0.0.1:{}", 9000 + index)),
                    exit_code: None,
                    restarts: 0,
                    live_sessions: 99,
                })
                .collect(),
        })
    }

    async fn logs(&self, name: &AdapterName, query: LogQuery) -> Result<LogStream, AdapterError> {
        *self.last_log_query.lock().unwrap() = Some(query.clone());
        let adapter = self
            .applied(name.as_str())
            .ok_or_else(|| AdapterError::NotFound(name.clone()))?;
        if let Some(r) = query.replica
            && r >= adapter.spec.replica_count
        {
            return Err(AdapterError::Invalid(format!(
                "adapter {name} has no replica {r} (it has {})",
                adapter.spec.replica_count
            )));
        }
        let since = query.since.map(mcp_gateway_core::rfc3339);
        let mut lines: Vec<LogLine> = self
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| query.replica.is_none_or(|r| l.replica == r))
            .filter(|l| since.as_ref().is_none_or(|s| &l.time >= s))
            .cloned()
            .collect();
        if let Some(n) = query.tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        let past = futures_util::stream::iter(lines);
        if !query.follow {
            return Ok(Box::pin(past));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.followers.lock().unwrap().push(tx);
        let replica = query.replica;
        let live =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|l| (l, rx)) },
            );
        use futures_util::StreamExt;
        Ok(Box::pin(past.chain(live.filter(move |l| {
            std::future::ready(replica.is_none_or(|r| l.replica == r))
        }))))
    }
}

// === FakeSessions ===

#[derive(Default)]
pub struct FakeSessions {
    live: Mutex<HashMap<String, HashMap<Arc<str>, u64>>>,
    fail: AtomicBool,
}

impl FakeSessions {
    pub fn set(&self, adapter: &str, counts: &[(&str, u64)]) {
        self.live.lock().unwrap().insert(
            adapter.into(),
            counts.iter().map(|(r, n)| (Arc::from(*r), *n)).collect(),
        );
    }

    pub fn fail(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl SessionStore for FakeSessions {
    async fn get(&self, _: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        Ok(None)
    }
    async fn put(&self, _: SessionRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn remove(&self, _: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        Ok(None)
    }
    async fn live_sessions(
        &self,
        adapter: &AdapterName,
    ) -> Result<HashMap<Arc<str>, u64>, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("redis down".into()));
        }
        Ok(self
            .live
            .lock()
            .unwrap()
            .get(adapter.as_str())
            .cloned()
            .unwrap_or_default())
    }
    async fn total_sessions(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn idle_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }
}
