//! The in-process session store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use mcp_gateway_core::{
    AdapterName, OwnerSessions, SessionKey, SessionRecord, SessionStore, StoreError, unix_millis,
};

/// Lifetimes of session records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// A session unused for this long expires (default 1 h).
    pub idle_ttl: Duration,
    /// A session older than this expires however busy it is (default 12 h).
    pub max_lifetime: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            idle_ttl: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// Session records in a hash map behind a mutex (critical sections are a lookup or insert;
/// nothing awaits while holding it).
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<SessionKey, SessionRecord>,
    /// adapter → replica → live sessions, kept in step with `records`.
    counts: HashMap<AdapterName, HashMap<Arc<str>, u64>>,
}

impl State {
    fn count(&mut self, adapter: &AdapterName, replica: &Arc<str>, delta: i64) {
        let per = self.counts.entry(adapter.clone()).or_default();
        let n = per.entry(replica.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        let value = *n;
        if value == 0 {
            per.remove(replica);
            if per.is_empty() {
                self.counts.remove(adapter);
            }
        }
        metrics::gauge!(
            "mcp_gateway_sessions_live",
            "adapter" => adapter.to_string(),
            "replica" => replica.to_string()
        )
        .set(value as f64);
    }

    fn insert(&mut self, record: SessionRecord) {
        let (adapter, replica) = (record.key.adapter.clone(), record.replica.clone());
        if let Some(old) = self.records.insert(record.key.clone(), record) {
            self.count(&old.key.adapter, &old.replica, -1);
        }
        self.count(&adapter, &replica, 1);
    }

    fn take(&mut self, key: &SessionKey) -> Option<SessionRecord> {
        let old = self.records.remove(key)?;
        self.count(&old.key.adapter, &old.replica, -1);
        Some(old)
    }
}

impl MemoryStore {
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the whole store would, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, record: &SessionRecord, now: u64) -> bool {
        let idle = self.config.idle_ttl.as_millis() as u64;
        let life = self.config.max_lifetime.as_millis() as u64;
        now.saturating_sub(record.last_seen_ms) >= idle
            || now.saturating_sub(record.created_ms) >= life
    }

    /// Removes every expired record; returns how many.
    pub fn reap(&self) -> usize {
        let now = unix_millis();
        let mut state = self.state();
        let expired: Vec<SessionKey> = state
            .records
            .values()
            .filter(|r| self.expired(r, now))
            .map(|r| r.key.clone())
            .collect();
        for key in &expired {
            state.take(key);
        }
        expired.len()
    }

    /// Reaps expired records every `interval` until the store is dropped.
    pub fn spawn_reaper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let n = store.reap();
                if n > 0 {
                    tracing::debug!(expired = n, "reaped expired sessions");
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        let now = unix_millis();
        let mut state = self.state();
        let Some(record) = state.records.get_mut(key) else {
            return Ok(None);
        };
        if self.expired(record, now) {
            state.take(key);
            return Ok(None);
        }
        record.last_seen_ms = now;
        Ok(Some(record.clone()))
    }

    async fn put(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.state().insert(record);
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.state().take(key))
    }

    async fn live_sessions(
        &self,
        adapter: &AdapterName,
    ) -> Result<HashMap<Arc<str>, u64>, StoreError> {
        Ok(self
            .state()
            .counts
            .get(adapter)
            .cloned()
            .unwrap_or_default())
    }

    async fn total_sessions(&self) -> Result<u64, StoreError> {
        Ok(self.state().records.len() as u64)
    }

    /// A scan of every record (called only when a session is opened, not per request).
    async fn owner_sessions(&self, owner: &str) -> Result<Option<OwnerSessions>, StoreError> {
        let now = unix_millis();
        let idle = self.config.idle_ttl.as_millis() as u64;
        let life = self.config.max_lifetime.as_millis() as u64;
        let mut out = OwnerSessions::default();
        for r in self.state().records.values() {
            if r.principal.as_deref() != Some(owner) || self.expired(r, now) {
                continue;
            }
            out.live += 1;
            let expiry = (r.last_seen_ms + idle).min(r.created_ms + life);
            out.next_expiry_ms = Some(out.next_expiry_ms.map_or(expiry, |e| e.min(expiry)));
        }
        Ok(Some(out))
    }

    fn idle_ttl(&self) -> Duration {
        self.config.idle_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_gateway_core::SessionId;

    fn key(adapter: &str, id: &str) -> SessionKey {
        SessionKey {
            adapter: AdapterName::new(adapter).unwrap(),
            id: SessionId::new(id).unwrap(),
        }
    }

    fn record(adapter: &str, id: &str, replica: &str) -> SessionRecord {
        SessionRecord::new(key(adapter, id), replica.into(), None)
    }

    #[tokio::test]
    async fn put_get_remove_keep_counts_per_replica() {
        let store = MemoryStore::new(StoreConfig::default());
        store.put(record("a", "s1", "0")).await.unwrap();
        store.put(record("a", "s2", "0")).await.unwrap();
        store.put(record("a", "s3", "1")).await.unwrap();
        store.put(record("b", "s1", "1")).await.unwrap();

        let a = AdapterName::new("a").unwrap();
        let counts = store.live_sessions(&a).await.unwrap();
        assert_eq!(counts.get("0"), Some(&2));
        assert_eq!(counts.get("1"), Some(&1));
        assert_eq!(store.total_sessions().await.unwrap(), 4);

        let got = store.get(&key("a", "s3")).await.unwrap().unwrap();
        assert_eq!(&*got.replica, "1");
        assert!(store.get(&key("a", "nope")).await.unwrap().is_none());

        assert!(store.remove(&key("a", "s1")).await.unwrap().is_some());
        assert!(store.remove(&key("a", "s1")).await.unwrap().is_none());
        let counts = store.live_sessions(&a).await.unwrap();
        assert_eq!(counts.get("0"), Some(&1));
        assert!(store.get(&key("a", "s1")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn replacing_a_record_moves_its_count() {
        let store = MemoryStore::new(StoreConfig::default());
        store.put(record("a", "s1", "0")).await.unwrap();
        store.put(record("a", "s1", "1")).await.unwrap();
        let counts = store
            .live_sessions(&AdapterName::new("a").unwrap())
            .await
            .unwrap();
        assert_eq!(counts.get("0"), None);
        assert_eq!(counts.get("1"), Some(&1));
    }

    #[tokio::test]
    async fn idle_records_expire_and_use_extends_them() {
        let store = MemoryStore::new(StoreConfig {
            idle_ttl: Duration::from_millis(300),
            max_lifetime: Duration::from_secs(60),
        });
        store.put(record("a", "busy", "0")).await.unwrap();
        store.put(record("a", "idle", "0")).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(store.get(&key("a", "busy")).await.unwrap().is_some());
        }
        assert!(store.get(&key("a", "idle")).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(store.reap(), 1);
        assert_eq!(store.total_sessions().await.unwrap(), 0);
        assert!(
            store
                .live_sessions(&AdapterName::new("a").unwrap())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn records_expire_at_max_lifetime_even_when_busy() {
        let store = MemoryStore::new(StoreConfig {
            idle_ttl: Duration::from_secs(60),
            max_lifetime: Duration::from_millis(200),
        });
        store.put(record("a", "s", "0")).await.unwrap();
        assert!(store.get(&key("a", "s")).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.get(&key("a", "s")).await.unwrap().is_none());
    }
}
