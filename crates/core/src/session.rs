//! Session records and the session affinity store port.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{AdapterName, SessionId};

/// Milliseconds since the Unix epoch, the clock of session records (shared between gateway
/// processes, so it is wall-clock time).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Identifies a session: session ids are only unique per adapter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub adapter: AdapterName,
    pub id: SessionId,
}

/// How a legacy HTTP+SSE (2024-11-05) session posts its messages upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyEndpoint {
    /// The path and query the replica announced in its `endpoint` event
    /// (`/messages/?session_id=…`), where the gateway forwards the client's POSTs.
    pub path_and_query: String,
}

/// Where a session lives and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub key: SessionKey,
    /// [`Replica::id`](crate::Replica::id) of the replica that owns the session.
    pub replica: Arc<str>,
    /// Subject of the principal that opened the session, when auth is on.
    pub principal: Option<String>,
    /// Set for legacy HTTP+SSE sessions.
    pub legacy: Option<LegacyEndpoint>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
}

impl SessionRecord {
    pub fn new(key: SessionKey, replica: Arc<str>, principal: Option<String>) -> Self {
        let now = unix_millis();
        Self {
            key,
            replica,
            principal,
            legacy: None,
            created_ms: now,
            last_seen_ms: now,
        }
    }
}

/// The live sessions of one principal (an owner, as [`SessionRecord::principal`] holds it),
/// for per-caller quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerSessions {
    pub live: u64,
    /// When the earliest of them expires if unused (unix ms), when known.
    pub next_expiry_ms: Option<u64>,
}

/// Errors of a session store backend. The data plane treats them as "store unavailable".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store limit reached: {0}")]
    Full(String),
}

/// Port: the session affinity store, (adapter, session id) → [`SessionRecord`] with a sliding
/// idle TTL.
///
/// Implementations must make a record readable by `get` (from any gateway sharing the store)
/// once `put` has returned, since the data plane writes the record before the client learns
/// the session id.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The record of a live session, or `None` when unknown or expired. A lookup counts as
    /// activity: it extends the idle TTL (implementations may batch that refresh).
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError>;

    /// Records a new session (or replaces a record with the same key).
    async fn put(&self, record: SessionRecord) -> Result<(), StoreError>;

    /// Removes a session; returns the record if it existed.
    async fn remove(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError>;

    /// Live sessions of an adapter per replica id, used to place new sessions on the replica
    /// with the fewest. Replicas with none may be absent.
    async fn live_sessions(
        &self,
        adapter: &AdapterName,
    ) -> Result<HashMap<Arc<str>, u64>, StoreError>;

    /// Live sessions across all adapters (for the per-gateway session limit).
    async fn total_sessions(&self) -> Result<u64, StoreError>;

    /// Live sessions of `owner` across all adapters (for the per-principal session quota).
    /// `None` from a store that does not count them: no quota is then enforced.
    async fn owner_sessions(&self, owner: &str) -> Result<Option<OwnerSessions>, StoreError> {
        let _ = owner;
        Ok(None)
    }

    /// The idle TTL of records: a session unused for this long expires.
    fn idle_ttl(&self) -> Duration;

    /// `Some(reason)` while the store works in a degraded mode (a shared backend unreachable,
    /// say): shown by readiness checks, which stay ready.
    fn degraded(&self) -> Option<String> {
        None
    }
}

#[async_trait::async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        (**self).get(key).await
    }
    async fn put(&self, record: SessionRecord) -> Result<(), StoreError> {
        (**self).put(record).await
    }
    async fn remove(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        (**self).remove(key).await
    }
    async fn live_sessions(
        &self,
        adapter: &AdapterName,
    ) -> Result<HashMap<Arc<str>, u64>, StoreError> {
        (**self).live_sessions(adapter).await
    }
    async fn total_sessions(&self) -> Result<u64, StoreError> {
        (**self).total_sessions().await
    }
    async fn owner_sessions(&self, owner: &str) -> Result<Option<OwnerSessions>, StoreError> {
        (**self).owner_sessions(owner).await
    }
    fn idle_ttl(&self) -> Duration {
        (**self).idle_ttl()
    }
    fn degraded(&self) -> Option<String> {
        (**self).degraded()
    }
}
