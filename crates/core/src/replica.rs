//! The replicas of an adapter and the port that tells the data plane where they are.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{AdapterAccess, AdapterName};

/// One replica of an adapter: a running MCP server the gateway can forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Stable identity of the replica, recorded in session records (`"0"`, `"1"`… for static
    /// upstreams, the pod name in Kubernetes). A session whose replica id is no longer listed
    /// is gone.
    pub id: Arc<str>,
    /// Position used to break placement ties (lowest first), so a StatefulSet scale-down
    /// drains the highest ordinals first.
    pub ordinal: u32,
    /// Base URL: scheme and authority, no path (`http://127.0.0.1:9001`).
    pub base_url: Arc<str>,
    /// Ready to serve (passed its readiness check, as far as the resolver knows).
    pub ready: bool,
    /// Being replaced or removed: keeps its sessions but takes no new ones.
    pub draining: bool,
}

impl Replica {
    /// Whether new sessions and stateless requests may be placed here.
    pub fn placeable(&self) -> bool {
        self.ready && !self.draining
    }
}

/// Everything the data plane needs to forward requests of one adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterTarget {
    pub name: AdapterName,
    /// Ordered by ordinal.
    pub replicas: Vec<Replica>,
    /// The replicas' streamable HTTP endpoint path (`/mcp`).
    pub mcp_path: String,
    /// The replicas' legacy HTTP+SSE endpoint path (`/sse`).
    pub sse_path: String,
    /// Who created the adapter and which roles may use it.
    pub access: AdapterAccess,
    /// Headers added to every request sent to a replica (credentials the adapter's servers
    /// need, resolved from secrets by whoever builds the target). Values are marked sensitive.
    pub upstream_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl AdapterTarget {
    pub fn replica(&self, id: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| &*r.id == id)
    }
}

/// Port: where the replicas of an adapter are right now.
///
/// Called on every request, so it must answer from memory (a runtime keeps the snapshot fresh
/// from its own watch or health checks). `None` means the adapter does not exist.
pub trait ReplicaResolver: Send + Sync + 'static {
    fn resolve(&self, adapter: &str) -> Option<Arc<AdapterTarget>>;
}

impl<T: ReplicaResolver + ?Sized> ReplicaResolver for Arc<T> {
    fn resolve(&self, adapter: &str) -> Option<Arc<AdapterTarget>> {
        (**self).resolve(adapter)
    }
}

/// A resolver over an in-memory table: fixed upstreams from configuration, or a table that a
/// runtime updates as replicas come and go.
#[derive(Debug, Default)]
pub struct StaticResolver {
    /// Looked up on every request with a name from its path: foldhash, seeded per process,
    /// rather than SipHash (the names are the operator's, not the caller's, to choose).
    adapters: RwLock<HashMap<String, Arc<AdapterTarget>, foldhash::fast::RandomState>>,
}

impl StaticResolver {
    pub fn new(targets: impl IntoIterator<Item = AdapterTarget>) -> Self {
        let resolver = Self::default();
        for t in targets {
            resolver.upsert(t);
        }
        resolver
    }

    /// Adds or replaces an adapter's target.
    pub fn upsert(&self, target: AdapterTarget) {
        let mut map = self.adapters.write().unwrap_or_else(|e| e.into_inner());
        map.insert(target.name.as_str().to_owned(), Arc::new(target));
    }

    pub fn remove(&self, adapter: &str) -> Option<Arc<AdapterTarget>> {
        let mut map = self.adapters.write().unwrap_or_else(|e| e.into_inner());
        map.remove(adapter)
    }

    /// Names of all adapters, sorted.
    pub fn names(&self) -> Vec<AdapterName> {
        let map = self.adapters.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = map.values().map(|t| t.name.clone()).collect();
        names.sort();
        names
    }
}

impl ReplicaResolver for StaticResolver {
    fn resolve(&self, adapter: &str) -> Option<Arc<AdapterTarget>> {
        let map = self.adapters.read().unwrap_or_else(|e| e.into_inner());
        map.get(adapter).cloned()
    }
}
