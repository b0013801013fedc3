//! MCP sessions of the session era (2024-11-05 … 2025-11-25) and the registry that owns them.
//!
//! A session holds the negotiated protocol version, the `counter_increment` counter, the SSE
//! event-id sequence and the senders of its open server-to-client streams. Closing a session
//! drops those senders, which ends the streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::mpsc;

/// A channel of outgoing JSON-RPC messages (responses and notifications) to one client stream.
pub type Outbound = mpsc::Sender<Value>;

/// One MCP session.
#[derive(Debug)]
pub struct Session {
    id: String,
    protocol_version: Mutex<Option<String>>,
    counter: AtomicU64,
    event_ids: AtomicU64,
    /// The legacy HTTP+SSE stream every response of this session is written to.
    outbound: Mutex<Option<Outbound>>,
    /// Open `GET /mcp` streams; kept only so that closing the session ends them.
    listeners: Mutex<Vec<Outbound>>,
}

impl Session {
    fn new(id: String, outbound: Option<Outbound>) -> Self {
        Self {
            id,
            protocol_version: Mutex::new(None),
            counter: AtomicU64::new(0),
            event_ids: AtomicU64::new(0),
            outbound: Mutex::new(outbound),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// A session that lives outside any registry (stdio: one per process).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::new(new_id(), None))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The protocol version negotiated by `initialize`, if it happened.
    pub fn protocol_version(&self) -> Option<String> {
        lock(&self.protocol_version).clone()
    }

    pub fn set_protocol_version(&self, version: &str) {
        *lock(&self.protocol_version) = Some(version.to_owned());
    }

    /// The counter of `counter_increment`.
    pub fn counter(&self) -> &AtomicU64 {
        &self.counter
    }

    /// The next SSE event id; unique within the session, across all its streams.
    pub fn next_event_id(&self) -> u64 {
        self.event_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The legacy SSE stream of this session, while it is open.
    pub fn outbound(&self) -> Option<Outbound> {
        lock(&self.outbound).clone()
    }

    /// Keeps a `GET /mcp` stream open until the session closes.
    pub fn add_listener(&self, listener: Outbound) {
        let mut listeners = lock(&self.listeners);
        listeners.retain(|l| !l.is_closed());
        listeners.push(listener);
    }

    /// Ends every stream of the session.
    fn close(&self) {
        lock(&self.outbound).take();
        lock(&self.listeners).clear();
    }
}

/// The live sessions of this process, by id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
}

impl Sessions {
    /// Registers a new session; `outbound` is the stream of a legacy HTTP+SSE session.
    pub fn create(&self, outbound: Option<Outbound>) -> Arc<Session> {
        let session = Arc::new(Session::new(new_id(), outbound));
        lock(&self.map).insert(session.id.clone(), session.clone());
        session
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    /// Removes and closes a session; `false` if it was unknown.
    pub fn remove(&self, id: &str) -> bool {
        let removed = lock(&self.map).remove(id);
        removed.map(|s| s.close()).is_some()
    }

    /// Closes every session (shutdown), ending their streams.
    pub fn close_all(&self) {
        let drained: Vec<_> = lock(&self.map).drain().map(|(_, s)| s).collect();
        drained.iter().for_each(|s| s.close());
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }

    /// Removes the session when dropped: ties a legacy session to its SSE stream.
    pub fn guard(&self, id: &str) -> SessionGuard {
        SessionGuard {
            sessions: self.clone(),
            id: id.to_owned(),
        }
    }
}

/// Removes a session from its registry on drop.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Sessions,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.sessions.remove(&self.id) {
            tracing::debug!(session = %self.id, "SSE stream closed, session ended");
        }
    }
}

/// A fresh session id: a UUID v4 in simple form (32 hex digits), as the Python SDK issues.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Locks a mutex; a panic elsewhere while it was held leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_sessions_are_found_until_removed() {
        let sessions = Sessions::default();
        let s = sessions.create(None);
        assert_eq!(s.id().len(), 32);
        assert!(sessions.get(s.id()).is_some());
        assert!(sessions.remove(s.id()));
        assert!(sessions.get(s.id()).is_none());
        assert!(!sessions.remove(s.id()));
    }

    #[test]
    fn removing_a_session_ends_its_streams() {
        let sessions = Sessions::default();
        let (tx, mut rx) = mpsc::channel(1);
        let s = sessions.create(Some(tx));
        let (listener, mut listener_rx) = mpsc::channel(1);
        s.add_listener(listener);
        sessions.remove(s.id());
        assert!(rx.try_recv().is_err() && rx.is_closed());
        assert!(listener_rx.try_recv().is_err() && listener_rx.is_closed());
    }

    #[test]
    fn dropping_the_guard_ends_the_session() {
        let sessions = Sessions::default();
        let s = sessions.create(None);
        drop(sessions.guard(s.id()));
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn event_ids_increase_within_a_session() {
        let s = Session::detached();
        assert_eq!((s.next_event_id(), s.next_event_id()), (1, 2));
    }
}
